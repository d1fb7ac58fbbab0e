"""`gated store rebuild-replica`'s work: a new ledger from a damaged one (gated/storecli.py
is the command; docs/operations.md, "A damaged store").

How a damaged file is read (`open_damaged`, `copy_ledger`): on a read-only connection of
its own — never ATTACHed to the connection writing the new file, whose transaction a
damaged page would otherwise fail (and ATTACH itself fails on a file whose header or
table list is unreadable). Rows go over in rowid order; past a damaged page the copy goes
on from the first rowid that reads again. A truncated file is read as far as it goes; a
file whose header was overwritten, through a copy with a header written again. The event
numbers never go back: `next_seq` is kept, and the numbers whose events could not be read
become `void` events when the daemon opens the file (sync/store/outbox.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import struct
import sys
import time
from pathlib import Path
from typing import Any

from sync.store.db import uri

# not copied: the replica's position, the old replica file, the schema the new file has
SYNC_META = (
    "sync.delta_seq", "sync.snapshot_id", "last_sync_at", "sync.snapshot_generation",
    "replica.file", "replica.generation", "schema_version",
)


def rebuild(db: Path, config: Any) -> int:
    new = db.with_name(db.name + ".rebuild")
    work = db.with_name(db.name + ".rebuild-src")
    for path in (new, work):
        _remove(path)
    try:
        old, notes = open_damaged(db, work)
    except (sqlite3.Error, OSError) as e:
        _remove(work)
        print(f"{db}: nothing can be read from it ({e}); nothing was changed. Restore the latest "
              f"backup ({db.name}.backup) instead (docs/operations.md, \"A damaged store\")", file=sys.stderr)
        return 1
    try:
        _new_ledger(new, config)
        copied, lost = copy_ledger(old, new)
    except (sqlite3.Error, OSError) as e:
        _remove(new)
        print(f"{new}: the new file could not be written ({e}); nothing was changed", file=sys.stderr)
        return 1
    finally:
        old.close()
        _remove(work)
    try:
        kept = _put_in_place(db, new)
    except OSError as e:
        print(f"{db}: the new file {new} could not be put in its place ({e}); move it there by hand, "
              f"with no {db.name}-wal or {db.name}-shm beside it", file=sys.stderr)
        return 1
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    for table, error in lost:
        print(f"  {table}: could not be read in full ({error})", file=sys.stderr)
    print(f"{db}: rebuilt; ledger rows kept: " + ", ".join(f"{t} {n}" for t, n in copied.items()))
    if getattr(config, "mqtt", None) is None:
        # no central system sends a snapshot: the members came from `gated seed`, and only it
        # brings them back (until then every card is unknown)
        print(f"the old file is {kept}; this site has no central system (no `mqtt:`): load the members "
              "again with `gated seed -c CONFIG MEMBERS-FILE` before starting the daemon")
    else:
        print(f"the old file is {kept}; the replica comes back with the snapshot the daemon asks for when it connects")
    return 1 if lost else 0


def _remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _new_ledger(new: Path, config: Any) -> None:
    """An empty ledger of this version, without a replica: the daemon makes an empty one
    beside it at its start, and the link asks for a snapshot."""
    from sync.store import Store

    store = Store(new, config.site_domain(), daemon_id=config.daemon_id, background_checkpoints=False)
    replica = store.replica_path
    store.close()
    _remove(replica)


def _put_in_place(db: Path, new: Path) -> Path:
    """The new file at `db`; the old one (and its WAL) kept beside it. The old WAL goes
    before the new file arrives: a WAL beside a database that is not its own would be
    applied to it at the next open."""
    kept = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    wal = Path(str(db) + "-wal")
    if wal.exists():
        os.replace(wal, Path(str(kept) + "-wal"))
    Path(str(db) + "-shm").unlink(missing_ok=True)
    try:
        os.link(db, kept)
    except OSError:  # a file system without hard links
        shutil.copy2(db, kept)
    os.replace(new, db)
    fd = os.open(db.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept


SQLITE_MAGIC = b"SQLite format 3\x00"
PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)


def open_damaged(db: Path, work: Path) -> tuple[sqlite3.Connection, list[str]]:
    """A read-only connection to a damaged ledger, reading as much of it as there is:
    `writable_schema` lets SQLite read a file shorter than its header says (truncated);
    a file whose header was overwritten is read through a copy (`work`) with a header
    written again. Raises sqlite3.Error when not even its table list can be read.
    Never attached to the connection that writes the new file: a damaged page met while
    reading must not fail that file's transaction."""
    with open(db, "rb") as f:
        head = f.read(100)
    notes: list[str] = []
    source = db
    if head[:16] != SQLITE_MAGIC:
        source = _with_header(db, work)
        notes.append("the file's header was unreadable: it was read through a copy with a header written again")
    conn = _reader(source)
    try:
        conn.execute("SELECT name FROM sqlite_master").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn, notes


