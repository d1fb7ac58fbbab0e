"""Opening the daemon's SQLite database, and keeping its write-ahead log short."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class _LogSeen:
    """A log file as its last checkpoint left it."""

    mtime_ns: int | None  # None: not yet checkpointed by this thread
    size: int
    at: float  # time.monotonic()
    settled: bool = False  # its mtime was well before the checkpoint (see Checkpointer.due)


# A file's times move by the kernel's clock tick, not by the nanosecond: a write within a
# tick of the one a checkpoint saw leaves the mtime as it was. A checkpoint taken longer
# than this after the mtime it saw cannot have missed a write that way.
TICK_NS = 50_000_000


class Checkpointer:
    """Keeps the WALs short from a thread of its own (PASSIVE: never blocks the writer).

    A file's log is checkpointed when it has been written since its last checkpoint and
    either it has grown MIN_BYTES past the size that checkpoint left it at, or EVERY
    seconds have gone by. Not whenever the log file is MIN_BYTES long: a log is written
    again from its start once checkpointed and keeps its size, so that test, once passed,
    passed for good, and every commit was followed by a checkpoint and its fsync of the
    database file, on the disk the taps' own flushes wait for.

    What the log holds is read from the file's size and time only (a stat, no file
    opened): closing any descriptor of a file SQLite has open in this process would drop
    the locks SQLite holds on it (POSIX record locks belong to the process), and the
    WAL-index a reader of the -shm file would want is under such locks.

    `paths` is asked each round which files to look after (the ledger, and whichever
    replica file is current)."""

    INTERVAL = 0.5
    MIN_BYTES = 4 * 1024 * 1024
    EVERY = 60.0  # seconds

    def __init__(self, paths: Callable[[], list[Path]]):
        self.paths = paths
        self._seen: dict[Path, _LogSeen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def due(self, path: Path, now: float) -> bool:
        """Is `path`'s log to be checkpointed now? (If so, it is taken as done.)"""
        try:
            st = Path(str(path) + "-wal").stat()
        except OSError:  # no log, or a fault of the store's own to see (sync/store/faults.py)
            return False
        seen = self._seen.setdefault(path, _LogSeen(None, 0, now))
        if st.st_mtime_ns == seen.mtime_ns and seen.settled:
            return False  # not written since
        if st.st_size - seen.size < self.MIN_BYTES and now - seen.at < self.EVERY:
            return False
        # as it is before the checkpoint: a write during it is seen next round
        settled = time.time_ns() - st.st_mtime_ns > TICK_NS
        self._seen[path] = _LogSeen(st.st_mtime_ns, st.st_size, now, settled)
        return True

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _run(self) -> None:
        conns: dict[Path, sqlite3.Connection] = {}
        try:
            while not self._stop.wait(self.INTERVAL):
                paths = self.paths()
                for p in [p for p in conns if p not in paths]:
                    conns.pop(p).close()
                for p in [p for p in self._seen if p not in paths]:
                    del self._seen[p]
                for path in paths:
                    if not self.due(path, time.monotonic()):
                        continue
                    try:
                        conn = conns.get(path)
                        if conn is None:
                            # mode=rw: never create a file a switch has just deleted
                            conn = conns[path] = sqlite3.connect(
                                uri(path, "rw"), uri=True, isolation_level=None, timeout=1.0
                            )
                        self.checkpoint(conn)
                    except sqlite3.Error:
                        # busy or closing: try again next round
                        self._seen.pop(path, None)
        finally:
            for conn in conns.values():
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
