"""Grants whose passage nobody saw (`passage_unconfirmed`), at this daemon or another of
the site: the member may have gone through — the turnstile was released and then nobody
could look (the relay board went silent, the daemon was stopping, a crash cut the
commit). Nothing was deducted, nothing attended, nobody marked inside: the gate never
guesses a charge, and a person settles it (docs/protocol.md).

Until then the gate must not guess the other way either. A booked member whose grant is
unconfirmed may have been in the class; one whose entry that day is unconfirmed may have
been on site. So an unconfirmed entry counts for the no-show fee as an entry does
(Ledger._no_show: the "on site" exemption, rules.schedule.no_show_fee): the booking is
settled as a no-show without a fee, and its `attendance` event names the grants
(`unconfirmed`), for the person who settles them to mark it attended if the member was
there. Everything else a passage drives (presence, anti-passback, occupancy, re-entry)
does not see them: that would let a second person in on a passage that may not have
happened.

Recorded from this daemon's own reports (the tap's commit, the intents a crash left) and
from the site's other daemons' events, idempotently (a resend, a catch-up, our own lost
events coming back from the central system: sync/store/own_history.py). Keyed by the grant
— member, instant, gate — not by an event's seq: nothing to renumber (sync/store/numbering.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rules.timeutil import iso_utc, parse_instant_once
from sync.store.rows import dt, ts

_UTC = ZoneInfo("UTC")


def create_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS unconfirmed_grants (member_id TEXT NOT NULL, at REAL NOT NULL, "
        "gate TEXT NOT NULL, daemon TEXT NOT NULL, zone TEXT, booking_id TEXT, "
        "PRIMARY KEY (member_id, at, gate, daemon))"
    )


@dataclass(frozen=True, slots=True)
class Unconfirmed:
    """One grant whose passage nobody saw: where and when it was granted."""

    gate: str
    granted_at: datetime

    def as_json(self) -> dict[str, str]:
        return {"gate": self.gate, "granted_at": iso_utc(self.granted_at)}


def record(conn: sqlite3.Connection, daemon: str, ev: Mapping[str, Any], zone: str | None) -> bool:
    """Inside a transaction: a `passage_unconfirmed` event's grant (its fields, as
    ledger.unconfirmed_fields makes them) by `daemon`, at `zone` (its gate's; None when
    not known: the grant still counts for its own booking). An exit is no entry, a grant
    without a member nobody's; False for those, for fields out of shape, and for a grant
    recorded already."""
    gate, member, booking = ev.get("gate"), ev.get("member"), ev.get("booking")
    if ev.get("reason") == "exit" or not isinstance(member, str) or not isinstance(gate, str):
        return False
    if len(member) > 200 or len(gate) > 200 or not (booking is None or isinstance(booking, str) and len(booking) <= 200):
        return False
    try:
        at = parse_instant_once(str(ev.get("granted_at") or ev.get("at")), _UTC)  # unique: not for the cache
    except ValueError:
        return False
    return conn.execute(
        "INSERT OR IGNORE INTO main.unconfirmed_grants(member_id, at, gate, daemon, zone, booking_id) "
        "VALUES (?,?,?,?,?,?)",
        (member, ts(at), gate, daemon, zone, booking),
    ).rowcount == 1


def for_booking(
    conn: sqlite3.Connection, member: str, zone: str, booking: str, since: datetime, until: datetime,
) -> list[Unconfirmed]:
    """The member's unconfirmed entries from `since` up to `until` (excluded) into `zone`
    — or on `booking`, wherever its gate — in time order: what the no-show of that
    booking must not be fined for."""
    rows = conn.execute(
        "SELECT gate, at FROM main.unconfirmed_grants WHERE member_id = ? AND at >= ? AND at < ? "
        "AND (zone = ? OR booking_id = ?) ORDER BY at, gate",
        (member, ts(since), ts(until), zone, booking),
    ).fetchall()
    return [Unconfirmed(str(g), dt(float(a))) for g, a in rows]


__all__ = ["Unconfirmed", "create_table", "for_booking", "record"]
