"""The tables of the daemon's database and the migrations that create them.

A migration is a function of the sqlite-utils Database; `migrate` runs the missing ones,
each in its own transaction with the new `schema_version` in `meta`. A database newer
than this code is refused (StoreError), never silently downgraded.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import sqlite_utils

from rules.credential import TenDigits, card_from_text, index_keys
from sync.errors import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5


def _migration_1(db: sqlite_utils.Database, ten_digits: TenDigits) -> None:
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


def _migration_2(db: sqlite_utils.Database, ten_digits: TenDigits) -> None:
    # A grant the gate is about to act on, written (durably) before the relay is pulsed
    # and deleted by the transaction that commits the tap: one still here after a restart
    # is a grant whose commit a crash cut off (sync/intents.py).
    db.table("grant_intents").create(
        {"id": int, "gate": str, "member_id": str, "body": str, "at": float},
        pk="id",
        if_not_exists=True,
    )


def _migration_3(db: sqlite_utils.Database, ten_digits: TenDigits) -> None:
    from sync.enrolment import create_table

    create_table(db.conn)  # cards assigned at the desk, until the central system has them


def _migration_4(db: sqlite_utils.Database, ten_digits: TenDigits) -> None:
    # the desk's search: by phone too, over text made once per member (sync/search_text.py)
    db.conn.execute("ALTER TABLE members ADD COLUMN phone TEXT")
    db.conn.execute("ALTER TABLE members ADD COLUMN search TEXT")
    from sync.rows import MEMBER_READ, member_from_row
    from sync.search_text import member_search_text

    members = db.conn.execute(f"SELECT {MEMBER_READ} FROM members").fetchall()
    for row in members:
        cards = tuple(r[0] for r in db.conn.execute("SELECT card FROM cards WHERE member_id = ?", (row[0],)))
        db.conn.execute("UPDATE members SET search = ? WHERE id = ?", (member_search_text(member_from_row(row, cards)), row[0]))


def _migration_5(db: sqlite_utils.Database, ten_digits: TenDigits) -> None:
    """Cards keyed by their canonical typed key (rules/credential.py: `em:0A00BC614E`,
    `w26:123:45678`, ...), plus `card_keys`: the keys of what readers that read less of a
    card see of it (an EM card's 32-bit number, its Wiegand 26 output), so those reads
    find it. The untyped strings stored so far are read by `card_from_text` (the table in
    docs/hardware.md, "Card identity"), 10 decimal digits by the site's rule. Two strings that turn out to be one card keep the
    member of the later row; a string that is no card at all (empty, unprintable) is
    dropped. Both are counted in meta (`cards.merged`, `cards.dropped`) and logged. The
    cards the desk enrolled (card_enrolments) are keyed the same way."""
    conn = db.conn
    old = conn.execute("SELECT card, member_id FROM cards ORDER BY rowid").fetchall()
    conn.execute("DROP TABLE cards")
    db.table("cards").create({"card": str, "member_id": str}, pk="card")
    db.table("cards").create_index(["member_id"])
    db.table("card_keys").create({"key": str, "card": str}, pk=("key", "card"))
    db.table("card_keys").create_index(["card"])
    merged = dropped = 0
    for text, member in old:
        try:
            card = card_from_text(str(text), ten_digits)
        except ValueError:
            dropped += 1
            log.warning("card %r of member %s is no card identifier: dropped", text, member)
            continue
        held = conn.execute("SELECT member_id FROM cards WHERE card = ?", (card.key,)).fetchone()
        if held is not None:
            merged += 1
            if held[0] != member:
                log.warning("cards %s: held by %s and %s; %s keeps it", card.key, held[0], member, member)
        conn.execute(
            "INSERT INTO cards(card, member_id) VALUES (?, ?) "
            "ON CONFLICT(card) DO UPDATE SET member_id = excluded.member_id",
            (card.key, member),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO card_keys(key, card) VALUES (?, ?)",
            ((k, card.key) for k, own in index_keys(card) if not own),
        )
    for key, value in (("cards.migrated", len(old) - dropped), ("cards.merged", merged), ("cards.dropped", dropped)):
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
        )
    for (text,) in conn.execute("SELECT card FROM card_enrolments").fetchall():
        try:
            key = card_from_text(str(text), ten_digits).key
        except ValueError:
            conn.execute("DELETE FROM card_enrolments WHERE card = ?", (text,))
            continue
        if key != text:
            conn.execute("DELETE FROM card_enrolments WHERE card = ?", (key,))
            conn.execute("UPDATE card_enrolments SET card = ? WHERE card = ?", (key, text))


MIGRATIONS: list[Callable[[sqlite_utils.Database, TenDigits], None]] = [
    _migration_1, _migration_2, _migration_3, _migration_4, _migration_5,
]




def migrate(conn: sqlite3.Connection, ten_digits: TenDigits = TenDigits.EM32) -> None:
    """Bring the database at `conn` (autocommit mode) up to SCHEMA_VERSION. `ten_digits`:
    how the site reads untyped 10-digit card strings (rules.credential.TenDigits)."""
    db = sqlite_utils.Database(conn)
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema {version} is newer than this gated ({SCHEMA_VERSION})")
    for n in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[n](db, ten_digits)
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(n + 1),),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
