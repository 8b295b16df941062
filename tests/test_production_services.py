"""The same node on PostgreSQL + Redis (the production layout), with DCMTK on both ends.

DCMTK's storescu sends a CT series to radnode; radnode's results arrive at DCMTK's storescp.
Only the two URLs in the YAML differ from the embedded default.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.dcmtk import StoreSCP, storescu
from tests.node_process import RadnodeProcess
from tests.orthanc import wait_for
from tests.services import postgres_database, redis_database

pytestmark = [pytest.mark.services, pytest.mark.slow]

REDIS_TEST_DBS = (10, 11)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_database(REDIS_TEST_DBS) as url:
        yield url


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
