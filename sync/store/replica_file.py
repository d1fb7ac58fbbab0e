"""Where the replica lives on disk, and how one replica file replaces another.

Beside the ledger `gated.db` live `gated.replica-<generation>-<random>.db` files. The
ledger's meta names the current one (`replica.file`); the store ATTACHes it to its
connection AS `replica`. A snapshot is built into a new file by a worker process
(sync/snapshot/worker.py) and switched in by `Store.switch_replica`: one ledger
transaction moves the pointer, then DETACH/ATTACH, then — once that transaction is on
disk — the old file is deleted. Any
replica file the pointer does not name is an orphan — a build a crash cut short, or an
old file a crash kept from being deleted — and is removed at the next start.

The random part keeps two builds of the same generation (a killed daemon's worker still
finishing while the restarted daemon builds again) from ever sharing a file name, and so
a `-wal` or `-shm`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sqlite3
from pathlib import Path

SIDE_FILES = ("", "-wal", "-shm", "-journal")


class ReplicaFiles:
    def __init__(self, ledger: Path):
        self.ledger = ledger
        self.dir = ledger.parent
        self.stem = ledger.stem

    def new_path(self, generation: int) -> Path:
        return self.dir / f"{self.stem}.replica-{generation}-{secrets.token_hex(4)}.db"

    def spool_path(self) -> Path:
        """Where a snapshot's chunks wait for the worker (see sync/snapshot/importer.py)."""
        return self.dir / f"{self.stem}.snapshot-{secrets.token_hex(4)}.spool"

    def ours(self) -> list[Path]:
        """Every replica and spool file of this ledger (side files included)."""
        out = []
        for p in self.dir.glob(f"{self.stem}.replica-*.db*"):
            out.append(p)
        for p in self.dir.glob(f"{self.stem}.snapshot-*.spool"):
            out.append(p)
        return sorted(out)

    def remove_orphans(self, current: str | None) -> list[Path]:
        """Delete every replica and spool file but `current` (a name in this directory)
        and its side files. Returns what was deleted."""
        keep = {current + s for s in SIDE_FILES} if current else set()
        gone = []
        for p in self.ours():
            if p.name not in keep:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    gone.append(p)
        return gone

    @staticmethod
    def remove(path: Path) -> None:
        for s in SIDE_FILES:
            with contextlib.suppress(FileNotFoundError):
                Path(str(path) + s).unlink()

    def fsync(self, path: Path) -> None:
        """The file's bytes and its directory entry on disk."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def copy_store(src: Path, dst: Path) -> None:
    """Copy a closed store — its ledger and its replica — to the ledger path `dst` (bench
    and test fixtures; a running daemon's ledger is backed up with SQLite's `.backup`,
    and the replica is a cache the central system sends again)."""
    shutil.copyfile(src, dst)
    conn = sqlite3.connect(str(dst), isolation_level=None)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'replica.file'").fetchone()
        gen = conn.execute("SELECT value FROM meta WHERE key = 'replica.generation'").fetchone()
        if row is None:
            return
        target = ReplicaFiles(dst).new_path(int(gen[0]) if gen else 1)
        shutil.copyfile(src.parent / str(row[0]), target)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'replica.file'", (target.name,))
    finally:
        conn.close()
