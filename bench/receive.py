"""Receive throughput: DCMTK storescp vs Orthanc vs radnode, DCMTK storescu as the sender.

    .venv/bin/python -m bench.receive [--runs 3] [--cases ct mr] [--fsync grouped|per_file] [--keep DIR]

Builds its own series in a temporary folder (derived from the repository's chest CT and the shared
64×64 GE EPI MR, every instance with new UIDs):

    ct   300 CT slices 512×512 int16 (≈150 MB), one study, one series
    mr   2,000 MR instances 64×64, 4 studies × 500

Each case is sent with one ``/usr/bin/storescu`` association (``TCP_NODELAY=1``) to a fresh
storescp (writing to disk, no fsync), a fresh Orthanc (its default ``SyncStorageArea: true``)
and a fresh ``radnode serve`` (no worker; fsync and commit before Success, as always), and then
with 4 storescu processes in parallel (one per study; the CT is split into 4 studies of 75
slices for this) to radnode. The time is the sender's wall time, from launch to exit. Each
receiver's CPU time (user + system, all threads, from /proc) per instance is printed too: on a
shared, loaded machine it is the figure that the load disturbs least. After
each radnode run every instance must be in the database exactly once, at
``<spool>/<study>/<series>/<sop>.dcm``, with the data set that was sent.

Two references frame radnode's rate in the same run:

- the **durable limit**: the same files' bytes, already in memory, written one by one by a plain
  Python loop and flushed as radnode's ``storage.fsync`` mode flushes them (``per_file``: fdatasync
  of the file, rename into its series folder, fsync of the folder; ``grouped``, and ``auto`` on a
  quiet disk: rename, then one ``syncfs``), with no network, parsing or database: no receiver that
  acknowledges only what is on disk, flushing this way, can beat it;
- a **busy disk**: the three receivers again while an unrelated process writes to the same file
  system without pause (1 MiB buffered writes, rewriting a 1 GiB file, as a copy or backup would), and
  each receiver's loss against its own quiet rate. Every quiet run comes first: after a busy run the
  disk stays slow for a while (write-back, discards of the freed blocks).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from node.config import FsyncMode, StorageConfig
from node.db import Database, Instance, Series, Study
from tests.dcmtk import STORESCU, StoreSCP, dcmtk_env
from tests.dicom_files import dicom_files_under
from tests.node_process import RadnodeProcess
from tests.orthanc import Orthanc

ROOT = Path(__file__).resolve().parent.parent
CT_SOURCE = ROOT / "tests" / "data" / "ct_chest_lungdx_a0001"
MR_SOURCE = ROOT.parent / "shared" / "data" / "mr_epi_ge_nih"
CT_SLICES = 300
MR_INSTANCES = 2000
PARALLEL_STUDIES = 4
SEND_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Case:
    """A generated data set: ``studies`` is one list of files per study."""

    name: str
    studies: list[list[Path]]
    megabytes: float

    @property
    def files(self) -> list[Path]:
        return [path for study in self.studies for path in study]


def _derive(
    sources: list[Path], count: int, studies: int, out: Path, *, one_series: bool
) -> list[list[Path]]:
    """``count`` instances cycled from ``sources`` with new UIDs and positions, in ``studies`` studies."""
    per_study = count // studies
    result: list[list[Path]] = []
    series_uid = generate_uid()
    study_uid = generate_uid()
    for study in range(studies):
        if not one_series:
            study_uid, series_uid = generate_uid(), generate_uid()
        folder = out / f"study{study}"
        folder.mkdir(parents=True)
        files = []
        for index in range(per_study):
            number = study * per_study + index if one_series else index
            ds = pydicom.dcmread(sources[number % len(sources)])
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = number + 1
            if "ImagePositionPatient" in ds:
                x, y, _ = ds.ImagePositionPatient
                ds.ImagePositionPatient = [x, y, -float(number)]
            # storescu proposes Explicit VR LE first: files in it go on the wire unconverted
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = folder / f"{index:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        result.append(files)
    return result


def build_cases(workdir: Path) -> list[Case]:
    ct_sources = dicom_files_under(CT_SOURCE)
    mr_sources = dicom_files_under(MR_SOURCE)
    if not mr_sources:
        sys.exit(f"bench: the shared MR data is missing at {MR_SOURCE}")
    cases = [
        ("ct", _derive(ct_sources, CT_SLICES, 1, workdir / "ct", one_series=True)),
        ("ct-4", _derive(ct_sources, CT_SLICES, PARALLEL_STUDIES, workdir / "ct4", one_series=False)),
        ("mr", _derive(mr_sources, MR_INSTANCES, PARALLEL_STUDIES, workdir / "mr", one_series=False)),
    ]
    return [
        Case(name, studies, sum(p.stat().st_size for s in studies for p in s) / 1e6)
        for name, studies in cases
    ]


def _storescu(port: int, aet: str, files: list[Path]) -> subprocess.Popen[bytes]:
    args = [str(STORESCU), "-aet", "BENCHSCU", "-aec", aet, "127.0.0.1", str(port), *map(str, files)]
    return subprocess.Popen(args, env=dcmtk_env(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def send(port: int, aet: str, batches: list[list[Path]]) -> float:
    """Send each batch on its own storescu association, all at once; return the wall time."""
    started = time.perf_counter()
    processes = [_storescu(port, aet, batch) for batch in batches]
    for process in processes:
        _, stderr = process.communicate(timeout=SEND_TIMEOUT_S)
        if process.returncode != 0:
            raise RuntimeError(f"storescu failed ({process.returncode}): {stderr.decode()[-2000:]}")
    return time.perf_counter() - started


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def storescp(workdir: Path) -> Iterator[tuple[int, str, int]]:
    with StoreSCP(workdir / "received") as scp:
        yield scp.port, scp.aet, scp._process.pid  # type: ignore[union-attr]


class DurableOrthanc(Orthanc):
    """Orthanc with its own default ``SyncStorageArea: true`` (the test harness turns it off)."""

    def config(self) -> dict[str, Any]:
        return {**super().config(), "SyncStorageArea": True}


@contextmanager
def orthanc(workdir: Path) -> Iterator[tuple[int, str, int]]:
    pacs = DurableOrthanc(workdir)
    with pacs:
        yield pacs.dicom_port, pacs.aet, pacs._process.pid  # type: ignore[union-attr]


def radnode(fsync: str) -> Any:
    @contextmanager
    def receiver(workdir: Path) -> Iterator[tuple[int, str, int]]:
        node = RadnodeProcess(workdir, destinations={}, routes=[], with_worker=False,
                              extra={"storage": {"fsync": fsync}})
        with node:
            yield node.port, node.ae_title, node.process.pid  # type: ignore[union-attr]
    return receiver


def durable_limit(case: Case, workdir: Path, fsync: str) -> float:
    """Instances/s of a plain loop that writes the case's bytes and flushes each as ``fsync`` says."""
    contents = [(path.read_bytes(), study) for study, paths in enumerate(case.studies) for path in paths]
    incoming, spool = workdir / "incoming", workdir / "spool"
    incoming.mkdir(parents=True)
    syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    root = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    os.sync()
    started = time.perf_counter()
    for number, (data, study) in enumerate(contents):
        folder = spool / str(study)
        if not folder.is_dir():
            folder.mkdir(parents=True)
        part = incoming / f"{number}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, data)
        if fsync == "per_file":
            os.fdatasync(fd)
        os.close(fd)
        os.replace(part, folder / f"{number}.dcm")
        if fsync == "per_file":
            directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(directory)
            os.close(directory)
        elif syncfs(root) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")
    elapsed = time.perf_counter() - started
    os.close(root)
    shutil.rmtree(workdir)
    return len(contents) / elapsed


