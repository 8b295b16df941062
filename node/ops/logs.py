"""Logging setup: one line per event, key=value fields, UIDs and AE titles but no patient data.

radnode never passes patient attributes (name, ID, birth date) to a log call; ``logging.phi``
exists so that a site that wants them for troubleshooting must say so explicitly.

``logging.format: json`` writes each event as one JSON object per line for log shippers
(Filebeat, Fluent Bit, Vector, journald → Loki): ``ts``, ``level``, ``logger``, ``message``, and
every ``key=value`` pair of the message as a field of its own (``job``, ``series``, ``state``…).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from pynetdicom import _config as pynetdicom_config

from node.config import LoggingConfig

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging", "escaped"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# control characters a peer can put in a value that is logged (a UID, an AE title): a newline
# would start a forged log line
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELD = re.compile(r"(?<![\w.])([a-z_]+)=(\S+)")
_RESERVED = frozenset({"ts", "level", "logger", "message", "exception", "process"})


def escaped(text: str) -> str:
    """``text`` with each control character written as ``\\xNN``: one event stays one line."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


class TextFormatter(logging.Formatter):
    """The plain format, one line per event whatever the logged values hold (tracebacks aside)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escaped(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per event; ``key=value`` pairs in the message become fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = escaped(record.getMessage())
        event: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "process": record.process,
        }
        for key, value in _FIELD.findall(message):
            if key not in _RESERVED:
                event.setdefault(key, value)
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def configure_logging(config: LoggingConfig) -> None:
    """Send radnode's logs to stderr at the configured level (journald picks them up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.format == "json" else TextFormatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    # pynetdicom logs every PDU at INFO; keep its warnings only, and do not even bind its handlers
    # that describe each PDU and DIMSE message (work on every instance, for lines dropped here)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    # a destination that is down: the delivery logs one WARNING per attempt, with where and why
    logging.getLogger("pynetdicom.transport").addFilter(_outgoing_connection_failures)
    # highdicom narrates each object it builds at INFO; its warnings still come through
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    # Alembic narrates each start at INFO; node.db logs the one line that matters (an upgrade ran)
    logging.getLogger("alembic").setLevel(logging.WARNING)


_CONNECTION_FAILURES = ("Association request failed: unable to connect to remote", "TCP Initialisation Error")


def _outgoing_connection_failures(record: logging.LogRecord) -> bool:
    """Drop pynetdicom's two ERROR lines for an outgoing connection that failed (a PACS that is down)."""
    return not record.getMessage().startswith(_CONNECTION_FAILURES)
