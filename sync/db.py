"""Opening the daemon's SQLite database, and keeping its write-ahead log short."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


def connect(path: Path, *, durable: bool) -> sqlite3.Connection:
    """The daemon's one writing connection: WAL, autocommit mode (transactions are
    explicit), usable from the console's worker threads for reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed deduction survives a power cut, not only a process crash
    conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=OFF")
    # Checkpoints copy the WAL back into the database file: seconds of I/O after a big
    # snapshot. Done by a background thread on its own connection (Checkpointer), never
    # inside a tap's commit on the event loop.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


class Checkpointer:
    """Keeps the WAL short from a thread of its own (PASSIVE: never blocks the writer)."""

    INTERVAL = 0.5
    MIN_BYTES = 4 * 1024 * 1024

    def __init__(self, path: Path):
        self.path = path
        self.wal = Path(str(path) + "-wal")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.INTERVAL):
                try:
                    if self.wal.stat().st_size < self.MIN_BYTES:
                        continue
                except FileNotFoundError:
                    continue
                try:
                    if conn is None:
                        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=1.0)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or closing: try again next round
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
