"""The insert stage of the snapshot build (sync/snapshot/worker.py), in the worker's own
process: each chunk's packed rows (sync/snapshot/parse.py) copied into bare tables of
the new replica file, in chunk order, with one INSERT ... SELECT per table; after the
last, the indexes, the switch lists from one read-only look at the ledger, WAL mode and
an fsync (the worker's module doc has the whole pipeline)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from rules.credential import TenDigits
from sync.snapshot.disk import write_out
from sync.snapshot.parse import PACKED, BuildError
from sync.store.db import uri
from sync.store.ledger import CURSOR_KEY
from sync.store.replica_file import ReplicaFiles
from sync.store.schema import (
    CARDS_TYPED_AS,
    REPLICA_INDEXES,
    REPLICA_SCHEMA_VERSION,
    REPLICA_TABLES,
)

# a later chunk's row replaces an earlier one with the same id; a card key is kept once
COPY = tuple(
    f"INSERT OR {'IGNORE' if table == 'card_keys' else 'REPLACE'} INTO main.{table}({','.join(cols)}) "
    f"SELECT {','.join(cols)} FROM chunk.{table} ORDER BY rowid"
    for table, cols in PACKED
)


class Flusher:
    """Writes the file being built out as it grows, a few megabytes at a time and one
    piece in flight, from a thread of its own (sync/snapshot/disk.py); the
    last fdatasync at the end finds little left to write."""

    EVERY = 4 * 1024 * 1024  # bytes of growth between writes
    POLL = 0.05  # seconds

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)
        self.started = 0  # bytes handed to writeback so far
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="snapshot-flush", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.POLL):
            size = os.fstat(self.fd).st_size
            if size - self.started >= self.EVERY:
                write_out(self.fd, self.started, size - self.started)
                self.started = size

    def close(self) -> None:
        """Stop, then the last of it, waited for."""
        self._stop.set()
        self._thread.join()
        os.fdatasync(self.fd)
        os.close(self.fd)


class Build:
    """One replica file being built from one snapshot's rows, chunk after chunk."""

    def __init__(self, params: dict[str, Any]):
        self.path = Path(params["replica"])
        self.ledger = Path(params["ledger"])
        # the replica in use as the build began: which bookings the ledger's outcomes were of
        self.current = Path(params["current"]) if params.get("current") else None
        self.snapshot_id = str(params["snapshot_id"])
        self.chunks = int(params["chunks"])
        self.delta_seq = int(params["delta_seq"])
        self.generation = int(params["generation"])
        self.synced_at = float(params["synced_at"])
        self.ten_digits = TenDigits(params.get("ten_digits", TenDigits.EM32.value))  # as the parsers type
        self.next_chunk = 0
        self.counts = {"members": 0, "cards": 0, "passes": 0, "bookings": 0}
        self.timings = {"parse": 0.0, "insert": 0.0, "waiting": 0.0}
        self.rss_mb: dict[str, float] = {}  # this process's peak resident memory, by phase
        ReplicaFiles.remove(self.path)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None)
        c = self.conn
        # pages of 16 KiB, not 4: a tenth less of the builder's CPU at a million members
        # (fewer pages to read, write and split, B-trees a level shallower); a tap's look-up
        # reads one page a level as before, and SQLite's cache is sized in KiB
        c.execute("PRAGMA page_size=16384")
        # a scratch file until the switch: no journal, no fsync, a big page cache
        c.execute("PRAGMA journal_mode=OFF")
        c.execute("PRAGMA synchronous=OFF")
        c.execute("PRAGMA cache_size=-65536")
        for sql in REPLICA_TABLES:
            c.execute(sql)
        c.execute("ATTACH DATABASE ':memory:' AS chunk")
        self.flusher = Flusher(self.path)

    def insert(self, packed: bytes, counts: list[int]) -> None:
        """One chunk's packed rows (Parser.pack) into the tables, in chunk order: later
        rows replace earlier ones with the same key, as the chunks say."""
        t0 = time.perf_counter()
        c = self.conn
        # a database is replaced only outside a transaction: one per chunk (no journal,
        # no fsync: a COMMIT here is a few writes to the page cache)
        c.deserialize(packed, name="chunk")
        c.execute("BEGIN")
        for sql, n in zip(COPY, counts, strict=True):
            if n:
                c.execute(sql)
        c.execute("COMMIT")
        self.timings["insert"] += time.perf_counter() - t0
        members, cards, _, passes, bookings = counts
        self.counts["members"] += members
        self.counts["cards"] += cards
        self.counts["passes"] += passes
        self.counts["bookings"] += bookings
        self.next_chunk += 1

    def finish(self) -> dict[str, Any]:
        if self.next_chunk != self.chunks:
            raise BuildError(f"snapshot incomplete: {self.next_chunk} of {self.chunks} chunks")
        c = self.conn
        c.execute("DETACH DATABASE chunk")
        self.rss_mb["after_inserts"] = peak_rss_mb()
        t0 = time.perf_counter()
        for sql in REPLICA_INDEXES:
            c.execute(sql)
        self.rss_mb["after_indexes"] = peak_rss_mb()
        t1 = time.perf_counter()
        recheck, clear, cursor = self._switch_lists()
        t2 = time.perf_counter()
        meta = {
            "replica_schema": str(REPLICA_SCHEMA_VERSION),
            "generation": str(self.generation),
            "sync.snapshot_id": self.snapshot_id,
            "sync.delta_seq": str(self.delta_seq),
            "last_sync_at": str(self.synced_at),
            CARDS_TYPED_AS: self.ten_digits.value,
        }
        if cursor is not None:
            meta["switch.cursor"] = cursor
        c.execute("BEGIN")
        c.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(meta.items()))
        c.execute("COMMIT")
        c.execute("PRAGMA journal_mode=WAL")
        c.close()
        self.flusher.close()
        ReplicaFiles(self.path).fsync(self.path)
        t3 = time.perf_counter()
        self.timings.update(indexes=t1 - t0, switch_lists=t2 - t1, fsync=t3 - t2)
        return {
            "counts": self.counts,
            "recheck": recheck,
            "clear": clear,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "builder_peak_rss_mb": self.rss_mb,
            "bytes": self.path.stat().st_size,
        }

    def _switch_lists(self) -> tuple[int, int, str | None]:
        """What the switch must tell the ledger, as of one read of it (see the worker's module
        doc and Store.switch_replica for the taps that happen after this read)."""
        c = self.conn
        c.execute("ATTACH DATABASE ? AS ledger", (uri(self.ledger, "ro"),))
        current = self.current is not None and self.current.exists()
        if self.current is not None and current:
            c.execute("ATTACH DATABASE ? AS current", (uri(self.current, "ro"),))
        try:
            c.execute("BEGIN")
            row = c.execute("SELECT value FROM ledger.meta WHERE key = ?", (CURSOR_KEY,)).fetchone()
            cursor = None if row is None else str(row[0])
            if cursor is not None:
                c.execute(
                    "INSERT INTO switch_recheck(booking_id) SELECT b.id FROM bookings b WHERE b.status = 'booked' "
                    "AND b.ends_at <= ? AND NOT EXISTS "
                    "(SELECT 1 FROM ledger.booking_outcomes o WHERE o.booking_id = b.id)",
                    (float(cursor),),
                )
            # a cancelled booking keeps its outcome: booked again, it is not settled again
            # (Ledger.forget_outcomes). Only a booking the replica in use has and this one
            # lacks is gone: an outcome of one it never had is another daemon's attendance of a
            # booking this daemon has not heard of yet (a snapshot made before it was booked),
            # kept until the booking comes — not booked again, nor made a no-show
            if current:
                c.execute(
                    "INSERT INTO switch_clear(booking_id) SELECT o.booking_id FROM ledger.booking_outcomes o "
                    "WHERE NOT EXISTS (SELECT 1 FROM bookings b WHERE b.id = o.booking_id) "
                    "AND EXISTS (SELECT 1 FROM current.bookings k WHERE k.id = o.booking_id)"
                )
            c.execute("COMMIT")
            recheck = int(c.execute("SELECT COUNT(*) FROM switch_recheck").fetchone()[0])
            clear = int(c.execute("SELECT COUNT(*) FROM switch_clear").fetchone()[0])
        finally:
            c.execute("DETACH DATABASE ledger")
            if current:
                c.execute("DETACH DATABASE current")
        return recheck, clear, cursor

    def discard(self) -> None:
        try:
            self.conn.close()
            self.flusher.close()
        finally:
            ReplicaFiles.remove(self.path)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: ru_maxrss would carry the daemon's
    size across the exec that started this process)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0

