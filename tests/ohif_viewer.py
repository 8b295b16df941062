"""The OHIF v3 viewer for tests: the built ``@ohif/app`` served on loopback, in front of a test Orthanc.

A radiologist sees radnode's SEG and SR in a viewer, not in pydicom; OHIF (with cornerstone3D and
dcmjs underneath) is the open-source viewer most sites and vendors build on, so
tests/test_viewer.py opens the results in it, headless, and checks what is on the screen.

``OhifServer`` is one ``ThreadingHTTPServer`` on a free loopback port that

* serves OHIF's prebuilt ``dist/`` (no webpack, no dev server), with the single-page-app fallback
  to ``index.html`` for routes such as ``/viewer`` and ``/segmentation``;
* answers ``/app-config.js`` with a configuration made here (:func:`app_config`): one DICOMweb data
  source, nothing that reaches the internet;
* forwards ``/dicom-web/...`` (any method, headers such as ``Accept`` included, multipart answers
  streamed) to the Orthanc DICOMweb plugin, so the viewer and its data share one origin and no CORS
  is involved. The browser's ``Host`` header is passed on, so the BulkDataURIs Orthanc writes into
  its metadata point back at this server.

    dist = ensure_installed(npm)
    with OhifServer(dist, f"{orthanc.url}/dicom-web") as viewer:
        ...  # tests/viewer/view.mjs drives chromium against viewer.url

``ensure_installed`` installs tests/viewer's node packages: ``npm ci`` for playwright-core (which
drives the system chromium, no browser download), and ``npm pack`` for ``@ohif/app``: that package
cannot be ``npm install``-ed (3.13.2 depends on ``@ohif/i18n@3.13.2`` and ``@ohif/ui@3.13.2``, which
were never published) and only its built ``dist/`` is needed, so the tarball alone is fetched,
checked against the integrity pinned in tests/viewer/package.json and unpacked into
``node_modules/@ohif/app``. ``python -m tests.ohif_viewer install`` does the same for scripts/test.sh.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import mimetypes
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.ports import free_port

__all__ = [
    "CHROMIUM",
    "DICOMWEB_PREFIX",
    "VIEWER_DIR",
    "OhifPin",
    "OhifServer",
    "app_config",
    "ensure_installed",
    "installed",
    "ohif_dist",
    "ohif_pin",
]

VIEWER_DIR = Path(__file__).parent / "viewer"
NODE_MODULES = VIEWER_DIR / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")
#: Where the viewer asks for DICOMweb; forwarded to the upstream given to ``OhifServer``.
DICOMWEB_PREFIX = "/dicom-web"
LOOPBACK = "127.0.0.1"

_NPM_TIMEOUT_S = 600
_UPSTREAM_TIMEOUT_S = 120.0
_CHUNK = 256 * 1024
_STAMP = ".radnode-integrity"
# RFC 9110 7.6.1: connection-specific fields are not forwarded by a proxy.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
_MIME_TYPES = {
    ".wasm": "application/wasm",  # WebAssembly.instantiateStreaming (codecs) insists on it
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".onnx": "application/octet-stream",
}


# -- installation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OhifPin:
    """The ``@ohif/app`` release tests/viewer/package.json pins (its ``ohifApp`` entry)."""

    name: str
    version: str
    integrity: str  # npm's Subresource Integrity form: "sha512-" + base64 of the tarball's SHA-512

    @property
    def spec(self) -> str:
        """``name@version``, as ``npm pack`` takes it."""
        return f"{self.name}@{self.version}"


def ohif_pin() -> OhifPin:
    """Read the pinned ``@ohif/app`` release from tests/viewer/package.json."""
    entry = json.loads((VIEWER_DIR / "package.json").read_text())["ohifApp"]
    return OhifPin(entry["name"], entry["version"], entry["integrity"])


def ohif_dist() -> Path:
    """The folder holding OHIF's built viewer (``index.html``, ``app.bundle.*.js``...)."""
    return NODE_MODULES / "@ohif" / "app" / "dist"


def _sri_sha512(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def _run_npm(npm: str, *args: str, cwd: Path) -> str:
    completed = subprocess.run([npm, *args, "--no-audit", "--no-fund"], cwd=cwd, capture_output=True,
                               text=True, timeout=_NPM_TIMEOUT_S, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} failed in {cwd} (exit {completed.returncode}):\n"
                           f"{completed.stderr[-3000:]}")
    return completed.stdout


def _unpack_ohif(npm: str, pin: OhifPin, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="ohif-pack-") as scratch:
        _run_npm(npm, "pack", pin.spec, "--pack-destination", scratch, "--json", cwd=VIEWER_DIR)
        (tarball,) = Path(scratch).glob("*.tgz")
        got = _sri_sha512(tarball)
        if got != pin.integrity:
            raise RuntimeError(f"{pin.spec} tarball has integrity {got}, package.json pins {pin.integrity}")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, filter="data")  # npm tarballs hold one folder, "package/"
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(unpacked / "package", target)
    (target / _STAMP).write_text(pin.integrity + "\n")