@contextmanager
def unrelated_writer(workdir: Path) -> Iterator[None]:
    """Another program writing to the same file system as fast as it can, never flushing."""
    target = workdir / "unrelated-writer.bin"
    program = (
        "import sys\nblock = bytes(1 << 20)\n"
        "while True:\n"
        "    with open(sys.argv[1], 'wb') as f:\n"
        "        for _ in range(1024):\n"
        "            f.write(block)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", program, str(target)])
    try:
        time.sleep(3)  # dirty pages build up to the kernel's write-back level first
        yield
    finally:
        writer.kill()
        writer.wait()
        target.unlink(missing_ok=True)


def check_radnode(workdir: Path, case: Case) -> None:
    """Every sent instance is stored exactly once, in its study/series folder, unchanged."""
    db = Database(f"sqlite:///{workdir / 'var' / 'radnode.db'}")
    spool = workdir / "var" / "spool"
    with db.session() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.path, Series.series_instance_uid,
                   Study.study_instance_uid)
            .select_from(Instance).join(Series, Instance.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
        ).all()
    db.dispose()
    stored = {sop: (Path(path), series, study) for sop, path, series, study in rows}
    if len(rows) != len(case.files) or len(stored) != len(rows):
        raise AssertionError(f"{case.name}: {len(rows)} rows, {len(stored)} distinct, sent {len(case.files)}")
    for sent in case.files:
        ds = pydicom.dcmread(sent, stop_before_pixels=True)
        path, series, study = stored[ds.SOPInstanceUID]
        expected = spool / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        if (path, series, study) != (expected, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            raise AssertionError(f"{case.name}: {ds.SOPInstanceUID} misfiled at {path}")
        if pydicom.dcmread(path) != pydicom.dcmread(sent):  # storescu re-encodes sequence lengths
            raise AssertionError(f"{case.name}: {path} differs from the file sent")
    files_on_disk = sum(1 for p in spool.rglob("*.dcm"))
    if files_on_disk != len(case.files):
        raise AssertionError(f"{case.name}: {files_on_disk} files in the spool, sent {len(case.files)}")


def run_once(
    case: Case, workdir: Path, fsync: str, *, busy: bool = False
) -> tuple[dict[str, float], dict[str, float]]:
    """One send of ``case`` to each receiver: instances/s and CPU ms/instance per receiver."""
    rates: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    for name, receiver in (("storescp", storescp), ("orthanc", orthanc), ("radnode", radnode(fsync))):
        folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
        with receiver(folder) as (port, aet, pid):
            # the previous receiver's files (storescp never flushes) must not be flushed on this
            # one's time: radnode's syncfs writes out everything dirty on the file system
            os.sync()
            with unrelated_writer(workdir) if busy else _nothing():
                cpu_before = _cpu_seconds(pid)
                rates[name] = len(case.files) / send(port, aet, [case.files])
                cpu_ms[name] = (_cpu_seconds(pid) - cpu_before) * 1000 / len(case.files)
        if name == "radnode":
            check_radnode(folder, case)
    return rates, cpu_ms


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def run_parallel(case: Case, workdir: Path, fsync: str) -> float:
    folder = Path(tempfile.mkdtemp(prefix="radnode-par-", dir=workdir))
    with radnode(fsync)(folder) as (port, aet, _):
        os.sync()  # as in run_once
        rate = len(case.files) / send(port, aet, case.studies)
    check_radnode(folder, case)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions per case (default 3)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--cases", nargs="+", choices=("ct", "mr"), default=["ct", "mr"])
    parser.add_argument("--fsync", choices=get_args(FsyncMode), default=StorageConfig.model_fields[
        "fsync"].default, help="radnode's storage.fsync (default: radnode's own default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="radnode-bench-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"building cases in {workdir} …", flush=True)
        cases = {case.name: case for case in build_cases(workdir / "data")}
        print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; "
              f"radnode storage.fsync: {args.fsync}", flush=True)
        print(f"{'case':<5} {'run':>3} {'disk':<5} {'storescp/s':>10} {'orthanc/s':>10} {'radnode/s':>10} "
              f"{'rn/orth':>8} {'rn/scp':>7} {'limit/s':>8} {'rn/limit':>8} {'radnode×4/s':>11}"
              f"   CPU ms/instance: scp orthanc radnode")
        # every quiet run first: a busy run leaves the disk busy for a while after its writer stops
        runs = {name: _quiet_runs(name, cases[name], cases["ct-4" if name == "ct" else "mr"], workdir,
                                  args) for name in args.cases}
        for name in args.cases:
            _busy_runs(name, cases[name], workdir, args, runs[name])
        for name in args.cases:
            _summary(name, cases[name], runs[name])
        print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")


