"""The one mapping between the replica's domain objects and their table rows: for each
table, the row it stores (`*_row`, with its column list `*_COLUMNS`) and the domain
object read back (`*_from_row`). Every writer (a delta, a look-up answer, a scenario, a
snapshot) builds rows here, so a column means the same whoever wrote it.

Instants are stored as POSIX seconds (float), dates as ISO text, amounts as decimal
text (exact), zones and access windows as JSON.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from rules.credential import Card, TenDigits, card_from_text, index_keys
from rules.model import Booking, BookingStatus, DeductOn, Member, MemberStatus, Pass, PassKind
from rules.timeutil import WeekSchedule
from sync.batch import PassRecord
from sync.search_text import member_search_text

Row = tuple[Any, ...]

log = logging.getLogger(__name__)


def ts(at: datetime) -> float:
    return at.timestamp()


def dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


# -- members and cards ----------------------------------------------------------------------

MEMBER_COLUMNS = ("id", "name", "status", "email", "photo", "synced_at", "phone", "search")
MEMBER_READ = "id, name, status, email, photo, phone"
MEMBER_INSERT = f"({', '.join(MEMBER_COLUMNS)}) VALUES ({','.join('?' * len(MEMBER_COLUMNS))})"


def member_row(m: Member, synced_at: float) -> Row:
    """In MEMBER_COLUMNS order (MEMBER_INSERT)."""
    return (m.id, m.name, m.status.value, m.email, m.photo, synced_at, m.phone, member_search_text(m))


def member_cards(m: Member, ten_digits: TenDigits = TenDigits.EM32) -> list[Card]:
    """A member's cards, typed: typed keys, or untyped strings read by card_from_text with
    the site's rule for 10 digits. A string that is no card at all cannot match a read:
    it is left out."""
    out = []
    for text in m.cards:
        try:
            out.append(card_from_text(text, ten_digits))
        except ValueError:
            log.warning("member %s: %r is no card identifier, ignored", m.id, text)
    return out


def card_rows(m: Member, ten_digits: TenDigits = TenDigits.EM32) -> list[tuple[str, str]]:
    """(card key, member_id) for the `cards` table."""
    return [(c.key, m.id) for c in member_cards(m, ten_digits)]


def card_key_rows(m: Member, ten_digits: TenDigits = TenDigits.EM32) -> list[tuple[str, str]]:
    """(key, card key) for `card_keys`: what less-informed readers see of each card."""
    return [(k, c.key) for c in member_cards(m, ten_digits) for k, own in index_keys(c) if not own]


def member_from_row(row: Row, cards: tuple[str, ...]) -> Member:
    """`row` as selected by MEMBER_READ."""
    return Member(id=row[0], name=row[1] or "", status=MemberStatus(row[2]), cards=cards, email=row[3], photo=row[4],
                  phone=row[5])


# -- passes -----------------------------------------------------------------------------------

PASS_COLUMNS = (
    "id", "member_id", "name", "kind", "central_balance", "applied_seq", "balance", "deduct_on",
    "walk_in_cost", "valid_from", "valid_until", "zones", "access_windows",
)
PASS_READ = "id, member_id, name, kind, balance, deduct_on, walk_in_cost, valid_from, valid_until, zones, access_windows"

# a snapshot repeats a handful of access windows over 150,000 passes
_windows_json: dict[tuple[tuple[str, tuple[str, ...]], ...], str] = {}


def _windows(ws: WeekSchedule) -> str:
    v = _windows_json.get(ws.spec)
    if v is None:
        if len(_windows_json) > 10_000:
            _windows_json.clear()
        v = _windows_json[ws.spec] = json.dumps(ws.spec_dict())
    return v


def pass_row(r: PassRecord) -> Row:
    """The local balance starts as the central one; the store then takes off this
    daemon's deductions the central system had not applied (Replica.recompute_balance)."""
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
        _windows(p.access_windows) if p.access_windows is not None else None,
    )


def pass_from_row(row: Row) -> Pass:
    """`row` as selected by PASS_READ."""
    zones = json.loads(row[9]) if row[9] is not None else None
    windows = WeekSchedule.parse(json.loads(row[10])) if row[10] is not None else None
    return Pass(
        id=row[0],
        member=row[1],
        name=row[2] or "",
        kind=PassKind(row[3]),
        balance=dec(row[4]),
        deduct_on=DeductOn(row[5]),
        walk_in_cost=dec(row[6]),
        valid_from=date.fromisoformat(row[7]) if row[7] else None,
        valid_until=date.fromisoformat(row[8]) if row[8] else None,
        zones=frozenset(zones) if zones is not None else None,
        access_windows=windows,
    )


# -- bookings ---------------------------------------------------------------------------------

BOOKING_COLUMNS = (
    "id", "member_id", "pass_id", "class_name", "zone", "starts_at", "ends_at", "status", "deducted", "cost",
    "loyalty_points",
)
BOOKING_READ = (
    "id, member_id, pass_id, class_name, zone, starts_at, ends_at, status, outcome, deducted, cost, loyalty_points"
)


def booking_row(b: Booking) -> Row:
    """As the central system describes it: booked or cancelled. An attended / no-show
    status it sends is an outcome, kept apart (see Replica.apply)."""
    return (
        b.id,
        b.member,
        b.pass_id,
        b.class_name,
        b.zone,
        ts(b.starts_at),
        ts(b.ends_at),
        BookingStatus.CANCELLED.value if b.status == BookingStatus.CANCELLED else BookingStatus.BOOKED.value,
        int(b.deducted),
        str(b.cost),
        b.loyalty_points,
    )


def booking_from_row(row: Row) -> Booking:
    """`row` as selected by BOOKING_READ: the status is the outcome unless cancelled."""
    status = BookingStatus(row[7])
    if status != BookingStatus.CANCELLED and row[8]:
        status = BookingStatus(row[8])
    return Booking(
        id=row[0],
        member=row[1],
        pass_id=row[2],
        class_name=row[3] or "",
        zone=row[4],
        starts_at=dt(row[5]),
        ends_at=dt(row[6]),
        status=status,
        deducted=bool(row[9]),
        cost=Decimal(row[10]),
        loyalty_points=int(row[11] or 0),
    )
