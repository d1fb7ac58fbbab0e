"""Refunds the desk asked for that wait to hear the site. Staff mark a booking attended
with a refund of the walk-in the member paid that day (SPORTRICK's early-arrival case);
the charge may have been taken at another turnstile of the site — another daemon, whose
events reach this one over the site's broker — or, on a new box, by this gate's old box,
whose events come back from the central system (sync/store/own_history.py). When the
charge is not found here and those events are not all in (a peer not heard up to the
moment the desk asked: the broker restarted, this daemon just started, the peer's box is
down), "nothing to give back" would be a guess: the member would keep paying for the
class twice. So the request is kept, in the transaction that marks the attendance, and
settled by the scheduler (Ledger.settle_refunds) when it can be: the charge arrives (it
is given back, as if found at once), or everyone is heard up to the request without one
(nothing was charged: dropped), or after `GIVE_UP` of waiting (a `refund_unsettled`
alarm names it for a person). The console shows it as waiting meanwhile.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sync.store.rows import ts

GIVE_UP = timedelta(hours=24)  # a peer unheard this long is a person's job (the alarm names it)


@dataclass(frozen=True, slots=True)
class RefundWanted:
    booking_id: str
    member_id: str
    zone: str
    day_start: datetime  # the class's local day: the charge is of that day
    day_end: datetime
    asked_at: datetime  # only a charge taken before the request is its
    operator: str
    waiting: tuple[str, ...]  # the daemons not heard up to `asked_at` (this one: its own lost events)


def create_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS refunds_wanted (booking_id TEXT PRIMARY KEY, member_id TEXT NOT NULL, "
        "zone TEXT NOT NULL, day_start REAL NOT NULL, day_end REAL NOT NULL, asked_at REAL NOT NULL, "
        "operator TEXT NOT NULL, waiting TEXT NOT NULL)"
    )


def want(conn: sqlite3.Connection, w: RefundWanted) -> None:
    """Inside the transaction that marks the booking attended. A booking's refund is asked
    for once (a second request for it changes nothing)."""
    conn.execute(
        "INSERT OR IGNORE INTO refunds_wanted(booking_id, member_id, zone, day_start, day_end, asked_at, operator, "
        "waiting) VALUES (?,?,?,?,?,?,?,?)",
        (w.booking_id, w.member_id, w.zone, ts(w.day_start), ts(w.day_end), ts(w.asked_at), w.operator,
         json.dumps(list(w.waiting))),
    )


def _row(r: Sequence[object]) -> RefundWanted:
    waiting = json.loads(str(r[7]))
    return RefundWanted(
        str(r[0]), str(r[1]), str(r[2]), _at(r[3]), _at(r[4]), _at(r[5]), str(r[6]),
        tuple(str(d) for d in waiting) if isinstance(waiting, list) else (),
    )


def _at(v: object) -> datetime:
    return datetime.fromtimestamp(float(str(v)), UTC)


_COLUMNS = "booking_id, member_id, zone, day_start, day_end, asked_at, operator, waiting"


def wanted(conn: sqlite3.Connection) -> list[RefundWanted]:
    """Every refund that waits, oldest request first."""
    return [_row(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM refunds_wanted ORDER BY asked_at, booking_id")]


def get(conn: sqlite3.Connection, booking_id: str) -> RefundWanted | None:
    r = conn.execute(f"SELECT {_COLUMNS} FROM refunds_wanted WHERE booking_id = ?", (booking_id,)).fetchone()
    return None if r is None else _row(r)


def count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM refunds_wanted").fetchone()[0])


def still_waiting(conn: sqlite3.Connection, booking_id: str, waiting: Sequence[str]) -> None:
    """Inside a transaction: who the request waits for now (the console shows it)."""
    conn.execute("UPDATE refunds_wanted SET waiting = ? WHERE booking_id = ?", (json.dumps(list(waiting)), booking_id))


def drop(conn: sqlite3.Connection, booking_id: str) -> None:
    """Inside a transaction: settled, or given up."""
    conn.execute("DELETE FROM refunds_wanted WHERE booking_id = ?", (booking_id,))


__all__ = ["GIVE_UP", "RefundWanted", "count", "create_table", "drop", "get", "still_waiting", "want", "wanted"]
