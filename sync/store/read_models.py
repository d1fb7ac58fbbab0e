"""Named reads for the front-desk console: what the desk sees, as queries on the store's tables.

Each function takes a `sqlite3.Connection` — the store's own (small indexed look-ups, in
the event loop) or a read-only one opened with `read_only()` for reads that may scan
(search, audit, reports), run in a worker thread so that taps never wait for them. The
tables are read by their names (members, cards, passes, bookings, deductions, passages,
loyalty, events, audit), wherever the store keeps them. Nothing here writes.

Times in the tables are UTC epoch seconds; the caller passes aware datetimes for bounds.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sync.store import peer_events, photos, unrecorded_exits
from sync.store.occupancy import counted, entries_inside
from sync.store.photos import Photo
from sync.store.read_day import (
    DenialGroup,
    alarm_events,
    denial_groups,
    denial_key,
    first_seq_at,
    last_seq,
)
from sync.store.retention import CARRIED, CARRIED_FORWARD, carried
from sync.store.search_text import alnum, digits, fold
from sync.store.store import open_reader

CHUNK = 500  # SQLite's default limit on host parameters is far above this


@contextmanager
def read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection of its own that cannot write (WAL lets it read beside the writer):
    the ledger with the replica it names attached, the tables by their names
    (sync/store/store.py, "Reading tables directly")."""
    conn = open_reader(db_path)
    try:
        yield conn
    finally:
        conn.close()


