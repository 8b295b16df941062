"""radnode itself as a real process for tests: ``radnode serve --with-worker`` on a free port.

The test writes a YAML config (the same keys an admin writes), the process runs from the
installed entry point's module, and its log stays in the working folder for the failure report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import yaml

from tests.dcmtk import echoscu
from tests.orthanc import wait_for
from tests.ports import free_port
from tests.server_process import ServerProcess

if TYPE_CHECKING:
    from tests.orthanc import Orthanc

__all__ = ["RadnodeProcess", "radnode_cli"]

START_TIMEOUT_S = 60.0


def radnode_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``radnode`` command (this interpreter's) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "node.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class RadnodeProcess(ServerProcess):
    """One ``radnode serve`` process with its own config, spool, databases and log."""

    def __init__(
        self,
        workdir: Path,
        *,
        destinations: dict[str, dict[str, Any]],
        routes: list[dict[str, Any]],
        with_worker: bool = True,
        database_url: str = "sqlite:///./var/radnode.db",
        broker_url: str = "sqla+sqlite:///./var/broker.db",
        quiet_seconds: float = 2,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.ae_title = "RADNODE"
        self.with_worker = with_worker
        self.config_path = workdir / "radnode.yaml"
        self.log_path = workdir / "radnode.log"
        config: dict[str, Any] = {
            "node": {"ae_title": self.ae_title, "port": self.port, "bind_address": "127.0.0.1"},
            "storage": {"path": "./var/spool", "min_free_mb": 0},
            "database": {"url": database_url},
            "broker": {"url": broker_url},
            "completion": {"quiet_seconds": quiet_seconds, "poll_interval_seconds": 0.5},
            "destinations": destinations,
            "routes": routes,
            "delivery": {"first_backoff_seconds": 1, "max_backoff_seconds": 5},
        }
        for section, values in (extra or {}).items():
            config.setdefault(section, {}).update(values)
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def beside(cls, pacs: Orthanc, workdir: Path, *, routes: list[dict[str, Any]],
               extra: dict[str, Any] | None = None) -> RadnodeProcess:
        """A node sending its results to ``pacs`` (destination ``pacs``), known there as ``radnode``."""
        node = cls(workdir, destinations={"pacs": {"ae_title": pacs.aet, "host": "127.0.0.1",
                                                   "port": pacs.dicom_port}},
                   routes=routes, extra=extra)
        pacs.add_modality("radnode", node.ae_title, "127.0.0.1", node.port)
        return node

    def start(self) -> RadnodeProcess:
        command = ["serve", "--config", str(self.config_path)]
        if self.with_worker:
            command.append("--with-worker")
        return self._launch(
            command,
            lambda: echoscu("127.0.0.1", self.port, self.ae_title).returncode == 0,
            f"radnode to answer C-ECHO on port {self.port}",
        )

    def _launch(
        self, args: list[str], ready: Callable[[], bool], what: str, env: dict[str, str] | None = None
    ) -> Self:
        """Start ``radnode ARGS`` in the working folder and wait until ``ready()`` (or its exit)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.ops.cli", *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env=env or dict(os.environ),
        )
        log.close()
        try:
            wait_for(
                lambda: self.process.poll() is not None or ready(),
                timeout=START_TIMEOUT_S,
                interval=0.5,
                what=what,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- radnode log ---\n{self.log_tail()}") from None
        if self.process.poll() is not None:
            raise AssertionError(f"radnode exited at start:\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a radnode command against this node's config."""
        return radnode_cli(*args, "--config", str(self.config_path))





def child_pids(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found
