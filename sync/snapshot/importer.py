"""Importing a full snapshot without stopping the gate: built off the event loop by a
worker process, switched in whole in a few milliseconds, crash-safe at every instant.

A snapshot of a large chain (100,000 members, 150,000 passes, 300,000 bookings; a
million members for the biggest) is too much to validate and index on the loop that
decides taps, and must never be seen half old, half new. So:

1. **Receive** (loop, per chunk, well under a millisecond): the link reads only the
   chunk's header (`SnapshotHeader`: id, number, count, delta_seq), checks the order and
   writes the payload as received down a pipe to the worker, whose reader thread appends
   it to a spool file. The spool, not memory, absorbs a snapshot arriving faster than it
   is built; no file is written from the loop.
2. **Build** (worker process, `python -m sync.snapshot.worker`): validates every chunk
   in full, writes the rows into a new replica file (bare tables, no journal), builds
   the indexes, computes what the switch must tell the ledger, fsyncs the file. A
   process rather than a thread: parsing half a million records in a thread would
   contend for the GIL with the loop and stall taps. It runs at a lower CPU priority.
3. **Switch** (loop, a few ms): `Store.switch_replica` — DETACH the old file, ATTACH the
   new one, one ledger transaction moving the pointer (sync/store/store.py); once that
   transaction is flushed to disk, delete the old file.

Taps go on deciding from the current replica and committing to the ledger throughout.
A tap decided on the old replica and committed after the switch stays right: the ledger
records by ids, balances are derived from the central balance and the ledger's own
deductions at every read, outcomes are ledger rows by booking id — nothing the replica
holds is ever copied into it, so nothing can be lost or doubled by replacing it.

Kill -9 or a power cut at any instant: before the switch's ledger COMMIT reaches the disk
the old replica is current and whole (the new file and the spool are orphans, deleted at
the next start); after it, the new one. The ledger is only written by the daemon's own
transactions.

Deltas that arrive while `active` are the link's to hold and apply, in order, after
`finish` returns (the snapshot's `delta_seq` is the replica's then).

The link's side of it (sync/link/port.py), in order:

    await importer.begin(header, now)             # chunk 0; abandons one in progress
    last = await importer.add(header, payload)    # every chunk, in order
    report = await importer.built()               # after the last: the worker is done
    await importer.switch()                       # the new replica is in place
    await importer.abort()                        # on any SnapshotError, or giving up

(`finish()` is `built()` then `switch()`.) Between `built` and `switch` the link may
decide not to switch after all (the session's guard against a snapshot that would
remove most members reads the report's counts). `active` is true from `begin` until
`switch` returns or `abort`; `store.replica_generation` moves on at each switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from sync.protocol import SnapshotChunk, SnapshotHeader
from sync.snapshot.wire import END, Built, EventReader, Failed, chunk_header
from sync.store import Store
from sync.store.replica_file import ReplicaFiles

log = logging.getLogger("gated.sync.snapshot")
F_SETPIPE_SZ = 1031


def delta_seq(store: Store) -> int:
    return store.delta_seq


class SnapshotError(Exception):
    pass


class SnapshotRejected(SnapshotError):
    """The worker found a chunk invalid (its message says which and why)."""


def payload_of(chunk: SnapshotChunk) -> bytes:
    """A chunk as the central system would publish it (tests, tools)."""
    return chunk.model_dump_json(by_alias=True, exclude_none=True).encode()


class SnapshotImporter:
    """One snapshot at a time: `begin`, `add` every chunk in order, `finish` (module doc)."""

    def __init__(self, store: Store, daemon_id: str, *, batch_rows: int = 500):
        self.store = store
        self.daemon_id = daemon_id
        self.batch_rows = batch_rows
        self.snapshot_id: str | None = None
        self.chunks = 0
        self.next_chunk = 0
        self.base_delta_seq = 0
        self.requested_by: list[str] = []
        self.started = 0.0
        self.report: dict[str, Any] = {}  # the last build's figures (bench, logs)
        self._proc: asyncio.subprocess.Process | None = None
        self._paths: tuple[Path, Path | None] | None = None  # (spool, replica being built)
        self._done: asyncio.Future[dict[str, Any]] | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stderr: deque[str] = deque(maxlen=20)
        self._ended = False  # `end` written to the worker
        self._killed = False  # by `abort`: a SIGKILL that is ours

    @property
    def active(self) -> bool:
        return self.snapshot_id is not None

    # -- the steps ------------------------------------------------------------------------

    async def begin(self, header: SnapshotHeader, now: datetime) -> None:
        if header.chunk != 0:
            raise SnapshotError("a snapshot starts with chunk 0")
        await self.abort()
        store = self.store
        # what a killed run left (large files: unlinked off the loop)
        await asyncio.to_thread(store.files.remove_orphans, store.replica_path.name)
        spool, replica = store.files.spool_path(), store.files.new_path(store.replica_generation + 1)
        self._paths = (spool, replica)
        params = {
            "replica": str(replica),
            "ledger": str(store.path),
            "current": str(store.replica_path),
            "spool": str(spool),
            "timezone": store.site.timezone.key,
            "daemon": self.daemon_id,
            "snapshot_id": header.snapshot_id,
            "chunks": header.chunks,
            "delta_seq": header.delta_seq,
            "generation": store.replica_generation + 1,
            "synced_at": now.timestamp(),
            "batch_rows": self.batch_rows,
            "ten_digits": store.ten_digits.value,
        }
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._stderr.clear()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sync.snapshot.worker", json.dumps(params),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                # its own process group (`abort` stops its parsers too), in the daemon's
                # session: a session of its own would be an autogroup of its own, which the
                # kernel gives an equal share of the CPU against the daemon's, whatever
                # SCHED_IDLE says inside it
                process_group=0,
            )
        except OSError as e:
            self._discard()
            raise SnapshotError(f"cannot start the snapshot worker: {e}") from e
        # the payloads cross in big writes; the default 64 KiB mark would wake drain() per write
        assert self._proc.stdin is not None
        self._proc.stdin.transport.set_write_buffer_limits(high=4 * 1024 * 1024)
        fd = self._proc.stdin.transport.get_extra_info("pipe").fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1024 * 1024)  # Linux: fewer, larger writes
        self._readers = [
            asyncio.create_task(self._read_answers(self._proc, self._done), name="snapshot-worker-out"),
            asyncio.create_task(self._read_stderr(self._proc), name="snapshot-worker-err"),
        ]
        self.snapshot_id = header.snapshot_id
        self.chunks = header.chunks
        self.next_chunk = 0
        self.base_delta_seq = header.delta_seq
        self.requested_by = list(header.requested_by)
        self.started = time.monotonic()

    async def add(self, header: SnapshotHeader, payload: bytes) -> bool:
        """Hand one chunk to the worker; True when it was the last one (call `finish`)."""
        if header.snapshot_id != self.snapshot_id or header.chunk != self.next_chunk or header.chunks != self.chunks:
            raise SnapshotError(
                f"expected chunk {self.next_chunk}/{self.chunks} of {self.snapshot_id}, "
                f"got {header.chunk}/{header.chunks} of {header.snapshot_id}"
            )
        self._raise_if_failed()
        assert self._proc is not None and self._proc.stdin is not None
        stdin = self._proc.stdin
        stdin.write(chunk_header(len(payload)))
        stdin.write(payload)
        try:
            # the pipe's pace: the worker's reader takes it at once (to its spool file),
            # so this holds the link only as long as the bytes take to cross
            await stdin.drain()
        except (ConnectionError, RuntimeError) as e:
            self._raise_if_failed()
            raise SnapshotError(f"the snapshot worker went away: {e}") from e
        self.next_chunk += 1
        return self.next_chunk == self.chunks

    async def built(self) -> dict[str, Any]:
        """After the last chunk: wait for the worker to build the replica (the loop stays
        free) and return its report (`counts`: members, passes, ...). Raises
        SnapshotError (SnapshotRejected: invalid records); then call `abort`."""
        if self.snapshot_id is None or self.next_chunk != self.chunks:
            raise SnapshotError("snapshot incomplete")
        assert self._proc is not None and self._proc.stdin is not None and self._done is not None
        if not self._ended:
            self._ended = True
            self._proc.stdin.write(END)
        return dict(await self._done)

    async def switch(self) -> dict[str, Any]:
        """Put the built replica in place (Store.switch_replica, a few ms on the loop) and
        return the worker's report with the switch's figures. Raises SnapshotError."""
        report = await self.built()
        assert self._paths is not None and self._paths[1] is not None
        t0 = time.perf_counter()
        try:
            old = self.store.switch_replica(self._paths[1])
        except Exception as e:
            raise SnapshotError(f"cannot switch to the new replica: {e}") from e
        report["switch_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        report["seconds_since_begin"] = round(time.monotonic() - self.started, 3)
        self.report = report
        self._paths = (self._paths[0], None)  # the replica is the store's now
        # the switch on disk before the old file goes: a power cut in between would leave
        # the ledger naming a file that is gone (the daemon then starts with no replica)
        try:
            await self.store.flushed()
        except OSError as e:
            log.warning("the old replica %s is kept: the switch could not be flushed (%s)", old.name, e)
        else:
            await asyncio.to_thread(ReplicaFiles.remove, old)
        await self._close()
        return report

    async def finish(self) -> dict[str, Any]:
        """`built`, then `switch`: the whole import after the last chunk."""
        await self.built()
        return await self.switch()

    async def abort(self) -> None:
        """Forget the snapshot in progress: stop the worker, delete its files."""
        self._kill()
        await self._close()

    def abort_now(self) -> None:
        """`abort` without waiting (from a cancelled task): the worker is killed, its
        files deleted; the process is reaped by the event loop's child watcher."""
        self._kill()
        for t in self._readers:
            t.cancel()
        self._discard()

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None:
            self._killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the builder and its parsers

    async def cleanup(self) -> None:
        """Delete what a previous run left behind (spool, half-built replica)."""
        if not self.active:
            await asyncio.to_thread(self.store.files.remove_orphans, self.store.replica_path.name)

    # -- plumbing -------------------------------------------------------------------------

    def _raise_if_failed(self) -> None:
        done = self._done
        if done is not None and done.done() and (e := done.exception()) is not None:
            raise e if isinstance(e, SnapshotError) else SnapshotError(str(e))

    async def _read_answers(self, proc: asyncio.subprocess.Process, done: asyncio.Future[dict[str, Any]]) -> None:
        assert proc.stdout is not None
        events = EventReader()
        try:
            while data := await proc.stdout.read(65536):
                for ev in events.feed(data):
                    if done.done():
                        continue
                    if isinstance(ev, Built):
                        done.set_result(ev.report)
                    elif isinstance(ev, Failed):
                        done.set_exception(SnapshotRejected(f"snapshot rejected: {ev.message}"))
            code = await proc.wait()
            if not done.done():
                tail = "; ".join(self._stderr) or "no message"
                done.set_exception(SnapshotError(f"snapshot worker {self._exit_said(code)}: {tail}"))
        except asyncio.CancelledError:
            if not done.done():
                done.set_exception(SnapshotError("snapshot aborted"))
            raise
        finally:
            # nobody may be waiting for it (a failure before `finish`): mark it seen
            if done.done() and not done.cancelled():
                done.exception()

    def _exit_said(self, code: int) -> str:
        if code == -signal.SIGKILL and not self._killed:
            # not by us: the kernel's OOM killer, when the unit's memory limit is too small
            # for the site (a million members: the worker alone needs 150-195 MB)
            return 'was killed (SIGKILL, not by gated: out of memory? see docs/operations.md, "Memory")'
        return f"exited ({code})"

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            text = line.decode(errors="replace").rstrip()
            if text:
                self._stderr.append(text)
                log.warning("snapshot worker: %s", text)

    async def _close(self) -> None:
        proc = self._proc
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                if proc.returncode is None:
                    try:
                        async with asyncio.timeout(10):
                            await proc.wait()
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        if self._readers:
            await asyncio.wait(self._readers, timeout=5)
            for t in self._readers:
                t.cancel()
        if self._paths is not None:  # large files: unlinked off the loop
            spool, replica = self._paths
            await asyncio.to_thread(ReplicaFiles.remove, spool)
            if replica is not None:
                await asyncio.to_thread(ReplicaFiles.remove, replica)
        self._discard()

    def _discard(self) -> None:
        if self._paths is not None:
            spool, replica = self._paths
            with contextlib.suppress(FileNotFoundError):
                spool.unlink()
            if replica is not None:
                self.store.files.remove(replica)
        self._paths = None
        self._proc = None
        self._done = None
        self._readers = []
        self._ended = False
        self._killed = False
        self.snapshot_id = None
        self.chunks = 0
        self.next_chunk = 0


__all__ = [
    "SnapshotError",
    "SnapshotHeader",
    "SnapshotImporter",
    "SnapshotRejected",
    "delta_seq",
    "payload_of",
]
