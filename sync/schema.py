"""The tables of the daemon's database and the migrations that create them.

A migration is a function of the sqlite-utils Database; `migrate` runs the missing ones,
each in its own transaction with the new `schema_version` in `meta`. A database newer
than this code is refused (StoreError), never silently downgraded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

from sync.errors import StoreError

SCHEMA_VERSION = 2


def _migration_1(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db.table("members").create(
        {"id": str, "name": str, "status": str, "email": str, "photo": str, "synced_at": float},
        pk="id",
        if_not_exists=True,
    )
    db.table("cards").create({"card": str, "member_id": str}, pk="card", if_not_exists=True)
    db.table("cards").create_index(["member_id"], if_not_exists=True)
    db.table("passes").create(
        {
            "id": str,
            "member_id": str,
            "name": str,
            "kind": str,
            "central_balance": str,
            "applied_seq": int,
            "balance": str,
            "deduct_on": str,
            "walk_in_cost": str,
            "valid_from": str,
            "valid_until": str,
            "zones": str,
            "access_windows": str,
        },
        pk="id",
        if_not_exists=True,
    )
    db.table("passes").create_index(["member_id"], if_not_exists=True)
    db.table("bookings").create(
        {
            "id": str,
            "member_id": str,
            "pass_id": str,
            "class_name": str,
            "zone": str,
            "starts_at": float,
            "ends_at": float,
            "status": str,
            "outcome": str,
            "deducted": int,
            "cost": str,
            "loyalty_points": int,
            "loyalty_credited": int,
            "attended_at": float,
        },
        pk="id",
        if_not_exists=True,
    )
    db.table("bookings").create_index(["member_id", "starts_at"], if_not_exists=True)
    db.table("bookings").create_index(["starts_at"], if_not_exists=True)
    # partial indexes keep the scheduler's due-work queries cheap with 300,000 bookings
    db.execute(
        "CREATE INDEX IF NOT EXISTS bookings_open ON bookings(ends_at) "
        "WHERE outcome IS NULL AND status = 'booked'"
    )
    db.execute(
        "CREATE INDEX IF NOT EXISTS bookings_uncredited ON bookings(ends_at) "
        "WHERE outcome = 'attended' AND loyalty_credited = 0 AND loyalty_points > 0"
    )
    db.table("deductions").create(
        {
            "seq": int,
            "pass_id": str,
            "member_id": str,
            "booking_id": str,
            "amount": str,
            "cause": str,
            "zone": str,
            "at": float,
            "refunded_by": int,
        },
        pk="seq",
        if_not_exists=True,
    )
    db.table("deductions").create_index(["pass_id", "seq"], if_not_exists=True)
    db.table("deductions").create_index(["member_id", "cause", "at"], if_not_exists=True)
    db.table("passages").create(
        {"id": int, "member_id": str, "zone": str, "direction": str, "at": float, "gate": str, "origin": str},
        pk="id",
        if_not_exists=True,
    )
    db.table("passages").create_index(["member_id", "zone", "at"], if_not_exists=True)
    db.table("passages").create_index(["at"], if_not_exists=True)
    db.table("loyalty").create(
        {
            "id": int,
            "member_id": str,
            "points": int,
            "booking_id": str,
            "reason": str,
            "operator": str,
            "at": float,
            "seq": int,
        },
        pk="id",
        if_not_exists=True,
    )
    db.table("loyalty").create_index(["member_id"], if_not_exists=True)
    db.table("qr_used").create({"token_id": str, "expires_at": float}, pk="token_id", if_not_exists=True)
    db.table("events").create(
        {"seq": int, "id": str, "type": str, "at": str, "gate": str, "member_id": str, "body": str},
        pk="seq",
        if_not_exists=True,
    )
    db.table("events").create_index(["id"], unique=True, if_not_exists=True)
    db.table("events").create_index(["member_id", "seq"], if_not_exists=True)
    db.table("audit").create(
        {"id": int, "at": float, "operator": str, "action": str, "detail": str, "seq": int},
        pk="id",
        if_not_exists=True,
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    # A grant the gate is about to act on, written (durably) before the relay is pulsed
    # and deleted by the transaction that commits the tap: one still here after a restart
    # is a grant whose commit a crash cut off (sync/intents.py).
    db.table("grant_intents").create(
        {"id": int, "gate": str, "member_id": str, "body": str, "at": float},
        pk="id",
        if_not_exists=True,
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1, _migration_2]


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database at `conn` (autocommit mode) up to SCHEMA_VERSION."""
    db = sqlite_utils.Database(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema {version} is newer than this gated ({SCHEMA_VERSION})")
    for n in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[n](db)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(n + 1),),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
