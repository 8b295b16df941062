"""Prometheus metrics of a real node (listener and worker processes) during an end-to-end run.

DCMTK storescu sends the 64-slice chest CT to `radnode serve --with-worker`; lung-qct runs; the SEG
and SR go to DCMTK storescp. Then both /metrics endpoints are scraped and the counts checked.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dcmtk import StoreSCP, storescu
from tests.node_process import RadnodeProcess
from tests.orthanc import wait_for
from tests.ports import free_port

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} from http://127.0.0.1:port/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_when_up(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """As ``scrape``, but {} while the process has not opened its port yet."""
    try:
        return scrape(port)
    except urllib.error.URLError:
        return {}


def value(samples: dict, name: str, **labels: str) -> float | None:  # type: ignore[type-arg]
    return samples.get((name, frozenset(labels.items())))


def test_metrics_count_a_study_from_receipt_to_delivery(tmp_path: Path, chest_ct_dir: Path) -> None:
    listener_port, worker_port = free_port(), free_port()
    with StoreSCP(tmp_path / "pacs", aet="DCMTKPACS") as pacs:
        node = RadnodeProcess(
            tmp_path / "radnode",
            destinations={"pacs": {"ae_title": "DCMTKPACS", "host": "127.0.0.1", "port": pacs.port}},
            routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"], "send_to": ["pacs"]}],
            extra={"metrics": {"enabled": True, "port": listener_port, "worker_port": worker_port}},
        )
        with node:
            sent = storescu("127.0.0.1", node.port, node.ae_title, [chest_ct_dir])
            assert sent.returncode == 0, sent.stderr
            worker = wait_for(
                lambda: scrape_when_up(worker_port),
                timeout=240, interval=1.0,
                until=lambda s: value(s, "radnode_delivery_attempts_total",
                                      destination="pacs", outcome="sent") == 2,
                what="two deliveries counted by the worker's /metrics",
            )
            listener = scrape(listener_port)
        received = pacs.received()

    spool_bytes = sum(p.stat().st_size for p in (tmp_path / "radnode/var/spool").rglob("*.dcm"))
    assert len(received) == 2
    # listener: what arrived, and the database's view of the jobs
    assert value(listener, "radnode_instances_received_total", calling_ae="DCMTKSCU") == 64
    assert value(listener, "radnode_received_bytes_total") == spool_bytes
    assert value(listener, "radnode_associations_rejected_total") == 0
    assert value(listener, "radnode_jobs", pipeline="lung-qct", state="succeeded") == 1
    assert value(listener, "radnode_queue_depth") == 0
    assert value(listener, "radnode_spool_free_bytes") > 0
    # worker: what it ran, how long each stage took, what it delivered
    assert value(worker, "radnode_jobs_finished_total", pipeline="lung-qct", state="succeeded") == 1
    for stage, count in (("load", 1), ("pipeline", 1), ("encode", 1), ("deliver", 2)):
        assert value(worker, "radnode_job_stage_seconds_count", pipeline="lung-qct", stage=stage) == count
        assert value(worker, "radnode_job_stage_seconds_sum", pipeline="lung-qct", stage=stage) > 0
    assert value(worker, "radnode_delivery_attempts_total", destination="pacs", outcome="retrying") is None
    # each process exports what it counts, not the other's families at 0
    listener_only = ("radnode_instances", "radnode_received", "radnode_associations", "radnode_queue")
    worker_only = ("radnode_jobs_finished", "radnode_job_stage", "radnode_delivery")
    assert not [name for name, _ in worker if name.startswith(listener_only)]
    assert not [name for name, _ in listener if name.startswith(worker_only)]
