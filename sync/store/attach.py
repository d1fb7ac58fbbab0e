"""The replica attached to the ledger's connection (sync/store/store.py, "Two files"): the
ledger's meta names the current replica file (`replica.file`), and every connection that
reads the store ATTACHes it AS `replica`, with the read contract's names installed.

- `open_reader`: a read-only connection for another thread or process;
- `open_current`: attach the replica the ledger names, or a new empty one;
- `switch`: put a replica the snapshot worker built in place of the current one;
- `write_back`: a file whose path was deleted, written back whole from the connection
  that still holds it (Store.rescue).

The Store calls these with its own connection and collaborators; nothing here keeps state.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from rules.credential import TenDigits
from sync.errors import StoreError
from sync.store import enrolment, read_contract
from sync.store.db import uri
from sync.store.ledger import CURSOR_KEY, Ledger
from sync.store.meta import Meta
from sync.store.replica import Replica
from sync.store.replica_file import ReplicaFiles
from sync.store.schema import (
    CARDS_TYPED_AS,
    REPLICA_SCHEMA_VERSION,
    create_replica,
    upgrade_replica,
)
from sync.store.transaction import Transaction

# in the ledger's meta: which replica file is current
REPLICA_FILE_KEY = "replica.file"
REPLICA_GENERATION_KEY = "replica.generation"
# in a replica's meta: where the worker that built it looked behind the no-show cursor
SWITCH_CURSOR_KEY = "switch.cursor"


def open_reader(ledger: Path, replica: Path | None = None) -> sqlite3.Connection:
    """A read-only connection to the store whose ledger is at `ledger` — from another
    thread or another process (tools, tests), running daemon or not: the replica the
    ledger names (or `replica`) attached, the read contract's names installed (module
    doc). Changes nothing on disk."""
    conn = sqlite3.connect(uri(ledger, "ro"), uri=True, timeout=2, check_same_thread=False)
    try:
        if replica is None:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (REPLICA_FILE_KEY,)).fetchone()
            if row is None:
                raise StoreError(f"{ledger}: no replica (a store not yet opened by this version)")
            replica = ledger.parent / str(row[0])
        conn.execute("ATTACH DATABASE ? AS replica", (uri(replica, "ro"),))
        read_contract.install(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def attach(conn: sqlite3.Connection, path: Path) -> None:
    """The replica file at `path` AS `replica` on the daemon's connection."""
    conn.execute("ATTACH DATABASE ? AS replica", (str(path),))
    conn.execute("PRAGMA replica.journal_mode=WAL")
    # what the replica holds comes again from the central system: its log is flushed
    # at checkpoints only (a delta lost in a power cut is lost with its delta_seq)
    conn.execute("PRAGMA replica.synchronous=NORMAL")


def open_current(conn: sqlite3.Connection, ledger: Path, files: ReplicaFiles, ten_digits: TenDigits) -> Path:
    """Attach the replica the ledger names; an empty one if it is missing or not
    readable as a replica (the link then asks for a snapshot). Orphans are removed.
    Returns its path."""
    meta = Meta(conn)
    name = meta.get(REPLICA_FILE_KEY)
    path = ledger.parent / name if name else None
    if path is not None and path.exists():
        upgrade_replica(path)
    if path is None or not path.exists() or not _readable(path):
        gen = int(meta.get(REPLICA_GENERATION_KEY, "0") or 0) + 1
        path = files.new_path(gen)
        create_replica(path, {"generation": str(gen), CARDS_TYPED_AS: ten_digits.value})
        files.fsync(path)
        conn.execute("BEGIN IMMEDIATE")
        meta.put(REPLICA_FILE_KEY, path.name)
        meta.put(REPLICA_GENERATION_KEY, str(gen))
        conn.execute("COMMIT")
    files.remove_orphans(path.name)
    attach(conn, path)
    return path


def _readable(path: Path) -> bool:
    try:
        conn = sqlite3.connect(uri(path, "ro"), uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'replica_schema'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return row is not None and str(row[0]) == str(REPLICA_SCHEMA_VERSION)


def switch(
    conn: sqlite3.Connection, new: Path, old: Path, *, replica: Replica, ledger: Ledger,
    transaction: Callable[[], AbstractContextManager[Transaction]], acked_seq: int,
) -> None:
    """Replica `old` → `new` on `conn` (Store.switch_replica has the steps and what a crash
    leaves). On an error `old` is attached again and the error raised."""
    conn.execute("DETACH DATABASE replica")  # raises if a statement is still reading it
    try:
        attach(conn, new)
    except BaseException:
        attach(conn, old)
        raise
    try:
        gen = replica.meta("generation")
        looked = replica.meta(SWITCH_CURSOR_KEY)
        with transaction() as tx:
            conn.execute(
                "INSERT OR IGNORE INTO main.due_recheck(booking_id) SELECT booking_id FROM replica.switch_recheck"
            )
            conn.execute(
                "DELETE FROM main.booking_outcomes WHERE booking_id IN "
                "(SELECT booking_id FROM replica.switch_clear)"
            )
            cursor = ledger.cursor()
            if cursor is not None and (looked is None or float(looked) < cursor):
                # bookings new to this replica that ended after the worker looked
                # and before now are walked again (the ones settled meanwhile are skipped)
                if looked is None:
                    tx.delete_meta(CURSOR_KEY)
                else:
                    tx.set_meta(CURSOR_KEY, looked)
            enrolment.settle(conn, acked_seq)
            tx.set_meta(REPLICA_FILE_KEY, new.name)
            tx.set_meta(REPLICA_GENERATION_KEY, gen or "0")
    except BaseException:
        conn.execute("DETACH DATABASE replica")
        attach(conn, old)
        raise


def write_back(conn: sqlite3.Connection, schema: str, path: Path, files: ReplicaFiles) -> None:
    """The database `schema` of `conn` (main: the ledger, replica) copied whole to `path`
    (Store.rescue has why a copy)."""
    tmp = path.with_name(path.name + ".rescue")
    tmp.unlink(missing_ok=True)
    dst = sqlite3.connect(str(tmp))
    try:
        conn.backup(dst, name=schema)
    except BaseException:
        dst.close()
        tmp.unlink(missing_ok=True)  # a half copy must not take the space the next try needs
        raise
    dst.close()
    # the side files of the old file must not be taken for the new one's
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, path)  # the file appears whole or not at all
    files.fsync(path)
