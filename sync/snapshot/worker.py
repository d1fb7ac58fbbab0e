"""`python -m sync.snapshot_worker PARAMS`: builds one snapshot's replica file in processes
of its own, so that validating and indexing half a million records never holds the
daemon's event loop (nor its GIL). Started and fed by SnapshotImporter (sync/snapshot.py).

PARAMS is one JSON object: `replica` (the file to build), `ledger` (read only, for the
switch lists), `spool` (where the chunks are), `timezone`, `daemon`, `snapshot_id`,
`chunks`, `delta_seq`, `generation`, `synced_at`, `ten_digits` (how the site reads
untyped 10-digit card strings), `parsers` (parser processes; default: one per CPU, at
most 2). `batch_rows` is accepted and no longer used: each chunk is one transaction.

The importer writes each chunk on this process's stdin as received, and this process
answers on stdout, in the wire format of sync/snapshot_wire.py (`chunk LENGTH` and the
payload, `end`, `abort`; JSON event lines `progress`, `built`, `error`). End of input
without `end` (the daemon died) is an abort. The chunks wait in the spool file for the
parsers (see `_Control`). The exit status is 0 only after `built`.

The build, a pipeline over the chunks in order:
- **parse** (a pool of forked processes, lowest CPU priority): each chunk read from the
  spool and validated in full into table rows — by sync/chunk_rows.py, the fast path,
  or, when it cannot decide, by the SnapshotChunk model and sync/rows.py, which also
  word any error — then written into a small in-memory SQLite database and handed
  over as its image (`Parser.pack`): a few hundred kilobytes of bytes instead of
  thousands of pickled tuples the builder would unpickle and bind one by one;
- **insert** (this process): each image, in chunk order, attached and copied into bare
  tables with one INSERT ... SELECT per table, in C (no secondary index, no journal, no
  fsync: the file is not anyone's replica until the switch, and an unfinished one is
  deleted);
- after the last chunk: the indexes (one sort each), the **switch lists** from one
  read-only look at the ledger — bookings of this replica that ended behind the
  no-show cursor without an outcome (`switch_recheck`) and the outcomes of bookings
  this replica cancels or lacks (`switch_clear`) — then WAL mode, and an fsync of the
  file and its directory.

One module of ~600 lines because it is a program of its own (`python -m`): the spool,
the parser pool and the builder are the stages of one pipeline that share its process
state and its wire format with the importer; read together, they are the import.
"""

from __future__ import annotations

import ctypes
import gc
import json
import multiprocessing
import os
import queue
import resource
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import IO, Any, BinaryIO
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from rules.credential import TenDigits
from sync.chunk_rows import NotFast, chunk_rows
from sync.db import uri
from sync.ledger import CURSOR_KEY
from sync.protocol import SnapshotChunk
from sync.replica_file import ReplicaFiles
from sync.rows import (
    BOOKING_COLUMNS,
    MEMBER_COLUMNS,
    PASS_COLUMNS,
    Row,
    booking_row,
    keys_of,
    member_cards,
    member_row,
    pass_row,
)
from sync.schema import CARDS_TYPED_AS, REPLICA_INDEXES, REPLICA_SCHEMA_VERSION, REPLICA_TABLES
from sync.snapshot_wire import Chunk, CommandReader, End, event_line

PROGRESS_EVERY = 50  # chunks

# the replica tables a chunk adds rows to, in the order of `Rows`, with the columns given
PACKED = (
    ("members", MEMBER_COLUMNS),
    ("cards", ("card", "member_id")),
    ("card_keys", ("key", "card")),
    ("passes", PASS_COLUMNS),
    ("bookings", BOOKING_COLUMNS),
)
# a later chunk's row replaces an earlier one with the same id; a card key is kept once
COPY = tuple(
    f"INSERT OR {'IGNORE' if table == 'card_keys' else 'REPLACE'} INTO main.{table}({','.join(cols)}) "
    f"SELECT {','.join(cols)} FROM chunk.{table} ORDER BY rowid"
    for table, cols in PACKED
)

