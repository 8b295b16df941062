"""A worker that runs for months stays bounded: the job process is replaced once it grows too big.

``worker.max_memory_per_child_mb`` becomes Celery's --max-memory-per-child. Set to 1 MiB here, every
job leaves its process over the bound, so each job must run in a fresh process, and the jobs must
still all succeed: the replacement happens between jobs, never during one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from node.db import Database, Job, JobState
from tests.corpus import renamed_series, send_datasets
from tests.node_process import RadnodeProcess, child_pids
from tests.orthanc import wait_for

pytestmark = pytest.mark.slow

STUDIES = 2


def _jobs(db: Database) -> list[JobState]:
    with db.session() as session:
        return [job.state for job in session.scalars(select(Job))]


def test_job_process_over_its_memory_bound_is_replaced_between_jobs_and_every_job_succeeds(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    routes = [{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"]}]
    node = RadnodeProcess(tmp_path / "radnode", destinations={}, routes=routes, quiet_seconds=1,
                          extra={"worker": {"max_memory_per_child_mb": 1}})
    db = Database(f"sqlite:///{node.workdir / 'var' / 'radnode.db'}")
    files = sorted(chest_ct_dir.glob("*.dcm"))
    with node:
        (worker,) = child_pids(node.process.pid)  # the supervised `radnode worker`
        pools = [wait_for(lambda: child_pids(worker), until=bool, timeout=120, interval=0.2,
                          what="the worker's job process")[0]]
        for study in range(STUDIES):
            statuses = send_datasets(node.port, renamed_series(files))
            assert set(statuses) == {0x0000}
            wait_for(lambda: _jobs(db),
                     until=lambda states, n=study + 1: states.count(JobState.SUCCEEDED) == n,
                     timeout=300, interval=0.5, what=f"job {study + 1} to succeed")
            fresh = wait_for(lambda: child_pids(worker),
                             until=lambda pids: bool(pids) and pids[0] not in pools,
                             timeout=60, interval=0.2, what="a fresh job process after the job")
            pools.append(fresh[0])
        log = node.log_tail(200_000)
    db.dispose()
    print(f"job processes: {pools}; jobs: {_jobs(db)}")
    assert _jobs(db) == [JobState.SUCCEEDED] * STUDIES
    assert len(set(pools)) == STUDIES + 1  # the first, and a fresh one after each job
    assert log.count("a fresh process takes the next job") == STUDIES, log[-3000:]
