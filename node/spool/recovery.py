"""What a crash can leave out of step between the spool and the database, put right before the
listener accepts anyone.

The receive path writes a file, renames it into place, records its row, flushes, and only then
answers Success, so a crash leaves at most the instances it was receiving out of step:

- a partly received file in ``.incoming``: removed (no sender had Success for it);
- a row whose file is missing or short: removed (:meth:`Catalog.recover`; never acknowledged);
- a complete file without a row. Either it was never acknowledged (renamed, then the crash), or it
  was acknowledged and then re-sent under another series: the row moved to the new file, the crash
  lost the new file, and the row went with it. The second must never be lost, so a file whose series
  has a row gets its row back, in that series as it stands; a file whose series has no row was never
  acknowledged (an acknowledged instance's series row is never deleted) and is removed, as is a file
  whose instance has its row, and a complete file, elsewhere (the re-send's removal of the old
  file did not happen).

Looking for files without rows walks the whole spool, so it runs only when the last listener did
not stop cleanly (the spool's clean-stop mark).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from node.errors import StorageError
from node.spool.catalog import Catalog
from node.spool.store import Spool, read_header

__all__ = ["Recovery", "recover"]

log = logging.getLogger("radnode.recovery")


@dataclass
class Recovery:
    """What one start put right (counts of instances or files)."""

    rows_removed: int = 0
    partial_removed: int = 0
    swept: bool = False
    rows_restored: int = 0
    orphans_removed: int = 0
    left_alone: int = 0


def recover(spool: Spool, catalog: Catalog) -> Recovery:
    """Put the spool and the database back in step (module docstring), logging each kind once."""
    done = Recovery(rows_removed=catalog.recover(), partial_removed=spool.remove_incomplete())
    if done.rows_removed:
        log.warning("removed %d instance row(s) whose file was not complete after a crash; their "
                    "senders got no Success and will send them again", done.rows_removed)
    if done.partial_removed:
        log.warning("removed %d partly received file(s) left by a crash in %s; their senders got no "
                    "Success and will send them again", done.partial_removed, spool.root / ".incoming")
    if spool.take_clean_stop_mark():
        return done
    done.swept = True
    known: dict[str, set[Path] | None] = {}
    for series_uid, path in spool.stored_files():
        if series_uid not in known:
            known[series_uid] = catalog.series_paths(series_uid)
        recorded = known[series_uid]
        if recorded is not None and path in recorded:
            continue
        _put_right(path, recorded is not None, catalog, done)
    if done.rows_restored or done.orphans_removed or done.left_alone:
        log.warning("spool sweep after an unclean stop: %d row(s) restored for acknowledged instances, "
                    "%d file(s) without a row removed, %d file(s) left alone", done.rows_restored,
                    done.orphans_removed, done.left_alone)
    else:
        log.info("spool sweep after an unclean stop: every file has its row")
    return done


def _put_right(path: Path, series_known: bool, catalog: Catalog, done: Recovery) -> None:
    sop_uid = path.name.removesuffix(".dcm")
    elsewhere = catalog.recorded_file(sop_uid)
    if elsewhere is not None and elsewhere != path and elsewhere.is_file():
        _remove(path, "re-sent under another series before the crash", done)
        return
    if not series_known:
        _remove(path, "its series has no row: it was never acknowledged", done)
        return
    try:
        data = path.read_bytes()
        header = read_header(data)
        transfer_syntax = str(read_file_meta_info(path).TransferSyntaxUID)
    except (OSError, StorageError, InvalidDicomError, AttributeError) as exc:
        log.error("left alone a spool file that cannot be read back path=%s: %s", path, exc)
        done.left_alone += 1
        return
    place = (path.parent.parent.name, path.parent.name, sop_uid)
    if (header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid) != place:
        log.error("left alone a spool file whose UIDs do not match its place path=%s", path)
        done.left_alone += 1
        return
    catalog.restore(header, path=path, size_bytes=len(data), transfer_syntax_uid=transfer_syntax)
    log.info("row restored sop=%s series=%s", sop_uid, header.series_instance_uid)
    done.rows_restored += 1


def _remove(path: Path, why: str, done: Recovery) -> None:
    path.unlink(missing_ok=True)
    log.info("removed a spool file without a row path=%s (%s)", path, why)
    done.orphans_removed += 1
