"""After a crash the spool and the database are put back in step before anyone is served, and no
acknowledged instance is lost doing it (node/spool/recovery.py)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import select, update

from node.db import Instance, Series, SeriesState, Study
from node.dimse import StoreStatus
from node.spool.recovery import recover
from node.spool.store import CLEAN_STOP_MARK
from tests.inprocess_node import AE_TITLE, InProcessNode


def _slices(chest_ct_dir: Path, count: int) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(chest_ct_dir.glob("*.dcm"))[:count]]


def _send(node: InProcessNode, datasets: list[pydicom.Dataset]) -> None:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, datasets[0].file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    for ds in datasets:
        assert association.send_c_store(ds).Status == StoreStatus.SUCCESS
    association.release()


def _crashed(node: InProcessNode) -> None:
    """What a stop by kill -9 leaves: no clean-stop mark."""
    (node.spool.root / ".incoming" / CLEAN_STOP_MARK).unlink()


def _rows(node: InProcessNode) -> dict[str, Path]:
    with node.db.session() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.path))
        return {uid: Path(path) for uid, path in rows}


def test_an_acknowledged_instance_whose_re_send_was_lost_in_a_crash_gets_its_row_back(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    ds = _slices(chest_ct_dir, 1)[0]
    with InProcessNode(tmp_path) as node:
        _send(node, [ds])
        stored = _rows(node)[ds.SOPInstanceUID]
    _crashed(node)
    # the crash's state: the re-send under a corrected series had moved the row to a file that the
    # crash lost before it was flushed (its sender got no Success)
    with node.db.session() as session:
        study_id = session.scalar(select(Study.id))
        corrected = Series(study_id=study_id, series_instance_uid="1.2.826.0.1.3680043.10.1.7",
                           state=SeriesState.RECEIVING)
        session.add(corrected)
        session.flush()
        lost = stored.parent.parent / "1.2.826.0.1.3680043.10.1.7" / stored.name
        session.execute(update(Instance).values(series_id=corrected.id, path=str(lost)))
    with InProcessNode(tmp_path) as restarted:
        assert _rows(restarted) == {ds.SOPInstanceUID: stored}
        with restarted.db.session() as session:
            row = session.scalars(select(Instance)).one()
            assert row.series.series_instance_uid == ds.SeriesInstanceUID
            assert row.size_bytes == stored.stat().st_size
            assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert stored.is_file()


def test_after_a_crash_files_without_rows_that_were_never_acknowledged_are_removed(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    first, second = _slices(chest_ct_dir, 2)
    with InProcessNode(tmp_path) as node:
        _send(node, [first])
        stored = _rows(node)[first.SOPInstanceUID]
    _crashed(node)
    # renamed into place in a series that never got its row, then the crash
    unknown_series = stored.parent.parent / "1.2.826.0.1.3680043.10.1.8"
    unknown_series.mkdir()
    never_recorded = unknown_series / f"{second.SOPInstanceUID}.dcm"
    shutil.copyfile(stored, never_recorded)
    # a re-send moved the instance and the crash came before its old file was removed
    moved_from = stored.parent.parent / "1.2.826.0.1.3680043.10.1.9" / stored.name
    moved_from.parent.mkdir()
    shutil.copyfile(stored, moved_from)
    with InProcessNode(tmp_path) as restarted:
        assert _rows(restarted) == {first.SOPInstanceUID: stored}
        assert stored.is_file()
        assert not never_recorded.exists() and not moved_from.exists()


def test_a_clean_stop_spares_the_next_start_the_spool_sweep(tmp_path: Path, chest_ct_dir: Path) -> None:
    datasets = _slices(chest_ct_dir, 2)
    with InProcessNode(tmp_path) as node:
        _send(node, datasets)
    assert (node.spool.root / ".incoming" / CLEAN_STOP_MARK).is_file()
    done = recover(node.spool, node.listener.catalog)
    assert not done.swept
    done = recover(node.spool, node.listener.catalog)  # the mark was taken: a crash now would sweep
    assert done.swept and (done.rows_restored, done.orphans_removed, done.left_alone) == (0, 0, 0)


def test_a_spool_file_that_does_not_match_its_place_is_left_alone(tmp_path: Path, chest_ct_dir: Path) -> None:
    first, second = _slices(chest_ct_dir, 2)
    with InProcessNode(tmp_path) as node:
        _send(node, [first])
        stored = _rows(node)[first.SOPInstanceUID]
    _crashed(node)
    stranger = stored.parent / "1.2.826.0.1.3680043.10.1.10.dcm"  # another instance's bytes
    other = copy.deepcopy(second)
    other.save_as(stranger, enforce_file_format=True)
    with InProcessNode(tmp_path) as restarted:
        assert _rows(restarted) == {first.SOPInstanceUID: stored}
        assert stranger.is_file(), "radnode deleted a file it did not understand"
