"""`python -m sync.snapshot.worker PARAMS`: builds one snapshot's replica file in processes
of its own, so that validating and indexing half a million records never holds the
daemon's event loop (nor its GIL). Started and fed by SnapshotImporter (sync/snapshot/importer.py).

PARAMS is one JSON object: `replica` (the file to build), `ledger` and `current` (the
replica in use; both read only, for the switch lists), `spool` (where the chunks are),
`timezone`, `daemon`, `snapshot_id`,
`chunks`, `delta_seq`, `generation`, `synced_at`, `ten_digits` (how the site reads
untyped 10-digit card strings), `parsers` (parser processes; default: one per CPU, at
most 2). `batch_rows` is accepted and no longer used: each chunk is one transaction.

The importer writes each chunk on this process's stdin as received, and this process
answers on stdout, in the wire format of sync/snapshot/wire.py (`chunk LENGTH` and the
payload, `end`, `abort`; JSON event lines `progress`, `built`, `error`). End of input
without `end` (the daemon died) is an abort. The chunks wait in the spool file for the
parsers (see `_Control`). The exit status is 0 only after `built`.

The build, a pipeline over the chunks in order:
- **parse** (forked processes, lowest CPU priority; sync/snapshot/parsers.py runs
  sync/snapshot/parse.py in them):
  each chunk read from the spool and validated in full into table rows — by sync/snapshot/chunk_rows.py, the fast path,
  or, when it cannot decide, by the SnapshotChunk model and sync/store/rows.py, which also
  word any error — then written into a small in-memory SQLite database and handed
  over as its image (`Parser.pack`): a few hundred kilobytes of bytes instead of
  thousands of pickled tuples the builder would unpickle and bind one by one;
- **insert** (this process; sync/snapshot/build.py): each image, in chunk order, attached and copied into bare
  tables with one INSERT ... SELECT per table, in C (no secondary index, no journal, no
  fsync: the file is not anyone's replica until the switch, and an unfinished one is
  deleted);
- after the last chunk: the indexes (one sort each), the **switch lists** from one
  read-only look at the ledger — bookings of this replica that ended behind the
  no-show cursor without an outcome (`switch_recheck`) and the outcomes of bookings
  the replica in use has and this one lacks (`switch_clear`; a cancelled one keeps its
  outcome, and so does another daemon's attendance of a booking not yet heard of here) —
  then WAL mode, and an fsync of the file and its directory.

This module is the program: the control thread that spools the chunks and hands out
parse tasks (`_Control`), and the loop that runs the stages in order (`run`). Writing
to the disk is paced throughout (sync/snapshot/disk.py) so that the taps' fsyncs do not
wait behind a burst of writeback.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sync.snapshot.build import Build, peak_rss_mb
from sync.snapshot.disk import write_out
from sync.snapshot.parse import BuildError
from sync.snapshot.parsers import Parsers
from sync.snapshot.wire import Chunk, CommandReader, End, event_line

PROGRESS_EVERY = 50  # chunks


def _say(out: BinaryIO, event: str, **fields: Any) -> None:
    out.write(event_line(event, **fields))
    out.flush()


class _Control:
    """Receives the chunks in a thread — `chunk LENGTH`, then LENGTH bytes of payload — and
    appends them to the spool, turning each into a parse task at once (the parsers start on
    a chunk while earlier ones are being inserted). The spool takes what arrives faster
    than it is built (a whole snapshot can arrive in seconds and take a minute to build):
    its first BACKLOG bytes ahead of the builder stay in the page cache, to be read and
    punched out unwritten (a 100,000-member snapshot never reaches the disk); beyond
    that, each chunk is written out as it comes, one at a time, rather than left for the
    kernel's 30-second flush of a gigabyte."""

    BACKLOG = 256 * 1024 * 1024
    READ = 1024 * 1024  # bytes a read of the pipe takes at most (the importer's pipe buffer)
    # parse tasks handed out ahead of the builder: parsers faster than the inserts would
    # otherwise pile their rows up in this process (2 GB at 1M members)
    AHEAD = 16

    def __init__(self, control: BinaryIO, spool: Path):
        self.control = control
        self.spool = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.ended = False  # `end` seen (else: abort, or the importer went away)
        self.done = 0  # spool bytes the builder has inserted (set by the builder)
        self.tasks: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
        self.room = threading.Semaphore(self.AHEAD)  # released by the builder per chunk
        self.stopped = False
        threading.Thread(target=self._read, name="snapshot-control", daemon=True).start()

    def _read(self) -> None:
        offset = number = 0
        commands = CommandReader()
        fd = self.control.fileno()
        try:
            while not commands.closed:
                data = os.read(fd, self.READ)
                for cmd in commands.feed(data) if data else commands.feed_eof():
                    if isinstance(cmd, Chunk):
                        length = len(cmd.payload)
                        view = memoryview(cmd.payload)
                        while view:
                            view = view[os.write(self.spool, view) :]
                        if offset + length - self.done > self.BACKLOG:
                            write_out(self.spool, offset, length)
                        self.tasks.put((number, offset, length))
                        number += 1
                        offset += length
                    elif isinstance(cmd, End):
                        self.ended = True
                    # Abort (asked for, the importer gone, a malformed command): not ended
        finally:
            self.tasks.put(None)

    def inserted(self, end: int) -> None:
        """The builder inserted the chunk ending at spool offset `end`."""
        self.done = end
        self.room.release()

    def stop(self) -> None:
        self.stopped = True
        self.tasks.put(None)
        self.room.release()

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        while (task := self.tasks.get()) is not None:
            self.room.acquire()
            if self.stopped:
                return
            yield task


