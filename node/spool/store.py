"""The spool: received instances, durably on disk, as ``<root>/<study>/<series>/<sop>.dcm``.

Each file is written as it arrives to a temporary name in ``<root>/.incoming/`` (the receive path
never holds a whole instance in memory), renamed into place once its header has been read, and
only then made durable, so after a crash a file is either complete or absent; what a crash
leaves in ``.incoming`` is removed when the listener starts. Durability (``storage.fsync``) is one of:

- per file: fdatasync of the file, then fsync of its folder (two disk flushes per instance, and
  SQLite flushes the row itself);
- grouped (Linux): one ``syncfs(2)`` of the spool's file system, which flushes every file, folder
  entry and database page written before it. Concurrent writers share one flush (group commit),
  and one sender pays one flush per instance instead of three. But it also writes out whatever
  other programs left dirty on that file system, on radnode's time: behind a copy or a backup
  writing to the same disk, an instance waited for hundreds of megabytes (BENCHMARKS.md);
- auto (the default): grouped while little else waits to be written (at most
  :data:`QUIET_DIRTY_BYTES` dirty or under write-back in the page cache besides the instance
  itself, read from ``/proc/meminfo`` in a few microseconds), per file otherwise. Both acknowledge
  only what is on disk; the choice, made per instance, only decides which is faster.

UIDs are validated before they become path components (PS3.5 9.1: digits and dots, at most 64
characters), which also makes path traversal impossible.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import mmap
import os
import re
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from node.config import FsyncMode
from node.durable import fsync_dir, write_durably
from node.errors import DataSetTooLarge, InvalidInstance, OutOfSpace, StorageError
from node.spool.dicom_header import (
    IDENTIFYING_KEYWORDS,
    InflatesPastCeiling,
    Resume,
    cut_short,
    inflated_head,
    scan_data_set,
    scan_identifiers,
    scan_identifiers_resumable,
)

__all__ = [
    "Committed", "FileSystemSync", "IncomingFile", "InstanceHeader", "Spool", "check_whole",
    "read_header", "read_incoming_header", "validate_uid",
]

QUIET_DIRTY_BYTES = 4 << 20  # more waiting than this costs more to flush than two per-file flushes
CLEAN_STOP_MARK = "clean-stop"
DIRTY_PAGES_MAX_AGE_S = 0.02

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # leading zeros are wrong, but seen from modalities
UID_MAX_LENGTH = 64


def validate_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a UID string, or raise InvalidInstance naming ``keyword``.

    Leading zeros in a component are tolerated (older modalities write them) because they are
    still safe as a path component; anything else that is not digits and dots is refused.
    """
    text = str(value or "").strip().rstrip("\x00")
    if not text:
        raise InvalidInstance(f"missing {keyword}")
    if len(text) > UID_MAX_LENGTH or not _UID.match(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InvalidInstance(f"invalid {keyword} {shown!r}: a UID is digits and dots, max 64")
    return text


class InstanceHeader(NamedTuple):
    """What the receive path needs to know about an instance."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str


def _raw_text(ds: Dataset, keyword: str) -> str | None:
    """An element's value as text, straight from its bytes: no VR validation, no warnings.

    The receive path must not depend on how pydicom judges (and warns about) a bad value; the
    checks that matter here are radnode's own (:func:`validate_uid`).
    """
    element = ds.get_item(keyword)
    if element is None or element.value is None:
        return None
    value = element.value
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return text.strip("\x00 ")


def read_header(part10: bytes | bytearray) -> InstanceHeader:
    """Read and validate the identifying attributes of a Part 10 byte string.

    Only the named attributes are decoded; pixel data is never touched. The fast scan
    (node/spool/dicom_header.py) reads them from the element headers; pydicom reads whatever it is
    not sure of, and words the refusal of what cannot be decoded.
    """
    scanned = scan_identifiers(part10)
    return _header(scanned if scanned is not None else _read_with_pydicom(part10))


def read_incoming_header(incoming: IncomingFile, max_inflated_bytes: int) -> InstanceHeader:
    """:func:`read_header` of a file being received: from its first bytes when the fast scan
    finds the attributes there (nearly always), else from the whole file, read back. A deflated
    data set is inflated as a stream, never whole (pydicom would), within ``max_inflated_bytes``.
    """
    scanned = scan_identifiers_resumable(incoming.head)
    if scanned is not None:
        incoming.scanned_to = scanned[1]
        return _header(scanned[0])
    part10 = incoming.read_back()
    try:
        head = inflated_head(part10, max_inflated_bytes)
    except InflatesPastCeiling as exc:
        raise DataSetTooLarge(
            f"the deflated data set inflates to more than {max_inflated_bytes >> 20} MiB "
            "(node.max_inflated_mb)") from exc
    except zlib.error as exc:
        raise InvalidInstance(f"cannot decode the dataset: not deflate data: {exc}",
                              undecodable=True) from exc
    if head is None:
        return read_header(part10)
    found = scan_data_set(head)
    if found is None:
        raise InvalidInstance("cannot decode the deflated dataset's identifying attributes",
                              undecodable=True)
    return _header(found)


def _header(found: dict[str, str] | dict[str, str | None]) -> InstanceHeader:
    values = {keyword: found.get(keyword) for keyword in IDENTIFYING_KEYWORDS}
    if all(values[keyword] is None for keyword in IDENTIFYING_KEYWORDS[:4]):
        raise InvalidInstance(
            "cannot decode the dataset: none of its SOP, study or series UIDs were found",
            undecodable=True,
        )
    series_number = values["SeriesNumber"]
    return InstanceHeader(
        sop_class_uid=validate_uid(values["SOPClassUID"], "SOPClassUID"),
        sop_instance_uid=validate_uid(values["SOPInstanceUID"], "SOPInstanceUID"),
        study_instance_uid=validate_uid(values["StudyInstanceUID"], "StudyInstanceUID"),
        series_instance_uid=validate_uid(values["SeriesInstanceUID"], "SeriesInstanceUID"),
        modality=values["Modality"] or "",
        series_number=_integer_string(series_number),
        series_description=values["SeriesDescription"] or "",
    )


def _integer_string(text: str | None) -> int | None:
    """An IS value as the database keeps it (32-bit); None for anything else, as for no value."""
    if not text or not text.lstrip("+-").isdigit() or len(text) > 12:  # IS: 12 characters at most
        return None
    number = int(text)
    return number if -(2**31) <= number < 2**31 else None


def check_whole(incoming: IncomingFile, sop_class_uid: str) -> None:
    """Raise InvalidInstance when a received data set was cut short (:func:`cut_short`): it was
    flagged complete inside an element, or an image came without its pixel data."""
    needs_pixel_data = _is_image_class(sop_class_uid)
    if incoming.size <= len(incoming.head):  # all of it is in memory already
        problem = cut_short(incoming.head, needs_pixel_data=needs_pixel_data, resume=incoming.scanned_to)
    else:
        with open(incoming.path, "rb") as handle, \
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            problem = cut_short(data, needs_pixel_data=needs_pixel_data, resume=incoming.scanned_to)
    if problem is not None:
        raise InvalidInstance(f"the data set was cut short: {problem}", undecodable=True)


@functools.cache
def _is_image_class(sop_class_uid: str) -> bool:
    """Whether the IOD of a storage class requires Pixel Data (its name says Image Storage)."""
    return UID(sop_class_uid).name.endswith("Image Storage")


def _read_with_pydicom(part10: bytes | bytearray) -> dict[str, str | None]:
    try:
        ds = dcmread(BytesIO(part10), stop_before_pixels=True, specific_tags=list(IDENTIFYING_KEYWORDS))
        return {keyword: _raw_text(ds, keyword) for keyword in IDENTIFYING_KEYWORDS}
    except (InvalidDicomError, BytesLengthException, ValueError, KeyError, EOFError, OSError, TypeError,
            NotImplementedError, struct.error) as exc:
        raise InvalidInstance(f"cannot decode the dataset: {exc}", undecodable=True) from exc


class FileSystemSync:
    """Group commit for one file system: :meth:`sync` returns once a ``syncfs(2)`` that started
    after the call has completed, so everything written before the call is durable.

    Callers that arrive while a flush runs wait for the next one and share it: with N
    associations writing at once, one flush serves up to N instances.
    """

    def __init__(self, folder: Path) -> None:
        syncfs = _libc_syncfs()
        if syncfs is None:
            raise OSError(errno.ENOSYS, "syncfs(2) is not available on this system")
        self._syncfs = syncfs
        self._fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self._cond = threading.Condition()
        self._started = 0  # flushes begun
        self._done = 0  # the newest flush that completed
        self._running = False

    @staticmethod
    def available() -> bool:
        return _libc_syncfs() is not None

    def sync(self) -> None:
        """Block until every write made before this call is on stable storage."""
        with self._cond:
            target = self._started + 1  # a flush that starts after now
            while self._done < target:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                generation = self._started
                self._cond.release()
                try:
                    failed = self._syncfs(self._fd) != 0
                    code = ctypes.get_errno()
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()
                if failed:  # the waiters start a flush of their own and see the error too
                    raise OSError(code, os.strerror(code))
                self._done = generation

    def close(self) -> None:
        os.close(self._fd)


class DirtyPages:
    """Bytes the kernel still has to write back (``Dirty`` + ``Writeback`` in ``/proc/meminfo``), all
    file systems together: a ``syncfs`` of the spool waits for its share of them. Read at most every
    :data:`DIRTY_PAGES_MAX_AGE_S`: a disk's state changes over tens of milliseconds, not per instance."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/meminfo", os.O_RDONLY)
        except OSError:
            self._fd = None
        self._read_at = -DIRTY_PAGES_MAX_AGE_S
        self._waiting: int | None = None

    def waiting_bytes(self) -> int | None:
        """The bytes waiting, or None where the kernel does not say."""
        now = time.monotonic()
        if now - self._read_at >= DIRTY_PAGES_MAX_AGE_S:
            self._read_at, self._waiting = now, self._read()
        return self._waiting

    def _read(self) -> int | None:
        if self._fd is None:
            return None
        try:
            text = os.pread(self._fd, 8192, 0)
            return sum(_meminfo_kib(text, field) for field in (b"\nDirty:", b"\nWriteback:")) << 10
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def _meminfo_kib(text: bytes, field: bytes) -> int:
    start = text.index(field) + len(field)
    return int(text[start:text.index(b"kB", start)])


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    return function


class IncomingFile:
    """An instance being received, written as it arrives under a temporary name in the spool's
    ``.incoming`` folder; :meth:`Spool.commit` moves it into place. Its first
    :data:`HEAD_BYTES` are also kept in memory, for :func:`read_incoming_header`."""

    HEAD_BYTES = 64 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.head = bytearray()
        self.scanned_to: Resume | None = None  # where read_incoming_header's scan of the head stopped
        self._handle = open(path, "xb", buffering=0)  # noqa: SIM115 - closed by commit or discard

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; raise OutOfSpace or StorageError when the file system refuses it."""
        with memoryview(data) as view:
            try:
                written = 0
                while written < len(view):  # unbuffered: a write can be short (a file system filling up)
                    count = self._handle.write(view[written:])
                    if not count:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    written += count
            except OSError as exc:
                raise _storage_error(exc, self.path) from exc
        if len(self.head) < self.HEAD_BYTES:
            self.head += data[:self.HEAD_BYTES - len(self.head)]
        self.size += len(data)

    def read_back(self) -> bytes:
        """The whole file as written so far."""
        return self.path.read_bytes()

    def datasync(self) -> None:
        os.fdatasync(self._handle.fileno())  # the data and its size: all a reader needs

    def close(self) -> None:
        self._handle.close()

    def discard(self) -> None:
        """Drop the file: the instance was refused, or its association ended before it did."""
        self._handle.close()
        self.path.unlink(missing_ok=True)


class Committed(NamedTuple):
    """A file in its place; ``pending``: not durable until :meth:`Spool.sync` (which then also
    flushes a database row written meanwhile on the same file system)."""

    path: Path
    pending: bool


class Spool:
    """Durable storage of received instances under one root folder.

    ``fsync`` chooses how writes become durable (see the module docstring); where syncfs does not
    exist, each file and its folder are flushed whatever the mode.
    """

    def __init__(self, root: Path, min_free_bytes: int, *, fsync: FsyncMode = "per_file") -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self._incoming = root / ".incoming"
        self._names = itertools.count()
        self._sync: FileSystemSync | None = None
        self._dirty = DirtyPages() if fsync == "auto" else None
        if fsync != "per_file" and FileSystemSync.available():
            root.mkdir(parents=True, exist_ok=True)
            self._sync = FileSystemSync(root)

    def path_for(self, header: InstanceHeader) -> Path:
        """Where an instance lives; the UIDs were validated by :func:`read_header`."""
        return (
            self.root
            / header.study_instance_uid
            / header.series_instance_uid
            / f"{header.sop_instance_uid}.dcm"
        )

    def free_bytes(self) -> int:
        """Bytes free on the spool's file system (for the floor check and for status)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def incoming(self) -> IncomingFile:
        """A new file to receive an instance into; raise OutOfSpace below the free-space floor."""
        self._check_floor()
        name = f"{os.getpid()}-{threading.get_ident()}-{next(self._names)}.part"
        try:
            try:
                return IncomingFile(self._incoming / name)
            except FileNotFoundError:
                self._incoming.mkdir(parents=True, exist_ok=True)
                return IncomingFile(self._incoming / name)
        except OSError as exc:
            raise _storage_error(exc, self._incoming / name) from exc

    def commit(self, incoming: IncomingFile, header: InstanceHeader, *, sync: bool = True) -> Committed:
        """Move a received file to its place; the file is dropped on an error.

        Re-writing an instance that is already stored replaces it atomically (a re-send). With
        ``sync=False`` a grouped flush is left to the caller (``pending``), who calls :meth:`sync`
        after writing its database row, so one flush covers both.
        """
        path = self.path_for(header)
        grouped = self._grouped_now(incoming.size)
        try:
            if not grouped:
                incoming.datasync()
            incoming.close()
            created = _replace(incoming.path, path)
            if not grouped:
                for folder in (path.parent, *(created.parent for created in created)):
                    fsync_dir(folder)
            elif sync:
                self.sync()
        except OSError as exc:
            incoming.discard()
            raise _storage_error(exc, path) from exc
        return Committed(path, pending=grouped and not sync)

    def _grouped_now(self, own_bytes: int) -> bool:
        if self._sync is None:
            return False
        if self._dirty is None:
            return True
        waiting = self._dirty.waiting_bytes()
        return waiting is not None and waiting - own_bytes <= QUIET_DIRTY_BYTES

    def write(self, header: InstanceHeader, part10: bytes | bytearray) -> Path:
        """Store a whole Part 10 byte string durably: :meth:`incoming`, write, :meth:`commit`."""
        incoming = self.incoming()
        try:
            incoming.write(part10)
        except StorageError:
            incoming.discard()
            raise
        return self.commit(incoming, header).path

    def remove_superseded(self, path: Path) -> None:
        """Remove the file an instance had before it was re-sent under another study or series
        (its row points at the new one, which is durable); a file already gone is fine."""
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise _storage_error(exc, path) from exc

    def remove_incomplete(self) -> int:
        """Remove what a crash left in ``.incoming`` (no sender had Success for it); return the count."""
        leftovers = list(self._incoming.glob("*.part")) if self._incoming.is_dir() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def stored_files(self) -> Iterator[tuple[str, Path]]:
        """Every ``<study>/<series>/<sop>.dcm`` in the spool, as (series folder name, file)."""
        for study in _folders(self.root):
            for series in _folders(study):
                for path in series.glob("*.dcm"):
                    yield series.name, path

    def take_clean_stop_mark(self) -> bool:
        """Whether the last listener stopped cleanly (see :meth:`mark_clean_stop`); the mark is
        removed, so a crash from now on is seen at the next start."""
        mark = self._incoming / CLEAN_STOP_MARK
        try:
            mark.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(self._incoming)
        return True

    def mark_clean_stop(self) -> None:
        """Record that every file in the spool has its row: no sweep is needed at the next start."""
        self._incoming.mkdir(parents=True, exist_ok=True)
        write_durably(self._incoming / CLEAN_STOP_MARK, b"")

    def _check_floor(self) -> None:
        if self.min_free_bytes and self.free_bytes() < self.min_free_bytes:
            raise OutOfSpace(
                f"spool {self.root} is at its free-space floor "
                f"({self.min_free_bytes // 2**20} MiB); refusing new instances until space returns"
            )

    def sync(self) -> None:
        """Make every file written so far durable (a no-op when each file was fsynced)."""
        if self._sync is not None:
            try:
                self._sync.sync()
            except OSError as exc:
                raise StorageError(f"cannot flush the spool {self.root} to disk: {exc.strerror}") from exc

    def covers(self, path: Path) -> bool:
        """Whether :meth:`sync` also makes writes to ``path`` durable (same file system)."""
        try:
            return self._sync is not None and os.stat(path).st_dev == os.stat(self.root).st_dev
        except OSError:
            return False

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        if self._dirty is not None:
            self._dirty.close()


def _folders(parent: Path) -> Iterator[Path]:
    if parent.is_dir():
        yield from (entry for entry in parent.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def _storage_error(exc: OSError, path: Path) -> StorageError:
    if exc.errno == errno.ENOSPC:  # the floor was too low for a burst
        return OutOfSpace(f"the file system of {path.parent} is full: {exc.strerror}")
    return StorageError(f"cannot write {path}: {exc.strerror}")


def _replace(source: Path, path: Path) -> list[Path]:
    """Rename ``source`` to ``path``, creating its folder; return the folders created (their
    parents' entries must be flushed too)."""
    try:
        os.replace(source, path)
        return []
    except FileNotFoundError:
        if not source.exists():
            raise
    folder = path.parent
    created = [p for p in (folder.parent, folder) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    os.replace(source, path)
    return created
