"""The day's log, read for the desk: where today starts in the event log, today's denials
grouped by member or card (*Needs attention*), today's incidents (the alarm board). Part of
the console's read contract: sync/store/read_models.py re-exports these names.

Run the group read on a `read_only()` connection in a worker thread: it reads the day.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


def last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(seq) FROM events").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def first_seq_at(conn: sqlite3.Connection, start: datetime) -> int:
    """The seq of the first event at or after `start` (one past the last when none): a
    bisection over the log by seq, whose `at` grows with it (the commit time; a clock
    step back can put a few events before a later bound, which callers filter by `at`)."""
    bounds = conn.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
    if bounds is None or bounds[0] is None:
        return 1
    lo, hi = int(bounds[0]), int(bounds[1]) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT seq, at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)).fetchone()
        if row is None:
            hi = mid
            continue
        at = datetime.fromisoformat(str(row[1]).replace("Z", "+00:00"))
        if at < start:
            lo = int(row[0]) + 1
        else:
            hi = mid
    return lo


@dataclass(slots=True)
class DenialGroup:
    """Today's denials of one member (or one unknown card, or of nobody identified, by
    reason) not yet dealt with: how many, the newest of them, every seq."""

    key: str  # "member:ID", "card:KEY" or "reason:CODE"
    member: str | None
    card: str | None
    latest: dict[str, Any]
    first_at: str
    seqs: list[int]


def denial_groups(conn: sqlite3.Connection, first_seq: int, start: datetime, done: set[int]) -> list[DenialGroup]:
    """Denied access events from `first_seq` at or after `start`, not in `done`, grouped
    by member — by card for unknown cards — newest group first. Every one of them: the
    desk's to-do list is never cut. Run on a `read_only()` connection (it reads the day)."""
    rows = conn.execute(
        "SELECT seq, body FROM events WHERE seq >= ? AND type = 'access' "
        "AND json_extract(body, '$.decision') = 'denied' ORDER BY seq DESC",
        (first_seq,),
    ).fetchall()
    groups: dict[str, DenialGroup] = {}
    bound = start.timestamp()
    for seq, body in rows:
        if seq in done:
            continue
        ev = dict(json.loads(body))
        at = str(ev.get("at") or "")
        try:
            if datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() < bound:
                continue
        except ValueError:
            continue
        key = denial_key(ev)
        g = groups.get(key)
        if g is None:
            member = ev.get("member")
            groups[key] = DenialGroup(key, member, None if member else ev.get("card"), ev, at, [int(seq)])
        else:
            g.seqs.append(int(seq))
            g.first_at = at
    return list(groups.values())


def denial_key(ev: dict[str, Any]) -> str:
    """The group a denied access event falls in (DenialGroup.key)."""
    if ev.get("member"):
        return f"member:{ev['member']}"
    if ev.get("card"):
        return f"card:{ev['card']}"
    return f"reason:{ev.get('reason') or 'unknown'}"


def alarm_events(conn: sqlite3.Connection, first_seq: int, types: Iterable[str]) -> list[dict[str, Any]]:
    """Events of these types (`alarm`, ...) from `first_seq`, oldest first."""
    wanted = list(types)
    rows = conn.execute(
        f"SELECT body FROM events WHERE seq >= ? AND type IN ({_marks(len(wanted))}) ORDER BY seq",
        (first_seq, *wanted),
    ).fetchall()
    return [dict(json.loads(r[0])) for r in rows]


def _marks(n: int) -> str:
    return ",".join("?" * n)


__all__ = ["DenialGroup", "alarm_events", "denial_groups", "denial_key", "first_seq_at", "last_seq"]
