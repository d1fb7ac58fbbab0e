"""The tables of the daemon's two kinds of database file, and the migrations.

The **ledger** (the configured `store.path`) holds what only this gate knows: events (the
outbox), deductions, passages, booking outcomes, loyalty, used QR tokens, the audit log,
meta. The **replica** (a file beside it, see sync/store/replica_file.py) holds what the central
system sent: members, cards, passes with their central balance and `applied_seq`,
bookings, and its own meta (`delta_seq`, `snapshot_id`, ...). Nothing the gate itself
changes lives in the replica, so a whole new replica can be built elsewhere and switched
in without losing a tap.

Ledger migrations are functions of the connection; `migrate` runs the missing ones, each
with the new `schema_version` in `meta`. A database newer than this code is refused
(StoreError), never silently downgraded. Version 1 kept the replica inside the ledger
file; migration 6 moves it out (see `_migration_6`).

About 570 lines, as the history of the file format is: every migration since version 1
stays, in order, so any store a site still has upgrades in place.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from rules.credential import TenDigits, card_from_text, index_keys
from sync.errors import SchemaNewer

log = logging.getLogger(__name__)

SCHEMA_VERSION = 15
REPLICA_SCHEMA_VERSION = 4
# replica meta: the rule for untyped 10-digit card strings its cards were typed under
# (rules.credential.TenDigits); absent in replicas written before it (then: the current rule)
CARDS_TYPED_AS = "cards_typed_as"

# -- the replica ---------------------------------------------------------------------------

# Tables first, indexes after: a snapshot build loads rows into bare tables and indexes
# them at the end (a sort per index instead of a B-tree walk per row).
REPLICA_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    # the photo last: a scan of the other columns (the desk's search) never walks a
    # photo's overflow pages
    "CREATE TABLE IF NOT EXISTS members (id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, email TEXT, "
    "synced_at REAL, phone TEXT, search TEXT, note TEXT, status_reason TEXT, photo TEXT)",
    "CREATE TABLE IF NOT EXISTS cards (card TEXT PRIMARY KEY, member_id TEXT NOT NULL)",
    # what readers that read less of a card see of it (rules.credential.index_keys)
    "CREATE TABLE IF NOT EXISTS card_keys (key TEXT NOT NULL, card TEXT NOT NULL, PRIMARY KEY (key, card))",
    "CREATE TABLE IF NOT EXISTS passes (id TEXT PRIMARY KEY, member_id TEXT NOT NULL, name TEXT, kind TEXT NOT NULL, "
    "central_balance TEXT, applied_seq INTEGER NOT NULL DEFAULT 0, deduct_on TEXT NOT NULL, walk_in_cost TEXT, "
    "valid_from TEXT, valid_until TEXT, zones TEXT, access_windows TEXT, applied_peers TEXT)",
    "CREATE TABLE IF NOT EXISTS bookings (id TEXT PRIMARY KEY, member_id TEXT NOT NULL, pass_id TEXT NOT NULL, "
    "class_name TEXT, zone TEXT NOT NULL, starts_at REAL NOT NULL, ends_at REAL NOT NULL, status TEXT NOT NULL, "
    "deducted INTEGER NOT NULL, cost TEXT NOT NULL, loyalty_points INTEGER NOT NULL DEFAULT 0)",
    # what a switch to this replica must tell the ledger (sync/snapshot/worker.py)
    "CREATE TABLE IF NOT EXISTS switch_recheck (booking_id TEXT PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS switch_clear (booking_id TEXT PRIMARY KEY)",
)
REPLICA_INDEXES = (
    "CREATE INDEX IF NOT EXISTS cards_member ON cards(member_id)",
    "CREATE INDEX IF NOT EXISTS card_keys_card ON card_keys(card)",
    "CREATE INDEX IF NOT EXISTS passes_member ON passes(member_id)",
    "CREATE INDEX IF NOT EXISTS bookings_member ON bookings(member_id, starts_at)",
    "CREATE INDEX IF NOT EXISTS bookings_starts ON bookings(starts_at)",
    # the scheduler's no-show scan walks this by ends_at (Ledger.run_due)
    "CREATE INDEX IF NOT EXISTS bookings_open ON bookings(ends_at) WHERE status = 'booked'",
)
REPLICA_SCHEMA = REPLICA_TABLES + REPLICA_INDEXES


def create_replica(path: Path, meta: dict[str, str]) -> None:
    """An empty replica file with `meta`, on disk (fsynced) when this returns."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN")
        for sql in REPLICA_SCHEMA:
            conn.execute(sql)
        conn.executemany(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            [("replica_schema", str(REPLICA_SCHEMA_VERSION)), *meta.items()],
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def upgrade_replica(path: Path) -> None:
    """A replica file of an earlier version, brought up to this one in place (a replica of
    an unknown version is left alone: the store replaces it and asks for a snapshot).
    2 -> 3: passes gain `applied_peers` (the other daemons' `applied` entries; empty until
    the next change of each pass).
    3 -> 4: members gain `note` and `status_reason` (empty until the next change of each
    member), and a photo the gate does not accept (sync/photos.py) is dropped. The photo
    column stays where it was until the next snapshot builds a file of the new layout."""
    try:
        conn = sqlite3.connect(str(path), isolation_level=None)
    except sqlite3.Error:
        return
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'replica_schema'").fetchone()
        if row is None or str(row[0]) not in REPLICA_UPGRADES:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for version in range(int(row[0]), REPLICA_SCHEMA_VERSION):
                REPLICA_UPGRADES[str(version)](conn)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'replica_schema'", (str(REPLICA_SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error:
        return  # not readable as a replica: replaced by the caller
    finally:
        conn.close()


def _replica_3(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE passes ADD COLUMN applied_peers TEXT")


def _replica_4(conn: sqlite3.Connection) -> None:
    from sync.photos import photo_or_none

    conn.execute("ALTER TABLE members ADD COLUMN note TEXT")
    conn.execute("ALTER TABLE members ADD COLUMN status_reason TEXT")
    for member_id, photo in conn.execute("SELECT id, photo FROM members WHERE photo IS NOT NULL").fetchall():
        if photo_or_none(photo) is None:
            conn.execute("UPDATE members SET photo = NULL WHERE id = ?", (member_id,))


# the step from each version to the next
REPLICA_UPGRADES: dict[str, Callable[[sqlite3.Connection], None]] = {"2": _replica_3, "3": _replica_4}


# -- the ledger ------------------------------------------------------------------------------


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")  # inside: on a full disk it is the COMMIT that fails
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _set_version(conn: sqlite3.Connection, version: int) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (str(version),),
    )


def _migration_1(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """The first layout: replica and ledger in one file."""
    with _transaction(conn):
        _create_v1(conn)
        _set_version(conn, 1)


def _create_v1(conn: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(conn)
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


def _migration_2(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """Grant intents."""
    with _transaction(conn):
        # A grant the gate is about to act on, written (durably) before the relay is
        # pulsed and deleted by the transaction that commits the tap: one still here
        # after a restart is a grant whose commit a crash cut off (sync/store/intents.py).
        sqlite_utils.Database(conn).table("grant_intents").create(
            {"id": int, "gate": str, "member_id": str, "body": str, "at": float},
            pk="id",
            if_not_exists=True,
        )
        _set_version(conn, 2)


def _migration_3(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """Cards assigned at the desk, until the central system has them (sync/store/enrolment.py)."""
    from sync.store.enrolment import create_table

    with _transaction(conn):
        create_table(conn)
        _set_version(conn, 3)


def _migration_4(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """The desk's search: by phone too, over text made once per member (sync/store/search_text.py)."""
    from sync.store.rows import member_from_row
    from sync.store.search_text import member_search_text

    with _transaction(conn):
        conn.execute("ALTER TABLE members ADD COLUMN phone TEXT")
        conn.execute("ALTER TABLE members ADD COLUMN search TEXT")
        # as sync.store.rows.MEMBER_READ reads a member (note and status reason came later)
        for row in conn.execute("SELECT id, name, status, email, phone, NULL, NULL FROM members").fetchall():
            cards = tuple(r[0] for r in conn.execute("SELECT card FROM cards WHERE member_id = ?", (row[0],)))
            conn.execute(
                "UPDATE members SET search = ? WHERE id = ?", (member_search_text(member_from_row(row, cards)), row[0])
            )
        _set_version(conn, 4)


def _migration_5(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """Cards keyed by their canonical typed key (rules/credential.py: `em:0A00BC614E`,
    `w26:123:45678`, ...), plus `card_keys`: the keys of what readers that read less of a
    card see of it (an EM card's 32-bit number, its Wiegand 26 output), so those reads
    find it. The untyped strings stored so far are read by `card_from_text` (the table in
    docs/hardware.md, "Card identity"), 10 decimal digits by the site's rule. Two strings
    that turn out to be one card keep the member of the later row; a string that is no card
    at all (empty, unprintable) is dropped. Both are counted in meta (`cards.merged`,
    `cards.dropped`) and logged. The cards the desk enrolled (card_enrolments) are keyed
    the same way."""
    db = sqlite_utils.Database(conn)
    with _transaction(conn):
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
        _set_version(conn, 5)


# the replica's own meta keys (moved out of the ledger's meta by migration 6)
REPLICA_META_KEYS = ("sync.delta_seq", "sync.snapshot_id", "last_sync_at")


def _migration_6(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """The replica moves to a file of its own; booking outcomes become ledger rows.

    The new replica file is written and fsynced first (the ledger is only read); then
    one ledger transaction points the ledger at it, keeps the outcomes and drops the old
    tables. A crash before that COMMIT leaves the version 1 database as it was (the
    half-made file is an orphan, removed at the next start).
    """
    from sync.store.replica_file import ReplicaFiles  # the file naming lives there

    files = ReplicaFiles(path)
    new = files.new_path(1)
    meta = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM meta") if k in REPLICA_META_KEYS}
    create_replica(new, {"generation": "1", **meta})
    conn.execute("ATTACH DATABASE ? AS incoming", (str(new),))
    try:
        with _transaction(conn):
            conn.execute(
                "INSERT INTO incoming.members(id, name, status, email, photo, synced_at, phone, search) "
                "SELECT id, name, status, email, photo, synced_at, phone, search FROM main.members"
            )
            conn.execute("INSERT INTO incoming.cards SELECT card, member_id FROM main.cards")
            conn.execute("INSERT INTO incoming.card_keys SELECT key, card FROM main.card_keys")
            conn.execute(
                "INSERT INTO incoming.passes SELECT id, member_id, name, kind, central_balance, "
                "COALESCE(applied_seq, 0), deduct_on, walk_in_cost, valid_from, valid_until, zones, access_windows, "
                "NULL FROM main.passes"
            )
            conn.execute(
                "INSERT INTO incoming.bookings SELECT id, member_id, pass_id, class_name, zone, starts_at, ends_at, "
                "status, deducted, cost, COALESCE(loyalty_points, 0) FROM main.bookings"
            )
        conn.execute("PRAGMA incoming.wal_checkpoint(TRUNCATE)")
    finally:
        conn.execute("DETACH DATABASE incoming")
    files.fsync(new)
    # every open booking before the first unfinalised one is done: the no-show scan
    # starts there (Ledger.run_due)
    first_open = conn.execute(
        "SELECT MIN(ends_at) FROM bookings WHERE outcome IS NULL AND status = 'booked'"
    ).fetchone()[0]
    last = conn.execute("SELECT MAX(ends_at) FROM bookings").fetchone()[0]
    cursor = float(first_open) - 1e-3 if first_open is not None else (float(last) if last is not None else None)
    with _transaction(conn):
        conn.execute(
            "CREATE TABLE booking_outcomes (booking_id TEXT PRIMARY KEY, outcome TEXT NOT NULL, attended_at REAL, "
            "loyalty_settled INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute(
            "CREATE INDEX booking_outcomes_unsettled ON booking_outcomes(booking_id) "
            "WHERE outcome = 'attended' AND loyalty_settled = 0"
        )
        conn.execute("CREATE TABLE due_recheck (booking_id TEXT PRIMARY KEY)")
        conn.execute(
            "INSERT INTO booking_outcomes(booking_id, outcome, attended_at, loyalty_settled) "
            "SELECT id, outcome, attended_at, COALESCE(loyalty_credited, 0) FROM bookings "
            "WHERE outcome IS NOT NULL AND status != 'cancelled'"
        )
        for t in ("bookings", "passes", "card_keys", "cards", "members"):
            conn.execute(f"DROP TABLE {t}")
        # what the snapshot importer before this one left when killed mid-import
        for (t,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '\\_snap%' ESCAPE '\\'"
        ).fetchall():
            conn.execute(f"DROP TABLE [{t}]")
        conn.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in REPLICA_META_KEYS])
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('replica.file', ?), ('replica.generation', '1')",
            (new.name,),
        )
        if cursor is not None:
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('due.no_show_through', ?)", (repr(cursor),)
            )
        # the shadow tables' generation of the snapshot importer before this one
        conn.execute("DELETE FROM meta WHERE key = 'sync.snapshot_generation'")
        _set_version(conn, 6)


def _migration_7(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """The site's other daemons' walk-in charges and the refunds anyone gave (sync/store/peer_events.py)."""
    from sync.store.peer_events import create_tables

    with _transaction(conn):
        create_tables(conn)
        _set_version(conn, 7)


def _migration_8(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """How far each other daemon of the site is heard (sync/link/peer_marks.py), and every
    charge of theirs, not only walk-ins (the site's balances, sync/store/peer_events.py)."""
    from sync.store.peer_events import create_tables_v8

    with _transaction(conn):
        create_tables_v8(conn)
        _set_version(conn, 8)


def _migration_9(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """Photos taken at the desk (sync/store/photos.py)."""
    from sync.store.photos import create_table

    with _transaction(conn):
        create_table(conn)
        _set_version(conn, 9)


def _migration_10(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """No table: from here the daemon keeps the mark of what it sent beside the ledger
    (sync/store/sent_mark.py), and a ledger of this version without it is unsure of its
    numbering (sync/store/numbering.py); one from before is taken as it is."""
    with _transaction(conn):
        _set_version(conn, 10)


def _migration_11(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """Refunds the desk asked for that wait to hear the site (sync/store/refunds_wanted.py)."""
    from sync.store.refunds_wanted import create_table

    with _transaction(conn):
        create_table(conn)
        _set_version(conn, 11)


def _migration_12(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """Other daemons' refund requests, so that each is given its walk-in in order
    (sync/store/peer_events.py, create_refund_asks)."""
    from sync.store.peer_events import create_refund_asks

    with _transaction(conn):
        create_refund_asks(conn)
        _set_version(conn, 12)


def _migration_13(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """Which refund gave each charge back (sync/store/peer_events.py, `site_refunds`), so
    that a second refund of the same charge is seen and reported (`double_refund`)."""
    from sync.store.peer_events import add_refund_givers

    with _transaction(conn):
        add_refund_givers(conn)
        _set_version(conn, 13)


def _migration_14(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """Grants whose passage nobody saw, of any daemon of the site (sync/store/unconfirmed.py):
    the member may have gone through, so the no-show fee counts them as entries."""
    from sync.store.unconfirmed import create_table

    with _transaction(conn):
        create_table(conn)
        _set_version(conn, 14)


def _migration_15(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits) -> None:
    """The desk's requests, each done once, kept with the record they produced
    (sync/store/desk_requests.py); an existing ledger starts with none."""
    from sync.store.desk_requests import create_table

    with _transaction(conn):
        create_table(conn)
        _set_version(conn, 15)


# each brings the database to its version, atomically
MIGRATIONS: list[Callable[[sqlite3.Connection, Path, TenDigits], None]] = [
    _migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6, _migration_7,
    _migration_8, _migration_9, _migration_10, _migration_11, _migration_12, _migration_13, _migration_14,
    _migration_15,
]


def migrate(conn: sqlite3.Connection, path: Path, ten_digits: TenDigits = TenDigits.EM32) -> int:
    """Bring the ledger at `path` (`conn`, autocommit mode) up to SCHEMA_VERSION; returns
    the version it was at (0: a new file). `ten_digits`: how the site reads untyped
    10-digit card strings (rules.credential)."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise SchemaNewer(f"database schema {version} is newer than this gated ({SCHEMA_VERSION})")
    for n in range(version, SCHEMA_VERSION):
        MIGRATIONS[n](conn, path, ten_digits)
    return version
