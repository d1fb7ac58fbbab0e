"""How many members are inside a zone now, for a capacity limit.

Counted from the passages table, which holds this daemon's own passages and those the
sync link recorded from the site's other daemons (`origin` = their daemon id): a member
is inside when their latest passage into or out of the zone since local midnight is an
entry. Anonymous passages (an override with nobody identified) are not counted. Like
anti-passback, presence resets at local midnight.
"""

from __future__ import annotations

from datetime import datetime

from rules.timeutil import local_date, start_of_local_day
from sync.store import Store


def occupancy(store: Store, zone: str, now: datetime) -> int:
    """Distinct members inside `zone` at `now` (local + remote passages, since midnight)."""
    start = start_of_local_day(local_date(now, store.site.timezone), store.site.timezone)
    row = store.conn.execute(
        "SELECT COUNT(*) FROM ("
        " SELECT direction, ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY at DESC, id DESC) AS rn"
        " FROM passages WHERE zone = ? AND member_id IS NOT NULL AND at >= ? AND at <= ?"
        ") WHERE rn = 1 AND direction = 'in'",
        (zone, start.timestamp(), now.timestamp()),
    ).fetchone()
    return int(row[0])


def inside(store: Store, zone: str, now: datetime) -> list[str]:
    """The members counted by `occupancy`, sorted (console)."""
    start = start_of_local_day(local_date(now, store.site.timezone), store.site.timezone)
    rows = store.conn.execute(
        "SELECT member_id FROM ("
        " SELECT member_id, direction, ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY at DESC, id DESC) AS rn"
        " FROM passages WHERE zone = ? AND member_id IS NOT NULL AND at >= ? AND at <= ?"
        ") WHERE rn = 1 AND direction = 'in' ORDER BY member_id",
        (zone, start.timestamp(), now.timestamp()),
    ).fetchall()
    return [str(r[0]) for r in rows]


def is_full(store: Store, zone: str, capacity: int | None, now: datetime, *, member: str | None = None) -> bool:
    """True when one more entry would exceed `capacity` (None: no limit). A member already
    inside (a re-entry) does not need a new place."""
    if capacity is None:
        return False
    if member is not None and member in set(inside(store, zone, now)):
        return False
    return occupancy(store, zone, now) >= capacity


__all__ = ["inside", "is_full", "occupancy"]
