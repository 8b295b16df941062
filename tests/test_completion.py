"""Completion and routing: quiet series become jobs once; late arrivals make a new revision."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.catalog import record_instance
from node.completion import CompletionWatcher
from node.config import CompletionConfig, Route
from node.db import Database, Job, Series, SeriesState
from node.routing import assign
from node.store import Spool, read_header


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


def _watcher(db: Database, busy: set[str], enqueued: list[int]) -> CompletionWatcher:
    routes = [Route(match={"Modality": "CT"}, pipelines=["lung-qct"], send_to=[])]
    return CompletionWatcher(
        db, CompletionConfig(quiet_seconds=5), routes, lambda: busy, enqueued.append
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


def test_late_arrival_reopens_the_series_and_makes_a_new_job(
    db: Database, tmp_path: Path, chest_ct_dir: Path
) -> None:
    spool = Spool(tmp_path / "spool", 0)
    paths = sorted(chest_ct_dir.glob("*.dcm"))
    _receive(db, spool, paths[:2])
    _age(db, 6)
    watcher = _watcher(db, set(), [])
    first = watcher.tick()
    _receive(db, spool, paths[2:3])
    _age(db, 6)
    second = watcher.tick()
    assert len(first) == len(second) == 1 and first != second
    with db.session() as session:
        assert [j.revision for j in session.scalars(select(Job).order_by(Job.id))] == [1, 2]


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


def test_routes_accept_lists_and_merge_destinations(chest_ct_dir: Path) -> None:
    header = pydicom.dcmread(sorted(chest_ct_dir.glob("*.dcm"))[0], stop_before_pixels=True)
    routes = [
        Route(match={"Modality": ["MR", "CT"]}, pipelines=["lung-qct"], send_to=["a"]),
        Route(match={"Modality": "CT", "BodyPartExamined": "NOSUCHPART"}, pipelines=["lung-qct"],
              send_to=["b"]),
        Route(match={"ImageType": "AXIAL"}, pipelines=["lung-qct"], send_to=["a", "c"]),
    ]
    [assignment] = assign(routes, header)
    assert assignment.pipeline == "lung-qct"
    assert assignment.destinations == ("a", "c")


def test_spool_files_survive_a_copy_of_the_tree(tmp_path: Path, chest_ct_dir: Path) -> None:
    """The spool layout is study/series/sop.dcm: a plain tree that backup tools can copy."""
    spool = Spool(tmp_path / "spool", 0)
    data = sorted(chest_ct_dir.glob("*.dcm"))[0].read_bytes()
    path = spool.write(read_header(data), data)
    copy = Path(shutil.copytree(spool.root, tmp_path / "copy"))
    assert (copy / path.relative_to(spool.root)).read_bytes() == data
