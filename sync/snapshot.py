"""Importing a full snapshot without stopping the gate, atomically, crash-safe.

A snapshot of a large chain (100,000 members, 150,000 passes, 300,000 bookings) cannot be
applied in one transaction without stalling taps for seconds, and must not be applied
piecemeal to the live tables (a member would be seen half old, half new; a crash would
leave a mix). So:

1. **Stage.** Chunks are written, as they arrive, into shadow tables `_snap_members`,
   `_snap_cards`, `_snap_passes`, `_snap_bookings` in the same database file, created with
   the live tables' own SQL (columns, keys, indexes). Each batch of rows is one short
   transaction and the importer yields to the event loop between batches. The live
   tables are untouched: taps keep being decided and committed from them.
2. **Merge.** What only the gate knows is copied into the shadow tables, in batches: a
   booking's local outcome (attended, no-show, loyalty credited) unless the snapshot
   cancels it, and each pass's local balance = the snapshot's central balance minus this
   daemon's deductions with a seq above the pass's `applied_seq`.
3. **Swap.** One short transaction: re-merge only what taps changed since step 2 (found by
   the events and deductions with a seq above the one noted at the merge), rename the live
   tables to `_snapold_*` and the shadow tables to the live names, and record the
   snapshot's `delta_seq`. Renames are schema changes: milliseconds, whatever the size.
4. **Drop** the old tables, in batches.

A daemon killed at any point leaves either the old replica (plus shadow or old tables
that `cleanup()` drops at the next start) or the new one, never a mix; the ledger
(deductions, passages, events) is never touched. Index names on the swapped tables get a
`__gN` suffix (SQLite cannot rename an index); the columns and index definitions are
exactly the live ones.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sync.protocol import PassOut, SnapshotChunk
from sync.records import BookingIn, MemberIn
from sync.rows import MEMBER_INSERT, booking_row, card_key_rows, card_rows, member_row, pass_row
from sync.store import DELTA_SEQ_KEY, LAST_SYNC_KEY, SNAPSHOT_ID_KEY, Store

TABLES = ("members", "cards", "card_keys", "passes", "bookings")
STAGE = "_snap_"
OLD = "_snapold_"
GENERATION_KEY = "sync.snapshot_generation"
STAGING_CACHE_KIB = 32_768

_NAME = r'(\[[^\]]+\]|"[^"]+"|`[^`]+`|\w+)'
_CREATE_TABLE = re.compile(r"^\s*CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME, re.I)
_CREATE_INDEX = re.compile(
    r"^\s*(CREATE\s+(?:UNIQUE\s+)?INDEX\s+)(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME + r"(\s+ON\s+)" + _NAME,
    re.I,
)


def _unquote(name: str) -> str:
    return name[1:-1] if name[:1] in '["`' else name


def delta_seq(store: Store) -> int:
    return store.delta_seq


class SnapshotError(Exception):
    pass


class SnapshotImporter:
    """Stages one snapshot at a time; `begin`, `add` every chunk in order, `finish`."""

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
        self._cache_size: int | None = None

    @property
    def active(self) -> bool:
        return self.snapshot_id is not None

    # -- plumbing -----------------------------------------------------------------------

    def _tables_like(self, prefix: str) -> list[str]:
        rows = self.store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
            (prefix.replace("_", "\\_") + "%",),
        ).fetchall()
        return [str(r[0]) for r in rows]

    async def _drop(self, table: str) -> None:
        """Drop a big table without holding the loop: its indexes one by one first (each
        frees its pages in one go, tens of ms), then its rows in batches — without the
        indexes a batch is a rowid range, not a walk through five B-trees per row (that
        made dropping the old replica the slowest part of a snapshot) — then the table."""
        conn = self.store.conn
        for (index,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (table,)
        ).fetchall():
            with self.store.transaction(scratch=True):
                conn.execute(f"DROP INDEX IF EXISTS [{index}]")
            await asyncio.sleep(0)
        while True:
            with self.store.transaction(scratch=True):
                n = conn.execute(
                    f"DELETE FROM [{table}] WHERE rowid IN (SELECT rowid FROM [{table}] LIMIT ?)",
                    (self.batch_rows * 10,),
                ).rowcount
            await asyncio.sleep(0)
            if n <= 0:
                break
        with self.store.transaction(scratch=True):
            conn.execute(f"DROP TABLE IF EXISTS [{table}]")

    async def cleanup(self) -> None:
        """Drop shadow and old tables a previous run left behind (killed mid-snapshot)."""
        for t in self._tables_like(STAGE) + self._tables_like(OLD):
            await self._drop(t)

    def _create_stage(self) -> None:
        conn = self.store.conn
        gen = int(self.store.meta(GENERATION_KEY, "0") or 0) + 1
        with self.store.transaction() as tx:
            for t in TABLES:
                conn.execute(f"DROP TABLE IF EXISTS [{STAGE}{t}]")
                row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (t,)).fetchone()
                if row is None:
                    raise SnapshotError(f"the store has no table {t!r}")
                sql = _CREATE_TABLE.sub(f"CREATE TABLE [{STAGE}{t}]", str(row[0]), count=1)
                conn.execute(sql)
                for name, isql in conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
                    (t,),
                ).fetchall():
                    base = re.sub(r"__g\d+$", "", _unquote(str(name)))
                    m = _CREATE_INDEX.match(str(isql))
                    if m is None:
                        raise SnapshotError(f"cannot copy index {name!r}")
                    new = f"{m.group(1)}[{base}__g{gen}]{m.group(3)}[{STAGE}{t}]" + str(isql)[m.end() :]
                    if new == isql:
                        raise SnapshotError(f"cannot copy index {name!r}")
                    conn.execute(new)
            tx.set_meta(GENERATION_KEY, str(gen))

    # -- the steps ------------------------------------------------------------------------

    def _big_cache(self) -> None:
        """A larger page cache while staging (B-tree inserts into big indexes thrash the
        default 2 MB); restored when the snapshot ends."""
        if self._cache_size is None:
            self._cache_size = int(self.store.conn.execute("PRAGMA cache_size").fetchone()[0])
            self.store.conn.execute(f"PRAGMA cache_size = {-STAGING_CACHE_KIB}")

    def _restore_cache(self) -> None:
        if self._cache_size is not None:
            self.store.conn.execute(f"PRAGMA cache_size = {self._cache_size}")
            self._cache_size = None

    async def begin(self, first: SnapshotChunk) -> None:
        if first.chunk != 0:
            raise SnapshotError("a snapshot starts with chunk 0")
        self.abort_sync()
        await self.cleanup()
        self._create_stage()
        self.snapshot_id = first.snapshot_id
        self.chunks = first.chunks
        self.next_chunk = 0
        self.base_delta_seq = first.delta_seq
        self.requested_by = list(first.requested_by)
        self.started = time.monotonic()

    def abort_sync(self) -> None:
        """Forget the snapshot in progress (its shadow tables are dropped by cleanup)."""
        self.snapshot_id = None
        self.chunks = 0
        self.next_chunk = 0
        self._restore_cache()

    async def abort(self) -> None:
        self.abort_sync()
        await self.cleanup()

    async def add(self, chunk: SnapshotChunk, now: datetime) -> bool:
        """Stage one chunk; True when it was the last one (call `finish`)."""
        if chunk.snapshot_id != self.snapshot_id or chunk.chunk != self.next_chunk or chunk.chunks != self.chunks:
            raise SnapshotError(
                f"expected chunk {self.next_chunk}/{self.chunks} of {self.snapshot_id}, "
                f"got {chunk.chunk}/{chunk.chunks} of {chunk.snapshot_id}"
            )
        await asyncio.sleep(0)  # the chunk's validation was one slice of work already
        await self.stage(chunk.members, chunk.passes, chunk.bookings, now)
        self.next_chunk += 1
        return self.next_chunk == self.chunks

    async def stage(
        self,
        members: Sequence[MemberIn],
        passes: Sequence[PassOut],
        bookings: Sequence[BookingIn],
        now: datetime,
    ) -> None:
        conn = self.store.conn
        synced_at = now.timestamp()
        tz = self.store.site.timezone
        self._big_cache()
        n = self.batch_rows
        for i in range(0, len(members), n):
            part = [m.to_domain() for m in members[i : i + n]]
            with self.store.transaction(scratch=True):
                conn.executemany(
                    f"INSERT OR REPLACE INTO [{STAGE}members]{MEMBER_INSERT}",
                    (member_row(m, synced_at) for m in part),
                )
                conn.executemany(
                    f"INSERT OR REPLACE INTO [{STAGE}cards](card, member_id) VALUES (?, ?)",
                    (row for m in part for row in card_rows(m, self.store.ten_digits)),
                )
                conn.executemany(
                    f"INSERT OR IGNORE INTO [{STAGE}card_keys](key, card) VALUES (?, ?)",
                    (row for m in part for row in card_key_rows(m, self.store.ten_digits)),
                )
            await asyncio.sleep(0)
        for i in range(0, len(passes), n):
            with self.store.transaction(scratch=True):
                conn.executemany(
                    f"INSERT OR REPLACE INTO [{STAGE}passes](id, member_id, name, kind, central_balance, applied_seq, "
                    "balance, deduct_on, walk_in_cost, valid_from, valid_until, zones, access_windows) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [pass_row(p.record_for(self.daemon_id)) for p in passes[i : i + n]],
                )
            await asyncio.sleep(0)
        for i in range(0, len(bookings), n):
            rows = [booking_row(b.to_domain(tz)) for b in bookings[i : i + n]]
            with self.store.transaction(scratch=True):
                conn.executemany(
                    f"INSERT OR REPLACE INTO [{STAGE}bookings](id, member_id, pass_id, class_name, zone, starts_at, "
                    "ends_at, status, outcome, deducted, cost, loyalty_points, loyalty_credited, attended_at) "
                    "VALUES (?,?,?,?,?,?,?,?,NULL,?,?,?,0,NULL)",
                    rows,
                )
            await asyncio.sleep(0)

    # -- merging what only the gate knows -------------------------------------------------

    def _merge_bookings(self, ids: Iterable[str] | None, rowid_range: tuple[int, int] | None = None) -> None:
        conn = self.store.conn
        if ids is not None:
            idl = list(ids)
            rows = []
            for j in range(0, len(idl), 500):
                part = idl[j : j + 500]
                rows += conn.execute(
                    "SELECT id, outcome, loyalty_credited, attended_at FROM bookings "
                    f"WHERE id IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
        else:
            assert rowid_range is not None
            rows = conn.execute(
                "SELECT id, outcome, loyalty_credited, attended_at FROM bookings WHERE rowid > ? AND rowid <= ? "
                "AND (outcome IS NOT NULL OR loyalty_credited != 0 OR attended_at IS NOT NULL)",
                rowid_range,
            ).fetchall()
        conn.executemany(
            f"UPDATE [{STAGE}bookings] SET outcome = CASE WHEN status = 'cancelled' THEN NULL ELSE ? END, "
            "loyalty_credited = ?, attended_at = ? WHERE id = ?",
            ((r[1], r[2], r[3], r[0]) for r in rows),
        )

    def _merge_balances(self, pass_ids: Iterable[str] | None) -> None:
        """Staged balance = central balance - our deductions above the pass's applied_seq."""
        conn = self.store.conn
        if pass_ids is None:
            row = conn.execute(
                f"SELECT MIN(applied_seq) FROM [{STAGE}passes] WHERE central_balance IS NOT NULL"
            ).fetchone()
            if row is None or row[0] is None:
                return
            deds = conn.execute(
                "SELECT pass_id, seq, amount FROM deductions WHERE seq > ?", (int(row[0]),)
            ).fetchall()
        else:
            idl = list(pass_ids)
            deds = []
            for j in range(0, len(idl), 500):
                part = idl[j : j + 500]
                deds += conn.execute(
                    f"SELECT pass_id, seq, amount FROM deductions WHERE pass_id IN ({','.join('?' * len(part))})",
                    part,
                ).fetchall()
        by_pass: dict[str, list[tuple[int, str]]] = {}
        for pid, seq, amount in deds:
            by_pass.setdefault(str(pid), []).append((int(seq), str(amount)))
        for pid, items in by_pass.items():
            row = conn.execute(
                f"SELECT central_balance, applied_seq FROM [{STAGE}passes] WHERE id = ?", (pid,)
            ).fetchone()
            if row is None or row[0] is None:
                continue
            applied = int(row[1] or 0)
            own = sum((Decimal(a) for s, a in items if s > applied), Decimal(0))
            conn.execute(
                f"UPDATE [{STAGE}passes] SET balance = ? WHERE id = ?", (str(Decimal(row[0]) - own), pid)
            )

    async def finish(self, now: datetime) -> None:
        """Merge local state and swap the staged tables in; then drop the old ones."""
        if self.snapshot_id is None or self.next_chunk != self.chunks:
            raise SnapshotError("snapshot incomplete")
        store, conn = self.store, self.store.conn
        merge_seq = store.last_seq
        # bookings' local outcomes, in rowid windows
        max_rowid = int(conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM bookings").fetchone()[0])
        step = 20_000
        for lo in range(0, max_rowid, step):
            with store.transaction(scratch=True):
                self._merge_bookings(None, (lo, lo + step))
            await asyncio.sleep(0)
        with store.transaction(scratch=True):
            self._merge_balances(None)
        await asyncio.sleep(0)
        # the swap
        with store.transaction() as tx:
            last = store.last_seq
            if last > merge_seq:
                kept = int(conn.execute("SELECT COUNT(*) FROM events WHERE seq > ?", (merge_seq,)).fetchone()[0])
                if kept == last - merge_seq:
                    ids = [
                        str(r[0])
                        for r in conn.execute(
                            "SELECT DISTINCT json_extract(body, '$.booking') FROM events WHERE seq > ? "
                            "AND type IN ('attendance', 'loyalty', 'deduction')",
                            (merge_seq,),
                        )
                        if r[0] is not None
                    ]
                    self._merge_bookings(ids)
                else:  # events were pruned meanwhile: merge every booking (slow, rare)
                    self._merge_bookings(None, (0, 1 << 62))
                passes = [
                    str(r[0])
                    for r in conn.execute("SELECT DISTINCT pass_id FROM deductions WHERE seq > ?", (merge_seq,))
                ]
                self._merge_balances(passes)
            for t in TABLES:
                conn.execute(f"ALTER TABLE [{t}] RENAME TO [{OLD}{t}]")
                conn.execute(f"ALTER TABLE [{STAGE}{t}] RENAME TO [{t}]")
            tx.set_meta(DELTA_SEQ_KEY, str(self.base_delta_seq))
            tx.set_meta(SNAPSHOT_ID_KEY, str(self.snapshot_id))
            tx.set_meta(LAST_SYNC_KEY, str(now.timestamp()))
        self.abort_sync()
        for t in TABLES:
            await self._drop(f"{OLD}{t}")


def snapshot_fingerprint(store: Store) -> dict[str, Any]:
    """Row counts and a checksum of the replica tables (tests: nothing half-applied)."""
    out: dict[str, Any] = {}
    for t in TABLES:
        rows = store.conn.execute(f"SELECT * FROM [{t}] ORDER BY 1").fetchall()
        out[t] = (len(rows), hash(json.dumps(rows, default=str)))
    return out
