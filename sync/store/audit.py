"""The audit log: who did what from the console or the control socket (overrides,
attendance marked by staff, point adjustments, lockdown). Each row names the seq of the
event it went out with (the last one handed out when it was written)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any


def write_audit(
    conn: sqlite3.Connection, now: datetime, operator: str, action: str, detail: dict[str, Any], seq: int
) -> None:
    """Inside a transaction (Transaction.audit)."""
    conn.execute(
        "INSERT INTO audit(at, operator, action, detail, seq) VALUES (?,?,?,?,?)",
        (now.timestamp(), operator, action, json.dumps(detail), seq),
    )
