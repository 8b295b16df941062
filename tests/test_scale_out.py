"""Scale-out: one listener and two workers on two "hosts", on real Redis and PostgreSQL.

The workers are separate `radnode worker` processes with their own working folders, configs,
CUDA_VISIBLE_DEVICES and Celery hostnames; they share the spool and results folder (the shared
mount) and nothing else. Six studies go in; both workers must take jobs and every SEG and SR must
arrive at DCMTK storescp exactly once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from node.db import Database, Job, JobState
from tests.dcmtk import StoreSCP, storescu
from tests.node_process import RadnodeProcess
from tests.orthanc import wait_for
from tests.scale_out import WorkerProcess, make_studies
from tests.services import postgres_database, redis_database

pytestmark = [pytest.mark.services, pytest.mark.slow]

REDIS_SCALE_OUT_DBS = (14, 12)  # DB 11: test_production_services, 13: bench/scale.py
STUDIES = 4
SLICES = 40  # fewer than the source's 64 to keep the test short; enough for lung-qct
RESULT_TIMEOUT_S = 420


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_database(REDIS_SCALE_OUT_DBS) as url:
        yield url


def test_two_worker_hosts_share_four_studies_and_each_result_arrives_once(
    tmp_path: Path, chest_ct_dir: Path, postgres_url: str, redis_url: str
) -> None:
    studies = make_studies(chest_ct_dir, tmp_path / "studies", STUDIES, SLICES)
    with StoreSCP(tmp_path / "pacs", aet="DCMTKPACS") as pacs:
        listener = RadnodeProcess(
            tmp_path / "listener-host",
            destinations={"pacs": {"ae_title": "DCMTKPACS", "host": "127.0.0.1", "port": pacs.port}},
            routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"], "send_to": ["pacs"]}],
            with_worker=False,
            database_url=postgres_url,
            broker_url=redis_url,
        )
        workers = [
            WorkerProcess(tmp_path / f"host-{name}", listener.config_path,
                          hostname=f"gpu{gpu}@{name}", cuda_visible_devices=str(gpu))
            for gpu, name in enumerate(("alpha", "beta"))
        ]
        with listener, workers[0], workers[1]:
            for study in studies:
                sent = storescu("127.0.0.1", listener.port, listener.ae_title, [study])
                assert sent.returncode == 0, sent.stderr
            received = wait_for(
                pacs.received, timeout=RESULT_TIMEOUT_S, interval=2.0,
                until=lambda files: len(files) >= 2 * STUDIES,
                what=f"{2 * STUDIES} SEG/SR objects at storescp",
            )
            status = listener.cli("status")

    db = Database(postgres_url)
    with db.session() as session:
        jobs = session.execute(select(Job.state, Job.worker)).all()
    db.dispose()
    assert [state for state, _ in jobs] == [JobState.SUCCEEDED] * STUDIES, status.stdout
    per_worker = Counter(worker for _, worker in jobs)
    assert set(per_worker) == {"gpu0@alpha", "gpu1@beta"}, per_worker

    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in received]
    assert len(headers) == 2 * STUDIES  # nothing arrived twice
    assert len({ds.SOPInstanceUID for ds in headers}) == 2 * STUDIES
    by_study = Counter((ds.StudyInstanceUID, ds.Modality) for ds in headers)
    sent_studies = {pydicom.dcmread(next(s.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
                    for s in studies}
    assert by_study == Counter({(uid, modality): 1 for uid in sent_studies for modality in ("SEG", "SR")})
    print(f"jobs per worker: {dict(per_worker)}")
