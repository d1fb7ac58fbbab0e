"""The desk's requests, each done once: kept in the ledger with the record they produced.

The console's dialogs send a request id, one per action of the person at the desk
(gated/console/once.py): a dialog submitted again after an answer that never came — the
network, a daemon restarted meanwhile — carries the same id and must not charge, refund,
credit or open a second time. The id is written **in the transaction of its record**
(`done`): the attendance and its refund, the points, the desk's check-in (the tap's
commit), the opening once (the override's commit). A crash leaves both or neither: never
a record whose retry would do it again, never an id that says "done" for nothing.

What opens a gate is done when the relay is pulsed, before its record: so the id is
written first, `begun`, in a transaction flushed to disk before the pulse — a check-in's
in its grant intent's (sync/store/intents.py), an opening once's in one of its own — and
made `done` by the commit. A request the gate did not act on (refused, denied, the relay
not pulsed) is forgotten (`forget`, or its commit writes nothing), so its retry does it.
One still `begun` after a restart was cut off between its pulse and its commit (the
intent becomes `passage_unconfirmed`): its retry is refused, never pulsed again.

The answer the desk was given is saved after (`save_answer`, no event): a retry gets it
again. Lost with a crash in between, the retry is told it was done, with the record's seqs
(`seq`, the first of its events, moves with a renumbering: sync/store/numbering.py).

Kept a day (`KEEP`, by the instant of the request): a dialog is not submitted again a day
later. The ledger's retention sweep prunes them (sync/store/retention.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sync.store.outbox import Event
from sync.store.rows import ts

TABLE = "desk_requests"
KEEP = timedelta(days=1)

BEGUN = "begun"
DONE = "done"


@dataclass(frozen=True, slots=True)
class DeskRequest:
    """One action of the person at the desk: who, on what (the console's route, naming the
    gate, member or booking), the page's id, and what was asked (canonical JSON)."""

    operator: str
    action: str
    request_id: str
    asked: str


@dataclass(frozen=True, slots=True)
class Seen:
    """A request already made: what it asked, `begun` or `done`, the seqs of its record's
    events (one transaction's: consecutive), the answer the desk was given (None: not
    saved, a crash came between)."""

    asked: str
    state: str
    seqs: list[int]
    answer: dict[str, Any] | None


def create_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (operator TEXT NOT NULL, action TEXT NOT NULL, "
        "request_id TEXT NOT NULL, asked TEXT NOT NULL, state TEXT NOT NULL, seq INTEGER, "
        "events INTEGER NOT NULL DEFAULT 0, answer TEXT, at REAL NOT NULL, PRIMARY KEY (operator, action, request_id))"
    )


def find(conn: sqlite3.Connection, req: DeskRequest) -> Seen | None:
    row = conn.execute(
        f"SELECT asked, state, seq, events, answer FROM main.{TABLE} "
        "WHERE operator = ? AND action = ? AND request_id = ?",
        (req.operator, req.action, req.request_id),
    ).fetchone()
    if row is None:
        return None
    seqs = [] if row[2] is None else list(range(int(row[2]), int(row[2]) + int(row[3])))
    return Seen(str(row[0]), str(row[1]), seqs, None if row[4] is None else json.loads(row[4]))


def begin(conn: sqlite3.Connection, req: DeskRequest, now: datetime) -> None:
    """Inside the transaction flushed before a pulse: about to open for this request."""
    conn.execute(
        f"INSERT INTO main.{TABLE}(operator, action, request_id, asked, state, at) VALUES (?,?,?,?,?,?)",
        (req.operator, req.action, req.request_id, req.asked, BEGUN, ts(now)),
    )


def done(conn: sqlite3.Connection, req: DeskRequest, events: Sequence[Event], now: datetime) -> None:
    """Inside the transaction of the request's record, after its events: done (a `begun`
    row keeps its place: the retention walks rows in the order they were written)."""
    first = int(events[0]["seq"]) if events else None
    conn.execute(
        f"INSERT INTO main.{TABLE}(operator, action, request_id, asked, state, seq, events, at) "
        "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(operator, action, request_id) DO UPDATE SET state = excluded.state, "
        "seq = excluded.seq, events = excluded.events",
        (req.operator, req.action, req.request_id, req.asked, DONE, first, len(events), ts(now)),
    )


def forget(conn: sqlite3.Connection, req: DeskRequest) -> None:
    """Nothing was done for it (refused, denied, not pulsed): its retry does it."""
    conn.execute(
        f"DELETE FROM main.{TABLE} WHERE operator = ? AND action = ? AND request_id = ?",
        (req.operator, req.action, req.request_id),
    )


def save_answer(conn: sqlite3.Connection, req: DeskRequest, answer: dict[str, Any]) -> None:
    conn.execute(
        f"UPDATE main.{TABLE} SET answer = ? WHERE operator = ? AND action = ? AND request_id = ? AND state = ?",
        (json.dumps(answer, default=str), req.operator, req.action, req.request_id, DONE),
    )


__all__ = ["BEGUN", "DONE", "KEEP", "TABLE", "DeskRequest", "Seen", "begin", "create_table", "done", "find",
           "forget", "save_answer"]
