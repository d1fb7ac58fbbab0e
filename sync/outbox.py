"""This daemon's events: numbered 1, 2, 3, ... with no gap (`seq`), kept in the `events`
table, which doubles as the outbox. The sync link publishes `events_after(acked_seq)`;
the central system's ack moves `acked_seq` forward, and only acknowledged events are ever
pruned.

Events are appended inside a store transaction (Transaction.emit): the seq handed out is
given back if the transaction rolls back, so a failed write leaves no gap.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from rules.timeutil import iso_utc
from sync.meta import Meta

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

    def record_ack(self, applied_seq: int, keep: int) -> None:
        """Inside a transaction (Store.ack): move acked_seq to `applied_seq` and prune the
        acknowledged events beyond the newest `keep`."""
        self.meta.put("acked_seq", str(applied_seq))
        self.conn.execute("DELETE FROM events WHERE seq <= ? AND seq <= ?", (applied_seq, self.last_seq - keep))