@dataclass
class Runs:
    """One case's figures, run by run."""

    quiet: list[dict[str, float]]
    busy: list[dict[str, float]]
    limit: list[float]


def _quiet_runs(name: str, case: Case, parallel: Case, workdir: Path, args: argparse.Namespace) -> Runs:
    runs = Runs([], [], [])
    for run in range(1, args.runs + 1):
        rates, cpu_ms = run_once(case, workdir, args.fsync)
        limit = durable_limit(case, Path(tempfile.mkdtemp(prefix="limit-", dir=workdir)), args.fsync)
        par = run_parallel(parallel, workdir, args.fsync)
        runs.quiet.append(rates)
        runs.limit.append(limit)
        _print_run(name, run, "quiet", rates, cpu_ms,
                   f"{limit:>8.1f} {rates['radnode'] / limit:>8.2f} {par:>11.1f}")
    return runs


def _busy_runs(name: str, case: Case, workdir: Path, args: argparse.Namespace, runs: Runs) -> None:
    for run in range(1, args.runs + 1):
        rates, cpu_ms = run_once(case, workdir, args.fsync, busy=True)
        runs.busy.append(rates)
        _print_run(name, run, "busy", rates, cpu_ms, f"{'':>8} {'':>8} {'':>11}")


def _print_run(
    name: str, run: int, disk: str, got: dict[str, float], cpu: dict[str, float], extra: str
) -> None:
    print(f"{name:<5} {run:>3} {disk:<5} {got['storescp']:>10.1f} {got['orthanc']:>10.1f} "
          f"{got['radnode']:>10.1f} {got['radnode'] / got['orthanc']:>8.2f} "
          f"{got['radnode'] / got['storescp']:>7.2f} {extra}   {cpu['storescp']:.2f} "
          f"{cpu['orthanc']:.2f} {cpu['radnode']:.2f}  load {os.getloadavg()[0]:.1f}", flush=True)


def _summary(name: str, case: Case, runs: Runs) -> None:
    median = statistics.median

    def rate(kind: list[dict[str, float]], receiver: str) -> float:
        return median(run[receiver] for run in kind)

    quiet_rn = [run["radnode"] for run in runs.quiet]
    print(f"{name:<5} medians: radnode {rate(runs.quiet, 'radnode'):.1f}/s; rn/orth "
          f"{median(r / run['orthanc'] for r, run in zip(quiet_rn, runs.quiet, strict=True)):.2f}, rn/scp "
          f"{median(r / run['storescp'] for r, run in zip(quiet_rn, runs.quiet, strict=True)):.2f}, rn/limit "
          f"{median(r / limit for r, limit in zip(quiet_rn, runs.limit, strict=True)):.2f}; "
          "busy-disk loss (median busy rate against median quiet rate) " + ", ".join(
              f"{receiver} {1 - rate(runs.busy, receiver) / rate(runs.quiet, receiver):.0%}"
              for receiver in ("storescp", "orthanc", "radnode"))
          + f"  ({case.megabytes:.0f} MB, {len(case.files)} instances)", flush=True)


if __name__ == "__main__":
    main()
