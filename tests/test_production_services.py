"""The same node on PostgreSQL + Redis (the production layout), with DCMTK on both ends.

DCMTK's storescu sends a CT series to radnode; radnode's results arrive at DCMTK's storescp.
Only the two URLs in the YAML differ from the embedded default.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.dcmtk import StoreSCP, storescu
from tests.node_process import RadnodeProcess
from tests.orthanc import wait_for
from tests.scale_out import claimed_redis_db

pytestmark = [pytest.mark.services, pytest.mark.slow]

POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_TEST_DBS = (10, 11)


def _unavailable(reason: str) -> None:
    """Skip on a laptop without the services; fail in CI, where they must be there."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"radnode_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_DSN, connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as exc:
        _unavailable(f"PostgreSQL is not running on 127.0.0.1:5432: {exc}")
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis DB no concurrent test run on this machine uses (claimed, flushed)."""
    redis = pytest.importorskip("redis")
    try:
        with claimed_redis_db(REDIS_TEST_DBS) as url:
            yield url
    except redis.ConnectionError as exc:
        _unavailable(f"Redis is not running on 127.0.0.1:6379: {exc}")


def test_series_round_trip_on_postgresql_and_redis_with_dcmtk_peers(
    tmp_path: Path, chest_ct_dir: Path, postgres_url: str, redis_url: str
) -> None:
    with StoreSCP(tmp_path / "pacs", aet="DCMTKPACS") as pacs:
        node = RadnodeProcess(
            tmp_path / "radnode",
            destinations={"pacs": {"ae_title": "DCMTKPACS", "host": "127.0.0.1", "port": pacs.port}},
            routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"], "send_to": ["pacs"]}],
            database_url=postgres_url,
            broker_url=redis_url,
        )
        with node:
            sent = storescu("127.0.0.1", node.port, node.ae_title, [chest_ct_dir])
            assert sent.returncode == 0, sent.stderr
            received = wait_for(
                pacs.received,
                timeout=240,
                interval=1.0,
                until=lambda files: len(files) >= 2,
                what="SEG and SR at DCMTK storescp",
            )
            status = node.cli("status")
    modalities = sorted(pydicom.dcmread(path, stop_before_pixels=True).Modality for path in received)
    assert modalities == ["SEG", "SR"]
    study_uid = pydicom.dcmread(next(chest_ct_dir.glob("*.dcm")), stop_before_pixels=True).StudyInstanceUID
    assert {pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID for p in received} == {study_uid}
    assert "64 instances" in status.stdout and "succeeded" in status.stdout, status.stdout
    assert status.stdout.count("→ pacs  sent") == 2, status.stdout
