"""Small named values the store keeps (`meta` table): schema version, next seq, acked
seq, the replica's delta_seq and snapshot id, the last sync time."""

from __future__ import annotations

import sqlite3

# the latest instant the daemon's clock trusted (POSIX seconds; gated/daemon.py writes it
# once a minute): the next start's guarded clock, and the store's open, hold the wall
# clock against it
CLOCK_FLOOR_KEY = "clock.trusted_at"


class Meta:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM main.meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        """Inside a transaction (Transaction.set_meta)."""
        self.conn.execute(
            "INSERT INTO main.meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def delete(self, key: str) -> None:
        """Inside a transaction (Transaction.delete_meta)."""
        self.conn.execute("DELETE FROM main.meta WHERE key = ?", (key,))
