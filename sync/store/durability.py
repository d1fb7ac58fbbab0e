"""Commits made durable off the event loop.

The ledger's connection commits with `synchronous=NORMAL`: in WAL mode a COMMIT then writes
its frames to the write-ahead log (the page cache) and returns, and SQLite fsyncs only at
checkpoints. What must survive a power cut is then made so here: `WalSync.flushed()`
returns once every commit made before it was called is on disk — an `fdatasync` of the
WAL file, run in a thread of its own, so no fsync ever holds the event loop (a tap at
another gate, a Modbus poll, the console go on while one waits for the disk). The tap
path awaits it where the rules of the ledger need it: a grant's intent before the relay
is pulsed, a tap's commit before its answer, a lockdown before it is reported done.
Several waiting at once share one flush (group commit).

SQLite's WAL recovery keeps the database consistent whatever part of the log reached the
disk (frames are checksummed; a torn tail is ignored), so a commit not yet flushed is at
worst lost whole in a power cut — never half-applied. What nothing waits for (alarms,
acks, a peer's events) is flushed within `idle_flush` by the same thread. Nothing leaves the
gate before it is flushed: the uplink and the catch-up answers await `flushed()` for the
events they send (sync/link/port.py), so a seq the others hold is never lost and reused
(nor by a ledger put back from a copy: the last seq sent is kept beside it,
sync/store/sent_mark.py).

A failing flush (an I/O error, the disk gone) is raised to every waiter: the tap path
takes it as the storage fault it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class WalSync:
    def __init__(self, db: Path, *, idle_flush: float = 1.0, fsync: Callable[[int], None] = os.fdatasync):
        self.wal = Path(str(db) + "-wal")
        self.idle_flush = idle_flush
        self._fsync = fsync
        self._committed = 0  # commits so far (on the loop)
        self._synced = 0  # commits known on disk
        self._fd: int | None = None
        self._ino: int | None = None
        self._lock = threading.Lock()  # the fd is opened and closed from the flushing thread too
        # A thread of its own, not the loop's default pool: the console's searches and
        # exports run there, and a grant must never queue behind them for its flush.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-sync")
        self._flushing: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self.flushes = 0  # how many fdatasyncs (fewer than commits: group commit)

    def committed(self) -> None:
        """A transaction committed (Transactions calls this after each COMMIT)."""
        self._committed += 1
        if self._idle is None:
            with contextlib.suppress(RuntimeError):  # no loop (a tool, a test): nothing to schedule
                loop = asyncio.get_running_loop()
                self._idle = loop.call_later(self.idle_flush, self._flush_idle)

    @property
    def pending(self) -> bool:
        return self._synced < self._committed

    async def flushed(self) -> None:
        """Until every commit made so far is on disk (raises OSError if it cannot be)."""
        target = self._committed
        while self._synced < target:
            fut = self._in_flight() or self._start_flush()
            # shielded: a tap cancelled while it waits must not cancel the flush others share
            await asyncio.shield(fut)

    def flush_now(self) -> None:
        """The same, synchronously (start-up, a probe, closing): for code off the tap path."""
        target = self._committed
        self._sync_file()
        self._synced = max(self._synced, target)

    def _in_flight(self) -> asyncio.Future[None] | None:
        """The flush under way, if one is. A flush that is done but not yet booked (its
        `done` queued behind the caller) is not: awaiting a done future does not yield, so a
        waiter looping on it would hold the event loop for ever. A new flush is cheap."""
        fut = self._flushing
        return fut if fut is not None and not fut.done() else None

    def _start_flush(self) -> asyncio.Future[None]:
        """One fdatasync on the flushing thread for every commit made so far. The future is
        the executor's own (no task around it: one loop turn less on the way to a relay);
        its first callback records what it made durable, before any waiter resumes."""
        target = self._committed
        fut = asyncio.get_running_loop().run_in_executor(self._thread, self._sync_file)

        def done(f: asyncio.Future[None]) -> None:
            if not f.cancelled() and f.exception() is None:  # an error is the waiters' to raise
                self._synced = max(self._synced, target)
                self.flushes += 1

        fut.add_done_callback(done)
        self._flushing = fut
        return fut

    def _flush_idle(self) -> None:
        self._idle = None
        if self.pending and self._in_flight() is None:
            self._start_flush()  # nobody waits: `done` retrieves a failure, which the next waiter meets again

    def _sync_file(self) -> None:
        with self._lock:
            fd = self._open()
            if fd is not None:
                self._fsync(fd)

    def _open(self) -> int | None:
        """The WAL's fd, opened again when the file was replaced (a rescue, a restart of the
        log): fdatasync acts on the file the fd names, which must be the one SQLite writes."""
        try:
            st = os.stat(self.wal)
        except FileNotFoundError:
            return None  # nothing written yet: nothing to flush
        if self._fd is not None and self._ino == st.st_ino:
            return self._fd
        self._close_fd()
        self._fd = os.open(self.wal, os.O_RDONLY | os.O_CLOEXEC)
        self._ino = st.st_ino
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._thread.shutdown(wait=True)  # a flush under way finishes before its fd is closed
        with self._lock:
            self._close_fd()


__all__ = ["WalSync"]
