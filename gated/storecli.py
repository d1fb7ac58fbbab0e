"""`gated store check|backup|rebuild-replica|compact|balance|upgrade`: looking after the database file.

The recovery of a damaged store (docs/operations.md, "A damaged store"):
1. `gated store check -c FILE`: SQLite's full integrity check. Exit 0 ok, 1 damaged.
2. Stop the daemon. Either restore the latest backup (`<path>.backup`, written by the
   daemon every `store.backup_interval`, or one taken with `gated store backup`) — what
   happened since that backup is lost — or
3. `gated store rebuild-replica -c FILE`: a new ledger with everything only this gate
   knows (every ledger table: the event log and outbox, deductions, passages, loyalty,
   used QR tokens, the audit log, open grant intents, booking outcomes, card enrolments,
   the other daemons' charges and refunds, and the meta but the replica's position)
   copied from the old one, as far as it can be read, and no replica: the daemon starts
   with an empty one and the snapshot it asks for at its next connection fills it. The
   old file is kept beside it. Refused while a daemon answers on the control socket.

`gated store compact -c FILE`: the ledger written again without its free pages (SQLite's
VACUUM), with the daemon stopped. The retention deletes old rows and SQLite reuses their
pages, so a ledger stops growing but does not shrink; after the first sweep over years of
rows (a retention switched on late, or shortened), this gives the space back. It needs
free space for a copy of the ledger while it runs; a full disk leaves the file as it was.

And `gated store balance PASS -c FILE`: what the gate believes a pass holds and why — the
central balance, its `applied` entries, the charges the central had not applied (this
daemon's and the site's others'), the balance decided by (docs/protocol.md). Read-only:
the daemon may run.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

from sync.errors import StoreError
from sync.store.db import uri


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
    bal = ss.add_parser("balance", help="a pass's balance at this gate and the charges it is made of")
    bal.add_argument("-c", "--config", default="/etc/gated/gated.yaml")
    bal.add_argument("pass_id", metavar="PASS", help="the pass's id")
    bal.set_defaults(func=cmd_balance)
    r = ss.add_parser("rebuild-replica", help="keep the ledger, drop the replica (daemon stopped)")
    r.add_argument("-c", "--config", default="/etc/gated/gated.yaml")
    r.set_defaults(func=cmd_rebuild)
    v = ss.add_parser("compact", help="give the pages the retention freed back to the disk (daemon stopped)")
    v.add_argument("-c", "--config", default="/etc/gated/gated.yaml")
    v.set_defaults(func=cmd_compact)
    u = ss.add_parser("upgrade", help="bring the store's schema up to this version (daemon stopped; the package's postinst)")
    u.add_argument("-c", "--config", default="/etc/gated/gated.yaml")
    u.add_argument("--keep-copy", metavar="SUFFIX", default=None,
                   help="before migrating, copy the ledger to <store.path>.SUFFIX (for a rollback)")
    u.set_defaults(func=cmd_upgrade)


def _store_path(args: argparse.Namespace) -> Path:
    from gated.commands import config_for

    return Path(config_for(args).store.path)


def integrity(db: Path) -> list[str]:
    """SQLite's integrity_check of the ledger and the replica it names: ["ok"] or the
    problems found (a file that is not a database at all is one problem too). A replica
    named but not there is no damage: the daemon starts with an empty one and asks for a
    snapshot (so it is after `rebuild-replica`)."""
    from sync.store import REPLICA_FILE_KEY

    try:
        conn = sqlite3.connect(uri(db, "ro"), uri=True, timeout=10)
    except sqlite3.Error as e:
        return [str(e)]
    try:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (REPLICA_FILE_KEY,)).fetchone()
        except sqlite3.Error:
            row = None  # the check below says what is wrong with the ledger
        replica = db.parent / str(row[0]) if row is not None else None
        if replica is not None and replica.exists():
            conn.execute("ATTACH DATABASE ? AS replica", (uri(replica, "ro"),))
        return [str(r[0]) for r in conn.execute("PRAGMA integrity_check(20)")]
    except sqlite3.Error as e:
        return [str(e)]
    finally:
        conn.close()


def cmd_check(args: argparse.Namespace) -> int:
    db = _store_path(args)
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
    from gated.store_checks import backup

    db = _store_path(args)
    try:
        backup(db, Path(args.dest))
    except (sqlite3.Error, OSError) as e:
        print(f"backup failed: {e}", file=sys.stderr)
        return 1
    print(f"{db} → {args.dest}")
    return 0


def cmd_balance(args: argparse.Namespace) -> int:
    import json

    from sync.store import open_reader

    db = _store_path(args)
    try:
        with contextlib.closing(open_reader(db)) as c:
            row = c.execute(
                "SELECT p.member_id, p.kind, p.central_balance, p.applied_seq, r.applied_peers, p.balance "
                "FROM passes p JOIN replica.passes r ON r.id = p.id WHERE p.id = ?", (args.pass_id,)
            ).fetchone()
            if row is None:
                print(f"{args.pass_id}: no such pass at this gate", file=sys.stderr)
                return 1
            member, kind, central, applied_seq, peers_json, balance = row
            print(f"pass {args.pass_id} ({kind}) of member {member}")
            if central is None:
                print("no balance: a time or marketplace pass")
                return 0
            peers: dict[str, int] = json.loads(peers_json) if peers_json else {}
            print(f"central balance {central}, applied: this daemon up to seq {applied_seq}"
                  + "".join(f", {d} up to {n}" for d, n in sorted(peers.items())))
            own = c.execute(
                "SELECT seq, amount, cause FROM main.deductions WHERE pass_id = ? AND seq > ? ORDER BY seq",
                (args.pass_id, applied_seq),
            ).fetchall()
            others = [
                r for r in c.execute(
                    "SELECT daemon, seq, amount, cause FROM main.site_charges WHERE pass_id = ? ORDER BY at, daemon, seq",
                    (args.pass_id,),
                )
                if int(r[1]) > int(peers.get(str(r[0]), 0))
            ]
            for seq, amount, cause in own:
                print(f"  not yet applied: this daemon's seq {seq}, {cause} {amount}")
            for daemon, seq, amount, cause in others:
                print(f"  not yet applied: {daemon}'s seq {seq}, {cause} {amount}")
            print(f"balance {balance}")
    except (sqlite3.Error, StoreError) as e:
        print(f"{db}: {e}", file=sys.stderr)
        return 1
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
    from gated.commands import config_for
    from gated.installer import daemon_running
    from gated.state_owner import kept_by_owner
    from sync.store import Store
    from sync.store.faults import describe_store_error
    from sync.store.schema import SCHEMA_VERSION

    config = config_for(args)
    db = Path(config.store.path)
    if not db.exists():
        print(f"{db}: no store yet: nothing to upgrade")
        return 0
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
            from gated.store_checks import backup

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
            print(f"{db}: not upgraded: {describe_store_error(e, db)}", file=sys.stderr)
            return 1
        store.close()
    print(f"{db}: schema {version} → {SCHEMA_VERSION}")
    return 0


def _size(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def _daemon_stopped(args: argparse.Namespace) -> tuple[Any, Path] | None:
    """The configuration and the ledger for a command that needs the daemon stopped; None,
    said why, when the file is not there or a daemon answers on the control socket."""
    from gated.commands import config_for
    from gated.installer import daemon_running

    config = config_for(args)
    db = Path(config.store.path)
    if not db.exists():
        print(f"{db}: no such file", file=sys.stderr)
        return None
    if daemon_running(config):
        print(f"{db}: a daemon is running (its control socket {config.control.socket} answers): "
              "stop it first (`systemctl stop gated`)", file=sys.stderr)
        return None
    return config, db


def cmd_compact(args: argparse.Namespace) -> int:
    from gated.state_owner import kept_by_owner

    stopped = _daemon_stopped(args)
    if stopped is None:
        return 2
    _, db = stopped
    before = _size(db)
    with kept_by_owner(db.parent):
        try:
            with contextlib.closing(sqlite3.connect(str(db), isolation_level=None, timeout=10)) as conn:
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                page = int(conn.execute("PRAGMA page_size").fetchone()[0])
                # in WAL mode the copy goes through the WAL; the checkpoint puts it in the file
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            print(f"{db}: not compacted: {e} (the file is as it was)", file=sys.stderr)
            return 1
    print(f"{db}: compacted, {free * page} bytes free inside it given back: {before} → {_size(db)} bytes")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from gated.state_owner import kept_by_owner
    from gated.store_rebuild import rebuild

    stopped = _daemon_stopped(args)
    if stopped is None:
        return 2
    config, db = stopped
    # the files it writes belong to whoever owns the state directory (a DynamicUser's)
    with kept_by_owner(db.parent):
        return rebuild(db, config)


__all__ = ["add_parser", "integrity"]