def _has_playwright() -> bool:
    return (NODE_MODULES / "playwright-core" / "package.json").is_file()


def _has_ohif(pin: OhifPin) -> bool:
    stamp = ohif_dist().parent / _STAMP
    return (stamp.is_file() and stamp.read_text().strip() == pin.integrity
            and (ohif_dist() / "index.html").is_file())


def installed() -> bool:
    """True when tests/viewer holds playwright-core and the pinned OHIF build."""
    return _has_playwright() and _has_ohif(ohif_pin())


def ensure_installed(npm: str) -> Path:
    """Install what tests/viewer needs, only what is missing; return OHIF's ``dist`` folder.

    ``npm ci`` (playwright-core, as locked) when node_modules lacks it; the pinned ``@ohif/app``
    tarball when its stamp is missing or names another integrity. ``npm ci`` empties node_modules,
    so it runs first.
    """
    if not _has_playwright():
        _run_npm(npm, "ci", cwd=VIEWER_DIR)
    pin = ohif_pin()
    if not _has_ohif(pin):
        _unpack_ohif(npm, pin, ohif_dist().parent)
    return ohif_dist()


# -- configuration -------------------------------------------------------------------------------


def app_config(*, friendly_name: str = "radnode test Orthanc") -> str:
    """OHIF's ``window.config``: one DICOMweb data source on this origin's ``/dicom-web``.

    Modelled on OHIF's ``config/local_orthanc.js``. Orthanc serves no rendered thumbnails for
    SEG/SR, so thumbnails are rendered from the pixel data (``wadors``); its QIDO ignores
    ``includefield``; ``investigationalUseDialog: never`` keeps the first-visit modal off the
    screenshots. The roots are absolute URLs built from ``window.location.origin`` in the browser.
    """
    configuration = {
        "friendlyName": friendly_name,
        "name": "orthanc",
        "qidoSupportsIncludeField": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "omitQuotationForMultipartRequest": True,
        "dicomUploadEnabled": False,
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
    }
    root = f"window.location.origin + {json.dumps(DICOMWEB_PREFIX)}"
    return (
        "/** Written by tests/ohif_viewer.py: one DICOMweb source, the test Orthanc behind this origin. */\n"
        "window.config = {\n"
        "  routerBasename: '/',\n"
        "  extensions: [],\n"
        "  modes: [],\n"
        "  customizationService: {},\n"
        "  showStudyList: true,\n"
        "  maxNumberOfWebWorkers: 2,\n"
        "  showWarningMessageForCrossOrigin: false,\n"
        "  showCPUFallbackMessage: false,\n"
        "  showLoadingIndicator: true,\n"
        "  strictZSpacingForVolumeViewport: true,\n"
        "  investigationalUseDialog: { option: 'never' },\n"
        "  showErrorDetails: 'always',\n"
        "  maxNumRequests: { interaction: 100, thumbnail: 10, prefetch: 10 },\n"
        "  defaultDataSourceName: 'dicomweb',\n"
        "  dataSources: [{\n"
        "    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',\n"
        "    sourceName: 'dicomweb',\n"
        f"    configuration: Object.assign({json.dumps(configuration)}, {{\n"
        f"      qidoRoot: {root}, wadoRoot: {root}, wadoUriRoot: {root},\n"
        "    }),\n"
        "  }],\n"
        "};\n"
    )


# -- server --------------------------------------------------------------------------------------


@dataclass
class _Site:
    dist: Path
    upstream: urllib.parse.SplitResult
    config_js: bytes
    log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, line: str) -> None:
        with self.lock:
            self.log.append(line)


