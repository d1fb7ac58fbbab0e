"""`gated store check|backup|rebuild-replica|upgrade`: looking after the database file.

The recovery of a damaged store (docs/operations.md, "A damaged store"):
1. `gated store check -c FILE`: SQLite's full integrity check. Exit 0 ok, 1 damaged.
2. Stop the daemon. Either restore the latest backup (`<path>.backup`, written by the
   daemon every `store.backup_interval`, or one taken with `gated store backup`) — what
   happened since that backup is lost — or
3. `gated store rebuild-replica -c FILE`: a new ledger with everything only this gate
   knows (the event log and outbox, deductions, passages, loyalty, used QR tokens, the
   audit log, open grant intents, booking outcomes) copied from the old one, as far as it
   can be read, and no replica: the daemon starts with an empty one and the snapshot it
   asks for at its next connection fills it. The old file is kept beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from sync.errors import StoreError

# What only this gate knows, copied by rebuild-replica. The replica (members, cards,
# passes) is what the central system sends again.
LEDGER_TABLES = (
    "events", "deductions", "passages", "loyalty", "qr_used", "audit", "grant_intents", "booking_outcomes",
)
# not copied: the replica's position, the old replica file, the schema the new file has
SYNC_META = (
    "sync.delta_seq", "sync.snapshot_id", "last_sync_at", "sync.snapshot_generation",
    "replica.file", "replica.generation", "schema_version",
)


def add_parser(sub: Any) -> None:  # argparse's subparsers action has no public type
    p = sub.add_parser("store", help="check, back up or rebuild the database file")
    ss = p.add_subparsers(dest="store_command", required=True)
    c = ss.add_parser("check", help="full integrity check of the database (exit 1 if damaged)")
    c.add_argument("-c", "--config", default="/etc/gated/gated.yaml")
    c.set_defaults(func=cmd_check)
    b = ss.add_parser("backup", help="write a consistent copy of the database (the daemon may run)")
    b.add_argument("-c", "--config", default="/etc/gated/gated.yaml")
    b.add_argument("dest", help="file to write (replaced atomically)")
    b.set_defaults(func=cmd_backup)
    r = ss.add_parser("rebuild-replica", help="keep the ledger, drop the replica (daemon stopped)")
    r.add_argument("-c", "--config", default="/etc/gated/gated.yaml")
    r.set_defaults(func=cmd_rebuild)
    u = ss.add_parser("upgrade", help="bring the store's schema up to this version (daemon stopped; the package's postinst)")
    u.add_argument("-c", "--config", default="/etc/gated/gated.yaml")
    u.add_argument("--keep-copy", metavar="SUFFIX", default=None,
                   help="before migrating, copy the ledger to <store.path>.SUFFIX (for a rollback)")
    u.set_defaults(func=cmd_upgrade)


def _store_path(args: argparse.Namespace) -> Path | None:
    from gated.config import ConfigError, load_config

    try:
        return Path(load_config(args.config).store.path)
    except ConfigError as e:
        for line, key, msg in e.problems:
            print(f"{e.path}:{line or '?'}: {key}: {msg}", file=sys.stderr)
        return None


def integrity(db: Path) -> list[str]:
    """SQLite's integrity_check of the ledger and the replica it names: ["ok"] or the
    problems found (a file that is not a database at all is one problem too)."""
    from sync.store import open_reader

    try:
        conn = open_reader(db)
    except StoreError:  # no replica named (yet): the ledger alone
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        except sqlite3.Error as e:
            return [str(e)]
    except sqlite3.Error as e:
        return [str(e)]
    try:
        return [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)")]
    except sqlite3.Error as e:
        return [str(e)]
    finally:
        conn.close()


def cmd_check(args: argparse.Namespace) -> int:
    db = _store_path(args)
    if db is None:
        return 2
    if not db.exists():
        print(f"{db}: no such file", file=sys.stderr)
        return 2
    problems = integrity(db)
    if problems == ["ok"]:
        print(f"{db}: ok")
        return 0
    print(f"{db}: damaged")
    for p in problems:
        print(f"  {p}")
    print("see docs/operations.md, \"A damaged store\": restore the backup or rebuild the replica")
    return 1


def cmd_backup(args: argparse.Namespace) -> int:
    from gated.storage_watch import backup

    db = _store_path(args)
    if db is None:
        return 2
    try:
        backup(db, Path(args.dest))
    except (sqlite3.Error, OSError) as e:
        print(f"backup failed: {e}", file=sys.stderr)
        return 1
    print(f"{db} → {args.dest}")
    return 0


def ledger_schema(db: Path) -> int:
    """The schema version the ledger at `db` was last migrated to (0: none yet)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return 0
            raise
        return int(row[0]) if row else 0
    finally:
        conn.close()


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Migrate the store now, with no daemon on it, a copy of the ledger kept first: an
    upgrade's failure is seen at install time, and a rollback has a file to go back to."""
    from gated.config import load_config
    from gated.installer import daemon_running
    from gated.state_owner import kept_by_owner
    from sync.schema import SCHEMA_VERSION
    from sync.storage import describe_store_error
    from sync.store import Store

    db = _store_path(args)
    if db is None:
        return 2
    if not db.exists():
        print(f"{db}: no store yet: nothing to upgrade")
        return 0
    config = load_config(args.config)
    if daemon_running(config):
        print("the daemon is running on this store: stop it first (systemctl stop gated)", file=sys.stderr)
        return 1
    try:
        version = ledger_schema(db)
    except (sqlite3.Error, ValueError) as e:
        print(f"{db}: cannot be read: {e} (docs/operations.md, \"A damaged store\")", file=sys.stderr)
        return 1
    if version > SCHEMA_VERSION:
        print(f"{db}: schema {version} is newer than this gated's ({SCHEMA_VERSION}): a rollback needs the "
              "copy taken before the upgrade (docs/operations.md, \"Upgrade and roll back\")", file=sys.stderr)
        return 1
    if version == SCHEMA_VERSION:
        print(f"{db}: schema {version}: up to date")
        return 0
    with kept_by_owner(db.parent):
        if args.keep_copy:
            from gated.storage_watch import backup

            copy = db.with_name(f"{db.name}.{args.keep_copy}")
            try:
                backup(db, copy)
            except (sqlite3.Error, OSError) as e:
                print(f"{db}: no copy could be taken ({e}): not upgraded", file=sys.stderr)
                return 1
            print(f"{db}: copy of schema {version} kept as {copy}")
        try:
            store = Store(db, config.site_domain(), daemon_id=config.daemon_id, ten_digits=config.ten_digits(),
                          background_checkpoints=False)
        except (sqlite3.Error, OSError, StoreError) as e:
            print(f"{db}: not upgraded: {describe_store_error(e)}", file=sys.stderr)
            return 1
        store.close()
    print(f"{db}: schema {version} → {SCHEMA_VERSION}")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from gated.config import load_config
    from gated.state_owner import kept_by_owner

    db = _store_path(args)
    if db is None:
        return 2
    with kept_by_owner(db.parent):
        return _rebuild(db, load_config(args.config))


