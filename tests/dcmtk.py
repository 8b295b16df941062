"""DCMTK command-line tools as an independent DICOM peer for tests.

Every tool is run by absolute path: pynetdicom installs console scripts with the same names
(``storescu``, ``storescp``, ``echoscu``) into the virtual environment, and they come first on PATH.
``TCP_NODELAY=1`` is set for DCMTK, which reads it from the environment (small PDUs are not delayed).

Errors::

    DcmtkError (RuntimeError)   storescp did not start or stopped unexpectedly
    subprocess.CalledProcessError   echoscu/storescu failed and ``check=True``
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.dicom_files import dicom_files_under
from tests.ports import free_port
from tests.server_process import ServerProcess

__all__ = ["DCMTK_BIN", "DcmtkError", "StoreSCP", "dcmtk_env", "echoscu", "expand_dicom_paths", "storescu"]

DCMTK_BIN = Path("/usr/bin")
ECHOSCU = DCMTK_BIN / "echoscu"
STORESCU = DCMTK_BIN / "storescu"
STORESCP = DCMTK_BIN / "storescp"

LOOPBACK = "127.0.0.1"
DEFAULT_CALLING_AET = "DCMTKSCU"
DEFAULT_STORESCP_AET = "STORESCP"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_START_TIMEOUT_S = 10.0
_NETWORK_TIMEOUT_S = 10  # DCMTK ACSE/socket timeouts, seconds
_START_ATTEMPTS = 3  # a free port can be taken between free_port() and storescp's bind()


class DcmtkError(RuntimeError):
    """A DCMTK server process did not start, or failed."""


def dcmtk_env() -> dict[str, str]:
    """The environment for DCMTK processes: ours plus ``TCP_NODELAY=1``."""
    return {**os.environ, "TCP_NODELAY": "1"}


def _run(args: Sequence[str], *, check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        env=dcmtk_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def expand_dicom_paths(files: Iterable[Path | str]) -> list[Path]:
    """Files as given; folders replaced by the DICOM Part 10 files under them (recursive, sorted)."""
    paths: list[Path] = []
    for entry in map(Path, files):
        if entry.is_dir():
            paths.extend(dicom_files_under(entry))
        else:
            paths.append(entry)
    return paths


def echoscu(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = DEFAULT_CALLING_AET,
    *,
    check: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """C-ECHO (PS3.4 Annex A, Verification) with ``/usr/bin/echoscu``; returncode 0 means success."""
    args = [
        str(ECHOSCU),
        "-aet", calling_aet,
        "-aec", called_aet,
        "-to", str(_NETWORK_TIMEOUT_S),
        "-ta", str(_NETWORK_TIMEOUT_S),
        host, str(port),
    ]  # fmt: skip
    return _run(args, check=check, timeout=timeout)


def storescu(
    host: str,
    port: int,
    called_aet: str,
    files: Iterable[Path | str],
    calling_aet: str = DEFAULT_CALLING_AET,
    *,
    extra_args: Sequence[str] = (),
    check: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """C-STORE files or folders (PS3.4 Annex B) in one association with ``/usr/bin/storescu``.

    Folders are expanded here to the DICOM Part 10 files under them, recursively and sorted
    (storescu's own ``+sd`` fails on the first non-DICOM file, e.g. a licence). With default options
    a single failed store makes storescu stop and return non-zero.
    """
    paths = [str(p) for p in expand_dicom_paths(files)]
    if not paths:
        raise ValueError(f"no DICOM files in {files!r}")
    args = [
        str(STORESCU),
        "-aet", calling_aet,
        "-aec", called_aet,
        "-to", str(_NETWORK_TIMEOUT_S),
        "-ta", str(_NETWORK_TIMEOUT_S),
        *extra_args,
        host, str(port),
        *paths,
    ]  # fmt: skip
    return _run(args, check=check, timeout=timeout)


class StoreSCP(ServerProcess):
    """``/usr/bin/storescp`` on a free port, writing every received object into ``output_dir``.

    Files are named ``<modality prefix>.<SOPInstanceUID>`` (storescp's default) and written
    bit-preserving (``+B``: the data set exactly as received on the wire). Verification and all
    storage SOP classes are accepted (``-pm``), in any supported transfer syntax (``+xa``).
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        aet: str = DEFAULT_STORESCP_AET,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.aet = aet
        self.host = LOOPBACK
        self.port = 0
        self.start_timeout_s = start_timeout_s
        self.log_path = self.output_dir.parent / f"storescp-{aet}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while storescp is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> StoreSCP:
        """Start storescp and wait until it answers a C-ECHO (retrying if the port was taken)."""
        if self.running:
            raise DcmtkError("storescp is already running")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.port = free_port()
            try:
                self._launch_and_wait()
            except DcmtkError:
                if attempt < _START_ATTEMPTS and "address already in use" in self.log_tail().lower():
                    continue
                raise
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch_and_wait(self) -> None:
        args = [
            str(STORESCP),
            "-aet", self.aet,
            "-od", str(self.output_dir),
            "+xa", "-pm", "+B",
            "-ta", str(_NETWORK_TIMEOUT_S),
            "-dhl",
            "-v",
            str(self.port),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args, env=dcmtk_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise DcmtkError(
                    f"storescp exited with status {self._process.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if echoscu(self.host, self.port, self.aet, timeout=5).returncode == 0:
                return
            time.sleep(0.05)
        self.stop()
        raise DcmtkError(
            f"storescp did not answer C-ECHO within {self.start_timeout_s:g} s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop storescp: SIGTERM, then SIGKILL after ``timeout_s``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def received(self) -> list[Path]:
        """Files written so far, sorted by name (complete once the sender has the C-STORE response)."""
        return sorted(p for p in self.output_dir.iterdir() if p.is_file())




    def __repr__(self) -> str:
        return f"StoreSCP(aet={self.aet!r}, {self.host}:{self.port}, into {self.output_dir})"
