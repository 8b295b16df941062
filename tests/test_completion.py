"""Completion: quiet series (or series the PACS confirms by C-FIND) become jobs once; late
arrivals make a new revision or are ignored, as configured; duplicates are stored once."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.config import CompletionConfig, Destination, Route
from node.db import Database, Instance, Job, Series, SeriesState
from node.jobs.completion import CompletionWatcher, PacsCounter
from node.spool.catalog import record_instance
from node.spool.store import Spool, read_header
from tests.orthanc import Orthanc


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'radnode.db'}")
    database.create_schema()
    return database


def _receive(db: Database, spool: Spool, paths: list[Path]) -> None:
    for path in paths:
        data = path.read_bytes()
        header = read_header(data)
        record_instance(
            db, header, path=spool.write(header, data), size_bytes=len(data),
            transfer_syntax_uid="1.2.840.10008.1.2", calling_ae_title="TEST",
        )


def _age(db: Database, seconds: float) -> None:
    """Pretend the last instance arrived ``seconds`` ago."""
    with db.session() as session:
        for series in session.scalars(select(Series)):
            series.last_received_at -= timedelta(seconds=seconds)


def _watcher(
    db: Database, busy: set[str], enqueued: list[int], counter: PacsCounter | None = None, **config: object
) -> CompletionWatcher:
    routes = [Route(match={"Modality": "CT"}, pipelines=["lung-qct"], send_to=[])]
    return CompletionWatcher(
        db, CompletionConfig(**{"quiet_seconds": 5, **config}), routes, lambda: busy, enqueued.append,
        counter,
    )


def test_series_completes_after_quiet_period_and_gets_one_job(
    db: Database, tmp_path: Path, chest_ct_dir: Path
) -> None:
    spool = Spool(tmp_path / "spool", 0)
    _receive(db, spool, sorted(chest_ct_dir.glob("*.dcm"))[:3])
    enqueued: list[int] = []
    watcher = _watcher(db, set(), enqueued)
    assert watcher.tick() == []  # not quiet yet
    _age(db, 6)
    jobs = watcher.tick()
    assert len(jobs) == 1 and enqueued == jobs
    assert watcher.tick() == []  # completing is done once
    with db.session() as session:
        series = session.scalars(select(Series)).one()
        job = session.scalars(select(Job)).one()
        assert (series.state, series.revision) == (SeriesState.COMPLETE, 1)
        assert (job.pipeline, job.revision, job.state.value) == ("lung-qct", 1, "queued")


def test_series_on_an_open_association_does_not_complete(
    db: Database, tmp_path: Path, chest_ct_dir: Path
) -> None:
    spool = Spool(tmp_path / "spool", 0)
    paths = sorted(chest_ct_dir.glob("*.dcm"))[:2]
    _receive(db, spool, paths)
    _age(db, 60)
    series_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    assert _watcher(db, {series_uid}, []).tick() == []


@pytest.mark.parametrize(
    ("policy", "job_revisions", "series_revision"),
    [("rerun", [1, 2], 2), ("ignore", [1], 1)],
)
def test_late_arrival_follows_the_configured_policy(
    db: Database, tmp_path: Path, chest_ct_dir: Path, policy: str, job_revisions: list[int],
    series_revision: int,
) -> None:
    """rerun: the series reopens and gets a new job; ignore: the instance is stored, no job."""
    spool = Spool(tmp_path / "spool", 0)
    paths = sorted(chest_ct_dir.glob("*.dcm"))
    _receive(db, spool, paths[:2])
    _age(db, 6)
    watcher = _watcher(db, set(), [], late_arrivals=policy)
    assert len(watcher.tick()) == 1
    _receive(db, spool, paths[2:3])
    _age(db, 6)
    assert len(watcher.tick()) == len(job_revisions) - 1
    with db.session() as session:
        assert [j.revision for j in session.scalars(select(Job).order_by(Job.id))] == job_revisions
        series = session.scalars(select(Series)).one()
        assert (series.state, series.revision, len(series.instances)) == (
            SeriesState.COMPLETE, series_revision, 3
        )


def test_series_matching_no_route_completes_without_jobs(
    db: Database, tmp_path: Path, chest_ct_dir: Path
) -> None:
    source = sorted(chest_ct_dir.glob("*.dcm"))[0]
    ds = pydicom.dcmread(source)
    ds.Modality = "MR"
    mr = tmp_path / "mr.dcm"
    ds.save_as(mr)
    spool = Spool(tmp_path / "spool", 0)
    _receive(db, spool, [mr])
    _age(db, 6)
    assert _watcher(db, set(), []).tick() == []
    with db.session() as session:
        assert session.scalars(select(Series)).one().state == SeriesState.COMPLETE


def test_spool_files_survive_a_copy_of_the_tree(tmp_path: Path, chest_ct_dir: Path) -> None:
    """The spool layout is study/series/sop.dcm: a plain tree that backup tools can copy."""
    spool = Spool(tmp_path / "spool", 0)
    data = sorted(chest_ct_dir.glob("*.dcm"))[0].read_bytes()
    path = spool.write(read_header(data), data)
    copy = Path(shutil.copytree(spool.root, tmp_path / "copy"))
    assert (copy / path.relative_to(spool.root)).read_bytes() == data


def test_duplicate_instance_is_stored_once(db: Database, tmp_path: Path, chest_ct_dir: Path) -> None:
    spool = Spool(tmp_path / "spool", 0)
    path = sorted(chest_ct_dir.glob("*.dcm"))[0]
    _receive(db, spool, [path, path, path])
    with db.session() as session:
        assert len(session.scalars(select(Instance)).all()) == 1
    assert len(list(spool.root.rglob("*.dcm"))) == 1


@pytest.fixture
def pacs_with_ct(orthanc: Orthanc, chest_ct_dir: Path) -> PacsCounter:
    """Orthanc holding 6 slices of the chest CT, asked by C-FIND as a completion destination."""
    for path in sorted(chest_ct_dir.glob("*.dcm"))[:6]:
        orthanc.upload(path)
    destination = Destination(ae_title=orthanc.aet, host=orthanc.host, port=orthanc.dicom_port)
    return PacsCounter(destination, calling_ae_title="RADNODE", timeout_seconds=10)


def test_pacs_count_completes_a_released_series_at_once(
    db: Database, tmp_path: Path, chest_ct_dir: Path, pacs_with_ct: PacsCounter
) -> None:
    _receive(db, Spool(tmp_path / "spool", 0), sorted(chest_ct_dir.glob("*.dcm"))[:6])
    enqueued: list[int] = []
    watcher = _watcher(db, set(), enqueued, pacs_with_ct, quiet_seconds=3600)
    assert len(watcher.tick()) == 1  # long before the quiet period: the PACS has 6, we have 6
    with db.session() as session:
        assert session.scalars(select(Series)).one().state == SeriesState.COMPLETE


def test_pacs_count_higher_than_received_waits_for_the_quiet_period(
    db: Database, tmp_path: Path, chest_ct_dir: Path, pacs_with_ct: PacsCounter
) -> None:
    _receive(db, Spool(tmp_path / "spool", 0), sorted(chest_ct_dir.glob("*.dcm"))[:4])
    paths_series = pydicom.dcmread(sorted(chest_ct_dir.glob("*.dcm"))[0], stop_before_pixels=True)
    watcher = _watcher(db, set(), [], pacs_with_ct, quiet_seconds=60)
    assert pacs_with_ct.count(paths_series.StudyInstanceUID, paths_series.SeriesInstanceUID) == 6
    assert watcher.tick() == []  # 4 of 6: more may come
    _age(db, 61)
    assert len(watcher.tick()) == 1  # the quiet period still completes it


def test_series_still_on_its_association_is_not_completed_by_the_pacs_count(
    db: Database, tmp_path: Path, chest_ct_dir: Path, pacs_with_ct: PacsCounter
) -> None:
    paths = sorted(chest_ct_dir.glob("*.dcm"))[:6]
    _receive(db, Spool(tmp_path / "spool", 0), paths)
    series_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    assert _watcher(db, {series_uid}, [], pacs_with_ct, quiet_seconds=3600).tick() == []


def test_pacs_refusing_the_c_find_falls_back_to_the_quiet_period(
    db: Database, tmp_path: Path, chest_ct_dir: Path, orthanc: Orthanc
) -> None:
    _receive(db, Spool(tmp_path / "spool", 0), sorted(chest_ct_dir.glob("*.dcm"))[:2])
    # Orthanc rejects an association that calls it by another AE title
    nobody = PacsCounter(Destination(ae_title="NOBODY", host=orthanc.host, port=orthanc.dicom_port),
                         calling_ae_title="RADNODE", timeout_seconds=5)
    watcher = _watcher(db, set(), [], nobody, quiet_seconds=60)
    assert watcher.tick() == []
    _age(db, 61)
    assert len(watcher.tick()) == 1