def run(params: dict[str, Any], control: BinaryIO, out: BinaryIO) -> int:
    started = time.perf_counter()
    parsers = int(params.get("parsers") or min(2, os.cpu_count() or 1))
    pool = Parsers(parsers, params)  # forked before any SQLite connection exists in this process
    build: Build | None = None
    commands: _Control | None = None
    ok = False
    try:
        build = Build(params)
        commands = _Control(control, Path(params["spool"]))
        waited = time.perf_counter()
        for number, packed, counts, error, seconds, end in pool.map(commands):
            build.timings["waiting"] += time.perf_counter() - waited
            build.timings["parse"] += seconds
            if error is not None:
                raise BuildError(error, number)
            assert packed is not None
            build.insert(packed, counts)
            commands.inserted(end)
            if build.next_chunk % PROGRESS_EVERY == 0:
                _say(out, event="progress", chunks=build.next_chunk)
            waited = time.perf_counter()
        if not commands.ended:
            return 1  # aborted, or the importer went away
        pool.close()
        result = build.finish()
        ok = True
        # the parsers were forked from this process: their peak counts what they shared
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        largest_parser = round(children.ru_maxrss / 1024, 1)
        own = resource.getrusage(resource.RUSAGE_SELF)
        # the work done, whatever else the machine ran meanwhile
        cpu = {
            "builder": round(own.ru_utime + own.ru_stime, 2),
            "parsers": round(children.ru_utime + children.ru_stime, 2),
        }
        # where it went: in this process's own code and SQLite, or in the kernel for it
        # (pipes, the spool, writing the file out)
        cpu_user_sys = {
            "builder": [round(own.ru_utime, 2), round(own.ru_stime, 2)],
            "parsers": [round(children.ru_utime, 2), round(children.ru_stime, 2)],
        }
        _say(
            out, event="built", seconds=round(time.perf_counter() - started, 3), parsers=parsers,
            peak_rss_mb={"builder": peak_rss_mb(), "largest_parser": largest_parser}, cpu_seconds=cpu,
            cpu_user_sys=cpu_user_sys, **result,
        )
        return 0
    except BuildError as e:
        _say(out, event="error", message=str(e), chunk=e.chunk)
        return 2
    finally:
        if commands is not None:
            commands.stop()  # the parsers' feeding thread must not wait for more chunks
        pool.kill()
        if build is not None and not ok:
            build.discard()
        if not ok:
            # the importer went away (its daemon killed just after starting this process,
            # whose spool then appeared after the next start's clean-up) or gave up: the
            # spool is nobody's
            with contextlib.suppress(FileNotFoundError):
                os.unlink(params["spool"])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    # short-lived, and what it allocates (rows, records) holds no reference cycles: the
    # cyclic GC would only rescan them (12 % of the parsers' CPU); the parsers inherit this
    gc.disable()
    # taps come first: the daemon's loop must win the CPU whenever both want it. SCHED_IDLE
    # (this process and the parsers it forks run only when nothing else wants the CPU);
    # where that is refused, the lowest nice value
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
    return run(json.loads(argv[1]), sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
