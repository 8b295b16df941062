"""radnode's listener in the test process: a real SCP on a free loopback port, its own spool and
SQLite database, for tests that need a peer to talk to but not a whole ``radnode serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from node.config import NodeConfig
from node.db import Database, Instance
from node.receive.listener import AssociationTracker, Listener
from node.spool.store import Spool
from tests.ports import free_port

__all__ = ["AE_TITLE", "InProcessNode"]

AE_TITLE = "RADNODE"


class InProcessNode:
    """Use as a context manager; ``node`` keyword arguments go to NodeConfig."""

    def __init__(self, root: Path, **node: Any) -> None:
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.db = Database(f"sqlite:///{root / 'radnode.db'}")
        self.db.create_schema()
        self.spool = Spool(root / "spool", min_free_bytes=0)
        config = NodeConfig(ae_title=AE_TITLE, port=self.port, bind_address="127.0.0.1", **node)
        self.listener = Listener(config, self.spool, self.db, AssociationTracker())

    def __enter__(self) -> InProcessNode:
        self.listener.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.listener.stop()
        self.db.dispose()

    def stored_uids(self) -> set[str]:
        with self.db.session() as session:
            return set(session.scalars(select(Instance.sop_instance_uid)))
