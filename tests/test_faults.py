"""Nothing lost: the node survives kill -9, a PACS outage, broker and database restarts, a full disk.

Every fault is real: processes are killed with SIGKILL, Redis and PostgreSQL are private servers
started and restarted by the test on free ports, the spool sits on a small tmpfs. The counts
each test asserts (acknowledged = stored, jobs re-run, results delivered once) are printed too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from node.db import Database, Delivery, DeliveryState, Instance, Job, JobState, Result
from node.dimse import StoreStatus
from tests.corpus import renamed_series, send_datasets
from tests.dcmtk import DCMTK_BIN, dcmtk_env, storescu
from tests.node_process import RadnodeProcess, child_pids
from tests.orthanc import Orthanc, wait_for
from tests.ports import free_port

pytestmark = pytest.mark.slow

SENDERS = 4
LUNG_ROUTE = [{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"], "send_to": ["pacs"]}]
RESULT_TIMEOUT_S = 300


def _node_db(node: RadnodeProcess) -> Database:
    return Database(f"sqlite:///{node.workdir / 'var' / 'radnode.db'}")


def _kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


# -- 1. kill -9 of the listener while four associations are sending ---------------------------


def _storescu_process(port: int, files: list[Path], log: Path) -> subprocess.Popen[bytes]:
    """DCMTK storescu, verbose (one line per file sent and per response), logging to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(DCMTK_BIN / "storescu"), "-v", "-aet", "CT_SCANNER", "-aec", "RADNODE",
             "127.0.0.1", str(port), *map(str, files)],
            stdout=out, stderr=subprocess.STDOUT, env=dcmtk_env(),
        )


def _acknowledged(log: Path) -> list[Path]:
    """Files storescu sent and got Success for, from its verbose log."""
    acked, current = [], None
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: "))
        elif line.startswith("I: Received Store Response (Success)") and current is not None:
            acked.append(current)
    return acked


