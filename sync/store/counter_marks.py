"""The last count the daemon saw of each counting board (gated/while_down.py), kept in
`meta`, one value a board: `counter.<board>` = [count, at (POSIX seconds), gate]. Keyed by
the board's identity (its address and register: drivers/outputs/downtime.py), so a gate
configured to another board, or a board's address changed, is never compared with what
another board counted. Written inside transactions that happen anyway (Transactions.riders),
and once at a clean stop: never a commit of its own on a tap's path.
"""

from __future__ import annotations

import json
import sqlite3

KEY_PREFIX = "counter."


def key(board: str) -> str:
    return KEY_PREFIX + board


def read(conn: sqlite3.Connection, board: str) -> tuple[int, float] | None:
    """(count, at) kept for `board`; None when none is (or it is not one of ours)."""
    row = conn.execute("SELECT value FROM main.meta WHERE key = ?", (key(board),)).fetchone()
    if row is None:
        return None
    try:
        count, at, _gate = json.loads(str(row[0]))
        return int(count), float(at)
    except (TypeError, ValueError):
        return None


def write(conn: sqlite3.Connection, board: str, count: int, at: float, gate: str) -> None:
    """Inside a transaction."""
    conn.execute(
        "INSERT INTO main.meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key(board), json.dumps([count, round(at, 3), gate])),
    )


__all__ = ["KEY_PREFIX", "key", "read", "write"]
