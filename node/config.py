"""The radnode configuration: one YAML file, parsed once into typed objects, passed down.

Unknown keys and bad values are errors naming the key path and the line of the file
(``radnode config check FILE``). Relative paths (the spool, SQLite files) resolve against the
folder of the configuration file, so a config works wherever the node is started from.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicom_sr.enums import SegType
from inference.model_config import SHIPPED_PREFIX, ModelConfig, shipped_weights_dir
from inference.pipelines import available as available_pipelines
from node.db import NotificationEvent
from node.errors import ConfigError, RadnodeError

__all__ = [
    "AllowedCaller",
    "CompletionConfig",
    "Condition",
    "Config",
    "DatabaseConfig",
    "DeliveryConfig",
    "Destination",
    "DestinationTLS",
    "FsyncMode",
    "ListenerTLS",
    "LoggingConfig",
    "MetricsConfig",
    "NodeConfig",
    "NotificationChannel",
    "PipelineOptions",
    "Route",
    "StorageConfig",
    "WebConfig",
    "load_config",
]

FsyncMode = Literal["auto", "grouped", "per_file"]
"""``storage.fsync``: how a received instance reaches the disk before its C-STORE is answered."""
DEFAULT_PORT = 11112
DEFAULT_QUIET_SECONDS = 5.0
DEFAULT_MIN_FREE_MB = 1024
DEFAULT_MAX_ATTEMPTS = 30
DEFAULT_FIRST_BACKOFF_SECONDS = 5.0
DEFAULT_MAX_BACKOFF_SECONDS = 600.0
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 4 * 3600.0
DEFAULT_MAX_MEMORY_PER_CHILD_MB = 6144
# a study-level job waits this long after its first input completed (an MR exam sends its series over ~30 min)
DEFAULT_INPUT_WAIT_SECONDS = 1800.0

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2 AE: no backslash, no control


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1-16 printable characters, no backslash, not all spaces")
    return value.strip()


AETitle = Annotated[str, Field(min_length=1, max_length=16)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AllowedCaller(_Section):
    """One rule of ``node.allowed_callers``: a calling AE title, a source network, or both."""

    ae_title: AETitle | None = None
    network: str | None = None

    _ae = field_validator("ae_title")(lambda v: None if v is None else _check_ae_title(v))

    @field_validator("network")
    @classmethod
    def _valid_network(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP network (e.g. 10.1.2.0/24 or 10.1.2.3): {exc}") from exc
            return str(ipaddress.ip_network(value, strict=False))
        return value

    @model_validator(mode="after")
    def _names_something(self) -> AllowedCaller:
        if self.ae_title is None and self.network is None:
            raise ValueError("a rule needs ae_title, network, or both")
        return self


class _TLS(_Section):
    """DICOM TLS (PS3.15 Annex B, BCP 195): PEM files; relative paths resolve like the spool's."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None

    @model_validator(mode="after")
    def _certificate_with_key(self) -> _TLS:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


class ListenerTLS(_TLS):
    """TLS on the listener: its certificate and key; ``ca_certificates`` verifies callers."""

    certificate: Path
    private_key: Path
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _ca_to_verify_clients(self) -> ListenerTLS:
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates to verify them with")
        return self


class DestinationTLS(_TLS):
    """TLS to a destination: ``ca_certificates`` (else the system's) verifies the peer."""

    check_hostname: bool = True


class NodeConfig(_Section):
    """The DICOM listener: who radnode is on the network."""

    ae_title: AETitle = "RADNODE"
    port: Port = DEFAULT_PORT
    bind_address: str = "0.0.0.0"
    max_associations: int = Field(default=16, ge=1, le=256)
    network_timeout_seconds: float = Field(default=60.0, gt=0)
    # empty: everyone may associate; otherwise a caller must match one rule (node/receive/access.py)
    allowed_callers: tuple[AllowedCaller, ...] = ()
    tls: ListenerTLS | None = None
    # private and unknown SOP classes are taken as storage and stored as-is (false: refuse them)
    accept_unknown_sop_classes: bool = True
    # a Deflated transfer syntax data set that inflates past this is refused (a "zip bomb")
    max_inflated_mb: int = Field(default=1024, ge=1)

    _ae = field_validator("ae_title")(_check_ae_title)