# (members, cards, card keys, passes, bookings) rows of one chunk
Rows = tuple[list[Row], list[tuple[str, str]], list[tuple[str, str]], list[Row], list[Row]]


class BuildError(Exception):
    def __init__(self, message: str, chunk: int | None = None):
        super().__init__(message)
        self.chunk = chunk


# -- pacing the disk -------------------------------------------------------------------------
#
# Taps commit with an fsync while this process writes up to a gigabyte (the spool, the new
# replica). On ext4 an fsync waits for the data blocks allocated in the same journal
# transaction, so a large burst of writeback — the kernel flushing 30-second-old dirty
# pages, or one fdatasync of a whole file — holds every tap committed meanwhile (1.1 s
# measured at 1M members). Writeback is started early and in small pieces instead, and
# what is read and done with is given back before it is ever written.

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
SYNC_FILE_RANGE_WAIT_BEFORE = 0x01
SYNC_FILE_RANGE_WRITE = 0x02
SYNC_FILE_RANGE_WAIT_AFTER = 0x04
_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            _libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        except (OSError, AttributeError):
            _libc = False
    return _libc


def punch(fd: int, offset: int, length: int) -> None:
    """Free the range (fallocate PUNCH_HOLE): dirty pages are dropped unwritten. Where the
    call is missing or refused, the file keeps them until it is deleted."""
    if c := _c():
        c.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length)


def write_out(fd: int, offset: int, length: int) -> None:
    """Write the range out now and wait for it (sync_file_range, no journal commit): one
    small piece in flight at a time, instead of a burst later. Where the call is missing,
    the kernel writes it when it will."""
    if c := _c():
        c.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)


# -- parsing (in the pool's processes) ----------------------------------------------------------


class Parser:
    """Validates one chunk and builds its rows; the same in every parser process."""

    def __init__(self, params: dict[str, Any]):
        self.tz = ZoneInfo(params["timezone"])
        self.daemon = str(params["daemon"])
        self.snapshot_id = str(params["snapshot_id"])
        self.chunks = int(params["chunks"])
        self.synced_at = float(params["synced_at"])
        self.ten_digits = TenDigits(params.get("ten_digits", TenDigits.EM32.value))
        self.spool: IO[bytes] | None = None
        self.spool_path = params["spool"]
        self.empty = _empty_pack()

    def read(self, offset: int, length: int) -> bytes:
        if self.spool is None:
            self.spool = open(self.spool_path, "r+b")  # noqa: SIM115 - one per process, for its life
        self.spool.seek(offset)
        payload = self.spool.read(length)
        if len(payload) != length:
            raise BuildError("the spool file is shorter than announced")
        punch(self.spool.fileno(), offset, length)
        return payload

    def parse(self, number: int, payload: bytes) -> Rows:
        """The chunk's rows: by the fast path (sync/chunk_rows.py) when it can decide,
        else by the canonical one, which also words the error (BuildError)."""
        try:
            return chunk_rows(
                payload, snapshot_id=self.snapshot_id, number=number, chunks=self.chunks, daemon=self.daemon,
                tz=self.tz, synced_at=self.synced_at, ten_digits=self.ten_digits,
            ).tables()
        except NotFast:
            return self.parse_canonical(number, payload)

    def parse_canonical(self, number: int, payload: bytes) -> Rows:
        """SnapshotChunk (the protocol's model), then sync/rows.py."""
        try:
            chunk = SnapshotChunk.model_validate_json(payload)
        except ValidationError as e:
            errors = e.errors()
            where = ".".join(str(x) for x in errors[0]["loc"]) if errors else ""
            msg = errors[0]["msg"] if errors else str(e)
            raise BuildError(f"invalid chunk {number}: {where}: {msg}", number) from None
        if (chunk.snapshot_id, chunk.chunk, chunk.chunks) != (self.snapshot_id, number, self.chunks):
            raise BuildError(
                f"expected chunk {number}/{self.chunks} of {self.snapshot_id}, "
                f"got {chunk.chunk}/{chunk.chunks} of {chunk.snapshot_id}",
                number,
            )
        try:
            bookings = [booking_row(b, self.tz) for b in chunk.bookings]
        except ValueError as e:  # a wall time the zone cannot place
            raise BuildError(f"invalid chunk {number}: bookings: {e}", number) from None
        except OverflowError as e:  # a wall time at the very end of the calendar
            raise BuildError(f"invalid chunk {number}: bookings: {e}", number) from None
        cards: list[tuple[str, str]] = []
        card_keys: list[tuple[str, str]] = []
        for m in chunk.members:
            typed = member_cards(m, self.ten_digits)  # once per member: both tables from it
            cards += [(c.key, m.id) for c in typed]
            card_keys += keys_of(typed)
        return (
            [member_row(m, self.synced_at) for m in chunk.members],
            cards,
            card_keys,
            [pass_row(p, p.applied.get(self.daemon, 0), p.peers_applied(self.daemon)) for p in chunk.passes],
            bookings,
        )

    def pack(self, number: int, rows: Rows) -> bytes:
        """The rows as the image of a small SQLite database, one bare table per replica
        table, rows in insert order: the builder copies them in with one INSERT ... SELECT
        per table, in C (module doc, "insert")."""
        conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            conn.deserialize(self.empty)
            conn.execute("BEGIN")
            for (table, columns), table_rows in zip(PACKED, rows, strict=True):
                _insert_many(conn, table, len(columns), table_rows)
            conn.execute("COMMIT")
            return conn.serialize()
        except OverflowError:  # an integer SQLite cannot hold (more than 64 bits)
            raise BuildError(f"invalid chunk {number}: a number too large to store", number) from None
        finally:
            conn.close()