def _rebuild(db: Path, config: Any) -> int:
    from sync.store import Store

    new = db.with_name(db.name + ".rebuild")
    for suffix in ("", "-wal", "-shm"):
        Path(str(new) + suffix).unlink(missing_ok=True)
    store = Store(new, config.site_domain(), daemon_id=config.daemon_id, background_checkpoints=False)
    replica = store.replica_path
    store.close()
    # no replica: the daemon makes an empty one beside the ledger at its start
    for suffix in ("", "-wal", "-shm"):
        Path(str(replica) + suffix).unlink(missing_ok=True)
    copied, lost = _copy_ledger(db, new)
    for table, error in lost:
        print(f"  {table}: could not be read in full ({error})", file=sys.stderr)
    kept = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(db) + suffix)
        if src.exists():
            src.rename(Path(str(kept) + suffix))
    new.rename(db)
    print(f"{db}: rebuilt; ledger rows kept: " + ", ".join(f"{t} {n}" for t, n in copied.items()))
    print(f"the old file is {kept}; the replica comes back with the next snapshot")
    return 1 if lost else 0


def _copy_ledger(old: Path, new: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    copied: dict[str, int] = {}
    lost: list[tuple[str, str]] = []
    dst = sqlite3.connect(f"file:{new}", uri=True, isolation_level=None)
    try:
        dst.execute("ATTACH DATABASE ? AS old", (f"file:{old}?mode=ro",))
        dst.execute("BEGIN")
        old_tables = {str(r[0]) for r in dst.execute("SELECT name FROM old.sqlite_master WHERE type = 'table'")}
        for table in LEDGER_TABLES:
            if table in old_tables:
                copied[table] = _copy_rows(dst, table, "1", lost)
        if "bookings" in old_tables:  # a file from before the replica had its own
            copied["booking outcomes"] = _copy_outcomes(dst, lost)
        with contextlib.suppress(sqlite3.Error):
            marks = ",".join("?" * len(SYNC_META))
            dst.execute(
                f"INSERT OR REPLACE INTO main.meta SELECT * FROM old.meta WHERE key NOT IN ({marks})", SYNC_META
            )
        dst.execute("COMMIT")
    finally:
        dst.close()
    return copied, lost


def _copy_outcomes(dst: sqlite3.Connection, lost: list[tuple[str, str]]) -> int:
    try:
        return dst.execute(
            "INSERT OR REPLACE INTO main.booking_outcomes(booking_id, outcome, attended_at, loyalty_settled) "
            "SELECT id, outcome, attended_at, COALESCE(loyalty_credited, 0) FROM old.bookings "
            "WHERE outcome IS NOT NULL AND status != 'cancelled'"
        ).rowcount
    except sqlite3.Error as e:
        lost.append(("booking outcomes", str(e)))
        return 0


def _copy_rows(dst: sqlite3.Connection, table: str, where: str, lost: list[tuple[str, str]]) -> int:
    """Row by row, by rowid: a damaged page loses its own rows, not the whole table."""
    cols = [r[1] for r in dst.execute(f"PRAGMA main.table_info([{table}])")]
    names = ",".join(f"[{c}]" for c in cols)
    n = 0
    try:
        rowids = [r[0] for r in dst.execute(f"SELECT rowid FROM old.[{table}] WHERE {where}")]
    except sqlite3.Error as e:
        lost.append((table, str(e)))
        return 0
    for rowid in rowids:
        try:
            dst.execute(
                f"INSERT OR REPLACE INTO main.[{table}] ({names}) SELECT {names} FROM old.[{table}] WHERE rowid = ?",
                (rowid,),
            )
            n += 1
        except sqlite3.Error as e:
            lost.append((f"{table} row {rowid}", str(e)))
    return n


__all__ = ["add_parser", "integrity"]