class StorageConfig(_Section):
    """Where received instances (spool) and produced results live."""

    path: Path
    results_path: Path | None = None
    min_free_mb: int = Field(default=DEFAULT_MIN_FREE_MB, ge=0)
    # None keeps everything; otherwise delivered studies older than this are removed (node/spool/retention.py)
    retention_days: float | None = Field(default=None, gt=0)
    # grouped: one syncfs(2) shared by concurrent writes; per_file: fdatasync of each file and its
    # folder; auto: grouped unless other programs have much waiting to be written (node/spool/store.py)
    fsync: FsyncMode = "auto"

    @property
    def results_dir(self) -> Path:
        """Results live beside the spool unless configured elsewhere."""
        return self.results_path or self.path.parent / "results"


class DatabaseConfig(_Section):
    """SQLAlchemy URL: ``sqlite:///…`` (embedded) or ``postgresql://…`` (production)."""

    url: str


class BrokerConfig(_Section):
    """Celery broker URL: ``sqla+sqlite:///…`` (embedded), ``redis://…`` or ``amqp://…``."""

    url: str
    # Redis: a message a worker took but never acknowledged (its host died mid-job) goes back to the
    # queue after this long. It must exceed the longest job, or a slow job is run twice.
    visibility_timeout_seconds: float = Field(default=DEFAULT_VISIBILITY_TIMEOUT_SECONDS, gt=0)


