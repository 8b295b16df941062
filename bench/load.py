"""Sustained load: concurrent associations sending 300-slice CT studies to one all-in-one node.

    .venv/bin/python -m bench.load [--duration 600] [--associations 8] [--slices 300] [--keep DIR]

``radnode serve --with-worker`` (SQLite + SQLite broker, the embedded default; route: every CT to
``lung-qct``, no destination) is started fresh. ``--associations`` sender processes (pynetdicom, one
association per study) each send studies of ``--slices`` slices, back to back, until
``--duration`` seconds have passed; every study is the repository's 64-slice chest CT repeated
along z with fresh UIDs (512×512 int16, ≈0.5 MB per instance). Every 10 s the script samples
instances stored, jobs waiting (QUEUED) and running, and the RSS of the listener, the worker and
its pool process. At the end every instance a sender saw acknowledged with Success must be in the
database and on disk ("lost" counts those that are not). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from node.db import Database, Instance, Job, JobState
from tests.node_process import RadnodeProcess

CHEST_CT = Path(__file__).resolve().parent.parent / "tests" / "data" / "ct_chest_lungdx_a0001"
SAMPLE_EVERY_S = 10.0


def _study(templates: list[pydicom.Dataset], slices: int) -> list[pydicom.Dataset]:
    """``slices`` instances cycling through the templates, 1 mm apart along z, fresh UIDs."""
    study_uid, series_uid = generate_uid(), generate_uid()
    study = []
    for index in range(slices):
        ds = copy.deepcopy(templates[index % len(templates)])  # a shallow copy shares elements
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        x, y, _ = (float(v) for v in templates[0].ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, -float(index)]
        study.append(ds)
    return study


def _sender(port: int, slices: int, deadline: float, out: Path) -> None:
    """Send studies until ``deadline``; append each acknowledged SOP Instance UID to ``out``."""
    templates = [pydicom.dcmread(p) for p in sorted(CHEST_CT.glob("*.dcm"))]
    ae = AE(ae_title=f"LOAD{os.getpid() % 10000}")
    ae.add_requested_context(templates[0].SOPClassUID, templates[0].file_meta.TransferSyntaxUID)
    with out.open("a") as acked:
        while time.time() < deadline:
            assoc = ae.associate("127.0.0.1", port, ae_title="RADNODE")
            if not assoc.is_established:
                time.sleep(1)
                continue
            for ds in _study(templates, slices):
                status = assoc.send_c_store(ds)
                if status.get("Status") == 0:
                    acked.write(f"{ds.SOPInstanceUID}\n")
                if not assoc.is_established or time.time() >= deadline:
                    break
            if assoc.is_established:
                assoc.release()
            acked.flush()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _descendants(pid: int) -> list[int]:
    children = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
                and _parent(entry) == pid]
    return [pid] + [d for child in children for d in _descendants(child)]


def _parent(entry: Path) -> int:
    try:
        return int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _memory(pid: int) -> dict[str, float]:
    """RSS (MiB) of the listener, the worker and the worker's pool process(es)."""
    names = ["listener", "worker", "worker-pool"]
    return {f"{names[min(i, 2)]}-{p}": round(_rss_mib(p), 1) for i, p in enumerate(_descendants(pid))}


def _summary(samples: list[dict[str, float]]) -> str:
    """Per role: max RSS over the run, and for the pool how many processes took jobs."""
    roles: dict[str, list[float]] = {}
    pools = set()
    for sample in samples:
        for key, rss in sample.items():
            role, pid = key.rsplit("-", 1)
            roles.setdefault(role, []).append(rss)
            if role == "worker-pool":
                pools.add(pid)
    peaks = ", ".join(f"{role} {max(values):.0f}" for role, values in roles.items())
    return f"max RSS over the run (MiB): {peaks}; job processes used: {len(pools)}"


def _counts(db: Database) -> tuple[int, int, int, int]:
    with db.session() as session:
        instances = session.scalar(select(func.count()).select_from(Instance)) or 0
        states = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    done = sum(n for state, n in states.items() if state not in (JobState.QUEUED, JobState.RUNNING))
    return instances, states.get(JobState.QUEUED, 0), states.get(JobState.RUNNING, 0), done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of sending (default 600)")
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temp folder)")
    parser.add_argument("--max-memory-per-child-mb", type=int, default=None,
                        help="worker.max_memory_per_child_mb for the node (default: radnode's default)")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="radnode-load-"))
    worker = {} if args.max_memory_per_child_mb is None else {
        "max_memory_per_child_mb": args.max_memory_per_child_mb}
    node = RadnodeProcess(workdir / "radnode", destinations={}, quiet_seconds=5,
                          routes=[{"match": {"Modality": "CT"}, "pipelines": ["lung-qct"]}],
                          extra={"worker": worker})
    with node:
        db = Database(f"sqlite:///{node.workdir / 'var' / 'radnode.db'}")
        time.sleep(15)  # the worker has started and imported torch
        memory_start = _memory(node.process.pid)
        print(f"load {os.getloadavg()}; RSS at start (MiB): {memory_start}", flush=True)
        deadline = time.time() + args.duration
        outs = [workdir / f"acked-{i}.txt" for i in range(args.associations)]
        senders = [multiprocessing.Process(target=_sender, args=(node.port, args.slices, deadline, out))
                   for out in outs]
        started = time.time()
        for sender in senders:
            sender.start()
        samples, memory = [], []
        while any(sender.is_alive() for sender in senders):
            time.sleep(SAMPLE_EVERY_S)
            instances, queued, running, done = _counts(db)
            samples.append((time.time() - started, instances, queued))
            memory.append(_memory(node.process.pid))
            print(f"t={samples[-1][0]:6.0f} s instances={instances} jobs queued={queued} running={running} "
                  f"done={done} load={os.getloadavg()[0]:.1f} RSS={memory[-1]}", flush=True)
        sending_s = time.time() - started
        for sender in senders:
            sender.join()
        memory_end = _memory(node.process.pid)
        acked = {uid for out in outs for uid in out.read_text().split()}
        with db.session() as session:
            rows = dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).all())
        lost = [uid for uid in acked if uid not in rows or not Path(rows[uid]).is_file()]
        instances, queued, running, done = _counts(db)
        db.dispose()
    print(f"sent for {sending_s:.0f} s by {args.associations} associations: acknowledged {len(acked)}, "
          f"stored {len(rows)}, lost {len(lost)}; {len(acked) / sending_s:.1f} instances/s")
    print(f"jobs at the end: queued {queued}, running {running}, done {done}; "
          f"max queued during the run {max((s[2] for s in samples), default=0)}")
    print(f"RSS at start (MiB): {memory_start}\nRSS at end (MiB):   {memory_end}")
    print(_summary(memory))
    print(f"load average at the end: {os.getloadavg()}")
    if args.keep is None:
        shutil.rmtree(workdir)  # a long run leaves gigabytes of spool
    return 0 if not lost else 1


if __name__ == "__main__":
    sys.exit(main())
