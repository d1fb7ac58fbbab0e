"""What the ledger forgets: rows the central system has, once they are old enough that no
rule of the gate reads them again.

A gate box runs for years on a small disk; without this, every passage, deduction, other
daemon's charge and audit row stays for the store's life (a busy gate writes about a
hundred megabytes a year, and the daily backup copies all of it). The rules read the
ledger only near the present — presence is forgotten at local midnight, a walk-in's
re-entry and a no-show fee look at one day, the desk's history at a member's latest rows —
so what is older than `store.retention` (default 90 days) is kept only as a record, and
the central system holds that record. A row goes when it is older than the cutoff and:

- passages, and grants whose passage nobody saw (sync/store/unconfirmed.py): nothing more
  (the event that reported it went upstream with it);
- deductions: its event is acknowledged (seq ≤ acked_seq) and the pass's central balance
  has applied it (seq ≤ the pass's `applied_seq`): the local balance, which subtracts only
  our deductions above `applied_seq`, is the same without it. A deduction on a pass the
  replica no longer holds stays;
- the other daemons' charges: the pass's central balance has applied it (its seq ≤ the
  pass's `applied_peers` mark for that daemon), for the same reason;
- loyalty: a member's points are the sum of their rows, so old rows are folded, not
  dropped: those whose event is acknowledged go into the member's one carried-forward row
  (no booking, no operator), which keeps their sum; their count is what the table is
  pruned by. The desk sees "carried forward" in the member's history; the loyalty report
  of a period leaves it out (its credits are in the periods they were made, at the central).
- the audit log: older than `store.audit_retention` (default 400 days: a year of the
  desk's actions and more). Audit rows are the gate's own record; they go by age alone.
- the desk's request ids (sync/store/desk_requests.py): older than a day, whatever the
  retention says (kept for ever too): only a retry of a dialog still open reads them.

A refund's mark on a charge (another daemon refunded it) goes with the charge.

Kept whatever their age: booking outcomes
(a booking the central system still lists would be walked again for a no-show), unsent
events (never deleted: Outbox.prune), the enrolments and intents (settled by sync).

The cutoff is never later than the instant of the oldest event not yet acknowledged, nor
than a day before the no-show work's cursor (where this daemon does that work), nor than the newest passage's time minus the
retention: a clock that ran ahead (and was trusted) cannot take a recent ledger with it.

Rows are walked a batch at a time, each batch in a transaction of its own on the event loop
(the daemon's one writer): passages by their time (indexed), the others in the order they
were written (their key), stopping at the first row younger than the cutoff.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sync.store import desk_requests
from sync.store.ledger import CURSOR_KEY as DUE_CURSOR_KEY  # no-shows are settled up to it


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """POSIX seconds: rows older than these may go (None: that kind is kept)."""

    ledger: float | None
    audit: float | None
    desk: float | None = None  # the desk's request ids (a day, always)


def carried(row: str = "") -> str:
    """SQL true for a member's carried-forward points (of the loyalty row aliased `row`):
    the one row neither a booking's credit nor the desk's adjustment (which names its
    operator)."""
    p = f"{row}." if row else ""
    return f"({p}booking_id IS NULL AND {p}operator IS NULL)"


CARRIED = carried()
CARRIED_FORWARD = "carried forward"  # how the member's history names that row

# (table, key, SQL giving key, at, deletable: at most :n rows with key > :after in key order)
_WALKS: tuple[tuple[str, str, str], ...] = (
    # the other daemons' passages come late after an outage: by time (passages are indexed
    # by it), not in the order they were written
    ("passages", "id", "SELECT id, at, 1 FROM main.passages WHERE at < :limit ORDER BY at LIMIT :n"),
    (
        "deductions",
        "seq",
        "SELECT d.seq, d.at, d.seq <= :acked AND p.applied_seq IS NOT NULL AND d.seq <= p.applied_seq "
        "FROM main.deductions d LEFT JOIN replica.passes p ON p.id = d.pass_id "
        "WHERE d.seq > :after ORDER BY d.seq LIMIT :n",
    ),
    (
        "site_charges",
        "rowid",
        "SELECT c.rowid, COALESCE(c.at, 0), p.id IS NOT NULL AND c.seq <= "
        "COALESCE(json_extract(p.applied_peers, '$.\"' || c.daemon || '\"'), 0) "
        "FROM main.site_charges c LEFT JOIN replica.passes p ON p.id = c.pass_id "
        "WHERE c.rowid > :after ORDER BY c.rowid LIMIT :n",
    ),
    # grants whose passage nobody saw: a no-show's fee reads those of its day
    ("unconfirmed_grants", "rowid",
     "SELECT rowid, at, 1 FROM main.unconfirmed_grants WHERE rowid > :after ORDER BY rowid LIMIT :n"),
    # other daemons' refund requests: a day's walk-ins are given back to them in order
    ("site_refund_asks", "rowid", "SELECT rowid, at, 1 FROM main.site_refund_asks WHERE rowid > :after ORDER BY rowid LIMIT :n"),
    (
        "loyalty",
        "id",
        f"SELECT id, at, seq <= :acked AND NOT {CARRIED} FROM main.loyalty WHERE id > :after ORDER BY id LIMIT :n",
    ),
    ("audit", "id", "SELECT id, at, 1 FROM main.audit WHERE id > :after ORDER BY id LIMIT :n"),
    (desk_requests.TABLE, "rowid",
     f"SELECT rowid, at, 1 FROM main.{desk_requests.TABLE} WHERE rowid > :after ORDER BY rowid LIMIT :n"),
)
TABLES = tuple(t for t, _, _ in _WALKS)


@dataclass(slots=True)
class Sweep:
    """How far one pass over the ledger has got, table by table."""

    after: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    done: set[str] = field(default_factory=set)
    pruned: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    @property
    def finished(self) -> bool:
        return self.done >= set(TABLES)


def cutoffs(
    conn: sqlite3.Connection, now: datetime, keep: timedelta | None, keep_audit: timedelta | None, acked_seq: int,
    *, no_show_work: bool = True,
) -> Cutoffs:
    """The instants before which rows may go, on the bounds of the module's doc
    (`no_show_work`: this daemon settles no-shows; a cursor left by one that no longer
    does would hold the retention for good)."""
    ledger: float | None = None
    if keep is not None:
        bounds = [now.timestamp()]
        newest = conn.execute("SELECT MAX(at) FROM main.passages").fetchone()[0]
        if newest is not None:
            bounds.append(float(newest))
        ledger = min(bounds) - keep.total_seconds()
        unsent = conn.execute("SELECT at FROM main.events WHERE seq > ? ORDER BY seq LIMIT 1", (acked_seq,)).fetchone()
        if unsent is not None:
            ledger = min(ledger, datetime.fromisoformat(str(unsent[0])).timestamp())  # UTC, with its Z
        cursor = conn.execute("SELECT value FROM main.meta WHERE key = ?", (DUE_CURSOR_KEY,)).fetchone()
        if no_show_work and cursor is not None and cursor[0]:
            ledger = min(ledger, float(cursor[0]) - timedelta(days=1).total_seconds())
    audit = None if keep_audit is None else now.timestamp() - keep_audit.total_seconds()
    return Cutoffs(ledger, audit, now.timestamp() - desk_requests.KEEP.total_seconds())


# A charge's refund mark (a refund by another daemon of the site: sync/store/peer_events.py)
# goes with the charge: it is read only beside it, to find a day's charge not yet refunded.
# Never on its own — a mark may come before the charge it names, from a daemon heard sooner.
_REFUND_MARKS = {
    "deductions": "DELETE FROM main.site_refunds WHERE daemon = :daemon AND seq = :key",
    "site_charges": "DELETE FROM main.site_refunds WHERE (daemon, seq) IN "
    "(SELECT daemon, seq FROM main.site_charges WHERE rowid = :key)",
}


def sweep_batch(conn: sqlite3.Connection, cut: Cutoffs, acked_seq: int, sweep: Sweep, n: int, daemon: str) -> int:
    """Inside a transaction: one batch of at most `n` rows looked at in the first table
    not done, the old and deletable ones deleted (`daemon`: this daemon's id, whose own
    deductions other daemons' refunds name). Returns how many were deleted."""
    for table, key, sql in _WALKS:
        if table in sweep.done:
            continue
        limit = cut.audit if table == "audit" else cut.desk if table == desk_requests.TABLE else cut.ledger
        if limit is None:
            sweep.done.add(table)
            continue
        args = {"acked": acked_seq, "after": sweep.after[table], "n": n, "limit": limit}
        rows = conn.execute(sql, args).fetchall()
        gone = []
        for k, at, deletable in rows:
            if at is not None and float(at) >= limit:
                # written in time order: the rest is younger (another daemon's charge that
                # came late waits for the row before it to age)
                sweep.done.add(table)
                break
            sweep.after[table] = int(k)
            if deletable:
                gone.append((int(k),))
        else:
            if len(rows) < n:
                sweep.done.add(table)
        if table == "loyalty":
            _carry_forward(conn, [k for (k,) in gone])
        if table in _REFUND_MARKS:
            conn.executemany(_REFUND_MARKS[table], ({"daemon": daemon, "key": k} for (k,) in gone))
        conn.executemany(f"DELETE FROM main.{table} WHERE {key} = ?", gone)
        sweep.pruned[table] += len(gone)
        return len(gone)
    return 0


def _carry_forward(conn: sqlite3.Connection, ids: list[int]) -> None:
    """The points of loyalty rows `ids` (about to be deleted) added to each member's
    carried-forward row, made when the member has none; it keeps the newest instant and
    seq it carries."""
    if not ids:
        return
    marks = ",".join("?" * len(ids))
    sums = conn.execute(
        f"SELECT member_id, SUM(points), MAX(at), MAX(seq) FROM main.loyalty WHERE id IN ({marks}) GROUP BY member_id",
        ids,
    ).fetchall()
    for member, points, at, seq in sums:
        moved = conn.execute(
            f"UPDATE main.loyalty SET points = points + ?, at = MAX(at, ?), seq = MAX(seq, ?) "
            f"WHERE member_id = ? AND {CARRIED}",
            (points, at, seq, member),
        ).rowcount
        if not moved:
            conn.execute(
                "INSERT INTO main.loyalty(member_id, points, booking_id, reason, operator, at, seq) "
                "VALUES (?, ?, NULL, NULL, NULL, ?, ?)",
                (member, points, at, seq),
            )


__all__ = ["CARRIED", "CARRIED_FORWARD", "TABLES", "carried", "Cutoffs", "Sweep", "cutoffs", "sweep_batch"]