PACK_ROWS = 64  # rows per INSERT statement into a packed image


def _insert_many(conn: sqlite3.Connection, table: str, width: int, rows: list[Row]) -> None:
    """executemany, PACK_ROWS rows a statement: a fifth less CPU than a row a statement
    (the per-row step and reset of the statement, and the Python loop around them)."""
    one = f"({','.join('?' * width)})"
    whole = len(rows) - len(rows) % PACK_ROWS
    if whole:
        sql = f"INSERT INTO {table} VALUES {','.join([one] * PACK_ROWS)}"
        conn.executemany(sql, [tuple(chain.from_iterable(rows[i : i + PACK_ROWS])) for i in range(0, whole, PACK_ROWS)])
    if whole < len(rows):
        conn.executemany(f"INSERT INTO {table} VALUES {one}", rows[whole:])


def _empty_pack() -> bytes:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for table, columns in PACKED:
            # no declared types: each value is kept as bound, and takes the replica
            # column's affinity when copied in, as if bound there
            conn.execute(f"CREATE TABLE {table} ({','.join(columns)})")
        return conn.serialize()
    finally:
        conn.close()


_parser: Parser | None = None


def _init_parser(params: dict[str, Any]) -> None:
    global _parser
    # the importer's pipes are the builder's: a parser holding them open would keep the
    # importer from seeing the builder's end
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    _parser = Parser(params)


def _parse_task(task: tuple[int, int, int]) -> tuple[int, bytes | None, list[int], str | None, float, int]:
    """(number, packed rows, row counts, error, seconds, end offset) of the chunk at
    (number, offset, length)."""
    number, offset, length = task
    assert _parser is not None
    t0 = time.perf_counter()
    try:
        rows = _parser.parse(number, _parser.read(offset, length))
        packed = _parser.pack(number, rows)
        return number, packed, [len(r) for r in rows], None, time.perf_counter() - t0, offset + length
    except BuildError as e:
        return number, None, [], str(e), time.perf_counter() - t0, offset + length


