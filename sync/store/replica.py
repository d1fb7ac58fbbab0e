"""The replica: the central system's members, cards, passes and bookings as this gate
last heard of them, in a database file of its own attached AS `replica` (see
sync/store/replica_file.py), read by taps and changed by whole deltas, look-up answers and
snapshots.

Nothing in it is the gate's own. What a tap changes lives in the ledger and is folded in
when reading:
- a pass's local balance = its central balance (as of `applied_seq`, the highest of our
  events the central system had applied, and `applied_peers`, the same for the site's
  other daemons) minus the charges it did not reflect yet — derived at every read,
  exactly (decimal), by the read contract's `passes` view (sync/store/read_contract.py),
  so a sync or a whole new replica can never lose or double a deduction;
- a booking's outcome (attended / no_show) is a ledger row keyed by booking id; it
  shows unless the central system cancelled the booking.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from decimal import Decimal

from rules.credential import (
    Card,
    Resolution,
    TenDigits,
    card_from_text,
    lookup_keys,
    mask_key,
    resolve,
)
from rules.model import Booking, Member, Pass
from rules.model import Site as SiteModel
from sync.store import enrolment
from sync.store.batch import SyncBatch
from sync.store.rows import (
    BOOKING_READ,
    MEMBER_INSERT,
    MEMBER_READ,
    PASS_READ,
    booking_from_row,
    booking_row,
    card_key_rows,
    card_rows,
    member_from_row,
    member_row,
    pass_from_row,
    pass_row,
    ts,
)

TABLES = ("members", "cards", "card_keys", "passes", "bookings")
_BOOKINGS = "replica.bookings b LEFT JOIN main.booking_outcomes o ON o.booking_id = b.id"
# A member's cards go with the member: their projection keys first (they name the card).
_DELETE_CARD_KEYS = (
    "DELETE FROM replica.card_keys WHERE card IN (SELECT card FROM replica.cards WHERE member_id = ?)"
)

log = logging.getLogger(__name__)


class Replica:
    def __init__(self, conn: sqlite3.Connection, site: SiteModel, ten_digits: TenDigits = TenDigits.EM32):
        self.conn = conn
        self.site = site
        self.ten_digits = ten_digits  # how untyped 10-digit card strings are read

    # -- reads ------------------------------------------------------------------------------

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM replica.meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

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
        # one statement: a tap's reads run on CPU caches gone cold since the last tap, where
        # each statement costs several times its warm figure (docs/performance.md)
        sql = (
            "SELECT member_id, card FROM replica.cards WHERE card = ? UNION ALL "
            "SELECT c.member_id, c.card FROM replica.card_keys k JOIN replica.cards c ON c.card = k.card "
            "WHERE k.key = ?"
        )
        if coarser:
            sql += f" UNION ALL SELECT member_id, card FROM replica.cards WHERE card IN ({','.join('?' * len(coarser))})"
        rows = self.conn.execute(sql, (key, key, *coarser)).fetchall()
        return self._logged(resolve((str(m), str(k)) for m, k in rows), card)

    @staticmethod
    def _logged(found: Resolution, card: Card) -> Resolution:
        if found.ambiguous:
            log.warning(
                "card read %s matches cards of several members %s: refused",
                mask_key(card.key),
                sorted({m for m, _ in found.candidates}),
            )
        return found

    def member(self, member_id: str, *, with_cards: bool = True) -> Member | None:
        """`with_cards=False`: the member without their cards (the rules never look at
        them: a tap reads two statements fewer)."""
        row = self.conn.execute(f"SELECT {MEMBER_READ} FROM replica.members WHERE id = ?", (member_id,)).fetchone()
        if row is None:
            return None
        if not with_cards:
            return member_from_row(row, ())
        cards = tuple(
            r[0] for r in self.conn.execute("SELECT card FROM replica.cards WHERE member_id = ?", (member_id,))
        )
        cards += tuple(c for c in enrolment.cards_of(self.conn, member_id) if c not in cards)
        return member_from_row(row, cards)

    def passes_of(self, member_id: str) -> list[Pass]:
        # `passes` is the read contract's view: its balance is the local one (module doc)
        rows = self.conn.execute(f"SELECT {PASS_READ} FROM passes WHERE member_id = ? ORDER BY id", (member_id,))
        return [pass_from_row(r) for r in rows.fetchall()]

    def get_pass(self, pass_id: str) -> Pass | None:
        row = self.conn.execute(f"SELECT {PASS_READ} FROM passes WHERE id = ?", (pass_id,)).fetchone()
        return None if row is None else pass_from_row(row)

    def balance(self, pass_id: str) -> Decimal | None:
        row = self.conn.execute("SELECT balance FROM passes WHERE id = ?", (pass_id,)).fetchone()
        return None if row is None or row[0] is None else Decimal(row[0])

    def get_booking(self, booking_id: str) -> Booking | None:
        row = self.conn.execute(f"SELECT {BOOKING_READ} FROM {_BOOKINGS} WHERE b.id = ?", (booking_id,)).fetchone()
        return None if row is None else booking_from_row(row)

    def bookings_of(self, member_id: str, start: datetime, end: datetime) -> list[Booking]:
        rows = self.conn.execute(
            f"SELECT {BOOKING_READ} FROM {_BOOKINGS} WHERE b.member_id = ? AND b.starts_at BETWEEN ? AND ?",
            (member_id, ts(start), ts(end)),
        ).fetchall()
        return [booking_from_row(r) for r in rows]

    def bookings_between(self, start: datetime, end: datetime) -> list[Booking]:
        rows = self.conn.execute(
            f"SELECT {BOOKING_READ} FROM {_BOOKINGS} WHERE b.starts_at >= ? AND b.starts_at < ? "
            "ORDER BY b.starts_at, b.id",
            (ts(start), ts(end)),
        ).fetchall()
        return [booking_from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {
            t: int(self.conn.execute(f"SELECT COUNT(*) FROM replica.{t}").fetchone()[0])
            for t in ("members", "passes", "bookings")
        }

    # -- changes from the central system (inside a transaction) -------------------------------

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO replica.meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def apply(self, batch: SyncBatch, now: datetime, *, snapshot: bool, synced: bool = True) -> None:
        """Members, passes and bookings replace by id, whole; removals by id. A snapshot
        also removes everything it does not list. Writes the replica only. `synced`: the
        batch brings the replica up to the central system's as of `now` (a snapshot, a
        delta, a seed) — not one member's look-up answer."""
        c = self.conn
        if snapshot:
            for t in TABLES:
                c.execute(f"DELETE FROM replica.{t}")
        synced_at = ts(now)
        tz = self.site.timezone
        for mid in batch.remove_members:
            c.execute("DELETE FROM replica.members WHERE id = ?", (mid,))
            c.execute(_DELETE_CARD_KEYS, (mid,))
            c.execute("DELETE FROM replica.cards WHERE member_id = ?", (mid,))
        for pid in batch.remove_passes:
            c.execute("DELETE FROM replica.passes WHERE id = ?", (pid,))
        for bid in batch.remove_bookings:
            c.execute("DELETE FROM replica.bookings WHERE id = ?", (bid,))
        if batch.members:
            if not snapshot:
                c.executemany(_DELETE_CARD_KEYS, ((m.id,) for m in batch.members))
                c.executemany("DELETE FROM replica.cards WHERE member_id = ?", ((m.id,) for m in batch.members))
            c.executemany(
                f"INSERT OR REPLACE INTO replica.members{MEMBER_INSERT}",
                (member_row(m, synced_at) for m in batch.members),
            )
            # a card moves to whoever the central system last said holds it
            c.executemany(
                "INSERT OR REPLACE INTO replica.cards(card, member_id) VALUES (?, ?)",
                (row for m in batch.members for row in card_rows(m, self.ten_digits)),
            )
            c.executemany(
                "INSERT OR IGNORE INTO replica.card_keys(key, card) VALUES (?, ?)",
                (row for m in batch.members for row in card_key_rows(m, self.ten_digits)),
            )
        if batch.passes:
            c.executemany(
                "INSERT OR REPLACE INTO replica.passes(id, member_id, name, kind, central_balance, applied_seq, "
                "deduct_on, walk_in_cost, valid_from, valid_until, zones, access_windows, applied_peers) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (pass_row(p, p.applied_seq) for p in batch.passes),
            )
        if batch.bookings:
            c.executemany(
                "INSERT OR REPLACE INTO replica.bookings(id, member_id, pass_id, class_name, zone, starts_at, ends_at, "
                "status, deducted, cost, loyalty_points) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (booking_row(b, tz) for b in batch.bookings),
            )
        if synced:
            self.set_meta("last_sync_at", str(synced_at))