class CompletionConfig(_Section):
    """When a series counts as complete (association released, then ``quiet_seconds`` of quiet)."""

    quiet_seconds: float = Field(default=DEFAULT_QUIET_SECONDS, ge=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    # a destination asked by C-FIND for NumberOfSeriesRelatedInstances: a match completes at once
    verify_with: str | None = None
    # instances arriving after a series completed: rerun (a new job) or ignore (stored, no job)
    late_arrivals: Literal["rerun", "ignore"] = "rerun"


#: What a destination receives: SEG, SR (measurements, classifications, text), Secondary Capture,
#: RT Structure Set (a treatment planning system's contours), image (an image-to-image model's derived
#: series). By default what a pipeline is for: segments, measurements and derived images.
ResultFormat = Literal["seg", "sr", "sc", "rtstruct", "image"]
DEFAULT_FORMATS: tuple[ResultFormat, ...] = ("seg", "sr", "image")


class Destination(_Section):
    """A peer that receives results: by C-STORE (``kind: dicom``) or STOW-RS (``kind: dicomweb``)."""

    kind: Literal["dicom", "dicomweb"] = "dicom"
    ae_title: AETitle | None = None
    host: str | None = None
    port: Port | None = None
    calling_ae_title: AETitle | None = None
    tls: DestinationTLS | None = None
    url: str | None = Field(default=None, pattern=r"^https?://")  # DICOMweb base, e.g. …/dicom-web
    formats: tuple[ResultFormat, ...] = Field(default=DEFAULT_FORMATS, min_length=1)

    _ae = field_validator("ae_title", "calling_ae_title")(
        lambda v: None if v is None else _check_ae_title(v)
    )

    @model_validator(mode="after")
    def _address_of_kind(self) -> Destination:
        if self.kind == "dicom" and None in (self.ae_title, self.host, self.port):
            raise ValueError("a dicom destination needs ae_title, host and port")
        if self.kind == "dicomweb" and self.url is None:
            raise ValueError("a dicomweb destination needs url (the DICOMweb base, e.g. http://pacs/dicom-web)")
        return self


#: Route keys that match the association rather than a DICOM attribute of the series.
ASSOCIATION_KEYS = ("calling_ae_title", "called_ae_title")

MatchValue = str | int | float


def _check_match_key(key: str) -> str:
    if key in ASSOCIATION_KEYS:
        return key
    tag = tag_for_keyword(key)
    if tag is None:
        raise ValueError(
            f"{key!r} is not a DICOM attribute keyword (nor {' or '.join(ASSOCIATION_KEYS)})"
        )
    if dictionary_VR(tag) == "SQ":
        raise ValueError(f"{key!r} is a sequence; routes match plain attributes")
    return key


class Condition(_Section):
    """What one attribute must satisfy; every given test must hold (node/jobs/routing.py).

    Written as a value (``Modality: CT``), a list of accepted values (``Modality: [CT, MR]``),
    or a mapping of tests: ``equals`` (a value or list), ``regex`` (searched, Python syntax),
    ``ignore_case`` (for ``equals`` and ``regex``), ``min`` / ``max`` (inclusive, numeric) and
    ``present`` (true: the attribute has a value; false: it is absent or empty).
    """

    equals: tuple[MatchValue, ...] | None = None
    regex: str | None = None
    ignore_case: bool = False
    min: float | None = None
    max: float | None = None
    present: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return {"equals": value}
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return {"equals": [value]}
        if isinstance(value, dict) and isinstance(value.get("equals"), str | int | float):
            return {**value, "equals": [value["equals"]]}
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Condition:
        if (self.equals, self.regex, self.min, self.max, self.present) == (None,) * 5:
            raise ValueError("a condition needs equals, regex, min, max or present")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is greater than max {self.max:g}")
        if self.ignore_case and self.equals is None and self.regex is None:
            raise ValueError("ignore_case applies to equals or regex, and neither is given")
        return self


def _checked_match(value: Any) -> Any:
    """A ``match`` mapping's keys must be attribute keywords (or the association's AE titles)."""
    if isinstance(value, dict):
        for key in value:
            _check_match_key(str(key))
    return value


class PipelineInput(_Section):
    """One series a study-level pipeline takes: the series of the study whose attributes satisfy
    ``match`` (conditions as in routes, e.g. ``SeriesDescription: {regex: flair, ignore_case: true}``).

    The first input is the reference: the others are resampled onto its grid, and the SEG is on it.
    """

    name: Annotated[str, Field(min_length=1, max_length=32)]
    match: dict[str, Condition] = Field(default_factory=dict)
    # an optional input that is missing does not hold the job back (the model gets no such channel:
    # only for models that accept it)
    required: bool = True

    @field_validator("match", mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        return _checked_match(value)


class PipelineOptions(_Section):
    """How one pipeline's results are encoded; with ``model``, a segmentation pipeline defined here.

    A name that is not a built-in pipeline becomes one when it names a model of ``models:``
    (inference/pipelines/segmentation.py); its version is ``version`` or the start of the
    model's SHA-256, so results of a new model file get new UIDs. With ``inputs``, the pipeline
    takes several series of one study (one model channel each, in order): its job waits until a
    complete series matches every required input, or fails after ``wait_seconds`` naming the
    missing one.
    """

    # binary (default), fractional (probability maps) or labelmap (Label Map Segmentation, DICOM 2024)
    seg_type: SegType = SegType.BINARY
    # one model, or several whose label maps are merged in order (later ones win where two overlap):
    # TotalSegmentator's 1.5 mm task is five part models
    model: str | Annotated[list[str], Field(min_length=1)] | None = None
    version: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    inputs: list[PipelineInput] = Field(default_factory=list)
    wait_seconds: float = Field(default=DEFAULT_INPUT_WAIT_SECONDS, gt=0)

    @field_validator("inputs")
    @classmethod
    def _distinct_names(cls, value: list[PipelineInput]) -> list[PipelineInput]:
        names = [item.name for item in value]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"input names must differ: {', '.join(repeated)} repeated")
        if value and not value[0].required:
            raise ValueError(f"the first input ({value[0].name}) is the reference grid: it must be required")
        return value


class Route(_Section):
    """A routing rule: series whose attributes satisfy ``match`` get ``pipelines``.

    Every matching rule adds its pipelines (results go to ``send_to``); a rule with
    ``exclude: true`` instead removes its pipelines (all, when it names none) from every series
    it matches, whatever the order of the rules. Multi-valued attributes match when any value
    does. ``name`` is shown in logs and by ``radnode route --dry-run``.
    """

    name: str | None = None
    match: dict[str, Condition] = Field(default_factory=dict)
    pipelines: list[str] = Field(default_factory=list)
    send_to: list[str] = Field(default_factory=list)
    exclude: bool = False

    @field_validator("match", mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        return _checked_match(value)

    @model_validator(mode="after")
    def _adds_or_excludes(self) -> Route:
        if not self.exclude and not self.pipelines:
            raise ValueError("a route needs pipelines (or exclude: true)")
        if self.exclude and self.send_to:
            raise ValueError("an exclude route sends nothing: remove send_to")
        return self


class DeliveryConfig(_Section):
    """Retries of result delivery: exponential backoff from ``first_backoff_seconds``."""

    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    first_backoff_seconds: float = Field(default=DEFAULT_FIRST_BACKOFF_SECONDS, gt=0)
    max_backoff_seconds: float = Field(default=DEFAULT_MAX_BACKOFF_SECONDS, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)

    def backoff_seconds(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based): doubling, capped. Notifications use it too."""
        return min(self.first_backoff_seconds * 2.0 ** (attempt - 1), self.max_backoff_seconds)


class NotificationChannel(_Section):
    """A receiver of job events: a webhook (``kind: webhook``), POSTed the JSON body of config/README.md
    and signed with HMAC-SHA256, or a mailbox (``kind: smtp``) sent the same JSON by SMTP.

    Secrets are read when a notification is sent (a rotated file takes effect at once): the HMAC key
    from ``secret_file`` or the environment variable ``secret_env``, the SMTP password from
    ``password_file``. Retries follow ``delivery``'s backoff.
    """

    model_config = ConfigDict(populate_by_name=True)

    kind: Literal["webhook", "smtp"] = "webhook"
    events: tuple[NotificationEvent, ...] = Field(min_length=1)
    include_phi: bool = False  # patient name and ID in the body
    timeout_seconds: float = Field(default=10.0, gt=0)
    # webhook
    url: str | None = Field(default=None, pattern=r"^https?://")
    secret_file: Path | None = None
    secret_env: str | None = None
    # smtp
    host: str | None = None
    port: Port = 587
    starttls: bool = True  # upgrade the connection (RFC 3207) before logging in or sending
    ca_certificates: Path | None = None  # verifies the server's certificate (else the system's CAs)
    sender: str | None = Field(default=None, alias="from")
    to: tuple[str, ...] = ()
    username: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _fields_of_kind(self) -> NotificationChannel:
        if self.kind == "webhook":
            if self.url is None:
                raise ValueError("a webhook needs url (http:// or https://)")
            if (self.secret_file is None) == (self.secret_env is None):
                raise ValueError("a webhook needs its HMAC secret: secret_file or secret_env (one of them)")
        elif self.host is None or self.sender is None or not self.to:
            raise ValueError("an smtp channel needs host, from and to")
        elif (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        return self

    def secret(self) -> bytes:
        """The HMAC key of a webhook, or ConfigError saying where it was looked for."""
        if self.secret_file is not None:
            return _read_secret(self.secret_file, "the webhook secret")
        assert self.secret_env is not None  # one of them (_fields_of_kind)
        key = os.environ.get(self.secret_env, "").strip().encode()
        if not key:
            raise ConfigError([f"environment variable {self.secret_env}: the webhook secret is empty"])
        return key

    def password(self) -> str | None:
        """The SMTP password (None: no login), or ConfigError."""
        if self.password_file is None:
            return None
        return _read_secret(self.password_file, "the SMTP password").decode()


def _read_secret(path: Path, what: str) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read {what}: {exc.strerror}"]) from exc
    if not secret:
        raise ConfigError([f"{path}: {what} is empty"])
    return secret


class WorkerConfig(_Section):
    """Where pipelines run: ``auto`` takes CUDA when present, else the CPU."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # the process that runs jobs is replaced by a fresh one after a job that leaves it above this
    # resident size (Celery's --max-memory-per-child): bounds a worker that runs for months; 0 = off
    max_memory_per_child_mb: int = Field(default=DEFAULT_MAX_MEMORY_PER_CHILD_MB, ge=0)
    # ONNX exports and TensorRT engines of the configured models; None: backend-cache beside the spool
    backend_cache: Path | None = None


class LoggingConfig(_Section):
    """Logs carry UIDs and AE titles; patient identifiers only when ``phi`` is true."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    phi: bool = False
    format: Literal["text", "json"] = "text"


class MetricsConfig(_Section):
    """Prometheus /metrics: one port per process (the listener's, and each worker's)."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: Port = 9464
    # a worker serves on worker_port + its GPU index (`--gpu N`), so one host runs one per GPU
    worker_port: Port = 9465


class WebConfig(_Section):
    """The read-only status page, served by the listener process."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: Port = 8080


class Config(_Section):
    """The whole configuration file."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    storage: StorageConfig
    database: DatabaseConfig
    broker: BrokerConfig
    completion: CompletionConfig = Field(default_factory=CompletionConfig)
    destinations: dict[str, Destination] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    pipelines: dict[str, PipelineOptions] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    notifications: dict[str, NotificationChannel] = Field(default_factory=dict)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("pipelines")
    @classmethod
    def _options_of_known_pipelines(cls, value: dict[str, PipelineOptions]) -> dict[str, PipelineOptions]:
        unknown = [name for name, options in value.items()
                   if name not in available_pipelines() and options.model is None]
        if unknown:
            raise ValueError(
                f"options for unknown pipeline(s) {', '.join(unknown)}; "
                f"known: {', '.join(available_pipelines())} (a pipeline of your own needs model: MODEL)"
            )
        return value

    def pipeline_options(self, name: str) -> PipelineOptions:
        """The options of pipeline ``name`` (the defaults when the file names none)."""
        return self.pipelines.get(name) or PipelineOptions()

    def pipeline_names(self) -> list[str]:
        """Every pipeline routes may name: the built-in ones and those this file defines."""
        return sorted({*available_pipelines(), *(n for n, o in self.pipelines.items() if o.model)})

    @property
    def backend_cache_dir(self) -> Path:
        """Where backends keep ONNX exports and TensorRT engines (beside the spool by default)."""
        return self.worker.backend_cache or self.storage.path.parent / "backend-cache"

    @model_validator(mode="after")
    def _pipelines_name_models(self) -> Config:
        for name, options in self.pipelines.items():
            if options.model is None:
                if options.inputs:
                    raise _KeyedError(("pipelines", name, "inputs"),
                                      "inputs are the channels of a model: give model: MODEL too")
                continue
            if name in available_pipelines():
                raise _KeyedError(("pipelines", name, "model"),
                                  f"{name!r} is a built-in pipeline; give the model's pipeline another name")
            names = [options.model] if isinstance(options.model, str) else options.model
            unknown = [model for model in names if model not in self.models]
            if unknown:
                known = ", ".join(sorted(self.models)) or "none configured"
                raise _KeyedError(("pipelines", name, "model"),
                                  f"unknown model(s) {', '.join(unknown)} (models: {known})")
            if len(names) > 1 and options.inputs:
                raise _KeyedError(("pipelines", name, "inputs"),
                                  "a pipeline of several models takes one series: no inputs")
        return self

    @model_validator(mode="after")
    def _routes_name_destinations(self) -> Config:
        known_pipelines = self.pipeline_names()
        for index, route in enumerate(self.routes):
            unknown = [name for name in route.pipelines if name not in known_pipelines]
            if unknown:
                raise _KeyedError(
                    ("routes", index, "pipelines"),
                    f"unknown pipeline(s) {', '.join(unknown)}; known: {', '.join(known_pipelines)}",
                )
            for name in route.send_to:
                if name not in self.destinations:
                    known = ", ".join(self.destinations) or "none configured"
                    raise _KeyedError(
                        ("routes", index, "send_to"),
                        f"unknown destination {name!r} (destinations: {known})",
                    )
        verify_with = self.completion.verify_with
        if verify_with is not None:
            peer = self.destinations.get(verify_with)
            if peer is None or peer.kind != "dicom":
                dicom = ", ".join(n for n, d in self.destinations.items() if d.kind == "dicom")
                raise _KeyedError(
                    ("completion", "verify_with"),
                    f"{verify_with!r} is not a dicom destination (C-FIND needs one: "
                    f"{dicom or 'none configured'})",
                )
        return self


class _KeyedError(RadnodeError, ValueError):
    """A cross-field error that knows which key it is about (a ValueError, so pydantic reports it)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        self.loc = loc
        super().__init__(message)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make relative paths in ``data`` absolute against ``base`` (the config file's folder)."""
    storage = data.get("storage")
    if isinstance(storage, dict):
        for key in ("path", "results_path"):
            if isinstance(storage.get(key), str):
                storage[key] = str((base / storage[key]).resolve())
    for section in ("database", "broker"):
        part = data.get(section)
        if isinstance(part, dict) and isinstance(part.get("url"), str):
            part["url"] = _resolve_sqlite_url(part["url"], base)
    notifications = data.get("notifications")
    for channel in notifications.values() if isinstance(notifications, dict) else []:
        for key in ("secret_file", "password_file", "ca_certificates"):
            if isinstance(channel, dict) and isinstance(channel.get(key), str):
                channel[key] = str((base / channel[key]).resolve())
    worker = data.get("worker")
    if isinstance(worker, dict) and isinstance(worker.get("backend_cache"), str):
        worker["backend_cache"] = str((base / worker["backend_cache"]).resolve())
    models = data.get("models")
    for model in models.values() if isinstance(models, dict) else []:
        if isinstance(model, dict) and isinstance(model.get("file"), str):
            model["file"] = _resolve_model_file(model["file"], base)
    node = data.get("node")
    destinations = data.get("destinations")
    tls_sections = [node.get("tls") if isinstance(node, dict) else None] + [
        peer.get("tls") for peer in (destinations.values() if isinstance(destinations, dict) else [])
        if isinstance(peer, dict)
    ]
    for tls in tls_sections:
        if isinstance(tls, dict):
            for key in ("certificate", "private_key", "ca_certificates"):
                if isinstance(tls.get(key), str):
                    tls[key] = str((base / tls[key]).resolve())


def _resolve_model_file(file: str, base: Path) -> str:
    """``radnode:NAME`` → the shipped weights folder; a relative path → against ``base``."""
    if file.startswith(SHIPPED_PREFIX):
        return str(shipped_weights_dir() / file.removeprefix(SHIPPED_PREFIX))
    return str((base / file).resolve())


def _resolve_sqlite_url(url: str, base: Path) -> str:
    """``sqlite:///./x.db`` and ``sqla+sqlite:///x.db`` → absolute; other URLs unchanged."""
    match = re.match(r"^((?:sqla\+)?sqlite(?:\+\w+)?:///)(.+)$", url)
    if not match or match.group(2).startswith("/") or match.group(2) == ":memory:":
        return url
    return match.group(1) + str((base / match.group(2)).resolve())


def _line_index(node: yaml.Node, path: tuple[str | int, ...] = ()) -> dict[tuple[str | int, ...], int]:
    """Map every key path in a composed YAML document to its 1-based line."""
    lines: dict[tuple[str | int, ...], int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(_line_index(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, index)))
    return lines


def _duplicate_keys(node: yaml.Node | None, source: str, path: tuple[str | int, ...] = ()) -> list[str]:
    """Every key given twice in one mapping (YAML keeps the last one silently)."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        first_line: dict[object, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = ".".join(str(part) for part in (*path, key_node.value))
            if key_node.value in first_line:
                problems.append(f"{source}:{line}: {key}: given twice (first on line "
                                f"{first_line[key_node.value]}); YAML would keep only this one")
            first_line.setdefault(key_node.value, line)
            problems += _duplicate_keys(value_node, source, (*path, key_node.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += _duplicate_keys(item, source, (*path, index))
    return problems


def _did_you_mean(loc: tuple[str | int, ...]) -> str:
    """", did you mean X?" for an unknown key close to one the section has, else ""."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        if model is None:
            return ""
        if part in model.model_fields:
            model = _inner_model(model.model_fields[str(part)].annotation)
        # else a key of a dict (a destination's name) or an index of a list: the same model
    if model is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation (``X``, ``X | None``, ``dict[str, X]``, ``list[X]``,
    ``Annotated[X, …]``), or None when it holds none."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in reversed(get_args(annotation)):  # dict[str, X]: the value type is last
        inner = _inner_model(argument)
        if inner is not None:
            return inner
    return None


def _where(source: str, lines: dict[tuple[str | int, ...], int], loc: tuple[str | int, ...]) -> str:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return f"{source}:{lines[loc[:end]]}"
    return source


def parse_config(text: str, *, base: Path, source: str = "<config>") -> Config:
    """Parse YAML text into a Config, or raise ConfigError listing every problem."""
    try:
        document = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        raise ConfigError([f"{where}: not valid YAML: {exc.problem}"
                           + (f" ({exc.context})" if exc.context else "")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the file must be a YAML mapping of sections (node, storage, …)"])
    duplicates = _duplicate_keys(document, source)
    if duplicates:
        raise ConfigError(duplicates)
    lines = _line_index(document) if document is not None else {}
    _resolve_paths(data, base)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, _KeyedError):
                loc = cause.loc
                message = str(cause)
            else:
                message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key" + _did_you_mean(loc)
            key = ".".join(str(part) for part in loc) or "(top level)"
            problems.append(f"{_where(source, lines, loc)}: {key}: {message}")
        raise ConfigError(problems) from exc


def load_config(path: Path) -> Config:
    """Read and validate the configuration file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        data = path.read_bytes()[: exc.start]
        line, column = data.count(b"\n") + 1, exc.start - (data.rfind(b"\n") + 1) + 1
        raise ConfigError([f"{path}:{line}:{column}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                           "save the file as UTF-8"]) from exc
    config = parse_config(text, base=path.resolve().parent, source=str(path))
    return config.model_copy(update={"source": path.resolve()})