def _reader(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(uri(path, "ro"), uri=True, timeout=10)
    conn.execute("PRAGMA writable_schema=ON")  # read-only: only relaxes checks on reading
    return conn


def _with_header(db: Path, work: Path) -> Path:
    """Copy `db` (and its WAL) to `work` and write a database header over the copy's
    first 100 bytes, trying each page size until the table list reads. The header holds
    no data: page 1's own content starts after it."""
    shutil.copyfile(db, work)
    wal = Path(str(db) + "-wal")
    has_wal = wal.exists() and wal.stat().st_size > 0
    if has_wal:
        shutil.copyfile(wal, Path(str(work) + "-wal"))
    sizes = list(PAGE_SIZES)
    if has_wal:
        with open(wal, "rb") as f:
            wal_head = f.read(12)
        if len(wal_head) == 12:
            sizes.insert(0, struct.unpack(">I", wal_head[8:12])[0])
    last: sqlite3.Error = sqlite3.DatabaseError("file is not a database")
    for size in dict.fromkeys(sizes):
        with open(work, "r+b") as f:
            f.write(_header(size, wal=has_wal))
        try:
            with contextlib.closing(_reader(work)) as conn:
                names = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as e:
            last = e
            continue
        Path(str(work) + "-shm").unlink(missing_ok=True)
        if "events" in names:
            return work
    raise last


def _header(page_size: int, *, wal: bool) -> bytes:
    """A database header (https://www.sqlite.org/fileformat.html#the_database_header) for
    reading: no free list, the size taken from the file's length."""
    h = bytearray(100)
    h[0:16] = SQLITE_MAGIC
    struct.pack_into(">H", h, 16, 1 if page_size == 65536 else page_size)
    h[18] = h[19] = 2 if wal else 1
    h[21], h[22], h[23] = 64, 32, 32
    struct.pack_into(">I", h, 24, 1)  # change counter
    struct.pack_into(">I", h, 40, 1)  # schema cookie
    struct.pack_into(">I", h, 44, 4)  # schema format
    struct.pack_into(">I", h, 56, 1)  # UTF-8
    struct.pack_into(">I", h, 92, 1)
    major, minor, patch = sqlite3.sqlite_version_info
    struct.pack_into(">I", h, 96, major * 1_000_000 + minor * 1000 + patch)
    return bytes(h)


def copy_ledger(old: sqlite3.Connection, new: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Every ledger table of `new` (a fresh ledger) filled from `old`, row by row as far as
    it reads, in one transaction of `new`'s connection. Returns rows copied by table, and
    what could not be read."""
    copied: dict[str, int] = {}
    lost: list[tuple[str, str]] = []
    dst = sqlite3.connect(uri(new, "rw"), uri=True, isolation_level=None)
    try:
        dst.execute("BEGIN IMMEDIATE")
        try:
            old_tables = {str(r[0]) for r in old.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as e:
            old_tables = set()
            lost.append(("the table list", str(e)))
        tables = [str(r[0]) for r in dst.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        for table in tables:
            if table in old_tables and table != "meta":  # meta: below, without the sync keys
                copied[table] = _copy_table(old, dst, table, lost)
        if "bookings" in old_tables:  # a file from before the replica had its own
            copied["booking outcomes"] = _copy_outcomes(old, dst, lost)
        marks = ",".join("?" * len(SYNC_META))
        dst.execute(f"DELETE FROM main.meta WHERE key NOT IN ({marks})", SYNC_META)
        if "meta" in old_tables:
            rows = [r for r in _read_rows(old, "meta", ["key", "value"], lost) if r[0] not in SYNC_META]
            dst.executemany("INSERT OR REPLACE INTO main.meta(key, value) VALUES (?, ?)", rows)
            copied["meta"] = len(rows)
        # the next number is never one already handed out, whatever was lost of the meta
        top = dst.execute("SELECT MAX(seq) FROM main.events").fetchone()[0]
        row = dst.execute("SELECT value FROM main.meta WHERE key = 'next_seq'").fetchone()
        if top is not None and (row is None or int(row[0]) <= int(top)):
            dst.execute("INSERT OR REPLACE INTO main.meta(key, value) VALUES ('next_seq', ?)", (str(int(top) + 1),))
        dst.execute("COMMIT")
    finally:
        dst.close()
    return copied, lost


def _copy_table(old: sqlite3.Connection, dst: sqlite3.Connection, table: str, lost: list[tuple[str, str]]) -> int:
    new_cols = [str(r[1]) for r in dst.execute(f"PRAGMA main.table_info([{table}])")]
    try:
        old_cols = {str(r[1]) for r in old.execute(f"PRAGMA table_info([{table}])")}
    except sqlite3.Error as e:
        lost.append((table, str(e)))
        return 0
    cols = [c for c in new_cols if c in old_cols]
    rows = _read_rows(old, table, cols, lost)
    names = ",".join(f"[{c}]" for c in cols)
    dst.executemany(f"INSERT OR REPLACE INTO main.[{table}] ({names}) VALUES ({','.join('?' * len(cols))})", rows)
    return len(rows)


def _read_rows(old: sqlite3.Connection, table: str, cols: list[str], lost: list[tuple[str, str]]) -> list[tuple[Any, ...]]:
    """The rows of `table` in rowid order, as far as they read: past a damaged page, on
    from the first rowid that can be found again (the rows on that page are lost)."""
    names = ",".join(f"[{c}]" for c in cols)
    rows: list[tuple[Any, ...]] = []
    last: int | None = None  # the last rowid read
    start: int | None = None  # go on from this rowid
    while True:
        where, params = ("WHERE rowid >= ?", (start,)) if start is not None else ("", ())
        try:
            for row in old.execute(f"SELECT rowid, {names} FROM [{table}] {where} ORDER BY rowid", params):
                rows.append(tuple(row[1:]))
                last = int(row[0])
            return rows
        except sqlite3.Error as e:
            floor = last + 1 if last is not None else MIN_ROWID
            if start is not None and (last is None or last < start):
                floor = max(floor, start + 1)  # this attempt read nothing: look further
            resume = _readable_from(old, table, floor)
            if last is None and resume is None:
                gap = "no row"
            else:
                gap = "rows " + (f"after rowid {last}" if last is not None else "from the first")
                gap += f" up to rowid {resume}" if resume is not None else " to the end"
            lost.append((table, f"{gap}: {e}"))
            if resume is None:
                return rows
            start = resume


MIN_ROWID, MAX_ROWID = -(2**63), 2**63 - 1


def _readable_from(old: sqlite3.Connection, table: str, first: int) -> int | None:
    """The smallest rowid at or after `first` from which `table` reads again — the rows
    before it are on a damaged page — found by doubling a step, then halving it back;
    None when nothing further reads. (`rowid >= n` seeks down to the leaf that would hold
    n: from a damaged leaf's last key on, the seek goes to the next leaf.)"""

    def reads(n: int) -> bool:
        try:
            old.execute(f"SELECT rowid FROM [{table}] WHERE rowid >= ? ORDER BY rowid LIMIT 1", (n,)).fetchall()
        except sqlite3.Error:
            return False
        return True

    step = 1
    while not reads(first + step):
        step *= 2
        if first + step > MAX_ROWID:
            return None
    low, high = first + step // 2, first + step  # reads(high), and not reads(low) when step > 1
    if step == 1:
        return high if not reads(first) else first
    while high - low > 1:
        mid = (low + high) // 2
        if reads(mid):
            high = mid
        else:
            low = mid
    return high


def _copy_outcomes(old: sqlite3.Connection, dst: sqlite3.Connection, lost: list[tuple[str, str]]) -> int:
    try:
        rows = old.execute(
            "SELECT id, outcome, attended_at, COALESCE(loyalty_credited, 0) FROM bookings "
            "WHERE outcome IS NOT NULL AND status != 'cancelled'"
        ).fetchall()
    except sqlite3.Error as e:
        lost.append(("booking outcomes", str(e)))
        return 0
    dst.executemany(
        "INSERT OR REPLACE INTO main.booking_outcomes(booking_id, outcome, attended_at, loyalty_settled) "
        "VALUES (?, ?, ?, ?)", rows
    )
    return len(rows)


__all__ = ["SYNC_META", "copy_ledger", "open_damaged", "rebuild"]
