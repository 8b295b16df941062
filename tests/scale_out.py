"""Scale-out on one machine: one listener and several `radnode worker` "hosts", for tests and bench.

Each worker is a separate process with its own working folder, its own copy of the YAML file, its
own CUDA_VISIBLE_DEVICES and its own Celery hostname (recorded in Job.worker). The spool and the
results folder are the listener's, by absolute path: the shared mount of the multi-host layout
(docs/multi-host.md). Broker and database are whatever the listener's config names.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pydicom
import redis
import yaml
from pydicom.uid import generate_uid

from tests.node_process import RadnodeProcess

__all__ = ["WorkerProcess", "claimed_redis_db", "make_studies"]

# Several engineers run the whole suite at once on one machine: a Redis DB used by two runs at once
# loses messages (one run flushes it) and mixes job ids of two databases. Each run claims a DB here.
REDIS = "redis://127.0.0.1:6379/{db}"
REDIS_CLAIMS_DB = 15
CLAIM_TTL_SECONDS = 3600
CLAIM_WAIT_SECONDS = 900


@contextmanager
def claimed_redis_db(candidates: tuple[int, ...]) -> Iterator[str]:
    """The URL of a flushed Redis DB among ``candidates`` that no other run on this machine holds.

    Claims are keys in DB 15 (SET NX with an expiry, so a killed run frees its claim in an hour);
    waits while every candidate is taken. Raises redis.ConnectionError when Redis is not running.
    """
    with closing(redis.Redis.from_url(REDIS.format(db=REDIS_CLAIMS_DB), socket_connect_timeout=5)) as claims:
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            for db in candidates:
                key = f"radnode-test-claim:{db}"
                if claims.set(key, os.getpid(), nx=True, ex=CLAIM_TTL_SECONDS):
                    url = REDIS.format(db=db)
                    with closing(redis.Redis.from_url(url)) as client:
                        client.flushdb()
                    try:
                        yield url
                    finally:
                        claims.delete(key)
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis DBs {candidates} stayed claimed for {CLAIM_WAIT_SECONDS} s")
            time.sleep(1)


def make_studies(source: Path, dest: Path, count: int, slices: int) -> list[Path]:
    """``count`` copies of the CT series in ``source`` (its middle ``slices`` slices), each with new
    Study/Series/SOP Instance UIDs; returns one folder per study."""
    files = sorted(source.glob("*.dcm"))
    datasets = sorted(
        (pydicom.dcmread(path) for path in files), key=lambda ds: float(ds.ImagePositionPatient[2])
    )
    start = (len(datasets) - slices) // 2
    chosen = datasets[start:start + slices]
    folders = []
    for index in range(count):
        study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
        folder = dest / f"study{index}"
        folder.mkdir(parents=True)
        for number, ds in enumerate(chosen, start=1):
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = number
            ds.save_as(folder / f"{number:04d}.dcm", enforce_file_format=True)
        folders.append(folder)
    return folders


class WorkerProcess(RadnodeProcess):
    """One ``radnode worker --cpu`` as if on its own host (stopped and queried as a RadnodeProcess)."""

    def __init__(  # its own config from the listener's, so RadnodeProcess.__init__ is not called
        self, workdir: Path, listener_config: Path, *, hostname: str, cuda_visible_devices: str
    ) -> None:
        self.workdir = workdir
        self.hostname = hostname
        self.cuda_visible_devices = cuda_visible_devices
        self.config_path = workdir / "radnode.yaml"
        self.log_path = workdir / "worker.log"
        config = yaml.safe_load(listener_config.read_text())
        shared = listener_config.parent
        config["storage"]["path"] = str((shared / config["storage"]["path"]).resolve())
        config["storage"]["results_path"] = str((shared / "var" / "results").resolve())
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        return self._launch(
            ["worker", "--config", str(self.config_path), "--cpu", "--hostname", self.hostname],
            lambda: f"{self.hostname} ready." in self.log_tail(),
            f"worker {self.hostname} to be ready",
            env={**os.environ, "CUDA_VISIBLE_DEVICES": self.cuda_visible_devices},
        )
