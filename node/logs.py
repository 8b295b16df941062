"""Logging setup: one line per event, key=value fields, UIDs and AE titles but no patient data.

radnode never passes patient attributes (name, ID, birth date) to a log call; ``logging.phi``
exists so that a site that wants them for troubleshooting must say so explicitly.
"""

from __future__ import annotations

import logging
import sys

from node.config import LoggingConfig

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure_logging(config: LoggingConfig) -> None:
    """Send radnode's logs to stderr at the configured level (journald picks them up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level)
    # pynetdicom logs every PDU at INFO; keep its warnings only
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