class _Handler(BaseHTTPRequestHandler):
    """Static files with SPA fallback, the generated app-config.js, and the DICOMweb proxy."""

    protocol_version = "HTTP/1.1"  # keep-alive: the viewer makes hundreds of small requests
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        self.server.site.note(f"{self.address_string()} {format % args}")

    def _dispatch(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == DICOMWEB_PREFIX or path.startswith(DICOMWEB_PREFIX + "/"):
                self._proxy()
            elif self.command in ("GET", "HEAD"):
                self._static(urllib.parse.unquote(path))
            else:
                self._send_bytes(HTTPStatus.METHOD_NOT_ALLOWED, b"", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the browser gave up on this request (navigation, abort)

    # BaseHTTPRequestHandler dispatches on do_<METHOD>; every method takes the same route
    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_OPTIONS = _dispatch

    def _send_bytes(self, status: HTTPStatus, body: bytes, content_type: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _static(self, path: str) -> None:
        site = self.server.site
        if path == "/app-config.js":
            self._send_bytes(HTTPStatus.OK, site.config_js, "text/javascript")
            return
        root = site.dist.resolve()
        candidate = (root / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(root):
            self._send_bytes(HTTPStatus.FORBIDDEN, b"outside dist", "text/plain")
            return
        if not candidate.is_file():
            if Path(path).suffix:  # a missing asset must fail as such, not parse index.html as JS
                self._send_bytes(HTTPStatus.NOT_FOUND, f"{path} not in dist".encode(), "text/plain")
                return
            candidate = root / "index.html"  # a client-side route: /viewer, /segmentation, ...
        content_type = (_MIME_TYPES.get(candidate.suffix)
                        or mimetypes.guess_type(candidate.name)[0] or "application/octet-stream")
        size = candidate.stat().st_size
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        # the bundles are content-hashed; index.html is small. One browser context per test module
        # then parses the 17 MB app bundle from its cache on every page after the first.
        self.send_header("Cache-Control", "no-store" if candidate.name == "index.html" else "max-age=3600")
        self.end_headers()
        if self.command != "HEAD":
            with candidate.open("rb") as file:
                shutil.copyfileobj(file, self.wfile, _CHUNK)

    def _request_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _proxy(self) -> None:
        site = self.server.site
        upstream = site.upstream
        target = upstream.path.rstrip("/") + self.path[len(DICOMWEB_PREFIX):]
        body = self._request_body()
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length"}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(upstream.hostname or LOOPBACK, upstream.port or 80,
                                                timeout=_UPSTREAM_TIMEOUT_S)
        try:
            try:
                connection.request(self.command, target, body=body, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                site.note(f"proxy {self.command} {target} failed: {exc!r}")
                self._send_bytes(HTTPStatus.BAD_GATEWAY, f"upstream failed: {exc!r}".encode(), "text/plain")
                return
            self.send_response(response.status, response.reason)
            length = response.getheader("Content-Length")
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            chunked = length is None and self.command != "HEAD" and response.status not in (204, 304)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif length is not None:
                self.send_header("Content-Length", length)
            self.end_headers()
            if self.command == "HEAD":
                return
            for block in iter(lambda: response.read1(_CHUNK), b""):  # as it arrives, not buffered
                if chunked:
                    self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                else:
                    self.wfile.write(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
            if response.status >= 400:
                site.note(f"proxy {self.command} {target} -> {response.status}")
        finally:
            connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], site: _Site) -> None:
        self.site = site
        super().__init__(address, _Handler)


class OhifServer:
    """OHIF's ``dist`` and a DICOMweb proxy to ``dicomweb_upstream`` on one loopback origin.

    ``dicomweb_upstream`` is the DICOMweb root to forward to, e.g. ``http://127.0.0.1:8042/dicom-web``.
    ``log`` holds one line per request (and each proxy failure) for a failing test to show.
    """

    def __init__(self, dist: Path, dicomweb_upstream: str, *,
                 friendly_name: str = "radnode test Orthanc") -> None:
        if not (Path(dist) / "index.html").is_file():
            raise FileNotFoundError(f"{dist} holds no index.html: not a built OHIF viewer")
        upstream = urllib.parse.urlsplit(dicomweb_upstream)
        if upstream.scheme != "http":
            raise ValueError(f"only an http:// upstream is supported, got {dicomweb_upstream!r}")
        self._site = _Site(Path(dist), upstream, app_config(friendly_name=friendly_name).encode())
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Origin of the viewer, e.g. ``http://127.0.0.1:41234``."""
        if self._server is None:
            raise RuntimeError("OhifServer is not started")
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def log(self) -> list[str]:
        """The request log so far (a copy)."""
        with self._site.lock:
            return list(self._site.log)

    def start(self) -> OhifServer:
        """Bind a free loopback port and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("OhifServer is already started")
        for attempt in range(3):  # a free port can be taken between free_port() and bind()
            try:
                self._server = _Server((LOOPBACK, free_port()), self._site)
                break
            except OSError:
                if attempt == 2:
                    raise
        assert self._server is not None
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OhifServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str]) -> int:
    """``python -m tests.ohif_viewer install``: what scripts/lib.sh's ensure_viewer runs."""
    if argv != ["install"]:
        print("usage: python -m tests.ohif_viewer install", file=sys.stderr)
        return 2
    npm = shutil.which("npm")
    if npm is None:
        print("npm not found (Debian: apt-get install nodejs npm)", file=sys.stderr)
        return 1
    if installed():
        return 0
    print(f"installing playwright-core and OHIF {ohif_pin().version} in {VIEWER_DIR} …", file=sys.stderr)
    ensure_installed(npm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
