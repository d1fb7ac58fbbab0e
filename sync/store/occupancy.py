"""How many members are inside a zone now, for a capacity limit.

Counted from the passages table, which holds this daemon's own passages and those the
sync link recorded from the site's other daemons (`origin` = their daemon id): a member
is inside when their latest passage into or out of the zone since local midnight is an
entry. Anonymous passages (an override with nobody identified) are not counted. Like
anti-passback, presence resets at local midnight and at an evacuation.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from rules.timeutil import local_date, start_of_local_day
from sync.store import evacuation
from sync.store.store import Store


def entries_inside(conn: sqlite3.Connection, zone: str, start: datetime, now: datetime) -> list[tuple[str, float, str]]:
    """(member, when, gate) of each member whose latest passage into or out of `zone`
    between `start` (local midnight) — or the site's last evacuation since, after which
    nobody is known to be inside (sync/store/evacuation.py) — and `now` is an entry, the
    latest first: the one query behind occupancy, the capacity limit and the console's
    "who is inside"."""
    start = evacuation.since(conn, start, now) or start
    rows = conn.execute(
        "SELECT member_id, at, gate FROM ("
        " SELECT member_id, direction, at, gate,"
        "  ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY at DESC, id DESC) AS rn"
        " FROM passages WHERE zone = ? AND member_id IS NOT NULL AND at >= ? AND at <= ?"
        ") WHERE rn = 1 AND direction = 'in' ORDER BY at DESC",
        (zone, start.timestamp(), now.timestamp()),
    ).fetchall()
    return [(str(r[0]), float(r[1]), str(r[2])) for r in rows]


def _since_midnight(store: Store, zone: str, now: datetime) -> list[tuple[str, float, str]]:
    start = start_of_local_day(local_date(now, store.site.timezone), store.site.timezone)
    return entries_inside(store.conn, zone, start, now)


def occupancy(store: Store, zone: str, now: datetime) -> int:
    """Distinct members inside `zone` at `now` (local + remote passages, since midnight)."""
    return len(_since_midnight(store, zone, now))


def inside(store: Store, zone: str, now: datetime) -> list[str]:
    """The members counted by `occupancy`, sorted (console)."""
    return sorted(m for m, _, _ in _since_midnight(store, zone, now))


def is_full(store: Store, zone: str, capacity: int | None, now: datetime, *, member: str | None = None) -> bool:
    """True when one more entry would exceed `capacity` (None: no limit). A member already
    inside (a re-entry) does not need a new place."""
    if capacity is None:
        return False
    entries = _since_midnight(store, zone, now)  # one query on the tap's path, not two
    if member is not None and any(m == member for m, _, _ in entries):
        return False
    return len(entries) >= capacity


__all__ = ["entries_inside", "inside", "is_full", "occupancy"]
