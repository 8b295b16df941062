"""How to make one received instance durable: the flush alternatives, alone, quiet disk and busy.

    .venv/bin/python -m bench.flush [--instances 300] [--size-kib 512] [--reps 3]

A plain loop writes ``--instances`` files of ``--size-kib`` each, as the spool does (a new file in
an incoming folder, renamed into a series folder), plus one 4 KiB page into a WAL-like file per
instance (the database row), and makes each durable before the next, in each of these ways:

    syncfs      rename, page, then one syncfs(2) of the file system (storage.fsync: grouped)
    fdatasync   fdatasync of the file, rename, fsync of the folder, fdatasync of the page (per_file)
    fsync       the same with fsync(2) of the file instead of fdatasync
    threaded    fdatasync of the file on a second thread while the page is written and flushed,
                then rename and fsync of the folder (the flushes overlap)
    none        no flush at all: what the page cache alone allows

once on a quiet disk and once while another process writes to the same file system without pause
(1 MiB buffered writes into a 1 GiB file, as a copy would). Instances per second, each repetition and
the median. ``io_uring`` is not among them: Python has no binding for it in the standard library,
and a flush submitted through it waits for the same device cache flush.
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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PAGE = 4096
WAL_PAGES = 256


class Loop:
    """One way of flushing, over a folder of its own."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.data = os.urandom(size)
        self.page = os.urandom(PAGE)
        self.syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        self.pool = ThreadPoolExecutor(1)

    def run(self, method: str, count: int) -> float:
        incoming, series = self.root / method / "incoming", self.root / method / "series"
        incoming.mkdir(parents=True)
        series.mkdir()
        folder = os.open(series, os.O_RDONLY | os.O_DIRECTORY)
        wal = os.open(self.root / method / "wal", os.O_WRONLY | os.O_CREAT)
        os.pwrite(wal, bytes(PAGE * WAL_PAGES), 0)
        os.fsync(wal)
        os.sync()
        step: Callable[[int, Path, Path, int, int], None] = getattr(self, f"_{method}")
        started = time.perf_counter()
        for number in range(count):
            part, final = incoming / f"{number}.part", series / f"{number}.dcm"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, self.data)
            step(fd, part, final, folder, wal)
        elapsed = time.perf_counter() - started
        os.close(folder)
        os.close(wal)
        shutil.rmtree(self.root / method)
        return count / elapsed

    def _page(self, wal: int) -> None:
        os.pwrite(wal, self.page, 0)

    def _syncfs(self, fd: int, part: Path, final: Path, folder: int, wal: int) -> None:
        os.close(fd)
        os.replace(part, final)
        self._page(wal)
        if self.syncfs(folder) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")

    def _fdatasync(self, fd: int, part: Path, final: Path, folder: int, wal: int) -> None:
        self._per_file(os.fdatasync, fd, part, final, folder, wal)

    def _fsync(self, fd: int, part: Path, final: Path, folder: int, wal: int) -> None:
        self._per_file(os.fsync, fd, part, final, folder, wal)

    def _per_file(
        self, flush: Callable[[int], None], fd: int, part: Path, final: Path, folder: int, wal: int
    ) -> None:
        flush(fd)
        os.close(fd)
        os.replace(part, final)
        os.fsync(folder)
        self._page(wal)
        os.fdatasync(wal)

    def _threaded(self, fd: int, part: Path, final: Path, folder: int, wal: int) -> None:
        flushed = self.pool.submit(os.fdatasync, fd)
        self._page(wal)
        os.fdatasync(wal)
        flushed.result()
        os.close(fd)
        os.replace(part, final)
        os.fsync(folder)

    def _none(self, fd: int, part: Path, final: Path, folder: int, wal: int) -> None:
        os.close(fd)
        os.replace(part, final)
        self._page(wal)


def _writer(root: Path) -> subprocess.Popen[bytes]:
    program = ("import sys\nblock = bytes(1 << 20)\nwhile True:\n"
               "    with open(sys.argv[1], 'wb') as f:\n"
               "        for _ in range(1024):\n            f.write(block)\n")
    return subprocess.Popen([sys.executable, "-c", program, str(root / "unrelated-writer.bin")])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--size-kib", type=int, default=512, help="KiB per instance (default 512)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    methods = ("none", "syncfs", "fdatasync", "fsync", "threaded")
    here = Path(__file__).resolve().parent.parent  # the disk the spool would be on, not a tmpfs
    with tempfile.TemporaryDirectory(prefix="radnode-flush-", dir=here) as tmp:
        root = Path(tmp)
        loop = Loop(root, args.size_kib << 10)
        print(f"{args.instances} instances of {args.size_kib} KiB, {args.reps} repetitions, in {root}; "
              f"load {os.getloadavg()[0]:.2f}")
        for disk in ("quiet", "busy"):
            writer = _writer(root) if disk == "busy" else None
            if writer is not None:
                time.sleep(3)  # dirty pages build up first
            try:
                for method in methods:
                    rates = [loop.run(method, args.instances) for _ in range(args.reps)]
                    print(f"{disk:<5} {method:<10} " + " ".join(f"{rate:8.0f}" for rate in rates)
                          + f"   median {statistics.median(rates):8.0f}/s", flush=True)
            finally:
                if writer is not None:
                    writer.kill()
                    writer.wait()
        print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
