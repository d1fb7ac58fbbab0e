"""sync/store/durability.py: commits made durable off the event loop. The ledger commits without
an fsync on the loop (synchronous=NORMAL); `flushed()` is an fdatasync of its log in a
thread, shared by whoever waits at the same time (group commit), raised to each when it
fails, and a slow disk never holds the loop."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rules.model import Site
from sync.store import Store
from sync.store.db import Checkpointer
from sync.store.durability import WalSync

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
SITE = Site(id="s1", timezone=ZoneInfo("Europe/Madrid"))


def wal_of(tmp: Path, fsync: object) -> WalSync:
    """A WalSync over a log file of its own (what SQLite would have written)."""
    (tmp / "g.db-wal").write_bytes(b"frames")
    return WalSync(tmp / "g.db", fsync=fsync)  # type: ignore[arg-type]


def emit(store: Store, n: int = 1) -> None:
    for _ in range(n):
        with store.transaction() as tx:
            tx.emit("note", NOW)


async def test_waiters_at_the_same_time_share_one_flush(tmp_path: Path) -> None:
    calls: list[int] = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        time.sleep(0.05)
        os.fdatasync(fd)

    wal = wal_of(tmp_path, slow_fsync)
    try:
        wal.committed()
        first = asyncio.ensure_future(wal.flushed())
        await asyncio.sleep(0.01)  # the first flush is under way
        for _ in range(3):
            wal.committed()
        await asyncio.gather(first, *(wal.flushed() for _ in range(5)))
        assert not wal.pending
        assert len(calls) == 2  # six waiters, four commits: two flushes
        await wal.flushed()  # nothing new: nothing to do
        assert len(calls) == 2
    finally:
        wal.close()


async def test_a_slow_disk_never_holds_the_event_loop(tmp_path: Path) -> None:
    stuck = threading.Event()

    def stalled_fsync(fd: int) -> None:
        stuck.wait(0.5)  # a disk busy with another process's writes

    wal = wal_of(tmp_path, stalled_fsync)
    try:
        wal.committed()
        waiting = asyncio.ensure_future(wal.flushed())
        lags = []
        for _ in range(20):  # the loop goes on: another gate's tap, a Modbus poll
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)
        assert not waiting.done() and max(lags) < 0.1
        stuck.set()
        await waiting
    finally:
        wal.close()


async def test_a_failing_flush_is_raised_to_every_waiter_and_retried(tmp_path: Path) -> None:
    failing = [True]

    def fsync(fd: int) -> None:
        if failing[0]:
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)

    wal = wal_of(tmp_path, fsync)
    try:
        wal.committed()
        results = await asyncio.gather(wal.flushed(), wal.flushed(), return_exceptions=True)
        assert all(isinstance(r, OSError) for r in results)
        assert wal.pending  # not on disk: a later flush tries again
        failing[0] = False
        await wal.flushed()
        assert not wal.pending
    finally:
        wal.close()


async def test_the_log_replaced_behind_the_store_is_flushed_where_sqlite_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", SITE, background_checkpoints=False)
    try:
        emit(store)
        await store.flushed()
        assert store.wal_sync is not None
        first = store.wal_sync._ino
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        wal = Path(str(store.path) + "-wal")
        wal.unlink()  # as the rescue or a restart would leave it: a new file
        store.reopen()
        emit(store)
        await store.flushed()
        assert store.wal_sync._ino == os.stat(wal).st_ino != first
    finally:
        store.close()


def test_without_a_loop_it_flushes_when_asked(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", SITE, background_checkpoints=False)
    try:
        emit(store, 2)
        assert store.wal_sync is not None and store.wal_sync.pending
        store.flush_now()
        assert not store.wal_sync.pending
    finally:
        store.close()


@pytest.mark.parametrize("durable", [False])
def test_a_store_that_is_not_durable_has_nothing_to_flush(tmp_path: Path, durable: bool) -> None:
    store = Store(tmp_path / "g.db", SITE, durable=durable, background_checkpoints=False)
    try:
        emit(store)
        assert store.wal_sync is None
        asyncio.run(store.flushed())
    finally:
        store.close()


async def test_a_flush_does_not_queue_behind_the_loops_other_threads(tmp_path: Path) -> None:
    """The console's searches and exports run in the loop's default pool: a grant's
    flush has a thread of its own and never waits for them."""
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    busy = threading.Event()
    searching = loop.run_in_executor(None, busy.wait, 5.0)  # the pool's one thread taken
    wal = wal_of(tmp_path, os.fdatasync)
    try:
        wal.committed()
        await asyncio.wait_for(wal.flushed(), 1.0)
        assert not wal.pending and not searching.done()
    finally:
        busy.set()
        await searching
        wal.close()


async def test_a_waiter_cancelled_leaves_the_shared_flush_to_the_others(tmp_path: Path) -> None:
    release = threading.Event()

    def slow_fsync(fd: int) -> None:
        release.wait(2.0)
        os.fdatasync(fd)

    wal = wal_of(tmp_path, slow_fsync)
    try:
        wal.committed()
        gone = asyncio.ensure_future(wal.flushed())  # a tap cancelled while it waits (shutdown)
        stays = asyncio.ensure_future(wal.flushed())
        await asyncio.sleep(0.02)
        gone.cancel()
        await asyncio.sleep(0.02)
        release.set()
        await asyncio.wait_for(stays, 2.0)
        assert gone.cancelled() and not wal.pending and wal.flushes == 1
    finally:
        wal.close()


def _within(seconds: float, scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `scenario` on a loop of its own in a thread: a loop that spins for ever fails the
    test instead of hanging it (nothing on the loop could time it out)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "the event loop was held: flushed() never yielded"
    if errors:
        raise errors[0]


def test_a_flush_done_but_not_yet_booked_is_not_awaited_in_a_spin(tmp_path: Path) -> None:
    """A flush completes; before its bookkeeping callback runs, a tap asks for the log to be
    flushed. Awaiting the done future does not yield, so waiting on it again and again
    held the event loop for good (a daemon stopped answering, taps and all: found by the
    RTU bench's test). Such a waiter starts a flush of its own instead."""

    async def scenario() -> None:
        wal = wal_of(tmp_path, os.fdatasync)
        try:
            wal.committed()
            finished = asyncio.get_running_loop().create_future()
            finished.set_result(None)  # its `done` callback not run: queued behind us
            wal._flushing = finished
            await wal.flushed()
            assert not wal.pending
        finally:
            wal.close()

    _within(5.0, scenario)


def test_many_taps_flushing_at_once_all_return(tmp_path: Path) -> None:
    """Commits and flushes interleaved from many tasks on a fast disk: every waiter
    returns, with its commits on disk, and the loop is never held."""

    async def scenario() -> None:
        wal = wal_of(tmp_path, lambda fd: None)
        try:
            async def tap(i: int) -> None:
                for _ in range(20):
                    wal.committed()
                    await wal.flushed()
                    await asyncio.sleep(0 if i % 2 else 0.0001)

            await asyncio.gather(*(tap(i) for i in range(50)))
            assert not wal.pending
        finally:
            wal.close()

    _within(20.0, scenario)


class Counted(Checkpointer):
    """A Checkpointer that counts its checkpoints, with rounds 50 times as often."""

    INTERVAL = 0.01
    MIN_BYTES = 64 * 1024

    def __init__(self, paths: Callable[[], list[Path]]):
        self.done = 0
        super().__init__(paths)

    def checkpoint(self, conn: sqlite3.Connection) -> None:
        super().checkpoint(conn)
        self.done += 1


def _rounds(checkpoints: Checkpointer, n: int = 20) -> None:
    time.sleep(n * checkpoints.INTERVAL)


def _settled(checkpoints: Counted, at_least: int = 1, quiet_rounds: int = 30) -> int:
    """Its count once it has reached `at_least` and then not moved for `quiet_rounds`
    (a loaded machine may run its thread late: waited for, up to 10 s)."""
    deadline = time.monotonic() + 10
    last, since = checkpoints.done, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(checkpoints.INTERVAL)
        if checkpoints.done != last:
            last, since = checkpoints.done, time.monotonic()
        elif last >= at_least and time.monotonic() - since >= quiet_rounds * checkpoints.INTERVAL:
            break
    return checkpoints.done


def test_a_log_that_kept_its_size_is_not_checkpointed_after_every_commit(tmp_path: Path) -> None:
    """A log is written again from its start once checkpointed and keeps its size: a
    test of its size passed for good, and every commit was followed by a checkpoint and
    its fsync of the database file."""
    store = Store(tmp_path / "g.db", SITE, background_checkpoints=False)
    checkpoints = Counted(lambda: [store.path])
    try:
        emit(store, 300)  # well over MIN_BYTES of log
        # quiet for a second: on a loaded machine the thread's checkpoint of these came 0.3 s
        # late, and was counted as one of the small writes' below (one failure in a unit run)
        settled = _settled(checkpoints, quiet_rounds=100)
        assert settled >= 1
        assert Path(str(store.path) + "-wal").stat().st_size > Counted.MIN_BYTES
        for _ in range(5):
            emit(store, 2)  # a little, written over the log's start
            _rounds(checkpoints)
        assert checkpoints.done == settled  # left for later
        emit(store, 600)  # written over the old log and grown MIN_BYTES past its end
        assert _settled(checkpoints, settled + 1) > settled
    finally:
        checkpoints.stop()
        store.close()


def test_a_little_log_is_checkpointed_in_time_and_an_unwritten_one_not_at_all(tmp_path: Path) -> None:
    class Often(Counted):
        EVERY = 0.1

    store = Store(tmp_path / "g.db", SITE, background_checkpoints=False)
    checkpoints = Often(lambda: [store.path])
    try:
        emit(store, 2)
        # once, or twice when the first came within a clock tick of the write (Checkpointer.due)
        done = _settled(checkpoints)
        assert 1 <= done <= 2
        _rounds(checkpoints, 50)  # nothing written since
        assert checkpoints.done == done
    finally:
        checkpoints.stop()
        store.close()


def _posix_locks(path: Path) -> set[tuple[str, str, str]]:
    """This process's POSIX record locks on `path`, from /proc/locks."""
    ino = os.stat(path).st_ino
    held = set()
    with open("/proc/locks") as f:
        for line in f:
            # 1: POSIX  ADVISORY  READ 1234 fd:01:5678 128 128   (waiters have a "->")
            fields = line.split()
            if "->" in fields or fields[1] != "POSIX" or int(fields[4]) != os.getpid():
                continue
            if int(fields[5].rsplit(":", 1)[1]) == ino:
                held.add((fields[3], fields[6], fields[7]))
    return held


def test_the_checkpointer_leaves_sqlites_locks_alone(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops the process's POSIX locks on it, SQLite's
    included. A reader of the WAL-index (-shm) that opened and closed it dropped the
    lock by which this process's connections say they use the index; the next
    connection of another process (the snapshot worker reads the ledger) took the index
    for unused and truncated it under this process's mapping: SIGBUS."""
    store = Store(tmp_path / "g.db", SITE, background_checkpoints=False)
    checkpoints = Counted(lambda: [store.path])
    shm = Path(str(store.path) + "-shm")
    dms = ("READ", "128", "128")  # SQLite's "the index is in use" lock (src/os_unix.c, UNIX_SHM_DMS)
    try:
        emit(store)
        assert dms in _posix_locks(shm)
        for _ in range(3):
            emit(store, 150)
            _rounds(checkpoints, 10)
        assert _settled(checkpoints) >= 1
        assert dms in _posix_locks(shm)
    finally:
        checkpoints.stop()
        store.close()


def test_a_write_within_the_clock_tick_a_checkpoint_saw_is_not_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's mtime moves by the kernel's clock tick: a write just after the one a
    checkpoint saw can leave it as it was."""

    class Idle(Checkpointer):  # rounds by hand (`due`), none of its own
        INTERVAL = 3600.0
        MIN_BYTES = 1 << 30
        EVERY = 10.0

    store = Store(tmp_path / "g.db", SITE, background_checkpoints=False)
    checkpoints = Idle(lambda: [store.path])
    wal = Path(str(store.path) + "-wal")
    try:
        emit(store)
        m = wal.stat().st_mtime_ns
        with monkeypatch.context() as mp:
            mp.setattr("sync.store.db.time.time_ns", lambda: m + 1_000_000)  # a millisecond after that write
            assert not checkpoints.due(store.path, 0.0)
            assert checkpoints.due(store.path, 11.0)
            emit(store)
            os.utime(wal, ns=(m, m))  # in the same tick: the mtime did not move
            assert not checkpoints.due(store.path, 12.0)
            assert checkpoints.due(store.path, 22.0)  # not left behind
            mp.setattr("sync.store.db.time.time_ns", lambda: m + 1_000_000_000)
            assert checkpoints.due(store.path, 33.0)  # seen now long after its mtime: settled
            assert not checkpoints.due(store.path, 44.0)
            assert not checkpoints.due(store.path, 99.0)
    finally:
        checkpoints.stop()
        store.close()
