"""The one mapping between the replica's records and its table rows: for each table, the
row it stores (`*_row`, built from the validated record the central system sent — see
sync/records.py — in the order of `*_COLUMNS`) and the domain object read back
(`*_from_row`). Every writer (a delta, a look-up answer, a scenario, a seed file, a
snapshot build in the worker process) builds rows here, so a column means the same
whoever wrote it.

Instants are stored as POSIX seconds (float), dates as ISO text, amounts as decimal
text (exact), zones and access windows as JSON. Rows are built from the wire records
rather than from rules objects: a snapshot has half a million of them, and the detour
through domain objects cost more than validating them.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from rules.credential import Card, TenDigits, card_from_text, index_keys
from rules.model import Booking, BookingStatus, DeductOn, Member, MemberStatus, Pass, PassKind
from rules.timeutil import WeekSchedule, parse_instant
from sync.records import BookingIn, MemberIn, PassIn, SitePassIn
from sync.store.search_text import member_search_text

Row = tuple[Any, ...]

log = logging.getLogger(__name__)


def ts(at: datetime) -> float:
    return at.timestamp()


def dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


# a snapshot repeats a few thousand class times and a handful of access windows
_instants: dict[tuple[str, str], float] = {}
_windows: dict[tuple[tuple[str, tuple[str, ...]], ...], str] = {}


def instant_ts(text: str, tz: ZoneInfo) -> float:
    """A wire instant (local wall time in `tz`, or with an offset) as POSIX seconds."""
    key = (text, tz.key)
    v = _instants.get(key)
    if v is None:
        if len(_instants) > 200_000:
            _instants.clear()
        v = _instants[key] = parse_instant(text, tz).timestamp()
    return v


def windows_json(spec: dict[str, str | list[str]]) -> str:
    key = tuple((k, (v,) if isinstance(v, str) else tuple(v)) for k, v in spec.items())
    out = _windows.get(key)
    if out is None:
        if len(_windows) > 10_000:
            _windows.clear()
        out = _windows[key] = json.dumps(WeekSchedule.parse(spec).spec_dict())
    return out


# -- members and cards ----------------------------------------------------------------------

MEMBER_COLUMNS = ("id", "name", "status", "email", "synced_at", "phone", "search", "note", "status_reason", "photo")
# the photo is not read with the member (the tap path never needs it, and up to 32 KiB a
# row would be read for every tap): sync.store.read_models.member_photo reads it for the desk
MEMBER_READ = "id, name, status, email, phone, note, status_reason"
MEMBER_INSERT = f"({', '.join(MEMBER_COLUMNS)}) VALUES ({','.join('?' * len(MEMBER_COLUMNS))})"


def member_row(m: MemberIn, synced_at: float) -> Row:
    """In MEMBER_COLUMNS order (MEMBER_INSERT); `search` is what the desk's search looks
    in (sync/store/search_text.py)."""
    return (m.id, m.name, m.status, m.email, synced_at, m.phone, member_search_text(m), m.note, m.status_reason, m.photo)


def member_cards(m: MemberIn, ten_digits: TenDigits = TenDigits.EM32) -> list[Card]:
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


def card_rows(m: MemberIn, ten_digits: TenDigits = TenDigits.EM32) -> list[tuple[str, str]]:
    """(card key, member_id) for the `cards` table."""
    return [(c.key, m.id) for c in member_cards(m, ten_digits)]


def card_key_rows(m: MemberIn, ten_digits: TenDigits = TenDigits.EM32) -> list[tuple[str, str]]:
    """(key, card key) for `card_keys`: what less-informed readers see of each card."""
    return keys_of(member_cards(m, ten_digits))


def keys_of(cards: list[Card]) -> list[tuple[str, str]]:
    """`card_key_rows` of cards already typed (a snapshot types each member's cards once)."""
    return [(k, c.key) for c in cards for k, own in index_keys(c) if not own]


def member_from_row(row: Row, cards: tuple[str, ...]) -> Member:
    """`row` as selected by MEMBER_READ."""
    return Member(
        id=row[0], name=row[1] or "", status=MemberStatus(row[2]), cards=cards, email=row[3], phone=row[4],
        note=row[5], status_reason=row[6],
    )


# -- passes -----------------------------------------------------------------------------------

PASS_COLUMNS = (
    "id", "member_id", "name", "kind", "central_balance", "applied_seq", "deduct_on", "walk_in_cost",
    "valid_from", "valid_until", "zones", "access_windows", "applied_peers",
)
# Read from the read contract's `passes` view (sync/store/read_contract.py), whose
# `balance` is the local one: the only place that rule is written.
PASS_READ = (
    "id, member_id, name, kind, balance, deduct_on, walk_in_cost, valid_from, valid_until, zones, access_windows"
)


def pass_row(p: PassIn, applied_seq: int | None, applied_peers: dict[str, int] | None = None) -> Row:
    """`applied_seq`: the highest seq of this daemon's events the central balance
    reflects (PassIn.applied_seq, or PassOut.applied[daemon]); `applied_peers`: the same
    for the site's other daemons (PassIn.applied_peers, or the rest of PassOut.applied)."""
    if applied_peers is None and isinstance(p, SitePassIn):
        applied_peers = p.applied_peers
    peers = applied_peers
    return (
        p.id,
        p.member,
        p.name,
        p.kind,
        str(p.balance) if p.balance is not None else None,
        applied_seq or 0,
        p.deduct_on,
        str(p.walk_in_cost) if p.walk_in_cost is not None else None,
        p.valid_from.isoformat() if p.valid_from else None,
        p.valid_until.isoformat() if p.valid_until else None,
        json.dumps(sorted(set(p.zones))) if p.zones is not None else None,
        windows_json(p.access_windows) if p.access_windows is not None else None,
        json.dumps(peers, sort_keys=True, separators=(",", ":")) if peers else None,
    )


def pass_from_row(row: Row) -> Pass:
    """`row` as selected by PASS_READ from the `passes` view."""
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
# with the gate's outcome from the ledger: replica.bookings b LEFT JOIN booking_outcomes o
BOOKING_READ = (
    "b.id, b.member_id, b.pass_id, b.class_name, b.zone, b.starts_at, b.ends_at, b.status, o.outcome, b.deducted, "
    "b.cost, b.loyalty_points"
)


def booking_row(b: BookingIn, tz: ZoneInfo) -> Row:
    starts, ends = instant_ts(b.starts_at, tz), instant_ts(b.ends_at, tz)
    if ends < starts:
        # wall times that read, in the site's zone, as ending before they start (only around
        # a clock change: BookingIn holds the rest): read as ending when the class starts —
        # else its no-show, and its fee, would fall due before the class began
        log.warning("booking %s ends (%s) before it starts (%s) in %s: read as ending at its start",
                    b.id, b.ends_at, b.starts_at, tz.key)
        ends = starts
    return (
        b.id,
        b.member,
        b.pass_,
        b.class_,
        b.zone,
        starts,
        ends,
        b.status,
        int(b.deducted),
        str(b.cost),
        b.loyalty_points,
    )


def booking_from_row(row: Row) -> Booking:
    """`row` as selected by BOOKING_READ: the gate's outcome (attended, no-show) is the
    status, unless the central system cancelled the booking."""
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
