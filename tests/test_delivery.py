"""Delivery exactly once: real peers (a pynetdicom SCP that refuses, Orthanc by C-STORE and STOW-RS).

The jobs here are real: the chest CT's Instance rows point at ``tests/data``, the lung-qct pipeline
runs on the CPU, and :class:`node.jobs.runner.JobRunner` writes the results and their Delivery rows.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
import torch
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import SegmentationStorage
from sqlalchemy import select

from node.config import Config, parse_config
from node.db import Database, Delivery, DeliveryState, Job, Result, Series
from node.delivery.send import attempt_delivery
from node.dimse import StoreStatus
from node.errors import ConfigError
from node.jobs.runner import JobRunner
from node.ops.status import render_status
from node.spool.catalog import record_instance
from node.spool.store import read_header
from tests.dicom_files import dicom_files_under
from tests.log_records import kept_log_records
from tests.orthanc import DICOMWEB_PLUGIN, Orthanc
from tests.ports import free_port

CHEST_CT = Path(__file__).parent / "data" / "ct_chest_lungdx_a0001"
REFUSAL_COMMENT = "SEG not accepted by this archive"


def make_config(tmp_path: Path, destinations: str, extra: str = "") -> Config:
    text = f"""{extra}
storage: {{path: spool, results_path: results}}
database: {{url: "sqlite:///radnode.db"}}
broker: {{url: "sqla+sqlite:///broker.db"}}
delivery: {{max_attempts: 3, first_backoff_seconds: 2, max_backoff_seconds: 5, timeout_seconds: 10}}
destinations:
{destinations}
"""
    return parse_config(text, base=tmp_path)


def database(config: Config) -> Database:
    db = Database(config.database.url)
    db.create_schema()
    return db


def queue_chest_ct_job(db: Database, destinations: list[str], revision: int = 1) -> int:
    """The chest CT as the listener records it, plus a queued lung-qct job for ``destinations``."""
    for path in dicom_files_under(CHEST_CT):
        record_instance(db, read_header(path.read_bytes()), path=path, size_bytes=path.stat().st_size,
                        transfer_syntax_uid="1.2.840.10008.1.2", calling_ae_title="TEST")
    with db.session() as session:
        series = session.scalars(select(Series)).one()
        job = Job(series=series, pipeline="lung-qct", revision=revision, destinations=destinations)
        session.add(job)
        session.flush()
        return job.id


def deliveries_of(db: Database, job_id: int) -> list[tuple[int, str, str]]:
    """(delivery id, result kind, destination) of a job."""
    with db.session() as session:
        rows = session.execute(
            select(Delivery.id, Result.kind, Delivery.destination)
            .join(Result).where(Result.job_id == job_id).order_by(Delivery.id)
        ).all()
    return [tuple(row) for row in rows]


def deliver_all(db: Database, config: Config, job_id: int) -> None:
    for delivery_id, _, _ in deliveries_of(db, job_id):
        assert attempt_delivery(db, config, delivery_id) is None  # sent (or refused): not retried


@pytest.fixture(scope="module")
def ran_job(tmp_path_factory) -> tuple[Path, int]:
    """(folder of a database, job id) after lung-qct ran on the chest CT for destination "pacs".

    Run once per module; each test copies the database and names its own "pacs" address.
    """
    folder = tmp_path_factory.mktemp("ran")
    config = make_config(folder, "  pacs: {ae_title: PLACEHOLDER, host: 127.0.0.1, port: 1}",
                         "pipelines: {lung-qct: {seg_type: fractional}}")
    db = database(config)
    job_id = queue_chest_ct_job(db, ["pacs"])
    JobRunner(config, db, torch.device("cpu")).run(job_id)
    db.dispose()
    return folder, job_id


def seg_delivery(ran_job: tuple[Path, int], tmp_path: Path, pacs: str) -> tuple[Config, Database, int]:
    """A copy of the ran job's database, a config whose "pacs" is ``pacs``, and the SEG's delivery id."""
    folder, job_id = ran_job
    shutil.copy(folder / "radnode.db", tmp_path / "radnode.db")
    config = make_config(tmp_path, f"  pacs: {pacs}")
    db = database(config)
    (delivery_id,) = [d for d, kind, _ in deliveries_of(db, job_id) if kind == "seg"]
    return config, db, delivery_id


def test_pipeline_seg_type_option_reaches_the_written_seg(ran_job) -> None:
    folder, job_id = ran_job
    db = Database(f"sqlite:///{folder / 'radnode.db'}")
    with db.session() as session:
        (seg_path,) = session.scalars(
            select(Result.path).where(Result.job_id == job_id, Result.kind == "seg")
        )
    db.dispose()
    assert pydicom.dcmread(seg_path, stop_before_pixels=True).SegmentationType == "FRACTIONAL"


@pytest.mark.parametrize(("destination", "problem"), [
    ("{kind: dicomweb}", "a dicomweb destination needs url"),
    ("{kind: dicomweb, url: 'ftp://pacs'}", "should match pattern"),
    ("{host: pacs, port: 104}", "a dicom destination needs ae_title, host and port"),
    ("{ae_title: PACS, host: pacs, port: 104, formats: [seg, pdf]}", "formats.1"),
])
def test_destination_config_names_what_is_missing(tmp_path, destination, problem) -> None:
    with pytest.raises(ConfigError, match=problem):
        make_config(tmp_path, f"  pacs: {destination}")


def test_pipeline_options_are_only_for_known_pipelines(tmp_path) -> None:
    with pytest.raises(ConfigError, match="options for unknown pipeline"):
        make_config(tmp_path, "  pacs: {ae_title: PACS, host: pacs, port: 104}",
                    "pipelines: {lung-qtc: {seg_type: labelmap}}")


@pytest.fixture
def refusing_scp() -> Iterator[Callable[[int], int]]:
    """Start a pynetdicom Storage SCP (AE REFUSER) answering every C-STORE with a given status."""
    servers = []

    def start(status: int) -> int:
        def handle_store(event: evt.Event) -> Dataset:
            answer = Dataset()
            answer.Status = status
            answer.ErrorComment = REFUSAL_COMMENT
            return answer

        ae = AE(ae_title="REFUSER")
        ae.add_supported_context(SegmentationStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, handle_store)]))
        return port

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(
    "status", [StoreStatus.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, StoreStatus.CANNOT_UNDERSTAND]
)
def test_refusal_by_the_pacs_stops_retrying_and_status_shows_its_status_and_message(
    ran_job, tmp_path, refusing_scp, status
) -> None:
    port = refusing_scp(int(status))
    config, db, delivery_id = seg_delivery(
        ran_job, tmp_path, f"{{ae_title: REFUSER, host: 127.0.0.1, port: {port}}}"
    )

    assert attempt_delivery(db, config, delivery_id) is None  # no retry scheduled
    assert attempt_delivery(db, config, delivery_id) is None  # and a second call sends nothing
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts, delivery.last_status) == (DeliveryState.FAILED, 1, status)
    report = render_status(db)
    assert f"status 0x{int(status):04X}" in report
    assert REFUSAL_COMMENT in report


# pynetdicom 3.0.4 drops the socket of a refused connection without closing it (transport.connect)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreachable_destination_is_retried_with_exponential_backoff_then_failed(ran_job, tmp_path) -> None:
    config, db, delivery_id = seg_delivery(
        ran_job, tmp_path, f"{{ae_title: NOBODY, host: 127.0.0.1, port: {free_port()}}}"
    )

    waits = [attempt_delivery(db, config, delivery_id) for _ in range(3)]

    assert waits == [2.0, 4.0, None]  # first_backoff_seconds doubling, then max_attempts reached
    with db.session() as session:
        delivery = session.get(Delivery, delivery_id)
        assert (delivery.state, delivery.attempts) == (DeliveryState.FAILED, 3)
        assert "gave up after 3 attempts" in delivery.last_error


def test_a_failed_attempt_logs_one_warning_and_status_shows_when_the_next_one_is(ran_job, tmp_path) -> None:
    """A PACS that is down: one WARNING from radnode per attempt (where and why), none of pynetdicom's
    ERROR lines for the same refused connection, and `radnode status` says when it tries again."""
    config, db, delivery_id = seg_delivery(
        ran_job, tmp_path, f"{{ae_title: NOBODY, host: 127.0.0.1, port: {free_port()}}}"
    )
    with kept_log_records() as records:
        wait = attempt_delivery(db, config, delivery_id)

    assert wait == 2.0
    loud = [(r.name, r.getMessage()) for r in records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, loud
    assert loud[0][0] == "radnode.delivery" and "retrying" in loud[0][1] and "NOBODY@127.0.0.1" in loud[0][1]
    report = render_status(db)
    assert re.search(r"→ pacs  retrying after 1 attempt\(s\) \(delivery \d+\): .*; "
                     r"next attempt \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", report), report


def orthanc_results(pacs: Orthanc, study_uid: str) -> dict[str, list[bytes]]:
    """Modality → the files Orthanc stores for each instance of the study's non-CT series."""
    study_id = pacs.find_study(study_uid)
    found: dict[str, list[bytes]] = {}
    for series in pacs.series_of_study(study_id):
        modality = series["MainDicomTags"].get("Modality", "")
        if modality == "CT":
            continue
        for instance in pacs.instances_of_series(series["ID"]):
            found.setdefault(modality, []).append(pacs.download_instance(instance["ID"]))
    return found


