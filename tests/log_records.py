"""Capture log records as a running node emits them: after its own logging set-up, not pytest's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from node.config import LoggingConfig
from node.ops.logs import configure_logging

__all__ = ["kept_log_records"]

_TOUCHED = ("", "pynetdicom", "pynetdicom.transport", "highdicom")


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def kept_log_records(level: str = "INFO") -> Iterator[list[logging.LogRecord]]:
    """The records that reach the root handler while the block runs, logging configured as
    ``radnode serve`` configures it (``logging.level: level``); the previous set-up comes back after."""
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers),
                    list(logging.getLogger(name).filters)) for name in _TOUCHED}
    configure_logging(LoggingConfig(level=level))
    keep = _Keep()
    root = logging.getLogger()
    root.handlers[:] = [keep]  # only what the node's handler would write, and not to the test's stderr
    try:
        yield keep.records
    finally:
        for name, (level_before, handlers, filters) in saved.items():
            logger = logging.getLogger(name)
            logger.setLevel(level_before)
            logger.handlers[:] = handlers
            logger.filters[:] = filters