def _at(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _chunks(ids: Iterable[str]) -> Iterator[list[str]]:
    items = [i for i in dict.fromkeys(ids) if i]
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# -- names --------------------------------------------------------------------------------


def _names(conn: sqlite3.Connection, table: str, ids: Iterable[str]) -> dict[str, str]:
    """id → name (the id where the name is empty) for the ids `table` has."""
    out: dict[str, str] = {}
    for chunk in _chunks(ids):
        q = f"SELECT id, name FROM {table} WHERE id IN ({_marks(len(chunk))})"
        out.update({r[0]: r[1] or r[0] for r in conn.execute(q, chunk)})
    return out


def member_names(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, str]:
    return _names(conn, "members", ids)


def pass_names(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, str]:
    return _names(conn, "passes", ids)


def class_names(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, tuple[str, datetime]]:
    """booking id -> (class name, start)."""
    out: dict[str, tuple[str, datetime]] = {}
    for chunk in _chunks(ids):
        q = f"SELECT id, class_name, starts_at FROM bookings WHERE id IN ({_marks(len(chunk))})"
        out.update({r[0]: (r[1] or r[0], datetime.fromtimestamp(r[2], UTC)) for r in conn.execute(q, chunk)})
    return out


# -- the feed -----------------------------------------------------------------------------


def event_by_seq(conn: sqlite3.Connection, seq: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def member_events(conn: sqlite3.Connection, member_id: str, limit: int = 60) -> list[dict[str, Any]]:
    """The member's latest events, newest first."""
    rows = conn.execute(
        "SELECT body FROM events WHERE member_id = ? ORDER BY seq DESC LIMIT ?", (member_id, limit)
    ).fetchall()
    return [dict(json.loads(r[0])) for r in rows]


def anonymous_access_events(conn: sqlite3.Connection, limit: int = 300) -> list[dict[str, Any]]:
    """Access events of no known member (unknown cards, overrides), newest first."""
    rows = conn.execute(
        "SELECT body FROM events WHERE member_id IS NULL AND type = 'access' ORDER BY seq DESC LIMIT ?", (limit,)
    ).fetchall()
    return [dict(json.loads(r[0])) for r in rows]


def denials_since(conn: sqlite3.Connection, after_seq: int, limit: int = 200) -> list[dict[str, Any]]:
    """Denied access events after `after_seq`, newest first (the desk's to-do list)."""
    rows = conn.execute(
        "SELECT body FROM events WHERE seq > ? AND type = 'access' ORDER BY seq DESC LIMIT ?", (after_seq, limit * 5)
    ).fetchall()
    out = [dict(json.loads(r[0])) for r in rows]
    return [e for e in out if e.get("decision") == "denied"][:limit]


# -- members ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberHit:
    id: str
    name: str
    status: str
    email: str | None
    phone: str | None
    cards: tuple[str, ...]


def search_members(conn: sqlite3.Connection, q: str, limit: int = 25) -> list[MemberHit]:
    """Any part of the name or e-mail (accents and case ignored), of the phone (digits) or
    of a card number (separators ignored), or the member id exactly.

    One `LIKE` over the members' `search` column (sync/store/search_text.py), in SQLite's C code:
    run it on a `read_only()` connection in a worker thread (a scan of 100,000 members).
    """
    q = q.strip()
    if not q:
        return []
    ids: list[str] = [r[0] for r in conn.execute("SELECT id FROM members WHERE id = ?", (q,))]
    patterns = [_like(fold(q))]
    number, card = digits(q), alnum(q)
    if len(number) >= 3 and len(number) >= len(q.replace(" ", "")) - 2:  # mostly digits: a phone
        patterns.append(_like(number))
    if len(card) >= 3 and card.isascii():
        patterns.append(_like(card.lower()))
        # cards assigned at the desk, not yet in the central system's rows
        ids += [r[0] for r in conn.execute(
            "SELECT member_id FROM card_enrolments WHERE card LIKE ? ESCAPE '\\' LIMIT ?", (_like(card), limit))]
    patterns = list(dict.fromkeys(patterns))
    where = " OR ".join(["search LIKE ? ESCAPE '\\'"] * len(patterns))
    ids += [r[0] for r in conn.execute(f"SELECT id FROM members WHERE {where} ORDER BY name LIMIT ?", (*patterns, limit))]
    out: list[MemberHit] = []
    for mid in list(dict.fromkeys(ids))[:limit]:
        row = conn.execute("SELECT id, name, status, email, phone FROM members WHERE id = ?", (mid,)).fetchone()
        if row is None:
            continue
        cards = tuple(r[0] for r in conn.execute(
            "SELECT card FROM cards WHERE member_id = ? UNION SELECT card FROM card_enrolments WHERE member_id = ? "
            "ORDER BY card", (mid, mid)))
        out.append(MemberHit(row[0], row[1] or row[0], row[2], row[3], row[4], cards))
    return out


def member_photo(conn: sqlite3.Connection, member_id: str) -> Photo | None:
    """The photo to show of a member: the desk's (ledger) in preference to the central
    system's (replica), sync/photos.py."""
    row = conn.execute("SELECT mime, data, seq FROM member_photos WHERE member_id = ?", (member_id,)).fetchone()
    if row is not None:
        return Photo(str(row[0]), bytes(row[1]), f"d{row[2]}")
    row = conn.execute("SELECT photo, synced_at FROM members WHERE id = ?", (member_id,)).fetchone()
    decoded = photos.decode(row[0]) if row is not None else None
    if decoded is None:
        return None
    return Photo(decoded[0], decoded[1], f"c{int((row[1] or 0) * 1000)}")


def photo_versions(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, str]:
    """member id -> the version of the photo member_photo would show, for the members that
    have one (without reading a photo: the console puts the version in the photo's URL,
    so a browser caches each photo once)."""
    out: dict[str, str] = {}
    for chunk in _chunks(ids):
        marks = _marks(len(chunk))
        out.update({r[0]: f"c{int((r[1] or 0) * 1000)}" for r in conn.execute(
            f"SELECT id, synced_at FROM members WHERE photo IS NOT NULL AND id IN ({marks})", chunk)})
        out.update({r[0]: f"d{r[1]}" for r in conn.execute(
            f"SELECT member_id, seq FROM member_photos WHERE member_id IN ({marks})", chunk)})
    return out


def member_phone(conn: sqlite3.Connection, member_id: str) -> str | None:
    row = conn.execute("SELECT phone FROM members WHERE id = ?", (member_id,)).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True, slots=True)
class LoyaltyEntry:
    points: int
    reason: str | None
    operator: str | None
    booking: str | None
    at: datetime


def loyalty_history(conn: sqlite3.Connection, member_id: str, limit: int = 10) -> list[LoyaltyEntry]:
    """The member's latest rows, newest first; the points the retention folded together
    are one "carried forward" row (sync/store/retention.py), dated by the newest of them."""
    rows = conn.execute(
        f"SELECT points, CASE WHEN {CARRIED} THEN '{CARRIED_FORWARD}' ELSE reason END, operator, booking_id, at "
        "FROM loyalty WHERE member_id = ? ORDER BY at DESC, id DESC LIMIT ?",
        (member_id, limit),
    ).fetchall()
    return [LoyaltyEntry(int(r[0]), r[1], r[2], r[3], datetime.fromtimestamp(r[4], UTC)) for r in rows]


# -- classes ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalkInCharge:
    daemon: str  # which of the site's daemons took it (its event's seq)
    seq: int
    pass_id: str
    pass_name: str
    amount: Decimal
    at: datetime


def refundable_walk_in(
    conn: sqlite3.Connection, own_daemon: str, member_id: str, zone: str, start: datetime, end: datetime
) -> WalkInCharge | None:
    """The walk-in charge `mark_attended(refund=True)` would give back, if any: the latest
    one of the member in the zone between start and end not yet refunded, taken at any
    turnstile of the site heard here (peer_events.latest_charge, as the ledger finds it)."""
    charge = peer_events.latest_charge(conn, own_daemon, member_id, zone, start, end, end)
    if charge is None:
        return None
    row = conn.execute("SELECT name FROM passes WHERE id = ?", (charge.pass_id,)).fetchone()
    return WalkInCharge(charge.daemon, charge.seq, charge.pass_id, (row[0] if row else None) or charge.pass_id,
                        charge.amount, datetime.fromtimestamp(charge.at, UTC))


def last_visits(conn: sqlite3.Connection, member_id: str, limit: int = 5) -> list[tuple[datetime, str | None, str]]:
    """The member's latest entries (not exits), newest first: (when, gate, zone)."""
    rows = conn.execute(
        "SELECT at, gate, zone FROM passages WHERE member_id = ? AND direction = 'in' ORDER BY at DESC LIMIT ?",
        (member_id, limit),
    ).fetchall()
    return [(datetime.fromtimestamp(r[0], UTC), r[1], r[2]) for r in rows]


def first_entry(conn: sqlite3.Connection, member_id: str, zone: str, start: datetime, end: datetime) -> datetime | None:
    row = conn.execute(
        "SELECT MIN(at) FROM passages WHERE member_id = ? AND zone = ? AND direction = 'in' AND at >= ? AND at < ?",
        (member_id, zone, start.timestamp(), end.timestamp()),
    ).fetchone()
    return None if row is None else _at(row[0])


def attended_at(conn: sqlite3.Connection, booking_ids: Iterable[str]) -> dict[str, datetime]:
    out: dict[str, datetime] = {}
    for chunk in _chunks(booking_ids):
        q = f"SELECT id, attended_at FROM bookings WHERE attended_at IS NOT NULL AND id IN ({_marks(len(chunk))})"
        out.update({r[0]: datetime.fromtimestamp(r[1], UTC) for r in conn.execute(q, chunk)})
    return out


# -- who is inside ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inside:
    member: str
    name: str
    since: datetime
    gate: str | None


def inside(conn: sqlite3.Connection, zone: str, start: datetime, now: datetime) -> list[Inside]:
    """Members whose latest passage into or out of `zone` since `start` (local midnight) is
    an entry — sync.store.occupancy's count — with their names, when and where they came in."""
    entries = entries_inside(conn, zone, start, now)
    names: dict[str, str] = {}
    ids = [m for m, _, _ in entries]
    for i in range(0, len(ids), 500):
        part = ids[i : i + 500]
        names.update(conn.execute(f"SELECT id, name FROM members WHERE id IN ({','.join('?' * len(part))})", part))
    return [Inside(m, names.get(m) or m, datetime.fromtimestamp(at, UTC), gate) for m, at, gate in entries]


def exits_unrecorded(conn: sqlite3.Connection, zone: str, start: datetime, now: datetime) -> tuple[int, datetime | None]:
    """Exits of `zone` that opened unrecorded since `start` (a storage fault), and the last:
    anyone listed by `inside` who came in before it may have been one of them."""
    return unrecorded_exits.gone_since(conn, zone, start, now)


def anonymous_entries(conn: sqlite3.Connection, zone: str, start: datetime, now: datetime) -> int:
    """Entries of nobody identified (gate opened once by the desk) since `start`."""
    row = conn.execute(
        "SELECT COUNT(*) FROM passages WHERE zone = ? AND member_id IS NULL AND direction = 'in' AND at >= ? AND at <= ?",
        (zone, start.timestamp(), now.timestamp()),
    ).fetchone()
    return int(row[0])


# -- audit --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: datetime
    operator: str
    action: str
    detail: dict[str, Any]
    seq: int | None


def audit_rows(
    conn: sqlite3.Connection,
    *,
    operator: str = "",
    action: str = "",
    q: str = "",
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = 500,
) -> list[AuditRow]:
    """Newest first. Run on a `read_only()` connection: the text filter scans."""
    where: list[str] = []
    params: list[str | float | int] = []
    if operator:
        where.append("operator = ?")
        params.append(operator)
    if action:
        where.append("action = ?")
        params.append(action)
    if q:
        where.append("(detail LIKE ? ESCAPE '\\' OR operator LIKE ? ESCAPE '\\' OR action LIKE ? ESCAPE '\\')")
        params += [_like(q)] * 3
    if start is not None:
        where.append("at >= ?")
        params.append(start.timestamp())
    if end is not None:
        where.append("at < ?")
        params.append(end.timestamp())
    sql = "SELECT id, at, operator, action, detail, seq FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    out = []
    for r in conn.execute(sql, params).fetchall():
        try:
            detail = json.loads(r[4]) if r[4] else {}
        except ValueError:
            detail = {"raw": r[4]}
        if not isinstance(detail, dict):
            detail = {"value": detail}
        out.append(AuditRow(int(r[0]), datetime.fromtimestamp(r[1], UTC), r[2] or "", r[3] or "", detail, r[5]))
    return out


def audit_facets(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    """(operators, actions) that occur in the audit log, for the filters."""
    operators = [r[0] for r in conn.execute("SELECT DISTINCT operator FROM audit ORDER BY operator") if r[0]]
    actions = [r[0] for r in conn.execute("SELECT DISTINCT action FROM audit ORDER BY action") if r[0]]
    return operators, actions


# -- loyalty report -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoyaltyLine:
    member: str
    name: str
    credited: int  # points from attended classes
    adjusted: int  # manual adjustments by the desk (may be negative)
    classes: int  # attended classes that earned points
    adjustments: int

    @property
    def total(self) -> int:
        return self.credited + self.adjusted


def loyalty_report(conn: sqlite3.Connection, start: datetime, end: datetime) -> list[LoyaltyLine]:
    """Points credited and adjusted per member in [start, end), most points first.
    Run on a `read_only()` connection: it scans the period's loyalty rows."""
    rows = conn.execute(
        "SELECT l.member_id, m.name,"
        " SUM(CASE WHEN l.operator IS NULL THEN l.points ELSE 0 END),"
        " SUM(CASE WHEN l.operator IS NOT NULL THEN l.points ELSE 0 END),"
        " SUM(CASE WHEN l.operator IS NULL THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN l.operator IS NOT NULL THEN 1 ELSE 0 END)"
        " FROM loyalty l LEFT JOIN members m ON m.id = l.member_id"
        f" WHERE l.at >= ? AND l.at < ? AND NOT {carried('l')}"
        " GROUP BY l.member_id",
        (start.timestamp(), end.timestamp()),
    ).fetchall()
    lines = [LoyaltyLine(r[0], r[1] or r[0], int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]
    lines.sort(key=lambda ln: (-ln.total, fold(ln.name), ln.member))
    return lines


__all__ = [
    "AuditRow",
    "DenialGroup",
    "Inside",
    "LoyaltyEntry",
    "LoyaltyLine",
    "MemberHit",
    "WalkInCharge",
    "anonymous_access_events",
    "anonymous_entries",
    "counted",
    "exits_unrecorded",
    "attended_at",
    "audit_facets",
    "audit_rows",
    "class_names",
    "denial_groups",
    "denial_key",
    "denials_since",
    "first_seq_at",
    "last_seq",
    "last_visits",
    "member_photo",
    "photo_versions",
    "alarm_events",
    "alnum",
    "digits",
    "event_by_seq",
    "first_entry",
    "fold",
    "inside",
    "loyalty_history",
    "loyalty_report",
    "member_events",
    "member_names",
    "member_phone",
    "pass_names",
    "read_only",
    "refundable_walk_in",
    "search_members",
]
