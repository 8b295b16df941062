"""What has arrived: Study / Series / Instance rows, committed before Success is answered.

This is on the receive path of every instance, so it is written in SQL expressions rather than
ORM units of work: one transaction of two statements per instance (``UPDATE series``, then an
``INSERT … ON CONFLICT`` of the instance), the series' row id looked up once per series and
kept. ORM sessions cost several milliseconds per instance; the whole transaction here costs
about as much as its commit.

With ``deferred_durability`` (SQLite on the spool's file system, spool in grouped sync) and
``flush_later`` (the spool chose its grouped flush for this instance), the
commit is not flushed by SQLite (``synchronous=NORMAL`` for that transaction: WAL ordering keeps
the database consistent) and the listener's spool sync right after it flushes the row and the
file together: one disk flush per instance, before Success. A crash between the commit and that
flush can leave a row whose file is incomplete, for an instance that was never acknowledged:
:meth:`Catalog.recover` removes such rows when the listener starts.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from node.db import Base, Database, Instance, Series, SeriesState, Study, utcnow
from node.spool.store import InstanceHeader

__all__ = ["Catalog", "record_instance"]

_UPSERT_ATTEMPTS = 3  # concurrent first instances of one series race on the unique keys
# each dialect's INSERT, for its ON CONFLICT clauses (the same in both)
_INSERTS: dict[str, Callable[[type[Base]], sqlite.Insert | postgresql.Insert]] = {
    "sqlite": sqlite.insert, "postgresql": postgresql.insert,
}
_INSTANCE_KEYS = ("sop_instance_uid",)
# a re-sent instance is the newest one, whole: under a corrected study or series it moves there
_INSTANCE_CHANGES = (
    "series_id", "sop_class_uid", "path", "transfer_syntax_uid", "size_bytes", "received_at",
    "calling_ae_title", "calling_address",
)


class Catalog:
    """Records stored instances; one per listener process (it caches series row ids).

    The statements are built once: building and cache-keying SQL expressions per instance cost
    more CPU than executing them.
    """

    def __init__(self, db: Database, *, deferred_durability: bool = False) -> None:
        dialect = db.engine.dialect.name
        if dialect not in _INSERTS:
            raise ValueError(f"database {dialect!r} is not supported: use SQLite or PostgreSQL")
        insert = _INSERTS[dialect]
        self.db = db
        self.deferred_durability = deferred_durability and dialect == "sqlite"
        self._series_ids: dict[str, int] = {}
        self._lock = threading.Lock()
        self._touch_series = (
            update(Series)
            .where(Series.id == bindparam("series_id"))
            .values(state=SeriesState.RECEIVING, last_received_at=bindparam("now"))
        )
        new_instance = insert(Instance).values(
            {column: bindparam(column) for column in (*_INSTANCE_KEYS, *_INSTANCE_CHANGES)}
        )
        self._upsert_instance = new_instance.on_conflict_do_update(
            index_elements=[Instance.sop_instance_uid],
            set_={column: new_instance.excluded[column] for column in _INSTANCE_CHANGES},
        )
        self._insert_study = (
            insert(Study)
            .values(study_instance_uid=bindparam("uid"), first_received_at=bindparam("now"))
            .on_conflict_do_nothing(index_elements=[Study.study_instance_uid])
        )
        self._study_id = select(Study.id).where(Study.study_instance_uid == bindparam("uid"))
        self._insert_series = insert(Series).on_conflict_do_nothing(
            index_elements=[Series.series_instance_uid]
        )
        self._series_id_of = select(Series.id).where(Series.series_instance_uid == bindparam("uid"))
        self._path_of = select(Instance.path).where(Instance.sop_instance_uid == bindparam("uid"))

    def record(
        self,
        header: InstanceHeader,
        *,
        path: Path,
        size_bytes: int,
        transfer_syntax_uid: str,
        calling_ae_title: str,
        calling_address: str = "",
        called_ae_title: str = "",
        flush_later: bool = False,
    ) -> Path | None:
        """Record a stored instance; a re-sent instance updates its row and reopens its series.

        ``flush_later``: the caller's spool sync follows and flushes this commit too (see the module
        docstring); otherwise the commit is flushed by the database itself.

        ``calling_ae_title`` and ``calling_address`` (the sender's IP) are the audit trail;
        ``called_ae_title`` is what routes match on. A series that had completed goes back to
        RECEIVING, so completion fires again and the late-arrival policy applies. An instance
        re-sent under another study or series moves there (row and file): the file it had before
        is returned, for the caller to remove once the new one is durable; else None.
        """
        association = {"calling_ae_title": calling_ae_title, "calling_address": calling_address}
        attempts = 0
        while True:
            try:
                with self.db.engine.connect() as connection, self._durability(connection, flush_later), \
                        connection.begin():
                    now = utcnow()
                    series_id = self._series_id(connection, header, now, called_ae_title, association)
                    previous = connection.scalar(self._path_of, {"uid": header.sop_instance_uid})
                    connection.execute(self._touch_series, {"series_id": series_id, "now": now})
                    connection.execute(
                        self._upsert_instance,
                        {
                            "series_id": series_id,
                            "sop_instance_uid": header.sop_instance_uid,
                            "sop_class_uid": header.sop_class_uid,
                            "path": str(path),
                            "transfer_syntax_uid": transfer_syntax_uid,
                            "size_bytes": size_bytes,
                            "received_at": now,
                            **association,
                        },
                    )
                with self._lock:
                    self._series_ids[header.series_instance_uid] = series_id
                return Path(previous) if previous is not None and previous != str(path) else None
            except IntegrityError:
                with self._lock:  # a cached id whose row is gone, or a lost race: look again
                    self._series_ids.pop(header.series_instance_uid, None)
                attempts += 1
                if attempts == _UPSERT_ATTEMPTS:
                    raise

    @contextmanager
    def _durability(self, connection: Connection, flush_later: bool) -> Iterator[None]:
        """SQLite's own flush off for this transaction when the caller's spool sync covers it."""
        if not (self.deferred_durability and flush_later):
            yield
            return
        raw = connection.connection.driver_connection  # outside a transaction: pragmas allowed
        if raw is None:  # only an invalidated connection has none
            raise RuntimeError("the database connection was invalidated")
        raw.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            raw.execute("PRAGMA synchronous=FULL")  # the pooled connection goes back as it came

    def recover(self) -> int:
        """Remove rows of instances whose file is missing or short (see the module docstring).

        Only series still receiving can hold such rows; returns how many were removed.
        """
        with self.db.session() as session:
            rows = session.execute(
                select(Instance.id, Instance.path, Instance.size_bytes)
                .join(Series, Instance.series_id == Series.id)
                .where(Series.state == SeriesState.RECEIVING)
            ).all()
            broken = [row_id for row_id, path, size in rows if _file_size(path) != size]
            if broken:
                session.execute(delete(Instance).where(Instance.id.in_(broken)))
        return len(broken)

    def series_paths(self, series_instance_uid: str) -> set[Path] | None:
        """The files recorded for a series, or None when the series has no row."""
        with self.db.session() as session:
            series_id = session.scalar(
                select(Series.id).where(Series.series_instance_uid == series_instance_uid)
            )
            if series_id is None:
                return None
            paths = session.scalars(select(Instance.path).where(Instance.series_id == series_id))
            return {Path(path) for path in paths}

    def recorded_file(self, sop_instance_uid: str) -> Path | None:
        """Where the row of an instance says its file is, if it has a row."""
        with self.db.session() as session:
            path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid))
        return None if path is None else Path(path)

    def restore(
        self, header: InstanceHeader, *, path: Path, size_bytes: int, transfer_syntax_uid: str
    ) -> None:
        """Give a stored file back the row a crash took from it, in its series as that series is
        (its state is left alone: the instance was there before)."""
        with self.db.session() as session:
            series_id = session.scalar(
                select(Series.id).where(Series.series_instance_uid == header.series_instance_uid)
            )
            session.add(Instance(
                series_id=series_id, sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid, transfer_syntax_uid=transfer_syntax_uid,
                path=str(path), size_bytes=size_bytes,
            ))

    def _series_id(
        self,
        connection: Connection,
        header: InstanceHeader,
        now: datetime,
        called_ae_title: str,
        association: dict[str, str],
    ) -> int:
        with self._lock:
            cached = self._series_ids.get(header.series_instance_uid)
        if cached is not None:
            return cached
        connection.execute(self._insert_study, {"uid": header.study_instance_uid, "now": now})
        connection.execute(
            self._insert_series,
            {
                "study_id": connection.scalar(self._study_id, {"uid": header.study_instance_uid}),
                "series_instance_uid": header.series_instance_uid,
                "modality": header.modality[:16],
                "series_number": header.series_number,
                "series_description": header.series_description[:64],
                "called_ae_title": called_ae_title,
                "first_received_at": now,
                "last_received_at": now,
                "revision": 0,
                "state": SeriesState.RECEIVING,
                **association,
            },
        )
        series_id = connection.scalar(self._series_id_of, {"uid": header.series_instance_uid})
        if series_id is None:  # inserted or found just above, in this transaction; series rows stay
            raise RuntimeError(f"series {header.series_instance_uid} has no row after its insert")
        return series_id


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def record_instance(db: Database, header: InstanceHeader, **kwargs: object) -> Path | None:
    """Record one instance without a long-lived :class:`Catalog` (tools and tests)."""
    return Catalog(db).record(header, **kwargs)  # type: ignore[arg-type]
