"""A real Orthanc PACS for tests: the Debian ``orthanc`` package, started on free loopback ports.

``Orthanc`` writes a JSON configuration into a working folder, starts ``/usr/sbin/Orthanc`` on it
and talks to its REST API with the standard library only (``urllib``). Orthanc keeps its index,
its storage and its log (``orthanc.log``) in that folder, so a failing test leaves evidence behind.

    with Orthanc(tmp_path, modalities={"radnode": ("RADNODE", "127.0.0.1", port)}) as pacs:
        ids = pacs.upload_folder(ct_dir)
        pacs.send_study("radnode", study_uid)
        wait_for(lambda: pacs.series_of_study(study_id), until=lambda s: len(s) == 2)

Errors::

    OrthancError (RuntimeError)    Orthanc did not start, or a REST call failed (status + body)
    AssertionError                 wait_for() timed out (with what the probe last returned)
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.dicom_files import dicom_files_under
from tests.ports import free_port
from tests.server_process import ServerProcess

__all__ = [
    "DICOMWEB_PLUGIN",
    "ORTHANC_BIN",
    "Modality",
    "Orthanc",
    "OrthancError",
    "reap_stopped",
    "wait_for",
]

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
#: Debian package orthanc-dicomweb: QIDO-RS / WADO-RS / STOW-RS under ``/dicom-web/``.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
LOOPBACK = "127.0.0.1"

DEFAULT_AET = "ORTHANC"
DEFAULT_START_TIMEOUT_S = 30.0
DEFAULT_STOP_TIMEOUT_S = 10.0
DEFAULT_HTTP_TIMEOUT_S = 30.0
DEFAULT_STORE_TIMEOUT_S = 60.0
DEFAULT_STABLE_AGE_S = 2
_KILL_WAIT_S = 5.0
_START_ATTEMPTS = 3  # a free port can be taken between free_port() and Orthanc's bind()

T = TypeVar("T")


_STOPPING: list[subprocess.Popen[bytes]] = []  # sent SIGTERM by stop(wait=False), not yet reaped


def _finish_stopping(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_KILL_WAIT_S)


def reap_stopped(timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
    """Wait for every Orthanc stopped with ``wait=False`` to exit; SIGKILL those alive after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while _STOPPING:
        process = _STOPPING.pop()
        _finish_stopping(process, max(0.0, deadline - time.monotonic()))


class OrthancError(RuntimeError):
    """Orthanc failed to start, or answered a REST call with an error."""


@dataclass(frozen=True)
class Modality:
    """A DICOM peer known to Orthanc ("DicomModalities" entry): AE title, host, port."""

    aet: str
    host: str
    port: int

    def to_config(self) -> dict[str, Any]:
        """The object form Orthanc accepts in its configuration and in ``PUT /modalities/{name}``."""
        return {"AET": self.aet, "Host": self.host, "Port": self.port}


ModalitySpec = Modality | tuple[str, str, int]


def _as_modality(spec: ModalitySpec) -> Modality:
    return spec if isinstance(spec, Modality) else Modality(*spec)