def test_listener_killed_mid_transfer_keeps_every_acknowledged_instance_and_takes_resends_once(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    files = sorted(chest_ct_dir.glob("*.dcm"))
    series: list[dict[Path, str]] = []  # per sender: file → SOP Instance UID
    for index in range(SENDERS):
        folder = tmp_path / f"series-{index}"
        folder.mkdir()
        series.append({})
        for number, ds in enumerate(renamed_series(files)):
            path = folder / f"{number:03d}.dcm"
            ds.save_as(path)
            series[-1][path] = str(ds.SOPInstanceUID)
    total = sum(map(len, series))
    node = RadnodeProcess(tmp_path / "radnode", destinations={}, routes=[], with_worker=False)
    logs = [tmp_path / f"storescu-{index}.log" for index in range(SENDERS)]
    with node:
        senders = [_storescu_process(node.port, list(files), log)
                   for files, log in zip(series, logs, strict=True)]
        wait_for(lambda: sum(len(_acknowledged(log)) for log in logs), until=lambda n: n >= total // 4,
                 timeout=120, interval=0.02, what="a quarter of the instances acknowledged")
        _kill9(node.process.pid)
        node.process.wait()
        for sender in senders:
            sender.wait(timeout=60)
    acked = {files[path] for files, log in zip(series, logs, strict=True) for path in _acknowledged(log)}
    assert 0 < len(acked) < total, "the kill must land mid-transfer"

    db = _node_db(node)
    with db.session() as session:
        stored = {row.sop_instance_uid: Path(row.path) for row in session.scalars(select(Instance))}
    missing = acked - stored.keys()
    assert not missing, f"{len(missing)} acknowledged instance(s) lost"
    for uid in acked:
        assert pydicom.dcmread(stored[uid]).SOPInstanceUID == uid  # complete, readable
    print(f"sent {total}: acknowledged {len(acked)}, stored {len(stored)} at the kill; lost 0")

    with node:  # restarted on the same spool, database and port; the senders send what failed
        for files in series:
            unacked = [path for path, uid in files.items() if uid not in acked]
            resent = storescu("127.0.0.1", node.port, node.ae_title, unacked, calling_aet="CT_SCANNER")
            assert resent.returncode == 0, resent.stdout + resent.stderr
    with db.session() as session:
        uids = session.scalars(select(Instance.sop_instance_uid)).all()
    db.dispose()
    expected = {uid for files in series for uid in files.values()}
    assert len(uids) == len(set(uids)) == total and set(uids) == expected
    dcm_files = list((node.workdir / "var" / "spool").rglob("*.dcm"))
    assert len(dcm_files) == total


# -- 2. kill -9 of the worker process running a job --------------------------------------------


def _send_folder(node: RadnodeProcess, folder: Path) -> None:
    sent = storescu("127.0.0.1", node.port, node.ae_title, [folder], calling_aet="CT_SCANNER")
    assert sent.returncode == 0, sent.stderr


def _results_in_pacs(pacs: Orthanc) -> dict[str, int]:
    """Instances per result modality (SEG, SR) across the PACS."""
    counts: dict[str, int] = {}
    for study_id in pacs.study_ids():
        for series in pacs.series_of_study(study_id):
            modality = series["MainDicomTags"].get("Modality")
            if modality in ("SEG", "SR"):
                counts[modality] = counts.get(modality, 0) + len(series["Instances"])
    return counts


def _job(db: Database) -> Job | None:
    with db.session() as session:
        return session.scalars(select(Job)).one_or_none()


def _delivered(db: Database) -> list[tuple[str, DeliveryState, int]]:
    with db.session() as session:
        return [(d.result.kind, d.state, d.attempts) for d in session.scalars(select(Delivery))]


def test_worker_killed_mid_job_reruns_it_and_the_pacs_holds_one_copy(
    tmp_path: Path, chest_ct_dir: Path, orthanc_factory: Callable[..., Orthanc]
) -> None:
    pacs = orthanc_factory()
    destination = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
    node = RadnodeProcess(tmp_path / "radnode", destinations={"pacs": destination}, routes=LUNG_ROUTE,
                          quiet_seconds=1)
    db = _node_db(node)
    with node:
        _send_folder(node, chest_ct_dir)
        wait_for(lambda: _job(db), until=lambda job: job is not None and job.state is JobState.RUNNING,
                 timeout=120, interval=0.05, what="the job to start")
        (worker,) = child_pids(node.process.pid)  # the supervised `radnode worker`
        pool = child_pids(worker)  # its prefork child runs the job
        assert pool, "the worker has no pool process"
        for pid in pool:
            _kill9(pid)
        job = wait_for(lambda: _job(db), until=lambda job: job.state is JobState.SUCCEEDED,
                       timeout=RESULT_TIMEOUT_S, interval=1, what="the re-run job to succeed")
        wait_for(lambda: _delivered(db), until=lambda rows: len(rows) == 2
                 and all(state is DeliveryState.SENT for _, state, _ in rows),
                 timeout=120, interval=1, what="both results delivered")
        in_pacs = _results_in_pacs(pacs)
        log = node.log_tail(200_000)
    with db.session() as session:
        results = session.scalar(select(func.count()).select_from(Result))
    db.dispose()
    print(f"job attempts {job.attempts}; results {results}; in PACS {in_pacs}")
    assert job.attempts == 2, "the killed run and the re-run"
    assert results == 2  # one SEG, one SR: the killed run recorded nothing
    assert in_pacs == {"SEG": 1, "SR": 1}
    assert "WorkerLostError" in log or "worker lost" in log.lower(), log[-3000:]


# -- 3. the PACS down when the results are ready, back a while later ----------------------------

# several times the node's longest backoff here (max_backoff_seconds 5, tests/node_process.py): the
# node keeps retrying at its cap through the outage; a longer one only repeats the same attempts
PACS_OUTAGE_S = 25


def test_results_reach_a_pacs_that_was_down_once_it_is_back_exactly_once(
    tmp_path: Path, chest_ct_dir: Path, orthanc_factory: Callable[..., Orthanc]
) -> None:
    pacs = orthanc_factory()
    pacs.stop()  # keeps its ports: the node's destination is where it will come back
    destination = {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}
    node = RadnodeProcess(tmp_path / "radnode", destinations={"pacs": destination}, routes=LUNG_ROUTE,
                          quiet_seconds=1, extra={"delivery": {"max_attempts": 200}})
    db = _node_db(node)
    with node:
        _send_folder(node, chest_ct_dir)
        wait_for(lambda: _delivered(db), until=lambda rows: len(rows) == 2
                 and all(state is DeliveryState.RETRYING for _, state, _ in rows),
                 timeout=RESULT_TIMEOUT_S, interval=1, what="results ready while the PACS is down")
        time.sleep(PACS_OUTAGE_S)
        pacs._launch_and_wait()  # the same configuration and ports (Orthanc.start picks new ports)
        rows = wait_for(lambda: _delivered(db), until=lambda rows: all(
                        state is DeliveryState.SENT for _, state, _ in rows),
                        timeout=120, interval=1, what="both results delivered after the outage")
        in_pacs = _results_in_pacs(pacs)
    db.dispose()
    print(f"deliveries after a {PACS_OUTAGE_S} s outage: {rows}; in PACS {in_pacs}")
    assert in_pacs == {"SEG": 1, "SR": 1}
    # retried through the outage at the backoff's cap, not once before it and once after
    assert all(attempts >= 4 for _, _, attempts in rows), rows


# -- 5. the spool reaching its free-space floor ------------------------------------------------

SPOOL_FS_MB = 24
FLOOR_MB = 4
FILLER_MB = 12


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of SPOOL_FS_MB MiB mounted for this test (needs root, as CI runs)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SPOOL_FS_MB}m", "tmpfs", str(mount)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize(
    ("floor_mb", "filler_mb", "reason"),
    [(FLOOR_MB, FILLER_MB, "free-space floor"),  # refused before a byte is written
     (0, SPOOL_FS_MB - 4, "is full")],  # no floor: the file system runs out mid-instance (ENOSPC)
)
def test_spool_at_its_floor_answers_out_of_resources_until_space_returns_and_leaves_no_partial_file(
    tmp_path: Path, chest_ct_dir: Path, small_filesystem: Path, floor_mb: int, filler_mb: int, reason: str
) -> None:
    filler = small_filesystem / "filler.bin"
    filler.write_bytes(b"\0" * filler_mb * 2**20)
    spool = small_filesystem / "spool"
    node = RadnodeProcess(tmp_path / "radnode", destinations={}, routes=[], with_worker=False,
                          extra={"storage": {"path": str(spool), "min_free_mb": floor_mb}})
    datasets = renamed_series(sorted(chest_ct_dir.glob("*.dcm"))[:24])
    db = _node_db(node)
    with node:
        statuses = send_datasets(node.port, datasets)
        refused = [ds for ds, status in zip(datasets, statuses, strict=True)
                   if status == StoreStatus.OUT_OF_RESOURCES]
        accepted = [ds for ds, status in zip(datasets, statuses, strict=True)
                    if status == StoreStatus.SUCCESS]
        assert len(accepted) + len(refused) == len(datasets)
        assert accepted and refused, f"the floor must be reached mid-series: {statuses}"
        assert statuses == sorted(statuses), "once at the floor, every later instance is refused"
        # nothing half-written: every file in the spool is a complete, recorded instance
        files = [p for p in spool.rglob("*") if p.is_file()]
        assert all(p.suffix == ".dcm" for p in files)
        with db.session() as session:
            rows = set(session.scalars(select(Instance.sop_instance_uid)))
        assert rows == {str(ds.SOPInstanceUID) for ds in accepted} == {
            str(pydicom.dcmread(p).SOPInstanceUID) for p in files
        }
        filler.unlink()  # space returns
        assert send_datasets(node.port, refused) == [StoreStatus.SUCCESS] * len(refused)
        log = node.log_tail(100_000)
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == len(datasets)
    db.dispose()
    print(f"accepted {len(accepted)}, refused 0xA700 {len(refused)}, re-sent and stored {len(refused)}")
    assert reason in log


