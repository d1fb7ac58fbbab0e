"""The parse stage of the snapshot build (sync/snapshot/worker.py), in the pool's forked
processes: each chunk read from the spool, validated in full into table rows — by
sync/snapshot/chunk_rows.py, the fast path, or, when it cannot decide, by the
SnapshotChunk model and sync/store/rows.py, which also word any error — and handed to
the builder as the image of a small in-memory SQLite database (`Parser.pack`).

`BuildError` is the build's one error: a chunk found invalid here, or a snapshot that
cannot be finished (sync/snapshot/build.py)."""

from __future__ import annotations

import os
import sqlite3
import time
from itertools import chain
from typing import IO, Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from rules.credential import TenDigits
from sync.protocol import SnapshotChunk
from sync.snapshot.chunk_rows import NotFast, chunk_rows
from sync.snapshot.disk import punch
from sync.store.rows import (
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

# the replica tables a chunk adds rows to, in the order of `Rows`, with the columns given
PACKED = (
    ("members", MEMBER_COLUMNS),
    ("cards", ("card", "member_id")),
    ("card_keys", ("key", "card")),
    ("passes", PASS_COLUMNS),
    ("bookings", BOOKING_COLUMNS),
)
# (members, cards, card keys, passes, bookings) rows of one chunk
Rows = tuple[list[Row], list[tuple[str, str]], list[tuple[str, str]], list[Row], list[Row]]


class BuildError(Exception):
    def __init__(self, message: str, chunk: int | None = None):
        super().__init__(message)
        self.chunk = chunk


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
        """The chunk's rows: by the fast path (sync/snapshot/chunk_rows.py) when it can decide,
        else by the canonical one, which also words the error (BuildError)."""
        try:
            return chunk_rows(
                payload, snapshot_id=self.snapshot_id, number=number, chunks=self.chunks, daemon=self.daemon,
                tz=self.tz, synced_at=self.synced_at, ten_digits=self.ten_digits,
            ).tables()
        except NotFast:
            return self.parse_canonical(number, payload)

    def parse_canonical(self, number: int, payload: bytes) -> Rows:
        """SnapshotChunk (the protocol's model), then sync/store/rows.py."""
        try:
            chunk = SnapshotChunk.model_validate_json(payload, strict=True)  # as the link holds every message
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
        per table, in C (sync/snapshot/worker.py, "insert")."""
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


def init_parser(params: dict[str, Any]) -> None:
    global _parser
    # the importer's pipes are the builder's: a parser holding them open would keep the
    # importer from seeing the builder's end
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    _parser = Parser(params)


# a chunk to parse: (number, spool offset, length)
Task = tuple[int, int, int]
# (number, packed rows, row counts, error, seconds, end offset)
ParseResult = tuple[int, bytes | None, list[int], str | None, float, int]


def parse_task(task: Task) -> ParseResult:
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