def data_set_bytes(part10: bytes) -> bytes:
    """A Part 10 file's data set without its File Meta Information, which a receiver may rewrite."""
    meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10), stop_before_pixels=True).file_meta
    return part10[128 + 4 + 12 + int(meta.FileMetaInformationGroupLength):]


def test_rerun_replaces_results_in_both_pacs_kinds_and_they_come_back_byte_identical(
    tmp_path, orthanc_factory
) -> None:
    """C-STORE to one Orthanc (SEG + SR), STOW-RS to another (SEG + SR + SC); the job runs twice."""
    if not DICOMWEB_PLUGIN.is_file():
        pytest.skip(f"{DICOMWEB_PLUGIN} missing: install the Debian package orthanc-dicomweb")
    dimse = orthanc_factory()
    web = orthanc_factory(plugins=[DICOMWEB_PLUGIN])
    config = make_config(tmp_path, (
        f"  pacs: {{ae_title: {dimse.aet}, host: 127.0.0.1, port: {dimse.dicom_port}}}\n"
        f"  web: {{kind: dicomweb, url: '{web.url}/dicom-web', formats: [seg, sr, sc]}}"
    ))
    db = database(config)
    runner = JobRunner(config, db, torch.device("cpu"))
    first = queue_chest_ct_job(db, ["pacs", "web"], revision=1)
    runner.run(first)
    deliver_all(db, config, first)
    second = queue_chest_ct_job(db, ["pacs", "web"], revision=2)  # e.g. a late arrival re-ran it
    runner.run(second)
    deliver_all(db, config, second)

    kinds = {(kind, name) for _, kind, name in deliveries_of(db, first)}
    assert kinds == {("seg", "pacs"), ("sr", "pacs"), ("seg", "web"), ("sr", "web"), ("sc", "web")}
    with db.session() as session:
        results = {job: session.scalars(select(Result).where(Result.job_id == job)).all()
                   for job in (first, second)}
        assert all(d.state is DeliveryState.SENT for d in session.scalars(select(Delivery)))
    assert {r.sop_instance_uid for r in results[first]} == {r.sop_instance_uid for r in results[second]}
    files = {r.sop_instance_uid: Path(r.path).read_bytes() for r in results[second]}
    n_sc = sum(1 for r in results[second] if r.kind == "sc")
    study_uid = pydicom.dcmread(next(iter(dicom_files_under(CHEST_CT)))).StudyInstanceUID
    by_dimse, by_web = orthanc_results(dimse, study_uid), orthanc_results(web, study_uid)
    assert {m: len(v) for m, v in by_dimse.items()} == {"SEG": 1, "SR": 1}
    assert n_sc >= 1
    assert {m: len(v) for m, v in by_web.items()} == {"SEG": 1, "SR": 1, "OT": n_sc}
    # STOW-RS stores the uploaded file itself; C-STORE sends the data set and Orthanc writes
    # its own File Meta Information (source AE title, implementation UID) in front of it.
    assert all(data in files.values() for stored in by_web.values() for data in stored)
    ours = {data_set_bytes(data) for data in files.values()}
    assert all(data_set_bytes(data) in ours for stored in by_dimse.values() for data in stored)
