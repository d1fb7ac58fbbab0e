"""The replica: the central system's members, cards, passes and bookings as this gate
last heard of them, read by taps, and changed by whole deltas, look-up answers and
snapshots (the big ones through sync/snapshot.py).

Two things in these rows are the gate's own, and survive a sync of the same record:
- a pass's local `balance` = the central balance (as of `applied_seq`, the highest of
  our events the central system had applied) minus our own deductions with a higher seq;
- a booking's `outcome` (attended / no_show), unless the sync cancels the booking.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from decimal import Decimal

from rules.credential import Card, Resolution, TenDigits, card_from_text, lookup_keys, resolve
from rules.model import Booking, BookingStatus, Member, Pass
from rules.model import Site as SiteModel
from sync import enrolment
from sync.batch import SyncBatch
from sync.rows import (
    BOOKING_READ,
    MEMBER_INSERT,
    MEMBER_READ,
    PASS_READ,
    booking_from_row,
    booking_row,
    card_key_rows,
    card_rows,
    dec,
    member_from_row,
    member_row,
    pass_from_row,
    pass_row,
    ts,
)

TABLES = ("members", "cards", "card_keys", "passes", "bookings")

log = logging.getLogger(__name__)

# A member's cards go with the member: their projection keys first (they name the card).
_DELETE_CARD_KEYS = "DELETE FROM card_keys WHERE card IN (SELECT card FROM cards WHERE member_id = ?)"


class Replica:
    def __init__(self, conn: sqlite3.Connection, site: SiteModel, ten_digits: TenDigits = TenDigits.EM32):
        self.conn = conn
        self.site = site
        self.ten_digits = ten_digits  # how untyped 10-digit card strings are read

    # -- reads ------------------------------------------------------------------------------

    def member_for_card(self, card: str | Card) -> str | None:
        """The member a card read belongs to (text is read with card_from_text)."""
        try:
            typed = card if isinstance(card, Card) else card_from_text(card, self.ten_digits)
        except ValueError:
            return None
        return self.resolve_card(typed).member

    def resolve_card(self, card: Card) -> Resolution:
        """Every enrolled card that matches the read (rules.credential.cards_match), and the
        member they belong to: none, one, or several (ambiguous: refused, and logged). A
        card the desk assigned wins until the central system has taken it over."""
        pending = enrolment.matching(self.conn, card)
        if pending:
            return self._logged(resolve(pending), card)
        key, coarser = lookup_keys(card)
        c = self.conn
        rows = c.execute("SELECT member_id, card FROM cards WHERE card = ?", (key,)).fetchall()
        rows += c.execute(
            "SELECT c.member_id, c.card FROM card_keys k JOIN cards c ON c.card = k.card WHERE k.key = ?",
            (key,),
        ).fetchall()
        if coarser:
            marks = ",".join("?" * len(coarser))
            rows += c.execute(f"SELECT member_id, card FROM cards WHERE card IN ({marks})", coarser).fetchall()
        return self._logged(resolve((str(m), str(k)) for m, k in rows), card)

    @staticmethod
    def _logged(found: Resolution, card: Card) -> Resolution:
        if found.ambiguous:
            log.warning(
                "card read %s matches cards of several members %s: refused",
                card.key,
                sorted({m for m, _ in found.candidates}),
            )
        return found

    def member(self, member_id: str) -> Member | None:
        row = self.conn.execute(f"SELECT {MEMBER_READ} FROM members WHERE id = ?", (member_id,)).fetchone()
        if row is None:
            return None
        cards = tuple(r[0] for r in self.conn.execute("SELECT card FROM cards WHERE member_id = ?", (member_id,)))
        cards += tuple(c for c in enrolment.cards_of(self.conn, member_id) if c not in cards)
        return member_from_row(row, cards)

    def passes_of(self, member_id: str) -> list[Pass]:
        rows = self.conn.execute(
            f"SELECT {PASS_READ} FROM passes WHERE member_id = ? ORDER BY id", (member_id,)
        ).fetchall()
        return [pass_from_row(r) for r in rows]

    def get_pass(self, pass_id: str) -> Pass | None:
        row = self.conn.execute(f"SELECT {PASS_READ} FROM passes WHERE id = ?", (pass_id,)).fetchone()
        return None if row is None else pass_from_row(row)

    def balance(self, pass_id: str) -> Decimal | None:
        row = self.conn.execute("SELECT balance FROM passes WHERE id = ?", (pass_id,)).fetchone()
        return None if row is None else dec(row[0])

    def get_booking(self, booking_id: str) -> Booking | None:
        row = self.conn.execute(f"SELECT {BOOKING_READ} FROM bookings WHERE id = ?", (booking_id,)).fetchone()
        return None if row is None else booking_from_row(row)

    def bookings_of(self, member_id: str, start: datetime, end: datetime) -> list[Booking]:
        rows = self.conn.execute(
            f"SELECT {BOOKING_READ} FROM bookings WHERE member_id = ? AND starts_at BETWEEN ? AND ?",
            (member_id, ts(start), ts(end)),
        ).fetchall()
        return [booking_from_row(r) for r in rows]

    def bookings_between(self, start: datetime, end: datetime) -> list[Booking]:
        rows = self.conn.execute(
            f"SELECT {BOOKING_READ} FROM bookings WHERE starts_at >= ? AND starts_at < ? ORDER BY starts_at, id",
            (ts(start), ts(end)),
        ).fetchall()
        return [booking_from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {
            t: int(self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("members", "passes", "bookings")
        }

    # -- changes from the central system ----------------------------------------------------

    def apply(self, batch: SyncBatch, now: datetime, *, snapshot: bool) -> None:
        """Inside a transaction. Members, passes and bookings replace by id, whole. A
        snapshot also removes everything it does not list. Our own outcomes and
        deductions are kept (see the module doc)."""
        c = self.conn
        if snapshot:
            c.execute("DELETE FROM members")
            c.execute("DELETE FROM cards")
            c.execute("DELETE FROM card_keys")
            c.execute("DELETE FROM passes")
            c.execute("CREATE TEMP TABLE IF NOT EXISTS snap_bookings (id TEXT PRIMARY KEY)")
            c.execute("DELETE FROM snap_bookings")
            c.executemany("INSERT OR IGNORE INTO snap_bookings(id) VALUES (?)", ((b.id,) for b in batch.bookings))
            c.execute("DELETE FROM bookings WHERE id NOT IN (SELECT id FROM snap_bookings)")
        synced_at = ts(now)
        for mid in batch.remove_members:
            c.execute("DELETE FROM members WHERE id = ?", (mid,))
            c.execute(_DELETE_CARD_KEYS, (mid,))
            c.execute("DELETE FROM cards WHERE member_id = ?", (mid,))
        for pid in batch.remove_passes:
            c.execute("DELETE FROM passes WHERE id = ?", (pid,))
        for bid in batch.remove_bookings:
            c.execute("DELETE FROM bookings WHERE id = ?", (bid,))
        if batch.members:
            if not snapshot:
                c.executemany(_DELETE_CARD_KEYS, ((m.id,) for m in batch.members))
                c.executemany("DELETE FROM cards WHERE member_id = ?", ((m.id,) for m in batch.members))
            c.executemany(
                f"INSERT INTO members{MEMBER_INSERT} "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, status=excluded.status, "
                "email=excluded.email, photo=excluded.photo, synced_at=excluded.synced_at, phone=excluded.phone, "
                "search=excluded.search",
                (member_row(m, synced_at) for m in batch.members),
            )
            # a card moves to whoever the central system last said holds it
            c.executemany(
                "INSERT INTO cards(card, member_id) VALUES (?, ?) ON CONFLICT(card) DO UPDATE SET member_id=excluded.member_id",
                (row for m in batch.members for row in card_rows(m, self.ten_digits)),
            )
            c.executemany(
                "INSERT OR IGNORE INTO card_keys(key, card) VALUES (?, ?)",
                (row for m in batch.members for row in card_key_rows(m, self.ten_digits)),
            )
        if batch.passes:
            c.executemany(
                "INSERT INTO passes(id, member_id, name, kind, central_balance, applied_seq, balance, deduct_on, "
                "walk_in_cost, valid_from, valid_until, zones, access_windows) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET member_id=excluded.member_id, name=excluded.name, kind=excluded.kind, "
                "central_balance=excluded.central_balance, applied_seq=excluded.applied_seq, balance=excluded.balance, "
                "deduct_on=excluded.deduct_on, walk_in_cost=excluded.walk_in_cost, valid_from=excluded.valid_from, "
                "valid_until=excluded.valid_until, zones=excluded.zones, access_windows=excluded.access_windows",
                (pass_row(r) for r in batch.passes),
            )
            # balance = central balance - our deductions the central system had not yet seen
            for r in batch.passes:
                if r.pass_.balance is not None:
                    self.recompute_balance(r.pass_.id)
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
                (booking_row(b) for b in batch.bookings),
            )
            # a central "attended"/"no_show" is an outcome too, when the gate has none
            for b in batch.bookings:
                if b.status in (BookingStatus.ATTENDED, BookingStatus.NO_SHOW):
                    c.execute(
                        "UPDATE bookings SET outcome = COALESCE(outcome, ?) WHERE id = ?", (b.status.value, b.id)
                    )

    def recompute_balance(self, pass_id: str) -> None:
        """Inside a transaction: local balance = central - own deductions above applied_seq."""
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

    def set_balance(self, pass_id: str, balance: Decimal) -> None:
        """Inside a transaction: after a deduction of ours."""
        self.conn.execute("UPDATE passes SET balance = ? WHERE id = ?", (str(balance), pass_id))
