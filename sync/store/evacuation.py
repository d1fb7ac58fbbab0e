"""The site's last evacuation: a fire alarm or an emergency release anywhere on the site,
seen on this daemon's own fire input (or set by its admin) or heard in another daemon's
`fire_alarm` event.

Who was inside before it is no longer known to be inside: people leave by the nearest
door, released or not, and most of them without a tap. So an entry before it no longer
counts — not for anti-passback, not for a zone's occupancy — and a member whose visit it
cut short comes back in free the same day (rules.decide.evacuated). Only the latest one
matters (an entry before any evacuation is before the latest too), so it is one value in
`meta`, moved only forwards: an old `fire_alarm` event heard late changes nothing. It is
the latest instant a daemon here learnt of one, not the span's start below (which moves
back to the daemon that saw it first): an entry this daemon granted in between, not yet
knowing, was cut short by it too.

How long each lasted is kept beside it, for the no-shows: a class the site was evacuated
during charges no no-show fee (rules.schedule.no_show_fee). The all-clear is a `fire_alarm`
event that is no longer active, this daemon's or another's; the earliest one ends the
evacuation. The last `KEPT` evacuations are kept (no-shows are settled within the hour).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime

from rules.schedule import Evacuation

KEY = "site.evacuated_at"
SPANS_KEY = "site.evacuations"  # [[start, end or null], ...] in POSIX seconds, oldest first
KEPT = 20

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
    _begin(conn, at)
    last = latest(conn)
    if last is not None and last >= at:
        return False
    _set(conn, KEY, repr(at.timestamp()))
    return True


def record_end(conn: sqlite3.Connection, at: datetime) -> bool:
    """Inside a transaction: an all-clear at `at` ends the last evacuation, if it began
    before then — the earliest all-clear heard, whatever the order they are heard in. False
    when it changes nothing."""
    spans = spans_of(conn)
    if not spans:
        return False
    start, end = spans[-1]
    if at < start or (end is not None and end <= at):
        return False
    spans[-1] = (start, at)
    _write(conn, spans)
    return True


def spans_of(conn: sqlite3.Connection) -> list[Evacuation]:
    """The evacuations kept, oldest first (a damaged value reads as none)."""
    row = conn.execute("SELECT value FROM main.meta WHERE key = ?", (SPANS_KEY,)).fetchone()
    try:
        raw = json.loads(row[0]) if row is not None else []
        return [
            (datetime.fromtimestamp(float(a), UTC), None if b is None else datetime.fromtimestamp(float(b), UTC))
            for a, b in raw
        ]
    except (TypeError, ValueError, OverflowError):
        return []


def _begin(conn: sqlite3.Connection, at: datetime) -> None:
    spans = spans_of(conn)
    if spans:
        start, end = spans[-1]
        if end is None:  # one under way: seen again (a daemon restarted), or seen first elsewhere
            if at < start:
                spans[-1] = (at, None)
                _write(conn, spans)
            return
        if at <= end:  # within the last one, or older than it and heard late: its end is unknown
            return
    _write(conn, [*spans, (at, None)][-KEPT:])


def _write(conn: sqlite3.Connection, spans: list[Evacuation]) -> None:
    _set(conn, SPANS_KEY, json.dumps([[a.timestamp(), None if b is None else b.timestamp()] for a, b in spans]))


def _set(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO main.meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


__all__ = ["KEPT", "KEY", "SELECT", "SPANS_KEY", "latest", "parse", "record", "record_end", "since", "spans_of"]