def wait_for(
    probe: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.2,
    *,
    until: Callable[[T], bool] = bool,
    what: str = "condition",
) -> T:
    """Call ``probe`` until ``until(result)`` holds and return that result.

    On timeout, raise ``AssertionError`` naming ``what`` and showing the last result seen.
    Exceptions raised by ``probe`` propagate: a broken probe is not a slow condition.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if until(last):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last saw: {last!r}")
        time.sleep(interval)


class _Results(dict[str, list[bytes]]):
    """Stored files by modality; shown as counts, so a timed-out wait does not print megabytes."""

    def __repr__(self) -> str:
        return repr({modality: f"{len(files)} file(s)" for modality, files in self.items()})


class Orthanc(ServerProcess):
    """One Orthanc process with its own configuration, storage and log under ``workdir``.

    ``modalities`` maps Orthanc's modality name to ``(AET, host, port)``; more can be added while it
    runs with ``add_modality``. C-STORE is accepted from any calling AE (``DicomAlwaysAllowStore``);
    the called AE must be ``aet`` (``DicomCheckCalledAet``), so a misaddressed sender fails loudly.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = DEFAULT_AET,
        modalities: Mapping[str, ModalitySpec] | None = None,
        stable_age_s: int = DEFAULT_STABLE_AGE_S,
        overwrite_instances: bool = True,
        start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
        verbose: bool = False,
        plugins: Iterable[Path] = (),
    ) -> None:
        if not 1 <= len(aet) <= 16:
            raise ValueError(f"AE title must be 1-16 characters (PS3.5 6.2, AE VR), got {aet!r}")
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities: dict[str, Modality] = {
            name: _as_modality(spec) for name, spec in (modalities or {}).items()
        }
        self.stable_age_s = stable_age_s
        self.overwrite_instances = overwrite_instances
        self.start_timeout_s = start_timeout_s
        self.verbose = verbose
        self.plugins = [str(path) for path in plugins]  # e.g. DICOMWEB_PLUGIN
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self.storage_dir = self.workdir / "storage"
        self.dicom_port = 0
        self.http_port = 0
        self.host = LOOPBACK
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        # Loopback only: never route through an http_proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def running(self) -> bool:
        """True while the Orthanc process is alive."""
        return self._process is not None and self._process.poll() is None

    def config(self) -> dict[str, Any]:
        """The configuration written to ``orthanc.json`` (Orthanc 1.10 option names)."""
        return {
            "Name": f"radnode-test-{self.aet}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "Plugins": self.plugins,  # only those asked for (Debian's default loads them all)
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},  # read by the DICOMweb plugin only
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            # Orthanc 1.10 has no HTTP bind address option: it listens on all interfaces, and
            # RemoteAccessAllowed=false makes it refuse every client that is not on loopback.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,  # accept C-STORE from AEs not in DicomModalities
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {name: m.to_config() for name, m in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomScuTimeout": 30,
            "OverwriteInstances": self.overwrite_instances,
            "StableAge": self.stable_age_s,
            "SaveJobs": False,
            "DeidentifyLogs": False,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "SyncStorageArea": False,  # test data: speed over durability
        }

    def start(self) -> Orthanc:
        """Write the configuration, start Orthanc and wait until its REST API answers."""
        if self.running:
            raise OrthancError("Orthanc is already running")
        if not ORTHANC_BIN.exists():
            raise OrthancError(f"{ORTHANC_BIN} not found: apt-get install orthanc")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        for attempt in range(1, _START_ATTEMPTS + 1):
            self.dicom_port, self.http_port = free_port(), free_port()
            self.config_path.write_text(json.dumps(self.config(), indent=2))
            started = time.monotonic()
            try:
                self._launch_and_wait()
            except OrthancError:
                if attempt < _START_ATTEMPTS and self._port_taken():
                    continue
                raise
            self.startup_s = time.monotonic() - started
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch_and_wait(self) -> None:
        args = [str(ORTHANC_BIN), str(self.config_path)]
        if self.verbose:
            args.insert(1, "--verbose")
        with self.log_path.open("ab") as log:
            log.write(f"\n==== {' '.join(args)} (DICOM {self.dicom_port}, HTTP {self.http_port})\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                args,
                cwd=self.workdir,
                # Orthanc's DICOM layer is DCMTK, which reads TCP_NODELAY from the environment;
                # without it each C-STORE response waits ~40 ms on Nagle + delayed ACK.
                env={**os.environ, "TCP_NODELAY": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with status {self._process.returncode} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with self._opener.open(f"{self.url}/system", timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        self.stop()
        raise OrthancError(
            f"Orthanc's REST API did not answer within {self.start_timeout_s:g} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def _port_taken(self) -> bool:
        tail = self.log_tail().lower()
        return "address already in use" in tail or "cannot bind" in tail or "cannot listen" in tail

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S, *, wait: bool = True) -> None:
        """Stop Orthanc: SIGTERM (a clean shutdown), then SIGKILL after ``timeout_s``.

        Orthanc 1.10 takes about 3.5 s to shut down cleanly (its HTTP and DICOM servers poll for
        the stop flag). With ``wait=False`` this returns at once and ``reap_stopped()`` (also run
        at interpreter exit) finishes the job; the ports are never reused either way.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        if wait:
            _finish_stopping(process, timeout_s)
            return
        if not _STOPPING:
            atexit.register(reap_stopped)
        _STOPPING.append(process)




    # -- REST ----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | Mapping[str, Any] | list[Any] | None = None,
        *,
        content_type: str = "application/dicom",
        timeout: float = DEFAULT_HTTP_TIMEOUT_S,
    ) -> bytes:
        """Call the REST API and return the raw response body; raise ``OrthancError`` on HTTP errors.

        ``bytes`` bodies are sent as ``content_type``; mappings and lists as JSON.
        """
        headers = {}
        data: bytes | None
        if body is None or isinstance(body, bytes):
            data = body
            if data is not None:
                headers["Content-Type"] = content_type
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=timeout) as response:
                payload: bytes = response.read()
                return payload
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode(errors="replace")
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            state = "running" if self.running else "NOT running"
            raise OrthancError(
                f"{method} {path} failed: {exc} (Orthanc is {state}); log tail:\n{self.log_tail(1500)}"
            ) from exc

    def get_json(self, path: str) -> Any:
        """``GET path`` and decode the JSON answer."""
        return json.loads(self.request("GET", path))

    def post_json(
        self, path: str, body: Mapping[str, Any] | list[Any], *, timeout: float = DEFAULT_HTTP_TIMEOUT_S
    ) -> Any:
        """``POST`` a JSON body to ``path`` and decode the JSON answer."""
        return json.loads(self.request("POST", path, body, timeout=timeout))

    def system(self) -> dict[str, Any]:
        """``GET /system``: version, AE title, ports."""
        result: dict[str, Any] = self.get_json("/system")
        return result

    def upload(self, path: Path) -> str:
        """Store one DICOM file (``POST /instances``) and return its Orthanc instance id."""
        answer = json.loads(self.request("POST", "/instances", Path(path).read_bytes()))
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"upload of {path} answered {answer}")
        instance_id: str = answer["ID"]
        return instance_id

    def upload_folder(self, folder: Path) -> list[str]:
        """Upload every DICOM Part 10 file under ``folder`` (recursively, sorted); return instance ids.

        Non-DICOM files (licences, READMEs) are skipped; an empty result is an error.
        """
        files = dicom_files_under(folder)
        if not files:
            raise OrthancError(f"no DICOM Part 10 files under {folder}")
        return [self.upload(p) for p in files]

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register (or replace) a DICOM peer while Orthanc runs (``PUT /modalities/{name}``)."""
        modality = Modality(aet, host, port)
        self.request("PUT", f"/modalities/{name}", modality.to_config())
        self.modalities[name] = modality

    def echo(self, modality_name: str, timeout: int = 10) -> None:
        """C-ECHO from Orthanc to a registered modality; raise ``OrthancError`` if it fails."""
        self.request(
            "POST", f"/modalities/{modality_name}/echo", {"Timeout": int(timeout)}, timeout=timeout + 5
        )

    def send_to_modality(
        self, modality_name: str, resource_ids: Iterable[str], timeout: float = DEFAULT_STORE_TIMEOUT_S
    ) -> dict[str, Any]:
        """C-STORE resources (patients/studies/series/instances) to a modality, synchronously.

        Returns Orthanc's job summary (``InstancesCount``, ``FailedInstancesCount``…); raises
        ``OrthancError`` when any instance was not stored.
        """
        ids = list(resource_ids)
        body = {"Resources": ids, "Synchronous": True, "Timeout": int(timeout)}
        answer: dict[str, Any] = self.post_json(
            f"/modalities/{modality_name}/store", body, timeout=timeout + 10
        )
        if answer.get("FailedInstancesCount", 0):
            raise OrthancError(f"C-STORE to {modality_name} failed for some instances: {answer}")
        return answer

    def send_study(self, modality_name: str, study_instance_uid: str) -> str:
        """C-STORE the stored study ``study_instance_uid`` to a modality; return its Orthanc id."""
        study_id = self.find_study(study_instance_uid)
        assert study_id is not None, f"study {study_instance_uid} is not in Orthanc"
        self.send_to_modality(modality_name, [study_id])
        return study_id

    def study_ids(self) -> list[str]:
        """Orthanc ids of every stored study (``GET /studies``)."""
        result: list[str] = self.get_json("/studies")
        return result

    def series_of_study(self, study_id: str) -> list[dict[str, Any]]:
        """Series of a study: ``ID``, ``MainDicomTags`` (Modality, SeriesInstanceUID…), ``Instances``."""
        result: list[dict[str, Any]] = self.get_json(f"/studies/{study_id}/series")
        return result

    def instances_of_series(self, series_id: str) -> list[dict[str, Any]]:
        """Instances of a series, each with ``ID`` and ``MainDicomTags`` (SOPInstanceUID, InstanceNumber…)."""
        result: list[dict[str, Any]] = self.get_json(f"/series/{series_id}/instances")
        return result

    def download_instance(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance, byte for byte (``GET /instances/{id}/file``)."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def result_files(self, study_id: str,
                     modalities: tuple[str, ...] = ("SEG", "SR")) -> dict[str, list[bytes]]:
        """The study's result objects by modality (SEG, SR), as stored files, every series of each."""
        found = _Results()
        for series in self.series_of_study(study_id):
            modality = series["MainDicomTags"].get("Modality")
            if modality in modalities:
                instances = self.instances_of_series(series["ID"])
                found.setdefault(modality, []).extend(self.download_instance(i["ID"]) for i in instances)
        return found

    def wait_for_results(self, study_id: str, what: str, timeout: float,
                         modalities: tuple[str, ...] = ("SEG", "SR"),
                         count: int = 1) -> dict[str, list[bytes]]:
        """:meth:`result_files` once ``count`` objects of each of ``modalities`` have arrived
        (AssertionError after ``timeout`` seconds, naming ``what``)."""
        return wait_for(lambda: self.result_files(study_id, modalities), timeout=timeout, interval=1.0,
                        until=lambda found: all(len(found.get(m, [])) >= count for m in modalities),
                        what=what)

    def find_study(self, study_instance_uid: str) -> str | None:
        """Orthanc id of the study with this StudyInstanceUID, or ``None`` when it is not stored."""
        raw = self.request("POST", "/tools/lookup", study_instance_uid.encode(), content_type="text/plain")
        matches: list[dict[str, Any]] = json.loads(raw)
        for match in matches:
            if match.get("Type") == "Study":
                study_id: str = match["ID"]
                return study_id
        return None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Orthanc(aet={self.aet!r}, dicom={self.host}:{self.dicom_port}, http={self.url}, {state})"