# -- building (this process) ------------------------------------------------------------------


class Flusher:
    """Writes the file being built out as it grows, a few megabytes at a time and one
    piece in flight, from a thread of its own (module section "pacing the disk"); the
    last fdatasync at the end finds little left to write."""

    EVERY = 4 * 1024 * 1024  # bytes of growth between writes
    POLL = 0.05  # seconds

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        self.started = 0  # bytes handed to writeback so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.POLL):
            size = os.fstat(self.fd).st_size
            if size - self.started >= self.EVERY:
                write_out(self.fd, self.started, size - self.started)
                self.started = size

    def close(self) -> None:
        """Stop, then the last of it, waited for."""
        self._stop.set()
        self._thread.join()
        os.fdatasync(self.fd)
        os.close(self.fd)


class Build:
    """One replica file being built from one snapshot's rows, chunk after chunk."""

    def __init__(self, params: dict[str, Any]):
        self.path = Path(params["replica"])
        self.ledger = Path(params["ledger"])
        self.snapshot_id = str(params["snapshot_id"])
        self.chunks = int(params["chunks"])
        self.delta_seq = int(params["delta_seq"])
        self.generation = int(params["generation"])
        self.synced_at = float(params["synced_at"])
        self.ten_digits = TenDigits(params.get("ten_digits", TenDigits.EM32.value))  # as the parsers type
        self.next_chunk = 0
        self.counts = {"members": 0, "cards": 0, "passes": 0, "bookings": 0}
        self.timings = {"parse": 0.0, "insert": 0.0, "waiting": 0.0}
        self.rss_mb: dict[str, float] = {}  # this process's peak resident memory, by phase
        ReplicaFiles.remove(self.path)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None)
        c = self.conn
        # a scratch file until the switch: no journal, no fsync, a big page cache
        c.execute("PRAGMA journal_mode=OFF")
        c.execute("PRAGMA synchronous=OFF")
        c.execute("PRAGMA cache_size=-65536")
        for sql in REPLICA_TABLES:
            c.execute(sql)
        c.execute("ATTACH DATABASE ':memory:' AS chunk")
        self.flusher = Flusher(self.path)

    def insert(self, packed: bytes, counts: list[int]) -> None:
        """One chunk's packed rows (Parser.pack) into the tables, in chunk order: later
        rows replace earlier ones with the same key, as the chunks say."""
        t0 = time.perf_counter()
        c = self.conn
        # a database is replaced only outside a transaction: one per chunk (no journal,
        # no fsync: a COMMIT here is a few writes to the page cache)
        c.deserialize(packed, name="chunk")
        c.execute("BEGIN")
        for sql, n in zip(COPY, counts, strict=True):
            if n:
                c.execute(sql)
        c.execute("COMMIT")
        self.timings["insert"] += time.perf_counter() - t0
        members, cards, _, passes, bookings = counts
        self.counts["members"] += members
        self.counts["cards"] += cards
        self.counts["passes"] += passes
        self.counts["bookings"] += bookings
        self.next_chunk += 1

    def finish(self) -> dict[str, Any]:
        if self.next_chunk != self.chunks:
            raise BuildError(f"snapshot incomplete: {self.next_chunk} of {self.chunks} chunks")
        c = self.conn
        c.execute("DETACH DATABASE chunk")
        self.rss_mb["after_inserts"] = _peak_rss_mb()
        t0 = time.perf_counter()
        for sql in REPLICA_INDEXES:
            c.execute(sql)
        self.rss_mb["after_indexes"] = _peak_rss_mb()
        t1 = time.perf_counter()
        recheck, clear, cursor = self._switch_lists()
        t2 = time.perf_counter()
        meta = {
            "replica_schema": str(REPLICA_SCHEMA_VERSION),
            "generation": str(self.generation),
            "sync.snapshot_id": self.snapshot_id,
            "sync.delta_seq": str(self.delta_seq),
            "last_sync_at": str(self.synced_at),
            CARDS_TYPED_AS: self.ten_digits.value,
        }
        if cursor is not None:
            meta["switch.cursor"] = cursor
        c.execute("BEGIN")
        c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
        c.execute("COMMIT")
        c.execute("PRAGMA journal_mode=WAL")
        c.close()
        self.flusher.close()
        ReplicaFiles(self.path).fsync(self.path)
        t3 = time.perf_counter()
        self.timings.update(indexes=t1 - t0, switch_lists=t2 - t1, fsync=t3 - t2)
        return {
            "counts": self.counts,
            "recheck": recheck,
            "clear": clear,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "builder_peak_rss_mb": self.rss_mb,
            "bytes": self.path.stat().st_size,
        }

    def _switch_lists(self) -> tuple[int, int, str | None]:
        """What the switch must tell the ledger, as of one read of it (see the module doc
        and Store.switch_replica for the taps that happen after this read)."""
        c = self.conn
        c.execute("ATTACH DATABASE ? AS ledger", (uri(self.ledger, "ro"),))
        try:
            c.execute("BEGIN")
            row = c.execute("SELECT value FROM ledger.meta WHERE key = ?", (CURSOR_KEY,)).fetchone()
            cursor = None if row is None else str(row[0])
            if cursor is not None:
                c.execute(
                    "INSERT INTO switch_recheck(booking_id) SELECT b.id FROM bookings b WHERE b.status = 'booked' "
                    "AND b.ends_at <= ? AND NOT EXISTS "
                    "(SELECT 1 FROM ledger.booking_outcomes o WHERE o.booking_id = b.id)",
                    (float(cursor),),
                )
            c.execute(
                "INSERT INTO switch_clear(booking_id) SELECT o.booking_id FROM ledger.booking_outcomes o "
                "WHERE NOT EXISTS (SELECT 1 FROM bookings b WHERE b.id = o.booking_id AND b.status != 'cancelled')"
            )
            c.execute("COMMIT")
            recheck = int(c.execute("SELECT COUNT(*) FROM switch_recheck").fetchone()[0])
            clear = int(c.execute("SELECT COUNT(*) FROM switch_clear").fetchone()[0])
        finally:
            c.execute("DETACH DATABASE ledger")
        return recheck, clear, cursor

    def discard(self) -> None:
        try:
            self.conn.close()
            self.flusher.close()
        finally:
            ReplicaFiles.remove(self.path)


