"""Opening the daemon's SQLite database, and keeping its write-ahead log short."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote


def connect(path: Path, *, durable: bool) -> sqlite3.Connection:
    """The daemon's one writing connection: WAL, autocommit mode (transactions are
    explicit), usable from the console's worker threads for reads.

    NORMAL either way: a COMMIT writes the log and returns, no fsync on the caller's
    thread (the event loop). With `durable`, the store flushes the log itself, off the
    loop (sync/store/durability.py), and the tap path waits for that flush where a power cut
    must not take what it did: a committed deduction survives a power cut, not only a
    process crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=OFF")
    # Checkpoints copy the WAL back into the database file: seconds of I/O after a big
    # snapshot. Done by a background thread on its own connection (Checkpointer), never
    # inside a tap's commit on the event loop.
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def uri(path: Path, mode: str) -> str:
    """An SQLite URI for `path` (`ro`: read only; `rw`: read-write, never created)."""
    return f"file:{quote(str(path.resolve()))}?mode={mode}"


class Checkpointer:
    """Keeps the WALs short from a thread of its own (PASSIVE: never blocks the writer).

    `paths` is asked each round which files to look after (the ledger, and whichever
    replica file is current)."""

    INTERVAL = 0.5
    MIN_BYTES = 4 * 1024 * 1024

    def __init__(self, paths: Callable[[], list[Path]]):
        self.paths = paths
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conns: dict[Path, sqlite3.Connection] = {}
        try:
            while not self._stop.wait(self.INTERVAL):
                paths = self.paths()
                for p in [p for p in conns if p not in paths]:
                    conns.pop(p).close()
                for path in paths:
                    try:
                        if Path(str(path) + "-wal").stat().st_size < self.MIN_BYTES:
                            continue
                    except FileNotFoundError:
                        continue
                    try:
                        conn = conns.get(path)
                        if conn is None:
                            # mode=rw: never create a file a switch has just deleted
                            conn = conns[path] = sqlite3.connect(
                                uri(path, "rw"), uri=True, isolation_level=None, timeout=1.0
                            )
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error:
                        pass  # busy or closing: try again next round
        finally:
            for conn in conns.values():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
