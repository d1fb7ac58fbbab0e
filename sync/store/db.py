"""Opening the daemon's SQLite database, and keeping its write-ahead log short."""

from __future__ import annotations

import contextlib
import sqlite3
import struct
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


def wal_pending_bytes(path: Path) -> int:
    """How much of `path`'s write-ahead log is not yet checkpointed, in bytes, as its
    WAL-index says (the -shm file; https://www.sqlite.org/walformat.html, section 2.2: in
    native byte order, `mxFrame` at byte 16 of the first header copy, `nBackfill` at byte
    96). Not the log file's size: a log is reused from its start once checkpointed and
    keeps its size, so a size test, once passed, passes for good. Read without SQLite's
    locks: a torn read can only make one round check too early or too late. 0 when there
    is no log in use."""
    try:
        with open(str(path) + "-shm", "rb") as f:
            header = f.read(100)
    except OSError:
        return 0
    if len(header) < 100:
        return 0
    page = int(_U16.unpack_from(header, 14)[0])
    frames = int(_U32.unpack_from(header, 16)[0])
    backfilled = int(_U32.unpack_from(header, 96)[0])
    page = 65536 if page == 1 else page
    return max(0, frames - backfilled) * (page + 24)  # a frame: its 24-byte header and a page


_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")


class Checkpointer:
    """Keeps the WALs short from a thread of its own (PASSIVE: never blocks the writer),
    once MIN_BYTES of a log wait to be copied back: with 100 taps a second that is every
    few seconds, at a site's usual pace a few times an hour. Each checkpoint ends with an
    fsync of the database file, on the disk the taps' own flushes wait for.

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
                    if wal_pending_bytes(path) < self.MIN_BYTES:
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
