"""Looking at the store and copying it without holding the event loop: SQLite's own
consistency check (`quick_check`) on a read-only connection of its own, interruptible from
another thread, and a consistent copy of the ledger (`VACUUM INTO`). Used by the storage
watch (gated/storage_watch.py) and by `gated store check` / `gated store backup`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

from sync.store import open_reader
from sync.store.db import uri


class IntegrityCheck:
    """SQLite's own consistency check of every page (`quick_check`: without the slow
    cross-check of indexes against tables) of the ledger and the replica, on a read-only
    connection of its own. `run` is for a worker thread; `interrupt` from any thread."""

    def __init__(self, ledger: Path, replica: Path, started: datetime):
        self.ledger = ledger
        self.replica = replica
        self.started = started
        self.seconds: float | None = None
        self._conn: sqlite3.Connection | None = None
        self._stopped = False
        self._lock = threading.Lock()

    def run(self) -> list[str]:
        """["ok"], or the problems SQLite found (at most 20)."""
        t0 = time.monotonic()
        conn = open_reader(self.ledger, self.replica)
        try:
            with self._lock:
                if self._stopped:
                    raise sqlite3.OperationalError("interrupted")
                self._conn = conn
            return [str(r[0]) for r in conn.execute("PRAGMA quick_check(20)")]
        finally:
            with self._lock:
                self._conn = None
            conn.close()
            self.seconds = round(time.monotonic() - t0, 3)

    def interrupt(self) -> None:
        with self._lock:
            self._stopped = True
            if self._conn is not None:
                self._conn.interrupt()


def quick_check(db: Path) -> bool:
    """The check above, of the ledger at `db` and the replica it names: True when clean."""
    conn = open_reader(db)
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows] == ["ok"]


def backup(db: Path, dest: Path) -> None:
    """A consistent copy of the ledger `db` at `dest` (atomically replaced), without
    holding writers: VACUUM INTO reads one snapshot of the WAL database on a connection of
    its own. The replica is not copied: the central system sends it again."""
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(uri(db, "ro"), uri=True, timeout=10)
    try:
        conn.execute("VACUUM INTO ?", (str(tmp),))
    finally:
        conn.close()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


__all__ = ["IntegrityCheck", "backup", "quick_check"]
