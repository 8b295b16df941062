"""Files that are complete or absent after a crash: the write every stage relies on.

A received instance, a result object, a clean-stop mark: each is written to a temporary file in its
folder, flushed, renamed into place and its folder flushed, so that a crash at any point leaves the
old state or the new one, never half a file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["fsync_dir", "write_durably"]


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` at ``path`` so that after a crash it is either complete or absent.

    tmp file in the same folder → fsync → rename → fsync of the folder (and of new parents).
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    created: list[Path] = []
    try:
        handle = open(tmp, "wb")  # noqa: SIM115 - closed below; the folder may not exist yet
    except FileNotFoundError:
        created = [p for p in (path.parent.parent, path.parent) if not p.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(tmp, "wb")  # noqa: SIM115
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    for folder in (path.parent, *(created.parent for created in created)):
        fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a new or renamed file in it) to the disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