# -- 4. broker and database restarted and unreachable -----------------------------------------

REDIS_SERVER = "/usr/bin/redis-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
NOT_APPLICABLE_ROUTE = [{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"]}]  # 3 slices: quick


class _Redis:
    """A private redis-server on a free port, persisting every write (appendfsync always)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        wait_for(lambda: _answers(client.ping), timeout=20, what="redis to start")
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


def _answers(call: Callable[[], object]) -> bool:
    try:
        call()
    except Exception:  # any failure to answer is "not yet"
        return False
    return True


class _Postgres:
    """A private PostgreSQL cluster (initdb as the postgres user) on a free port."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="radnode-pg-"))  # the postgres user must reach it
        shutil.chown(self.folder, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/radnode"
        self._as_postgres(PG_BIN / "initdb", "-D", self.folder / "data", "-A", "trust", "-U", "postgres")

    def _as_postgres(self, *args: object) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, args)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.folder / "data", "-l", self.folder / "pg.log", "-w",
                          "-o", f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.folder / "data", "-m", "fast", "-w", "stop")

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as admin:
            admin.execute("CREATE DATABASE radnode")

    def remove(self) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D",
                        str(self.folder / "data"), "-m", "immediate", "-w", "stop"],
                       capture_output=True, check=False, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_services(tmp_path: Path) -> Iterator[tuple[_Redis, _Postgres]]:
    if not Path(REDIS_SERVER).exists() or not (PG_BIN / "initdb").exists():
        pytest.skip("redis-server or PostgreSQL 15 binaries are not installed")
    redis_server, postgres = _Redis(tmp_path / "redis"), _Postgres()
    try:
        redis_server.start()
        postgres.start()
        postgres.create_database()
        yield redis_server, postgres
    finally:
        redis_server.stop()
        postgres.remove()


