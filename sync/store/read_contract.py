"""The read contract: the replica's tables under their plain names, with the gate's own
state folded in, on any connection that has the replica attached AS `replica`.

TEMP views (per connection, never written to disk) shadow nothing on disk — the ledger
has no tables of these names — and refer to `replica.*` by schema name, so they keep
working across a replica switch (DETACH the old file, ATTACH the new one AS `replica`):

- `members(id, name, status, email, photo, synced_at, phone, search, note, status_reason)`,
  `cards(card, member_id)`, `card_keys(key, card)`;
- `passes(..., central_balance, applied_seq, balance)`: `balance` is the local balance,
  the central one minus this daemon's deductions with a higher seq, exact (decimal text,
  summed by a Python aggregate, not SQL floats);
- `bookings(..., status, outcome, attended_at, loyalty_settled)`: the central system's
  booking with the gate's outcome (NULL when cancelled).

The tap path reads its passes through `passes` too (sync/store/replica.py): the local
balance is written here once, for the decision, the commit, the desk and the checks.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal


class _DecimalSum:
    """SQL aggregate dec_sum(text): exact sum of decimal text, as text ('0' for none)."""

    def __init__(self) -> None:
        self.total = Decimal(0)

    def step(self, value: str | None) -> None:
        if value is not None:
            self.total += Decimal(value)

    def finalize(self) -> str:
        return str(self.total)


def _dec_sub(a: str | None, b: str | None) -> str | None:
    if a is None:
        return None
    return str(Decimal(a) - Decimal(b or "0"))


VIEWS = (
    "CREATE TEMP VIEW IF NOT EXISTS members AS SELECT id, name, status, email, photo, synced_at, phone, search, "
    "note, status_reason FROM replica.members",
    "CREATE TEMP VIEW IF NOT EXISTS cards AS SELECT card, member_id FROM replica.cards",
    "CREATE TEMP VIEW IF NOT EXISTS card_keys AS SELECT key, card FROM replica.card_keys",
    "CREATE TEMP VIEW IF NOT EXISTS passes AS SELECT p.id, p.member_id, p.name, p.kind, p.central_balance, "
    "p.applied_seq, dec_sub(dec_sub(p.central_balance, (SELECT dec_sum(d.amount) FROM main.deductions d "
    "WHERE d.pass_id = p.id AND d.seq > p.applied_seq)), (SELECT dec_sum(c.amount) FROM main.site_charges c "
    "WHERE c.pass_id = p.id AND c.seq > COALESCE(json_extract(p.applied_peers, '$.\"' || c.daemon || '\"'), 0))) "
    "AS balance, p.deduct_on, p.walk_in_cost, p.valid_from, p.valid_until, p.zones, p.access_windows "
    "FROM replica.passes p",
    "CREATE TEMP VIEW IF NOT EXISTS bookings AS SELECT b.id, b.member_id, b.pass_id, b.class_name, b.zone, "
    "b.starts_at, b.ends_at, b.status, CASE WHEN b.status = 'cancelled' THEN NULL ELSE o.outcome END AS outcome, "
    "b.deducted, b.cost, b.loyalty_points, o.attended_at, COALESCE(o.loyalty_settled, 0) AS loyalty_settled "
    "FROM replica.bookings b LEFT JOIN main.booking_outcomes o ON o.booking_id = b.id",
)


def install(conn: sqlite3.Connection) -> None:
    """The functions and TEMP views of the read contract on `conn`."""
    conn.create_aggregate("dec_sum", 1, _DecimalSum)  # type: ignore[arg-type]  # typeshed: int-only aggregates
    conn.create_function("dec_sub", 2, _dec_sub, deterministic=True)
    for sql in VIEWS:
        conn.execute(sql)
