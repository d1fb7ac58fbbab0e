"""Where this daemon's event numbers stand when the ledger cannot say: the gate's box was
replaced (a new, empty ledger under the same daemon id), or its ledger was put back from a
copy kept elsewhere without the mark of what had been sent (`gated.db.sent`,
sync/store/sent_mark.py). The central system may then hold events of this daemon under
numbers the ledger is about to hand out again; each new event — taps, deductions — would
be dropped there as a repeat, and the gate's own charges, numbered below the `applied`
the central system reports, would not count against the local balances either.

So a ledger that opens without its mark is *unsure* (Store, at open): it records and
decides as always, but its events after the last one it holds at open (`after`) do not
leave (sync/link/port.py caps the uplink, catch-up answers and the heartbeat's `last_seq`
there) until the central system has said how far it got with this daemon:

- an ack: its `applied_seq` exactly;
- any pass it sends (snapshot, delta, look-up answer): its `applied` lists every daemon of
  the site, and a daemon missing from it has had nothing applied (docs/protocol.md).

Then, if the central system holds numbers beyond `after`, the held events move up past
them — every column that holds one of our seqs, and the references inside event bodies —
and the numbers between become `void` events (`reason: restored`), with a
`ledger_restored` alarm; otherwise they are released as they are. Either way the mark is
written, and the next start is sure. Time-driven settling (no-shows, fees, loyalty) waits
while unsure: the lost part may have settled the same classes (Store.run_due).

A ledger from before the mark existed (schema below MARK_VERSION, with events) is taken
as it is: its numbers are as good as they always were.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

MARK_VERSION = 10  # the first ledger schema whose daemon keeps gated.db.sent beside it

# every column of the ledger holding a seq of this daemon's own events
OWN_SEQS: tuple[tuple[str, str], ...] = (
    ("events", "seq"),
    ("deductions", "seq"),
    ("deductions", "refunded_by"),
    ("loyalty", "seq"),
    ("audit", "seq"),
    ("card_enrolments", "seq"),
    ("member_photos", "seq"),
    ("overdrafts", "seq"),
)
# columns whose names say seq that hold other numbers (tests/test_numbering.py checks that
# every such column of the ledger is in one list or the other)
OTHER_SEQS: frozenset[tuple[str, str]] = frozenset({
    ("site_charges", "seq"),  # the other daemons' charges
    ("peer_marks", "heard_seq"),  # how far the other daemons are heard
    # charges another daemon refunded: of ours, only ever the lost part's while the
    # numbering is unsure (nobody has heard of a held charge), so they stay where they are
    ("site_refunds", "seq"),
})


def shift(conn: sqlite3.Connection, daemon: str, after: int, by: int) -> None:
    """Inside a transaction: every seq of ours above `after` moves up by `by`, in every
    column that holds one (OWN_SEQS) and in the event bodies (their own `seq`; a refund's
    or an overdraft's reference to a charge of ours)."""
    args = {"after": after, "by": by}
    for table, column in OWN_SEQS:
        # through negative numbers: a unique seq moved up in place would meet the next one
        conn.execute(f"UPDATE main.{table} SET {column} = -({column} + :by) WHERE {column} > :after", args)
        conn.execute(f"UPDATE main.{table} SET {column} = -{column} WHERE {column} < 0")
    rows = conn.execute("SELECT seq, body FROM main.events WHERE seq > ?", (after + by,)).fetchall()
    conn.executemany(
        "UPDATE main.events SET body = ? WHERE seq = ?",
        ((json.dumps(_moved(json.loads(body), seq, daemon, after, by)), seq) for seq, body in rows),
    )


def _moved(body: dict[str, Any], seq: int, daemon: str, after: int, by: int) -> dict[str, Any]:
    body["seq"] = seq

    def ref(r: Any) -> Any:
        if isinstance(r, dict) and r.get("daemon") == daemon and isinstance(r.get("seq"), int) and r["seq"] > after:
            return {**r, "seq": r["seq"] + by}
        return r

    if "refunds" in body:
        body["refunds"] = ref(body["refunds"])
    if isinstance(body.get("charges"), list):
        body["charges"] = [ref(c) for c in body["charges"]]
    return body


def central_applied(conn: sqlite3.Connection) -> int | None:
    """How far the central system had applied this daemon's events, as its passes in the
    replica say (the highest; None when the replica has no pass to say it)."""
    row = conn.execute("SELECT MAX(applied_seq), COUNT(*) FROM replica.passes").fetchone()
    return None if row is None or not row[1] else int(row[0] or 0)


__all__ = ["MARK_VERSION", "OTHER_SEQS", "OWN_SEQS", "central_applied", "shift"]