# -- the control loop -----------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the daemon's
    size across the exec that started this process)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _say(out: BinaryIO, event: str, **fields: Any) -> None:
    out.write(event_line(event, **fields))
    out.flush()


class _Control:
    """Receives the chunks in a thread — `chunk LENGTH`, then LENGTH bytes of payload — and
    appends them to the spool, turning each into a parse task at once (the pool starts on
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
    # forked before any SQLite connection exists in this process, and fed by a thread
    pool = multiprocessing.get_context("fork").Pool(parsers, _init_parser, (params,))
    build: Build | None = None
    commands: _Control | None = None
    ok = False
    try:
        build = Build(params)
        commands = _Control(control, Path(params["spool"]))
        waited = time.perf_counter()
        for number, packed, counts, error, seconds, end in pool.imap(_parse_task, commands):
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
        pool.join()
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
            peak_rss_mb={"builder": _peak_rss_mb(), "largest_parser": largest_parser}, cpu_seconds=cpu,
            cpu_user_sys=cpu_user_sys, **result,
        )
        return 0
    except BuildError as e:
        _say(out, event="error", message=str(e), chunk=e.chunk)
        return 2
    finally:
        if commands is not None:
            commands.stop()  # the pool's feeding thread must not wait for more chunks
        pool.terminate()
        if build is not None and not ok:
            build.discard()


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
