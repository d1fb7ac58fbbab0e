"""Photos taken at the desk, in the ledger (the format, and why inline, is sync/photos.py).

A row of `member_photos` survives snapshots, which replace the replica; the photo goes
upstream as a `member_photo` event in the same transaction.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from sync.photos import (
    PHOTO_MAX_BYTES,
    PHOTO_MAX_TEXT,
    Photo,
    data_url,
    decode,
    jpeg,
    photo_or_none,
)
from sync.store.transaction import Transaction

TABLE = "member_photos"


def create_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (member_id TEXT PRIMARY KEY, mime TEXT NOT NULL, data BLOB NOT NULL, "
        "operator TEXT NOT NULL, at REAL NOT NULL, seq INTEGER NOT NULL)"
    )


def save(tx: Transaction, member_id: str, data: bytes, operator: str, now: datetime) -> None:
    """Inside the caller's transaction: the row (replacing an earlier one), the event that
    takes the photo upstream and the audit row (which names it, without the bytes)."""
    event = tx.emit("member_photo", now, member=member_id, photo=data_url("image/jpeg", data), operator=operator)
    tx.conn.execute(
        f"INSERT INTO {TABLE}(member_id, mime, data, operator, at, seq) VALUES (?,?,?,?,?,?) "
        "ON CONFLICT(member_id) DO UPDATE SET mime = excluded.mime, data = excluded.data, "
        "operator = excluded.operator, at = excluded.at, seq = excluded.seq",
        (member_id, "image/jpeg", data, operator, now.timestamp(), event["seq"]),
    )
    tx.audit(now, operator, "member_photo", {"member": member_id, "bytes": len(data)})


__all__ = [
    "PHOTO_MAX_BYTES", "PHOTO_MAX_TEXT", "TABLE", "Photo", "create_table", "data_url", "decode", "jpeg",
    "photo_or_none", "save",
]
