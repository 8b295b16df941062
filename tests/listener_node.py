"""radnode's listener in the test process: a real pynetdicom SCP on a free port, a real spool and
SQLite database under a temporary folder. Faster to start than ``tests.node_process`` (no
process, no broker); used where a test needs only the receive path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select

from node.config import NodeConfig
from node.db import Database, Instance
from node.receive.listener import AssociationTracker, Listener
from node.spool.store import Spool
from tests.ports import free_port

__all__ = ["ListenerNode", "dataset_bytes", "dataset_values"]

AE_TITLE = "RADNODE"


class ListenerNode:
    """Listener + spool + database; ``start()``/``stop()`` or use it in a ``with`` block."""

    def __init__(self, root: Path, **node_config: Any) -> None:
        self.port = free_port()
        self.ae_title = AE_TITLE
        self.spool = Spool(root / "spool", 0, fsync="grouped")
        self.db = Database(f"sqlite:///{root / 'radnode.db'}")
        self.db.create_schema()
        self.tracker = AssociationTracker()
        config = NodeConfig(ae_title=AE_TITLE, port=self.port, bind_address="127.0.0.1", **node_config)
        self.listener = Listener(config, self.spool, self.db, self.tracker)

    def __enter__(self) -> ListenerNode:
        self.listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.stop()
        self.spool.close()
        self.db.dispose()

    def instances(self) -> dict[str, Instance]:
        """Instance rows by SOP Instance UID."""
        with self.db.session() as session:
            return {row.sop_instance_uid: row for row in session.scalars(select(Instance))}


def dataset_bytes(part10: bytes) -> bytes:
    """The encoded data set after the File Meta Information (what a C-STORE carries)."""
    meta_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL value, PS3.10 7.1
    return part10[144 + meta_length :]


def dataset_values(ds: pydicom.Dataset) -> dict[int, object]:
    """Every element's value by tag, sequences item by item: what a receiver must keep even
    where a sender (DCMTK storescu) re-encodes lengths or corrects a VR on the way."""
    return {
        int(element.tag): [dataset_values(item) for item in element.value]
        if element.VR == "SQ" else element.value
        for element in ds
    }
