"""The local replica and the ledger: SQLite (WAL) through sqlite-utils.

One database file per daemon. It holds the cached copy of the central system's members,
passes and bookings, and what only this gate knows: passages, deductions, attendance
outcomes, loyalty credits, used QR tokens, and the event log that doubles as the outbox.

The rules of the ledger:
- Every state change and the events that report it are written in one transaction; a
  crash leaves all of it or none of it.
- `seq` numbers this daemon's events 1, 2, 3, ... with no gap, whatever is pruned later.
- A pass's local balance is the central balance (as of `applied_seq`, the highest of our
  events the central system had applied) minus our own deductions with a higher seq.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlite_utils

from rules.credential import CredentialKind
from rules.decide import Decision, MemberView, ZonePresence
from rules.model import (
    Booking,
    BookingStatus,
    DeductOn,
    Direction,
    Gate,
    Member,
    MemberStatus,
    Pass,
    PassKind,
    Policy,
    Site,
)
from rules.reasons import Reason
from rules.schedule import WorkKind, due_work, no_show_fee
from rules.timeutil import WeekSchedule, iso_utc, local_date, start_of_local_day

Event = dict[str, Any]

# Bookings further than this from now cannot matter to a tap (arrival, link and same-day
# windows are all shorter), so a view loads only these.
VIEW_HORIZON = timedelta(hours=36)


def _ts(at: datetime) -> float:
    return at.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _amount_json(d: Decimal) -> int | float:
    """Amounts travel as JSON numbers: whole numbers as integers."""
    return int(d) if d == d.to_integral_value() else float(d)


@dataclass(frozen=True, slots=True)
class PassRecord:
    """A pass as the central system sends it, with the seq its balance already reflects."""

    pass_: Pass
    applied_seq: int | None = None


@dataclass(frozen=True, slots=True)
class SyncBatch:
    members: Sequence[Member] = ()
    passes: Sequence[PassRecord] = ()
    bookings: Sequence[Booking] = ()
    remove_members: Sequence[str] = ()
    remove_passes: Sequence[str] = ()
    remove_bookings: Sequence[str] = ()


@dataclass(slots=True)
class Committed:
    """What one transaction wrote: its events, in seq order."""

    events: list[Event] = field(default_factory=list)


SCHEMA_VERSION = 2


def _migration_1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db.table("members").create(
        {"id": str, "name": str, "status": str, "email": str, "photo": str, "synced_at": float},
        pk="id",
        if_not_exists=True,
    )
    db.table("cards").create({"card": str, "member_id": str}, pk="card", if_not_exists=True)
    db.table("cards").create_index(["member_id"], if_not_exists=True)
    db.table("passes").create(
        {
            "id": str,
            "member_id": str,
            "name": str,
            "kind": str,
            "central_balance": str,
            "applied_seq": int,
            "balance": str,
            "deduct_on": str,
            "walk_in_cost": str,
            "valid_from": str,
            "valid_until": str,
            "zones": str,
            "access_windows": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db.table("passes").create_index(["member_id"], if_not_exists=True)
    db.table("bookings").create(
        {
            "id": str,
            "member_id": str,
            "pass_id": str,
            "class_name": str,
            "zone": str,
            "starts_at": float,
            "ends_at": float,
            "status": str,
            "outcome": str,
            "deducted": int,
            "cost": str,
            "loyalty_points": int,
            "loyalty_credited": int,
            "attended_at": float,
        },
        pk="id",
        if_not_exists=True,
    )
    db.table("bookings").create_index(["member_id", "starts_at"], if_not_exists=True)
    db.table("bookings").create_index(["starts_at"], if_not_exists=True)
    # partial indexes keep the scheduler's due-work queries cheap with 300,000 bookings
    db.execute(
        "CREATE INDEX IF NOT EXISTS bookings_open ON bookings(ends_at) "
        "WHERE outcome IS NULL AND status = 'booked'"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS bookings_uncredited ON bookings(ends_at) "
        "WHERE outcome = 'attended' AND loyalty_credited = 0 AND loyalty_points > 0"
    )
    db.table("deductions").create(
        {
            "seq": int,
            "pass_id": str,
            "member_id": str,
            "booking_id": str,
            "amount": str,
            "cause": str,
            "zone": str,
            "at": float,
            "refunded_by": int,
        },
        pk="seq",
        if_not_exists=True,
    )
    db.table("deductions").create_index(["pass_id", "seq"], if_not_exists=True)
    db.table("deductions").create_index(["member_id", "cause", "at"], if_not_exists=True)
    db.table("passages").create(
        {"id": int, "member_id": str, "zone": str, "direction": str, "at": float, "gate": str, "origin": str},
        pk="id",
        if_not_exists=True,
    )
    db.table("passages").create_index(["member_id", "zone", "at"], if_not_exists=True)
    db.table("passages").create_index(["at"], if_not_exists=True)
    db.table("loyalty").create(
        {
            "id": int,
            "member_id": str,
            "points": int,
            "booking_id": str,
            "reason": str,
            "operator": str,
            "at": float,
            "seq": int,
        },
        pk="id",
        if_not_exists=True,
    )
    db.table("loyalty").create_index(["member_id"], if_not_exists=True)
    db.table("qr_used").create({"token_id": str, "expires_at": float}, pk="token_id", if_not_exists=True)
    db.table("events").create(
        {"seq": int, "id": str, "type": str, "at": str, "gate": str, "member_id": str, "body": str},
        pk="seq",
        if_not_exists=True,
    )
    db.table("events").create_index(["id"], unique=True, if_not_exists=True)
    db.table("events").create_index(["member_id", "seq"], if_not_exists=True)
    db.table("audit").create(
        {"id": int, "at": float, "operator": str, "action": str, "detail": str, "seq": int},
        pk="id",
        if_not_exists=True,
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    # A grant the gate is about to act on, written (durably) before the relay is pulsed
    # and deleted by the transaction that commits the tap: one still here after a restart
    # is a grant whose commit a crash cut off (see Store.open_intent).
    db.table("grant_intents").create(
        {"id": int, "gate": str, "member_id": str, "body": str, "at": float},
        pk="id",
        if_not_exists=True,
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_2]


class StoreError(Exception):
    pass


class _Checkpointer:
    """Keeps the WAL short from a thread of its own (PASSIVE: never blocks the writer)."""

    INTERVAL = 0.5
    MIN_BYTES = 4 * 1024 * 1024

    def __init__(self, path: Path):
        self.path = path
        self.wal = Path(str(path) + "-wal")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop.wait(self.INTERVAL):
                try:
                    if self.wal.stat().st_size < self.MIN_BYTES:
                        continue
                except FileNotFoundError:
                    continue
                try:
                    if conn is None:
                        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=1.0)
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy or closing: try again next round
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Store:
    """The daemon's only writer to its database. Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        path: str | Path,
        site: Site,
        *,
        daemon_id: str = "gate",
        durable: bool = True,
        background_checkpoints: bool = True,
    ):
        self.path = Path(path)
        self.site = site
        self.daemon_id = daemon_id
        self.durable = durable
        self.background_checkpoints = background_checkpoints
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        try:
            self._migrate()
            self._next_seq = int(self._meta("next_seq", "1"))
        except BaseException:
            self.close()
            raise
        self.listeners: list[Callable[[list[Event]], None]] = []

    def _open(self) -> None:
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed deduction survives a power cut, not only a process crash
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA foreign_keys=OFF")
            # Checkpoints copy the WAL back into the database file: seconds of I/O after a
            # big snapshot. Done by a background thread on its own connection, never inside
            # a tap's commit on the event loop.
            conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        self._checkpointer = _Checkpointer(self.path) if self.background_checkpoints else None

    def reopen(self) -> None:
        """Open the file again (a connection opened read-only stays read-only after the
        file's owner or mode is fixed). The old connection is kept if this fails."""
        old, old_checkpointer = self.conn, self._checkpointer
        self._open()
        if old_checkpointer is not None:
            old_checkpointer.stop()
        old.close()

    def rescue(self) -> None:
        """The file at `path` is gone (its directory deleted while the daemon ran) but this
        connection still holds it, ledger and unsent events included: write it back to
        its path, whole, and carry on there. Raises if the path cannot be written (then
        the store stays on the old file, still unusable for entries, and this is retried)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".rescue")
        tmp.unlink(missing_ok=True)
        dst = sqlite3.connect(str(tmp))
        try:
            self.conn.backup(dst)
            dst.execute("PRAGMA journal_mode=WAL")
        finally:
            dst.close()
        for suffix in ("-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        os.replace(tmp, self.path)  # the file appears whole or not at all
        old, old_checkpointer = self.conn, self._checkpointer
        if old_checkpointer is not None:
            old_checkpointer.stop()
        self._open()
        old.close()

    # -- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # a store that cannot be written still closes; what was committed is in the WAL
        finally:
            self.conn.close()

    def checkpoint(self) -> None:
        """Copy the WAL into the database now (tests, maintenance)."""
        self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _migrate(self) -> None:
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        version = int(self._meta("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise StoreError(f"database schema {version} is newer than this gated ({SCHEMA_VERSION})")
        for n in range(version, SCHEMA_VERSION):
            with self._tx():
                MIGRATIONS[n](self.db)
                self._set_meta("schema_version", str(n + 1))

    def _meta(self, key: str, default: str | None = None) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            if default is None:
                raise KeyError(key)
            return default
        return str(row[0])

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def set_meta(self, key: str, value: str) -> None:
        with self._tx():
            self._set_meta(key, value)

    @contextmanager
    def _tx(self, *, scratch: bool = False) -> Iterator[None]:
        """One SQLite transaction; on any error nothing of it is kept (seq included).

        `scratch`: the transaction only writes data that is thrown away after a crash
        anyway (a snapshot's shadow tables). It commits without waiting for the disk
        (synchronous=NORMAL: still consistent after a power cut, maybe not there); the next
        durable commit — every tap — syncs it along with itself.
        """
        seq_before = getattr(self, "_next_seq", 1)
        if scratch and self.durable:
            self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            self._next_seq = seq_before
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            if scratch and self.durable:
                self.conn.execute("PRAGMA synchronous=FULL")

    def _emit(self, committed: Committed, type_: str, now: datetime, **fields: Any) -> Event:
        seq = self._next_seq
        event: Event = {"id": uuid.uuid4().hex, "seq": seq, "type": type_, "at": iso_utc(now)}
        event.update(fields)
        self.conn.execute(
            "INSERT INTO events(seq, id, type, at, gate, member_id, body) VALUES (?,?,?,?,?,?,?)",
            (seq, event["id"], type_, event["at"], fields.get("gate"), fields.get("member"), json.dumps(event)),
        )
        self._next_seq = seq + 1
        self._set_meta("next_seq", str(self._next_seq))
        committed.events.append(event)
        return event

    def _notify(self, committed: Committed) -> Committed:
        if committed.events:
            for listener in self.listeners:
                listener(committed.events)
        return committed

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    # -- reading domain objects -------------------------------------------------------

    @staticmethod
    def _member(row: sqlite3.Row | tuple[Any, ...], cards: tuple[str, ...]) -> Member:
        return Member(
            id=row[0], name=row[1] or "", status=MemberStatus(row[2]), cards=cards, email=row[3], photo=row[4]
        )

    _PASS_COLS = (
        "id, member_id, name, kind, balance, deduct_on, walk_in_cost, valid_from, valid_until, zones, access_windows"
    )

    @staticmethod
    def _pass(row: tuple[Any, ...]) -> Pass:
        zones = json.loads(row[9]) if row[9] is not None else None
        windows = WeekSchedule.parse(json.loads(row[10])) if row[10] is not None else None
        return Pass(
            id=row[0],
            member=row[1],
            name=row[2] or "",
            kind=PassKind(row[3]),
            balance=_dec(row[4]),
            deduct_on=DeductOn(row[5]),
            walk_in_cost=_dec(row[6]),
            valid_from=date.fromisoformat(row[7]) if row[7] else None,
            valid_until=date.fromisoformat(row[8]) if row[8] else None,
            zones=frozenset(zones) if zones is not None else None,
            access_windows=windows,
        )

    _BOOKING_COLS = (
        "id, member_id, pass_id, class_name, zone, starts_at, ends_at, status, outcome, deducted, cost, loyalty_points"
    )

    @staticmethod
    def _booking(row: tuple[Any, ...]) -> Booking:
        status = BookingStatus(row[7])
        if status != BookingStatus.CANCELLED and row[8]:
            status = BookingStatus(row[8])
        return Booking(
            id=row[0],
            member=row[1],
            pass_id=row[2],
            class_name=row[3] or "",
            zone=row[4],
            starts_at=_dt(row[5]),
            ends_at=_dt(row[6]),
            status=status,
            deducted=bool(row[9]),
            cost=Decimal(row[10]),
            loyalty_points=int(row[11] or 0),
        )

    def member_for_card(self, card: str) -> str | None:
        row = self.conn.execute("SELECT member_id FROM cards WHERE card = ?", (card.upper(),)).fetchone()
        return None if row is None else str(row[0])

    def member(self, member_id: str) -> Member | None:
        row = self.conn.execute(
            "SELECT id, name, status, email, photo FROM members WHERE id = ?", (member_id,)
        ).fetchone()
        if row is None:
            return None
        cards = tuple(r[0] for r in self.conn.execute("SELECT card FROM cards WHERE member_id = ?", (member_id,)))
        return self._member(row, cards)

    def passes_of(self, member_id: str) -> list[Pass]:
        rows = self.conn.execute(
            f"SELECT {self._PASS_COLS} FROM passes WHERE member_id = ? ORDER BY id", (member_id,)
        ).fetchall()
        return [self._pass(r) for r in rows]

    def get_pass(self, pass_id: str) -> Pass | None:
        row = self.conn.execute(f"SELECT {self._PASS_COLS} FROM passes WHERE id = ?", (pass_id,)).fetchone()
        return None if row is None else self._pass(row)

    def balance(self, pass_id: str) -> Decimal | None:
        row = self.conn.execute("SELECT balance FROM passes WHERE id = ?", (pass_id,)).fetchone()
        return None if row is None else _dec(row[0])

    def get_booking(self, booking_id: str) -> Booking | None:
        row = self.conn.execute(
            f"SELECT {self._BOOKING_COLS} FROM bookings WHERE id = ?", (booking_id,)
        ).fetchone()
        return None if row is None else self._booking(row)

    def bookings_of(self, member_id: str, start: datetime, end: datetime) -> list[Booking]:
        rows = self.conn.execute(
            f"SELECT {self._BOOKING_COLS} FROM bookings WHERE member_id = ? AND starts_at BETWEEN ? AND ?",
            (member_id, _ts(start), _ts(end)),
        ).fetchall()
        return [self._booking(r) for r in rows]

    def bookings_between(self, start: datetime, end: datetime) -> list[Booking]:
        rows = self.conn.execute(
            f"SELECT {self._BOOKING_COLS} FROM bookings WHERE starts_at >= ? AND starts_at < ? ORDER BY starts_at, id",
            (_ts(start), _ts(end)),
        ).fetchall()
        return [self._booking(r) for r in rows]

    def points(self, member_id: str) -> int:
        row = self.conn.execute("SELECT COALESCE(SUM(points), 0) FROM loyalty WHERE member_id = ?", (member_id,)).fetchone()
        return int(row[0])

    def zone_presence(self, member_id: str, zone: str) -> ZonePresence:
        last = self.conn.execute(
            "SELECT at, direction FROM passages WHERE member_id = ? AND zone = ? ORDER BY at DESC, id DESC LIMIT 1",
            (member_id, zone),
        ).fetchone()
        if last is None:
            return ZonePresence()
        entry = self.conn.execute(
            "SELECT at FROM passages WHERE member_id = ? AND zone = ? AND direction = 'in' ORDER BY at DESC LIMIT 1",
            (member_id, zone),
        ).fetchone()
        return ZonePresence(
            last_at=_dt(last[0]),
            last_direction=Direction(last[1]),
            last_entry_at=_dt(entry[0]) if entry else None,
        )

    def qr_seen(self, token_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM qr_used WHERE token_id = ?", (token_id,)).fetchone() is not None

    def view(self, member_id: str | None, gate: Gate, now: datetime) -> MemberView:
        """What decide() needs for this member at this gate: indexed look-ups only."""
        if member_id is None:
            return MemberView(None)
        member = self.member(member_id)
        if member is None:
            return MemberView(None)
        passes = tuple(self.passes_of(member_id))
        # a gate's arrival window may be longer than the default horizon (early_arrival: 2d)
        before = max(VIEW_HORIZON, gate.late_arrival + timedelta(days=1))
        after = max(VIEW_HORIZON, gate.early_arrival + timedelta(days=1))
        bookings = tuple(self.bookings_of(member_id, now - before, now + after))
        own = {p.id for p in passes}
        extra: dict[str, Pass] = {}
        for b in bookings:
            if b.pass_id not in own and b.pass_id not in extra:
                p = self.get_pass(b.pass_id)
                if p is not None:
                    extra[b.pass_id] = p
        return MemberView(
            member=member,
            passes=passes,
            bookings=bookings,
            presence={gate.zone: self.zone_presence(member_id, gate.zone)},
            extra_passes=extra,
        )

    # -- applying what the central system sends -------------------------------------

    def apply_sync(self, batch: SyncBatch, now: datetime, *, snapshot: bool = False) -> None:
        """Members, passes and bookings replace by id, whole. A snapshot also removes
        everything it does not list. Our own outcomes and deductions are kept (see module doc)."""
        with self._tx():
            self._apply_sync(batch, now, snapshot=snapshot)

    def _apply_sync(self, batch: SyncBatch, now: datetime, *, snapshot: bool) -> None:
        c = self.conn
        if snapshot:
            c.execute("DELETE FROM members")
            c.execute("DELETE FROM cards")
            c.execute("DELETE FROM passes")
            c.execute("CREATE TEMP TABLE IF NOT EXISTS snap_bookings (id TEXT PRIMARY KEY)")
            c.execute("DELETE FROM snap_bookings")
            c.executemany("INSERT OR IGNORE INTO snap_bookings(id) VALUES (?)", ((b.id,) for b in batch.bookings))
            c.execute("DELETE FROM bookings WHERE id NOT IN (SELECT id FROM snap_bookings)")
        ts = _ts(now)
        for mid in batch.remove_members:
            c.execute("DELETE FROM members WHERE id = ?", (mid,))
            c.execute("DELETE FROM cards WHERE member_id = ?", (mid,))
        for pid in batch.remove_passes:
            c.execute("DELETE FROM passes WHERE id = ?", (pid,))
        for bid in batch.remove_bookings:
            c.execute("DELETE FROM bookings WHERE id = ?", (bid,))
        if batch.members:
            if not snapshot:
                c.executemany("DELETE FROM cards WHERE member_id = ?", ((m.id,) for m in batch.members))
            c.executemany(
                "INSERT INTO members(id, name, status, email, photo, synced_at) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, status=excluded.status, "
                "email=excluded.email, photo=excluded.photo, synced_at=excluded.synced_at",
                ((m.id, m.name, m.status.value, m.email, m.photo, ts) for m in batch.members),
            )
            # a card moves to whoever the central system last said holds it
            c.executemany(
                "INSERT INTO cards(card, member_id) VALUES (?, ?) ON CONFLICT(card) DO UPDATE SET member_id=excluded.member_id",
                ((card.upper(), m.id) for m in batch.members for card in m.cards),
            )
        if batch.passes:
            c.executemany(
                "INSERT INTO passes(id, member_id, name, kind, central_balance, applied_seq, balance, deduct_on, "
                "walk_in_cost, valid_from, valid_until, zones, access_windows) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET member_id=excluded.member_id, name=excluded.name, kind=excluded.kind, "
                "central_balance=excluded.central_balance, applied_seq=excluded.applied_seq, balance=excluded.balance, "
                "deduct_on=excluded.deduct_on, walk_in_cost=excluded.walk_in_cost, valid_from=excluded.valid_from, "
                "valid_until=excluded.valid_until, zones=excluded.zones, access_windows=excluded.access_windows",
                (self._pass_row(r) for r in batch.passes),
            )
            # balance = central balance - our deductions the central system had not yet seen
            for r in batch.passes:
                if r.pass_.balance is not None:
                    self._recompute_balance(r.pass_.id)
        if batch.bookings:
            c.executemany(
                "INSERT INTO bookings(id, member_id, pass_id, class_name, zone, starts_at, ends_at, status, outcome, "
                "deducted, cost, loyalty_points, loyalty_credited, attended_at) VALUES (?,?,?,?,?,?,?,?,NULL,?,?,?,0,NULL) "
                "ON CONFLICT(id) DO UPDATE SET member_id=excluded.member_id, pass_id=excluded.pass_id, "
                "class_name=excluded.class_name, zone=excluded.zone, starts_at=excluded.starts_at, ends_at=excluded.ends_at, "
                "status=excluded.status, deducted=excluded.deducted, cost=excluded.cost, "
                "loyalty_points=excluded.loyalty_points, "
                # the gate's own outcome survives, unless the central system cancels the booking
                "outcome=CASE WHEN excluded.status = 'cancelled' THEN NULL ELSE bookings.outcome END",
                (
                    (
                        b.id,
                        b.member,
                        b.pass_id,
                        b.class_name,
                        b.zone,
                        _ts(b.starts_at),
                        _ts(b.ends_at),
                        BookingStatus.CANCELLED.value if b.status == BookingStatus.CANCELLED else BookingStatus.BOOKED.value,
                        int(b.deducted),
                        str(b.cost),
                        b.loyalty_points,
                    )
                    for b in batch.bookings
                ),
            )
            # a central "attended"/"no_show" is an outcome too, when the gate has none
            for b in batch.bookings:
                if b.status in (BookingStatus.ATTENDED, BookingStatus.NO_SHOW):
                    c.execute(
                        "UPDATE bookings SET outcome = COALESCE(outcome, ?) WHERE id = ?", (b.status.value, b.id)
                    )
        self._set_meta("last_sync_at", str(ts))

    @staticmethod
    def _pass_row(r: PassRecord) -> tuple[Any, ...]:
        p = r.pass_
        bal = str(p.balance) if p.balance is not None else None
        return (
            p.id,
            p.member,
            p.name,
            p.kind.value,
            bal,
            r.applied_seq or 0,
            bal,
            p.deduct_on.value,
            str(p.walk_in_cost) if p.walk_in_cost is not None else None,
            p.valid_from.isoformat() if p.valid_from else None,
            p.valid_until.isoformat() if p.valid_until else None,
            json.dumps(sorted(p.zones)) if p.zones is not None else None,
            json.dumps(p.access_windows.spec_dict()) if p.access_windows is not None else None,
        )

    def _recompute_balance(self, pass_id: str) -> None:
        row = self.conn.execute(
            "SELECT central_balance, applied_seq FROM passes WHERE id = ?", (pass_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return
        central, applied = Decimal(row[0]), int(row[1] or 0)
        own = sum(
            (Decimal(a) for (a,) in self.conn.execute(
                "SELECT amount FROM deductions WHERE pass_id = ? AND seq > ?", (pass_id, applied)
            )),
            Decimal(0),
        )
        self.conn.execute("UPDATE passes SET balance = ? WHERE id = ?", (str(central - own), pass_id))

    # -- committing what happened at a gate ------------------------------------------

    def _deduct(
        self,
        committed: Committed,
        now: datetime,
        *,
        pass_id: str,
        member_id: str | None,
        amount: Decimal,
        booking_id: str | None,
        cause: str,
        zone: str | None,
        gate: str | None,
        refunded_seq: int | None = None,
    ) -> Event:
        row = self.conn.execute("SELECT balance FROM passes WHERE id = ?", (pass_id,)).fetchone()
        balance = _dec(row[0]) if row else None
        after = balance - amount if balance is not None else None
        fields: dict[str, Any] = {
            "member": member_id,
            "pass": pass_id,
            "amount": _amount_json(amount),
            "booking": booking_id,
            "cause": cause,
        }
        if gate:
            fields = {"gate": gate, **fields}
        if after is not None:
            fields["balance"] = _amount_json(after)
        event = self._emit(committed, "deduction", now, **fields)
        self.conn.execute(
            "INSERT INTO deductions(seq, pass_id, member_id, booking_id, amount, cause, zone, at, refunded_by) "
            "VALUES (?,?,?,?,?,?,?,?,NULL)",
            (event["seq"], pass_id, member_id, booking_id, str(amount), cause, zone, _ts(now)),
        )
        if refunded_seq is not None:
            self.conn.execute("UPDATE deductions SET refunded_by = ? WHERE seq = ?", (event["seq"], refunded_seq))
        if after is not None:
            self.conn.execute("UPDATE passes SET balance = ? WHERE id = ?", (str(after), pass_id))
        return event

    def _attend(self, committed: Committed, now: datetime, booking: Booking, by: str, gate: str | None) -> None:
        self.conn.execute(
            "UPDATE bookings SET outcome = 'attended', attended_at = ? WHERE id = ?", (_ts(now), booking.id)
        )
        fields: dict[str, Any] = {"member": booking.member, "booking": booking.id, "status": "attended", "by": by}
        if gate:
            fields = {"gate": gate, **fields}
        self._emit(committed, "attendance", now, **fields)

    def _passage(self, member_id: str | None, zone: str, direction: Direction, now: datetime, gate: str, origin: str = "local") -> None:
        self.conn.execute(
            "INSERT INTO passages(member_id, zone, direction, at, gate, origin) VALUES (?,?,?,?,?,?)",
            (member_id, zone, direction.value, _ts(now), gate, origin),
        )

    def commit_tap(
        self,
        gate: Gate,
        decision: Decision,
        *,
        credential: CredentialKind,
        passed: bool,
        now: datetime,
        qr_token: tuple[str, datetime] | None = None,
        message: str | None = None,
        extra: dict[str, Any] | None = None,
        intent: int | None = None,
    ) -> Committed:
        """One tap, whole: the access event, and on a confirmed passage the deduction,
        attendance and presence. No passage, no deduction, no attendance. `intent`, the
        grant's intent (open_intent), is resolved in the same transaction."""
        committed = Committed()
        with self._tx():
            if intent is not None:
                self.conn.execute("DELETE FROM grant_intents WHERE id = ?", (intent,))
            if qr_token is not None:
                # used up on its first verified read, whatever the decision
                self.conn.execute(
                    "INSERT OR IGNORE INTO qr_used(token_id, expires_at) VALUES (?, ?)",
                    (qr_token[0], _ts(qr_token[1])),
                )
            went_through = decision.granted and passed
            access: dict[str, Any] = {
                "gate": gate.id,
                "member": decision.member,
                "decision": "granted" if decision.granted else "denied",
                "reason": decision.reason.value,
                "booking": decision.booking,
                "pass": decision.pass_id,
                "credential": credential.value,
            }
            if decision.granted:
                access["passed"] = passed
            if decision.anti_passback is not None:
                access["anti_passback"] = decision.anti_passback
            if message:
                access["message"] = message
            if extra:
                access.update(extra)
            self._emit(committed, "access", now, **access)
            if went_through:
                if decision.amount and decision.pass_id:
                    self._deduct(
                        committed,
                        now,
                        pass_id=decision.pass_id,
                        member_id=decision.member,
                        amount=decision.amount,
                        booking_id=decision.booking,
                        cause=decision.cause or decision.reason.value,
                        zone=gate.zone,
                        gate=gate.id,
                    )
                if decision.attends_booking and decision.booking:
                    booking = self.get_booking(decision.booking)
                    if booking is not None:
                        self._attend(committed, now, booking, "gate", gate.id)
                direction = Direction.OUT if decision.reason == Reason.EXIT else Direction.IN
                self._passage(decision.member, gate.zone, direction, now, gate.id)
        return self._notify(committed)

    # -- grant intents: nothing opens that cannot be recorded --------------------------

    def open_intent(
        self,
        gate: Gate,
        decision: Decision,
        *,
        credential: CredentialKind | None,
        now: datetime,
        qr_token: tuple[str, datetime] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Write, durably, that `gate` is about to open for `decision`; its id goes to
        `commit_tap(intent=...)`, which deletes it in the tap's own transaction.

        Called before the relay is pulsed: if this raises, the gate must not open for an
        entry (the tap could not be recorded). A QR token is used up here, not at the
        commit, so that a token cannot open the gate twice however the commit fares.
        Always synchronous=FULL: a power cut right after the pulse must still find it.
        """
        body: dict[str, Any] = {
            "gate": gate.id,
            "member": decision.member,
            "reason": decision.reason.value,
            "booking": decision.booking,
            "pass": decision.pass_id,
            "amount": _amount_json(decision.amount),
            "cause": decision.cause,
            "credential": credential.value if credential is not None else None,
            "granted_at": iso_utc(now),
            **(detail or {}),
        }
        with self._tx():
            if qr_token is not None:
                self.conn.execute(
                    "INSERT OR IGNORE INTO qr_used(token_id, expires_at) VALUES (?, ?)",
                    (qr_token[0], _ts(qr_token[1])),
                )
            cur = self.conn.execute(
                "INSERT INTO grant_intents(gate, member_id, body, at) VALUES (?,?,?,?)",
                (gate.id, decision.member, json.dumps(body), _ts(now)),
            )
        return int(cur.lastrowid or 0)

    def open_intents(self) -> list[dict[str, Any]]:
        return [
            {"id": int(r[0]), **json.loads(r[1])}
            for r in self.conn.execute("SELECT id, body FROM grant_intents ORDER BY id")
        ]

    def report_unconfirmed(self, now: datetime) -> Committed:
        """Every intent left by a previous run (its commit was cut: kill -9, power cut)
        becomes a `passage_unconfirmed` event, in one transaction: the central system and
        the desk learn of a grant whose passage, deduction and attendance were never
        recorded. Nothing is deducted: whether the member went through is not known."""
        committed = Committed()
        intents = self.open_intents()
        if not intents:
            return committed
        with self._tx():
            for it in intents:
                fields = {k: v for k, v in it.items() if k != "id"}
                fields["not_deducted"] = fields.pop("amount", 0)
                self._emit(committed, "passage_unconfirmed", now, **fields)
            self.conn.execute("DELETE FROM grant_intents WHERE id <= ?", (intents[-1]["id"],))
        return self._notify(committed)

    def probe(self, now: datetime) -> None:
        """One small durable write: proves the store can record a tap right now (raises
        sqlite3.Error / OSError as a tap's commit would)."""
        with self._tx():
            self._set_meta("storage.probed_at", str(_ts(now)))

    def commit_override(self, gate: Gate, operator: str, reason: str, now: datetime, *, passed: bool = True) -> Committed:
        committed = Committed()
        with self._tx():
            self._emit(
                committed,
                "access",
                now,
                gate=gate.id,
                member=None,
                decision="granted",
                reason=Reason.OVERRIDE.value,
                booking=None,
                credential=None,
                passed=passed,
                operator=operator,
                **{"pass": None},
            )
            self._emit(committed, "override", now, gate=gate.id, operator=operator, reason=reason)
            if passed and gate.direction == Direction.IN:
                self._passage(None, gate.zone, Direction.IN, now, gate.id)
            self._audit(now, operator, "override", {"gate": gate.id, "reason": reason})
        return self._notify(committed)

    def _audit(self, now: datetime, operator: str, action: str, detail: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO audit(at, operator, action, detail, seq) VALUES (?,?,?,?,?)",
            (_ts(now), operator, action, json.dumps(detail), self._next_seq - 1),
        )

    def mark_attended(self, booking_id: str, operator: str, *, refund: bool, now: datetime) -> Committed:
        """Staff say the member was there. With refund, give back the extra walk-in
        credit they paid that day in the class's zone (SPORTRICK's early-arrival case)."""
        booking = self.get_booking(booking_id)
        if booking is None:
            raise StoreError(f"unknown booking {booking_id!r}")
        committed = Committed()
        with self._tx():
            if refund:
                day = local_date(booking.starts_at, self.site.timezone)
                start = start_of_local_day(day, self.site.timezone)
                end = start_of_local_day(day + timedelta(days=1), self.site.timezone)
                charge = self.conn.execute(
                    "SELECT seq, pass_id, amount FROM deductions WHERE member_id = ? AND cause = 'walk_in' "
                    "AND zone = ? AND at >= ? AND at < ? AND at < ? AND refunded_by IS NULL "
                    "ORDER BY at DESC, seq DESC LIMIT 1",
                    (booking.member, booking.zone, _ts(start), _ts(end), _ts(now)),
                ).fetchone()
                if charge is not None:
                    self._deduct(
                        committed,
                        now,
                        pass_id=charge[1],
                        member_id=booking.member,
                        amount=-Decimal(charge[2]),
                        booking_id=booking.id,
                        cause="refund",
                        zone=booking.zone,
                        gate=None,
                        refunded_seq=charge[0],
                    )
            self._attend(committed, now, booking, operator, None)
            self._audit(now, operator, "mark_attended", {"booking": booking_id, "refund": refund})
        return self._notify(committed)

    def adjust_points(self, member_id: str, points: int, operator: str, reason: str, now: datetime) -> Committed:
        committed = Committed()
        with self._tx():
            ev = self._emit(
                committed, "loyalty", now, member=member_id, points=points, reason=reason, operator=operator
            )
            self.conn.execute(
                "INSERT INTO loyalty(member_id, points, booking_id, reason, operator, at, seq) VALUES (?,?,?,?,?,?,?)",
                (member_id, points, None, reason, operator, _ts(now), ev["seq"]),
            )
            self._audit(now, operator, "adjust_points", {"member": member_id, "points": points, "reason": reason})
        return self._notify(committed)

    def record_remote_passage(self, member_id: str, zone: str, direction: Direction, at: datetime, gate: str, origin: str) -> None:
        """Another daemon of the site let this member through (site-wide anti-passback)."""
        with self._tx():
            self._passage(member_id, zone, direction, at, gate, origin)

    def emit(self, type_: str, now: datetime, **fields: Any) -> Event:
        """An event outside the tap path (alarms, health changes): still numbered and kept."""
        committed = Committed()
        with self._tx():
            ev = self._emit(committed, type_, now, **fields)
        self._notify(committed)
        return ev

    def audit(self, now: datetime, operator: str, action: str, detail: dict[str, Any]) -> None:
        with self._tx():
            self._audit(now, operator, action, detail)

    # -- time-driven work -------------------------------------------------------------

    def run_due(self, policy: Policy, now: datetime) -> Committed:
        """No-shows and loyalty credits due up to and including `now`, each exactly once."""
        committed = Committed()
        ts_no_show = _ts(now - policy.no_show_after)
        ts_loyalty = _ts(now - policy.loyalty_delay)
        open_rows = self.conn.execute(
            f"SELECT {self._BOOKING_COLS} FROM bookings WHERE outcome IS NULL AND status = 'booked' AND ends_at <= ?",
            (ts_no_show,),
        ).fetchall()
        credit_rows = self.conn.execute(
            f"SELECT {self._BOOKING_COLS} FROM bookings WHERE outcome = 'attended' AND loyalty_credited = 0 "
            "AND loyalty_points > 0 AND ends_at <= ?",
            (ts_loyalty,),
        ).fetchall()
        if not open_rows and not credit_rows:
            return committed
        work = due_work(
            [self._booking(r) for r in open_rows], [self._booking(r) for r in credit_rows], policy, now
        )
        with self._tx():
            for item in work:
                b = item.booking
                if item.kind == WorkKind.NO_SHOW:
                    self._no_show(committed, b, policy, now)
                else:
                    ev = self._emit(committed, "loyalty", now, member=b.member, points=b.loyalty_points, booking=b.id)
                    self.conn.execute(
                        "INSERT INTO loyalty(member_id, points, booking_id, reason, operator, at, seq) VALUES (?,?,?,?,?,?,?)",
                        (b.member, b.loyalty_points, b.id, None, None, _ts(now), ev["seq"]),
                    )
                    self.conn.execute("UPDATE bookings SET loyalty_credited = 1 WHERE id = ?", (b.id,))
            self.conn.execute("DELETE FROM qr_used WHERE expires_at < ?", (_ts(now - timedelta(hours=1)),))
        return self._notify(committed)

    def _no_show(self, committed: Committed, b: Booking, policy: Policy, now: datetime) -> None:
        self.conn.execute("UPDATE bookings SET outcome = 'no_show' WHERE id = ?", (b.id,))
        p = self.get_pass(b.pass_id)
        fee = Decimal(0)
        if policy.no_show_fee > 0 and p is not None:
            day = local_date(b.starts_at, self.site.timezone)
            on_site = self.conn.execute(
                "SELECT 1 FROM passages WHERE member_id = ? AND zone = ? AND direction = 'in' AND at >= ? AND at < ? LIMIT 1",
                (b.member, b.zone, _ts(start_of_local_day(day, self.site.timezone)), _ts(b.ends_at)),
            ).fetchone()
            fee = no_show_fee(b, p, policy, on_site is not None)
        if fee > 0:
            self._deduct(
                committed, now, pass_id=b.pass_id, member_id=b.member, amount=fee, booking_id=b.id,
                cause="no_show_fee", zone=b.zone, gate=None,
            )
        self._emit(committed, "attendance", now, member=b.member, booking=b.id, status="no_show", by="gate")

    # -- the outbox -------------------------------------------------------------------

    def events_after(self, seq: int, limit: int = 500) -> list[Event]:
        rows = self.conn.execute(
            "SELECT body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def recent_events(self, limit: int = 100, types: Iterable[str] | None = None) -> list[Event]:
        if types:
            t = list(types)
            q = f"SELECT body FROM events WHERE type IN ({','.join('?' * len(t))}) ORDER BY seq DESC LIMIT ?"
            rows = self.conn.execute(q, (*t, limit)).fetchall()
        else:
            rows = self.conn.execute("SELECT body FROM events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    @property
    def acked_seq(self) -> int:
        return int(self._meta("acked_seq", "0"))

    def outbox_depth(self) -> int:
        return self.last_seq - self.acked_seq

    def ack(self, applied_seq: int, *, keep: int = 10_000) -> None:
        """The central system has applied every event up to `applied_seq`.

        Acknowledged events beyond the newest `keep` are pruned; unacknowledged ones never are.
        """
        applied_seq = min(applied_seq, self.last_seq)
        if applied_seq <= self.acked_seq:
            return
        with self._tx():
            self._set_meta("acked_seq", str(applied_seq))
            self.conn.execute("DELETE FROM events WHERE seq <= ? AND seq <= ?", (applied_seq, self.last_seq - keep))

    # -- for the console and the scenario runner --------------------------------------

    def booking_status(self, booking_id: str) -> BookingStatus | None:
        b = self.get_booking(booking_id)
        return None if b is None else b.status

    def counts(self) -> dict[str, int]:
        return {
            t: int(self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("members", "passes", "bookings", "events")
        }

    def last_sync_at(self) -> datetime | None:
        v = self.meta("last_sync_at")
        return None if v is None else _dt(float(v))
