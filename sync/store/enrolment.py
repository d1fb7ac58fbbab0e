"""Cards the front desk gave to a member: they open the gate at once, here, and stay until
the central system has taken the assignment over.

An enrolment is a row in `card_enrolments` (written with a `card_enrolled` event and an
audit row, in one transaction) that the card look-up consults before the replica's
`cards`: the central system owns the replica, and a sync would otherwise take the card
away again before the central system has heard of it. It settles after a sync:
- the replica now gives the card to the same member: the central system has it — done;
- the central system had applied the event (acked seq ≥ the enrolment's) and still gives
  the card to someone else: its word stands (it refused or reassigned the card) — dropped.
Until then the enrolment wins. docs/protocol.md ("Card enrolment") is the contract.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from rules.credential import Card, cards_match, parse_key
from sync.store.transaction import Transaction

TABLE = "card_enrolments"


def create_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (card TEXT PRIMARY KEY, member_id TEXT NOT NULL, "
        "operator TEXT NOT NULL, at REAL NOT NULL, seq INTEGER NOT NULL)"
    )
    conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_member ON {TABLE}(member_id)")


def matching(conn: sqlite3.Connection, card: Card) -> list[tuple[str, str]]:
    """(member, card key) of the enrolments that match a read (rules.credential.cards_match).
    The desk's pending cards are few: checked one by one."""
    rows = conn.execute(f"SELECT member_id, card FROM {TABLE}").fetchall()
    out = []
    for member, key in rows:
        try:
            enrolled = parse_key(str(key))
        except ValueError:
            continue  # not a typed key: not written by this version
        if cards_match(card, enrolled):
            out.append((str(member), str(key)))
    return out


def cards_of(conn: sqlite3.Connection, member_id: str) -> tuple[str, ...]:
    return tuple(r[0] for r in conn.execute(f"SELECT card FROM {TABLE} WHERE member_id = ? ORDER BY card", (member_id,)))


def enrol(tx: Transaction, card: str, member_id: str, operator: str, now: datetime) -> None:
    """Inside the caller's transaction: the row, its event (upstream) and the audit row.
    `card` is the card's typed key (Store.enrol_card makes it)."""
    event = tx.emit("card_enrolled", now, member=member_id, card=card, operator=operator)
    tx.conn.execute(
        f"INSERT INTO {TABLE}(card, member_id, operator, at, seq) VALUES (?,?,?,?,?) "
        "ON CONFLICT(card) DO UPDATE SET member_id = excluded.member_id, operator = excluded.operator, "
        "at = excluded.at, seq = excluded.seq",
        (card, member_id, operator, now.timestamp(), event["seq"]),
    )
    tx.audit(now, operator, "enrol_card", {"member": member_id, "card": card})


def settle(conn: sqlite3.Connection, acked_seq: int) -> int:
    """Drop the enrolments the central system has dealt with (see the module doc); call
    inside the transaction that applied a sync. Returns how many were dropped."""
    cur = conn.execute(
        f"DELETE FROM {TABLE} WHERE EXISTS (SELECT 1 FROM cards c WHERE c.card = {TABLE}.card AND "
        f"(c.member_id = {TABLE}.member_id OR {TABLE}.seq <= ?))",
        (acked_seq,),
    )
    return int(cur.rowcount)


__all__ = ["cards_of", "create_table", "enrol", "matching", "settle"]
