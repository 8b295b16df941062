"""What every server a test starts has in common: a log to show on failure, and `with` support."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ServerProcess"]

LOG_TAIL_CHARS = 4000


class ServerProcess:
    """Base of Orthanc, StoreSCP and RadnodeProcess: subclasses set ``log_path`` and define
    ``start()`` (returning self) and ``stop()``."""

    log_path: Path

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The last ``chars`` characters of the server's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log written)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
