"""The site's last evacuation: a fire alarm or an emergency release anywhere on the site,
seen on this daemon's own fire input (or set by its admin) or heard in another daemon's
`fire_alarm` event.

Who was inside before it is no longer known to be inside: people leave by the nearest
door, released or not, and most of them without a tap. So an entry before it no longer
counts — not for anti-passback, not for a zone's occupancy — and a member whose visit it
cut short comes back in free the same day (rules.decide.evacuated). Only the latest one
matters (an entry before any evacuation is before the latest too), so it is one value in
`meta`, moved only forwards: an old `fire_alarm` event heard late changes nothing.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

KEY = "site.evacuated_at"


# the value as a column of another query (a tap's presence look-up reads it with its own)
SELECT = f"(SELECT value FROM main.meta WHERE key = '{KEY}')"


def latest(conn: sqlite3.Connection) -> datetime | None:
    return parse(conn.execute(f"SELECT {SELECT}").fetchone()[0])


def parse(value: object) -> datetime | None:
    """The stored value (`SELECT`) as an instant."""
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(str(value)), UTC)
    except (ValueError, OverflowError):
        return None  # not written by this module: as if none


def since(conn: sqlite3.Connection, start: datetime, now: datetime) -> datetime | None:
    """The last evacuation, if it falls after `start` and not after `now`: from then on,
    not from `start`, is who is inside counted."""
    at = latest(conn)
    return at if at is not None and start < at <= now else None


def record(conn: sqlite3.Connection, at: datetime) -> bool:
    """Inside a transaction: the site was evacuated at `at`. False when a later evacuation
    is already known."""
    last = latest(conn)
    if last is not None and last >= at:
        return False
    conn.execute(
        "INSERT INTO main.meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (KEY, repr(at.timestamp())),
    )
    return True


__all__ = ["KEY", "SELECT", "latest", "parse", "record", "since"]
