"""How the spool makes an instance durable (``storage.fsync``): the grouped ``syncfs`` while the
disk is quiet, a flush of the file and its folder when another program has much waiting to be
written (node/spool/store.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.spool.store import QUIET_DIRTY_BYTES, Committed, DirtyPages, FileSystemSync, Spool, read_header

pytestmark = pytest.mark.skipif(not FileSystemSync.available(), reason="syncfs(2) is Linux only")


def _commit(spool: Spool, chest_ct_dir: Path) -> tuple[Committed, bytes]:
    data = sorted(chest_ct_dir.glob("*.dcm"))[0].read_bytes()
    incoming = spool.incoming()
    incoming.write(data)
    return spool.commit(incoming, read_header(data), sync=False), data


def test_auto_groups_the_flush_while_little_waits_to_be_written(
    tmp_path: Path, chest_ct_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DirtyPages, "waiting_bytes", lambda self: QUIET_DIRTY_BYTES)
    spool = Spool(tmp_path / "spool", 0, fsync="auto")
    committed, data = _commit(spool, chest_ct_dir)
    assert committed.pending, "a quiet disk should share one syncfs for the file and its row"
    spool.sync()
    assert committed.path.read_bytes() == data


def test_auto_flushes_only_the_instance_behind_another_program_s_unwritten_data(
    tmp_path: Path, chest_ct_dir: Path
) -> None:
    other = tmp_path / "another-program.bin"
    with open(other, "wb") as handle:  # 64 MiB left dirty in the page cache, as a copy would
        for _ in range(64):
            handle.write(os.urandom(1 << 20))
    spool = Spool(tmp_path / "spool", 0, fsync="auto")
    waiting = DirtyPages().waiting_bytes()
    assert waiting is not None and waiting > QUIET_DIRTY_BYTES
    committed, data = _commit(spool, chest_ct_dir)
    assert not committed.pending, "the instance waited for another program's 64 MiB"
    assert committed.path.read_bytes() == data


@pytest.mark.parametrize("mode", ["grouped", "per_file"])
def test_the_fixed_modes_keep_their_flush_whatever_the_disk(
    tmp_path: Path, chest_ct_dir: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DirtyPages, "waiting_bytes", lambda self: 1 << 40)
    committed, _ = _commit(Spool(tmp_path / "spool", 0, fsync=mode), chest_ct_dir)  # type: ignore[arg-type]
    assert committed.pending is (mode == "grouped")
