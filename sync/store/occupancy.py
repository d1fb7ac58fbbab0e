"""How many members are inside a zone now, for a capacity limit.

Counted from the passages table, which holds this daemon's own passages and those the
sync link recorded from the site's other daemons (`origin` = their daemon id): a member
is inside when their latest passage into or out of the zone since local midnight is an
entry. Anonymous passages (an override with nobody identified) are not counted. Like
anti-passback, presence resets at local midnight and at an evacuation. Exits that opened
unrecorded (a storage fault: sync/store/unrecorded_exits.py) were somebody's: that many
fewer of those who came in before them are counted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime

from rules.timeutil import local_date, start_of_local_day
from sync.store import evacuation, unrecorded_exits
from sync.store.store import Store


def entries_inside(conn: sqlite3.Connection, zone: str, start: datetime, now: datetime) -> list[tuple[str, float, str]]:
    """(member, when, gate) of each member whose latest passage into or out of `zone`
    between `start` (local midnight) — or the site's last evacuation since, after which
    nobody is known to be inside (sync/store/evacuation.py) — and `now` is an entry, the
    latest first: the one query behind occupancy, the capacity limit and the console's
    "who is inside"."""
    return _entries_from(conn, zone, evacuation.since(conn, start, now) or start, now)


def _entries_from(conn: sqlite3.Connection, zone: str, start: datetime, now: datetime) -> list[tuple[str, float, str]]:
    rows = conn.execute(
        "SELECT member_id, at, gate FROM ("
        " SELECT member_id, direction, at, gate,"
        "  ROW_NUMBER() OVER (PARTITION BY member_id ORDER BY at DESC, id DESC) AS rn"
        " FROM passages WHERE zone = ? AND member_id IS NOT NULL AND at >= ? AND at <= ?"
        ") WHERE rn = 1 AND direction = 'in' ORDER BY at DESC",
        (zone, start.timestamp(), now.timestamp()),
    ).fetchall()
    return [(str(r[0]), float(r[1]), str(r[2])) for r in rows]


def counted(came_in: Iterable[float], gone: int, last: datetime | None) -> int:
    """How many of those who came in at `came_in` (POSIX seconds; entries_inside's) count as
    inside, `gone` exits of the zone having opened unrecorded since, the last at `last`
    (unrecorded_exits.gone_since): one fewer for each, among those who came in before it."""
    ats = list(came_in)
    if not gone or last is None:
        return len(ats)
    before = sum(1 for at in ats if at <= last.timestamp())
    return len(ats) - min(gone, before)


def _since_midnight(store: Store, zone: str, now: datetime) -> tuple[list[tuple[str, float, str]], int]:
    start = start_of_local_day(local_date(now, store.site.timezone), store.site.timezone)
    start = evacuation.since(store.conn, start, now) or start  # read once: both below count from it
    entries = _entries_from(store.conn, zone, start, now)
    return entries, counted((at for _, at, _ in entries), *unrecorded_exits.gone_since(store.conn, zone, start, now))


def occupancy(store: Store, zone: str, now: datetime) -> int:
    """Members inside `zone` at `now` (local + remote passages, since midnight)."""
    return _since_midnight(store, zone, now)[1]


def inside(store: Store, zone: str, now: datetime) -> list[str]:
    """The members counted by `occupancy`, sorted (console)."""
    return sorted(m for m, _, _ in _since_midnight(store, zone, now)[0])


def is_full(store: Store, zone: str, capacity: int | None, now: datetime, *, member: str | None = None) -> bool:
    """True when one more entry would exceed `capacity` (None: no limit). A member already
    inside (a re-entry) does not need a new place."""
    if capacity is None:
        return False
    entries, count = _since_midnight(store, zone, now)  # one query on the tap's path, not two
    if member is not None and any(m == member for m, _, _ in entries):
        return False
    return count >= capacity


__all__ = ["counted", "entries_inside", "inside", "is_full", "occupancy"]
