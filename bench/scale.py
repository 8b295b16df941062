"""Scale-out throughput: the same N studies through 1 and then 2 CPU workers.

    .venv/bin/python -m bench.scale [--studies 6] [--slices 40] [--runs 2]

One `radnode serve` (listener only) and 1 or 2 `radnode worker --cpu` processes, each in its own
folder with its own Celery hostname (tests/scale_out.py), on the local PostgreSQL (a fresh
database per run) and Redis (DB 13, claimed and flushed per run); results go to DCMTK storescp. N studies are
made from the repository's chest CT (middle ``--slices`` slices, new UIDs) and sent one storescu
association each, back to back. The time is from the first send to the last SEG/SR written by
storescp; throughput is studies per minute. Every job must succeed and every result arrive once.

On a machine with fewer cores than workers × torch threads, two workers share the same cores:
the ratio then measures overlap of I/O and idle time, not added compute (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import select

from node.db import Database, Job, JobState
from tests.dcmtk import StoreSCP, storescu
from tests.node_process import RadnodeProcess
from tests.orthanc import wait_for
from tests.scale_out import WorkerProcess, claimed_redis_db, make_studies

ROOT = Path(__file__).resolve().parent.parent
CT_SOURCE = ROOT / "tests" / "data" / "ct_chest_lungdx_a0001"
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_BENCH_DBS = (13,)
RESULT_TIMEOUT_S = 1800


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"radnode_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_once(workdir: Path, studies: list[Path], workers: int) -> float:
    """Seconds from the first send to the last result at storescp, with ``workers`` workers."""
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database())
        broker_url = stack.enter_context(claimed_redis_db(REDIS_BENCH_DBS))
        pacs = stack.enter_context(StoreSCP(workdir / "pacs", aet="DCMTKPACS"))
        listener = RadnodeProcess(
            workdir / "listener",
            destinations={"pacs": {"ae_title": "DCMTKPACS", "host": "127.0.0.1", "port": pacs.port}},
            routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"], "send_to": ["pacs"]}],
            with_worker=False, database_url=database_url, broker_url=broker_url,
        )
        stack.enter_context(listener)
        for index in range(workers):
            stack.enter_context(WorkerProcess(
                workdir / f"worker{index}", listener.config_path,
                hostname=f"cpu{index}@bench", cuda_visible_devices="",
            ))
        start = time.monotonic()
        for study in studies:
            storescu("127.0.0.1", listener.port, listener.ae_title, [study], check=True)
        wait_for(pacs.received, timeout=RESULT_TIMEOUT_S, interval=0.5,
                 until=lambda files: len(files) >= 2 * len(studies), what="every SEG and SR")
        elapsed = time.monotonic() - start
        db = Database(database_url)
        with db.session() as session:
            states = session.scalars(select(Job.state)).all()
        db.dispose()
        assert states == [JobState.SUCCEEDED] * len(studies), states
        assert len(pacs.received()) == 2 * len(studies)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="radnode-scale-") as tmp:
        studies = make_studies(CT_SOURCE, Path(tmp) / "studies", args.studies, args.slices)
        seconds: dict[int, list[float]] = {1: [], 2: []}
        for run in range(args.runs):
            for workers in (1, 2):
                elapsed = run_once(Path(tmp) / f"run{run}-w{workers}", studies, workers)
                seconds[workers].append(elapsed)
                print(f"run {run + 1}: {workers} worker(s): {elapsed:.1f} s, "
                      f"{60 * args.studies / elapsed:.2f} studies/min, load {os.getloadavg()[0]:.1f}")
    one, two = statistics.median(seconds[1]), statistics.median(seconds[2])
    print(f"median: 1 worker {one:.1f} s, 2 workers {two:.1f} s; throughput ratio 2/1 = {one / two:.2f}"
          f" (runs: 1w {[round(s, 1) for s in seconds[1]]}, 2w {[round(s, 1) for s in seconds[2]]})")


if __name__ == "__main__":
    main()
