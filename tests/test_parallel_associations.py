"""Parallel associations: four DCMTK storescu processes at once, nothing lost or misfiled."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from tests.dcmtk import storescu
from tests.listener_node import ListenerNode, dataset_values
from tests.orthanc import wait_for

STUDIES = 4
INSTANCES_PER_STUDY = 12


def _studies(chest_ct_dir: Path, root: Path) -> list[list[Path]]:
    """Four studies of chest CT slices, each with its own study, series and instance UIDs."""
    sources = sorted(chest_ct_dir.glob("*.dcm"))[:INSTANCES_PER_STUDY]
    studies = []
    for number in range(STUDIES):
        study_uid, series_uid = generate_uid(), generate_uid()
        folder = root / f"study{number}"
        folder.mkdir()
        files = []
        for source in sources:
            ds = pydicom.dcmread(source)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / source.name)
            files.append(folder / source.name)
        studies.append(files)
    return studies


def test_four_parallel_associations_store_every_instance_once_in_its_place(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    studies = _studies(chest_ct_dir, tmp_path)
    with ListenerNode(tmp_path / "node") as node, ThreadPoolExecutor(STUDIES) as pool:
        # -xi: the files are Implicit VR LE and go on the wire as they are
        results = list(pool.map(
            lambda files: storescu("127.0.0.1", node.port, node.ae_title, files, extra_args=["-xi"]),
            studies,
        ))
        assert [r.returncode for r in results] == [0] * STUDIES, [r.stderr for r in results]
        rows = node.instances()
        spool = node.spool.root
    sent = [path for files in studies for path in files]
    assert len(rows) == len(sent)
    for path in sent:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        stored = Path(rows[ds.SOPInstanceUID].path)
        assert stored == spool / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert dataset_values(pydicom.dcmread(stored)) == dataset_values(pydicom.dcmread(path))
    assert len(list(spool.rglob("*.dcm"))) == len(sent)
    assert not list(spool.rglob("*.tmp"))


def test_every_open_association_keeps_its_series_busy(tmp_path: Path, chest_ct_dir: Path) -> None:
    studies = _studies(chest_ct_dir, tmp_path)
    with ListenerNode(tmp_path / "node") as node:
        associations = []
        for files in studies:
            ae = AE(ae_title="PARALLEL")
            ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2")
            assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
            assert assoc.is_established
            assert assoc.send_c_store(pydicom.dcmread(files[0])).Status == 0
            associations.append(assoc)
        series = {str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
                  for files in studies}
        assert node.tracker.busy_series() == series
        # Nagle off on the accepted sockets: a small C-STORE-RSP is not held back by delayed ACKs
        server_side = [a.dul.socket.socket for a in node.listener._server.active_associations]
        assert [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in server_side] == [1] * STUDIES
        associations[0].release()
        wait_for(node.tracker.busy_series, until=lambda busy: len(busy) == STUDIES - 1,
                 what="the released association's series to be free")
        for assoc in associations[1:]:
            assoc.release()
        wait_for(node.tracker.busy_series, until=lambda busy: busy == set(), what="every series free")


def test_rows_whose_file_never_reached_the_disk_are_removed_at_start(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    """A crash between the (unflushed) commit and the spool flush leaves a row without its
    complete file, for an instance never acknowledged: the next start removes that row."""
    [files] = _studies(chest_ct_dir, tmp_path)[:1]
    with ListenerNode(tmp_path / "node") as node:
        assert storescu("127.0.0.1", node.port, node.ae_title, files[:3], extra_args=["-xi"]).returncode == 0
        rows = node.instances()
    assert node.listener.catalog.deferred_durability  # SQLite beside the spool: one flush per instance
    truncated, missing, intact = (Path(row.path) for row in rows.values())
    truncated.write_bytes(truncated.read_bytes()[:1000])
    missing.unlink()
    with ListenerNode(tmp_path / "node") as restarted:
        assert set(restarted.instances()) == {intact.stem}
