"""Exits that opened and were not recorded, by zone: this daemon's (a long storage fault, or
a store too damaged to tell whose card it was: gated/storage_watch.py) and, from their
`exits_not_recorded` alarms, the site's other daemons'.

Somebody went out and nobody knows who. So an entry into the zone before the last such
exit no longer proves that its member is inside: hard anti-passback does not turn them
away (a member who left unrecorded would otherwise be refused at the door for the rest of
the day, rules.decide.is_inside), and the zone's occupancy counts that many fewer of those
who came in before it (sync/store/occupancy.py). An entry after it is known as before.

Kept in `meta`, one value a zone: the last `KEPT` reports, each [first, last, count,
daemon] (POSIX seconds), oldest first. A report heard again (a resend, a catch-up) is
counted once: one daemon reports one span once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

KEY_PREFIX = "presence.exits_unrecorded."
KEPT = 20


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """Exits of one zone that opened unrecorded, reported by `daemon` in one alarm."""

    first: datetime
    last: datetime
    count: int
    daemon: str


def key(zone: str) -> str:
    return KEY_PREFIX + zone


def of_zone(conn: sqlite3.Connection, zone: str) -> list[Unrecorded]:
    """The reports kept for `zone`, oldest first (a damaged value reads as none)."""
    row = conn.execute("SELECT value FROM main.meta WHERE key = ?", (key(zone),)).fetchone()
    return parse(row[0] if row is not None else None)


def parse(value: object) -> list[Unrecorded]:
    """The stored value (a tap's presence look-up reads it with its own query)."""
    if value is None:
        return []
    try:
        raw = json.loads(str(value))
        return [
            Unrecorded(datetime.fromtimestamp(float(a), UTC), datetime.fromtimestamp(float(b), UTC), int(n), str(d))
            for a, b, n, d in raw
        ]
    except (TypeError, ValueError, OverflowError):
        return []  # not written by this module: as if none


def last_at(value: object) -> datetime | None:
    """The last exit of the zone that opened unrecorded, from the stored value."""
    spans = parse(value)
    return max((s.last for s in spans), default=None)


def record(
    conn: sqlite3.Connection, daemon: str, gates: Mapping[str, int], zones: Mapping[str, str],
    first: datetime, last: datetime,
) -> int:
    """Inside a transaction: `daemon` let out `gates[g]` exits at each gate unrecorded,
    between `first` and `last`. Gates of no known zone are left out (their zone's presence
    is not ours to doubt). Returns how many exits were recorded here (0 for a report
    already heard)."""
    by_zone: dict[str, int] = {}
    for gate, count in gates.items():
        zone = zones.get(gate)
        if zone is not None and count > 0:
            by_zone[zone] = by_zone.get(zone, 0) + count
    added = 0
    for zone, count in by_zone.items():
        spans = of_zone(conn, zone)
        if any(s.daemon == daemon and s.first == first and s.last == last for s in spans):
            continue
        spans = sorted([*spans, Unrecorded(first, last, count, daemon)], key=lambda s: s.last)[-KEPT:]
        conn.execute(
            "INSERT INTO main.meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key(zone), json.dumps([[s.first.timestamp(), s.last.timestamp(), s.count, s.daemon] for s in spans])),
        )
        added += count
    return added


def gone_since(conn: sqlite3.Connection, zone: str, start: datetime, now: datetime) -> tuple[int, datetime | None]:
    """How many exits of `zone` opened unrecorded between `start` and `now`, and the last
    of them: that many of those who came in before it are no longer inside."""
    spans = [s for s in of_zone(conn, zone) if start <= s.last <= now]
    return sum(s.count for s in spans), max((s.last for s in spans), default=None)


__all__ = ["KEPT", "KEY_PREFIX", "Unrecorded", "gone_since", "key", "last_at", "of_zone", "parse", "record"]