def _jobs(db: Database) -> list[tuple[JobState, int]]:
    with db.session() as session:
        return [(job.state, job.attempts) for job in session.scalars(select(Job).order_by(Job.id))]


def _wait_in_log(node: RadnodeProcess, text: str, timeout: float = 60) -> None:
    wait_for(lambda: text in node.log_tail(1_000_000), timeout=timeout, interval=0.5,
             what=f"{text!r} in the radnode log")


def test_broker_and_database_restarts_lose_no_job_and_the_node_reconnects_by_itself(
    tmp_path: Path, chest_ct_dir: Path, private_services: tuple[_Redis, _Postgres]
) -> None:
    redis_server, postgres = private_services
    three_slices = sorted(chest_ct_dir.glob("*.dcm"))[:3]
    folders = []
    for name in "ABC":
        folder = tmp_path / f"series-{name}"
        folder.mkdir()
        for number, ds in enumerate(renamed_series(three_slices)):
            ds.save_as(folder / f"{number}.dcm")
        folders.append(folder)
    node = RadnodeProcess(tmp_path / "radnode", destinations={}, routes=NOT_APPLICABLE_ROUTE,
                          with_worker=False, database_url=postgres.url, broker_url=redis_server.url,
                          quiet_seconds=1)
    db = Database(postgres.url)
    worker_log = tmp_path / "worker.log"
    worker: subprocess.Popen[bytes] | None = None
    try:
        with node:
            # a job queued on the broker survives the broker's restart
            _send_folder(node, folders[0])
            wait_for(lambda: _jobs(db), until=lambda jobs: len(jobs) == 1, timeout=60, what="job A")
            redis_server.stop()
            redis_server.start()
            # with the broker down at enqueue time, the job waits in the database
            redis_server.stop()
            _send_folder(node, folders[1])
            _wait_in_log(node, "broker unreachable")
            assert [state for state, _ in _jobs(db)] == [JobState.QUEUED, JobState.QUEUED]
            # the database restarts under the node
            postgres.stop()
            _wait_in_log(node, "database unreachable")
            postgres.start()
            _wait_in_log(node, "database reachable again")
            redis_server.start()
            _wait_in_log(node, "broker reachable again")
            # a worker comes and runs both; then broker and database restart under it too
            with worker_log.open("wb") as out:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "node.ops.cli", "worker", "--config", str(node.config_path),
                     "--cpu"],
                    stdout=out, stderr=subprocess.STDOUT)
            wait_for(lambda: _jobs(db), until=lambda jobs: all(s is JobState.NOT_APPLICABLE for s, _ in jobs),
                     timeout=180, interval=1, what="jobs A and B run")
            redis_server.stop()
            postgres.stop()
            postgres.start()
            redis_server.start()
            _send_folder(node, folders[2])
            jobs = wait_for(lambda: _jobs(db), until=lambda jobs: len(jobs) == 3
                            and all(s is JobState.NOT_APPLICABLE for s, _ in jobs),
                            timeout=180, interval=1, what="job C run after the second restart")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        db.dispose()
    print(f"jobs (state, attempts): {jobs}")
    assert [attempts for _, attempts in jobs] == [1, 1, 1], "each job ran once: none lost, none doubled"
    assert "Connection to broker lost" in worker_log.read_text(errors="replace")
