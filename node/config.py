"""The radnode configuration: one YAML file, parsed once into typed objects, passed down.

Unknown keys and bad values are errors naming the key path and the line of the file
(``radnode config check FILE``). Relative paths (the spool, SQLite files) resolve against the
folder of the configuration file, so a config works wherever the node is started from.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydicom.datadict import dictionary_VR, tag_for_keyword

from inference.pipelines import available as available_pipelines
from node.errors import ConfigError

__all__ = [
    "CompletionConfig",
    "Config",
    "DatabaseConfig",
    "DeliveryConfig",
    "Destination",
    "LoggingConfig",
    "NodeConfig",
    "Route",
    "StorageConfig",
    "load_config",
]

DEFAULT_PORT = 11112
DEFAULT_QUIET_SECONDS = 5.0
DEFAULT_MIN_FREE_MB = 1024
DEFAULT_MAX_ATTEMPTS = 30
DEFAULT_FIRST_BACKOFF_SECONDS = 5.0
DEFAULT_MAX_BACKOFF_SECONDS = 600.0

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2 AE: no backslash, no control


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1-16 printable characters, no backslash, not all spaces")
    return value.strip()


AETitle = Annotated[str, Field(min_length=1, max_length=16)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Section):
    """The DICOM listener: who radnode is on the network."""

    ae_title: AETitle = "RADNODE"
    port: Port = DEFAULT_PORT
    bind_address: str = "0.0.0.0"
    max_associations: int = Field(default=16, ge=1, le=256)
    network_timeout_seconds: float = Field(default=60.0, gt=0)

    _ae = field_validator("ae_title")(_check_ae_title)


class StorageConfig(_Section):
    """Where received instances (spool) and produced results live."""

    path: Path
    results_path: Path | None = None
    min_free_mb: int = Field(default=DEFAULT_MIN_FREE_MB, ge=0)

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


class CompletionConfig(_Section):
    """When a series counts as complete (association released, then ``quiet_seconds`` of quiet)."""

    quiet_seconds: float = Field(default=DEFAULT_QUIET_SECONDS, ge=0)
    poll_interval_seconds: float = Field(default=1.0, gt=0)


class Destination(_Section):
    """A DICOM peer that receives results by C-STORE."""

    ae_title: AETitle
    host: str
    port: Port
    calling_ae_title: AETitle | None = None

    _ae = field_validator("ae_title", "calling_ae_title")(
        lambda v: None if v is None else _check_ae_title(v)
    )


class Route(_Section):
    """Series whose attributes equal ``match`` go to ``pipelines``; results go to ``send_to``.

    A match value is a single value or a list of accepted values; comparison is on the DICOM
    value as text (multi-valued attributes match when any value matches).
    """

    match: dict[str, str | int | float | list[str | int | float]] = Field(default_factory=dict)
    pipelines: list[str] = Field(min_length=1)
    send_to: list[str] = Field(default_factory=list)

    @field_validator("match")
    @classmethod
    def _known_keywords(cls, value: dict[str, Any]) -> dict[str, Any]:
        for keyword in value:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ValueError(f"{keyword!r} is not a DICOM attribute keyword")
            if dictionary_VR(tag) == "SQ":
                raise ValueError(f"{keyword!r} is a sequence; routes match plain attributes")
        return value

    @field_validator("pipelines")
    @classmethod
    def _known_pipelines(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in available_pipelines()]
        if unknown:
            raise ValueError(
                f"unknown pipeline(s) {', '.join(unknown)}; known: {', '.join(available_pipelines())}"
            )
        return value


class DeliveryConfig(_Section):
    """Retries of result delivery: exponential backoff from ``first_backoff_seconds``."""

    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1)
    first_backoff_seconds: float = Field(default=DEFAULT_FIRST_BACKOFF_SECONDS, gt=0)
    max_backoff_seconds: float = Field(default=DEFAULT_MAX_BACKOFF_SECONDS, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)


class WorkerConfig(_Section):
    """Where pipelines run: ``auto`` takes CUDA when present, else the CPU."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


class LoggingConfig(_Section):
    """Logs carry UIDs and AE titles; patient identifiers only when ``phi`` is true."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    phi: bool = False


class Config(_Section):
    """The whole configuration file."""

    node: NodeConfig = Field(default_factory=NodeConfig)
    storage: StorageConfig
    database: DatabaseConfig
    broker: BrokerConfig
    completion: CompletionConfig = Field(default_factory=CompletionConfig)
    destinations: dict[str, Destination] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _routes_name_destinations(self) -> Config:
        for index, route in enumerate(self.routes):
            for name in route.send_to:
                if name not in self.destinations:
                    known = ", ".join(self.destinations) or "none configured"
                    raise _KeyedError(
                        ("routes", index, "send_to"),
                        f"unknown destination {name!r} (destinations: {known})",
                    )
        return self


class _KeyedError(ValueError):
    """A cross-field error that knows which key it is about."""

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


def _resolve_sqlite_url(url: str, base: Path) -> str:
    """``sqlite:///./x.db`` and ``sqla+sqlite:///x.db`` → absolute; other URLs unchanged."""
    match = re.match(r"^((?:sqla\+)?sqlite(?:\+\w+)?:///)(.+)$", url)
    if not match or match.group(2).startswith("/") or match.group(2) == ":memory:":
        return url
    return match.group(1) + str((base / match.group(2)).resolve())


def _line_index(node: yaml.Node, path: tuple[str | int, ...] = ()) -> dict[tuple, int]:
    """Map every key path in a composed YAML document to its 1-based line."""
    lines: dict[tuple, int] = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*path, key_node.value)
            lines.update(_line_index(value_node, child))
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, index)))
    return lines


def _where(source: str, lines: dict[tuple, int], loc: tuple[str | int, ...]) -> str:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return f"{source}:{lines[loc[:end]]}"
    return source


def parse_config(text: str, *, base: Path, source: str = "<config>") -> Config:
    """Parse YAML text into a Config, or raise ConfigError listing every problem."""
    try:
        document = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the file must be a YAML mapping of sections (node, storage, …)"])
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
                message = "unknown key"
            key = ".".join(str(part) for part in loc) or "(top level)"
            problems.append(f"{_where(source, lines, loc)}: {key}: {message}")
        raise ConfigError(problems) from exc


def load_config(path: Path) -> Config:
    """Read and validate the configuration file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the configuration file: {exc.strerror}"]) from exc
    config = parse_config(text, base=path.resolve().parent, source=str(path))
    return config.model_copy(update={"source": path.resolve()})
