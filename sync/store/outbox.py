"""This daemon's events: numbered 1, 2, 3, ... with no gap (`seq`), kept in the `events`
table, which doubles as the outbox. The sync link publishes `events_after(acked_seq)`;
the central system's ack moves `acked_seq` forward. Acknowledged events are kept for a
retention period (the central system may ask for them again after restoring a backup:
a replay) and then pruned; unacknowledged events are never pruned.

Events are appended inside a store transaction (Transaction.emit): the seq handed out is
given back if the transaction rolls back or its COMMIT fails, so a failed write leaves no
gap. A store that an earlier version left with holes (numbers taken by a COMMIT that
failed on a full disk) has each lost number filled with a `void` event when it is opened
(`holes`, Store's start): without them the central system, which applies events in seq
order, would wait for those numbers for ever.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rules.timeutil import iso_utc
from sync.store.meta import Meta

Event = dict[str, Any]


class Outbox:
    def __init__(self, conn: sqlite3.Connection, meta: Meta):
        self.conn = conn
        self.meta = meta
        self.next_seq = int(meta.get("next_seq", "1") or 1)

    @property
    def last_seq(self) -> int:
        return self.next_seq - 1

    def append(self, type_: str, now: datetime, fields: dict[str, Any]) -> Event:
        """Number and store one event (inside a transaction; Transaction.emit)."""
        seq = self.next_seq
        event: Event = {"id": uuid.uuid4().hex, "seq": seq, "type": type_, "at": iso_utc(now)}
        event.update(fields)
        self.conn.execute(
            "INSERT INTO events(seq, id, type, at, gate, member_id, body) VALUES (?,?,?,?,?,?,?)",
            (seq, event["id"], type_, event["at"], fields.get("gate"), fields.get("member"), json.dumps(event)),
        )
        self.next_seq = seq + 1
        self.meta.put("next_seq", str(self.next_seq))
        return event

    def events_after(self, seq: int, limit: int = 500) -> list[Event]:
        rows = self.conn.execute(
            "SELECT body FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def recent_events(self, limit: int = 100, types: Iterable[str] | None = None) -> list[Event]:
        if types:
            t = list(types)
            q = f"SELECT body FROM events WHERE type IN ({','.join('?' * len(t))}) ORDER BY seq DESC LIMIT ?"
            rows = self.conn.execute(q, (*t, limit)).fetchall()
        else:
            rows = self.conn.execute("SELECT body FROM events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    @property
    def acked_seq(self) -> int:
        return int(self.meta.get("acked_seq", "0") or 0)

    def depth(self) -> int:
        return self.last_seq - self.acked_seq

    def record_ack(self, applied_seq: int) -> None:
        """Inside a transaction (Store.ack): move acked_seq to `applied_seq`."""
        self.meta.put("acked_seq", str(applied_seq))

    def holes(self) -> list[int]:
        """The numbers between the acknowledged seq and the last one that no event holds.
        (Below the acknowledged seq nothing can be missing: the central system acknowledges
        only what it applied in order; events are pruned from there down.)"""
        acked = self.acked_seq
        held = [int(r[0]) for r in self.conn.execute("SELECT seq FROM events WHERE seq > ? ORDER BY seq", (acked,))]
        if len(held) == self.last_seq - acked:
            return []
        have = set(held)
        return [n for n in range(acked + 1, self.last_seq + 1) if n not in have]

    def fill(self, seq: int, now: datetime, reason: str) -> Event:
        """Inside a transaction: a `void` event under a number that holds none."""
        return self.fill_range(seq, seq, now, reason)[0]

    def fill_range(self, first: int, last: int, now: datetime, reason: str) -> list[Event]:
        """Inside a transaction: `void` events for `first`..`last` (numbers that hold none),
        numbering on after `last` if it is beyond the last seq (a ledger put back from a
        copy: sync/store/sent_mark.py). In bulk: they may be many."""
        at = iso_utc(now)
        events: list[Event] = [
            {"id": uuid.uuid4().hex, "seq": seq, "type": "void", "at": at, "reason": reason}
            for seq in range(first, last + 1)
        ]
        self.conn.executemany(
            "INSERT INTO events(seq, id, type, at, gate, member_id, body) VALUES (?,?,?,?,NULL,NULL,?)",
            ((e["seq"], e["id"], "void", at, json.dumps(e)) for e in events),
        )
        self.next_seq = max(self.next_seq, last + 1)
        self.meta.put("next_seq", str(self.next_seq))
        return events

    @property
    def first_seq(self) -> int:
        """The oldest event still held (last_seq + 1 when none is)."""
        row = self.conn.execute("SELECT MIN(seq) FROM events").fetchone()
        return int(row[0]) if row and row[0] is not None else self.last_seq + 1

    def prune(self, before: datetime, keep_max: int) -> int:
        """Inside a transaction (Store.prune_acked): delete the acknowledged events older
        than `before`, and those beyond the newest `keep_max` acknowledged ones. Walks the
        events in seq order from the oldest and stops at the first one to keep (cost: the
        events pruned, not the events kept). Returns how many went."""
        acked = self.acked_seq
        young = self.conn.execute(
            "SELECT seq FROM events WHERE seq <= ? AND at >= ? ORDER BY seq LIMIT 1", (acked, iso_utc(before))
        ).fetchone()
        cut = max(int(young[0]) - 1 if young else acked, acked - keep_max)
        return int(self.conn.execute("DELETE FROM events WHERE seq <= ?", (min(cut, acked),)).rowcount)
