"""Grant intents: nothing opens that cannot be recorded.

Before the relay is pulsed for a grant, the gate writes — durably, synchronous=FULL — that
it is about to open: gate, member, pass, booking, what would be deducted. The transaction
that commits the tap (Ledger.commit_tap) deletes it. So:

- if the intent cannot be written (disk full, read-only, damaged file), the entry is
  refused before anything opens (gated/taps.py);
- a QR token is used up here, with the intent, not at the commit: however the commit
  fares, one token opens the gate once;
- an intent still in the table at start-up is a grant whose commit a crash (kill -9, a
  power cut) cut off: it becomes a `passage_unconfirmed` event — the member, the gate,
  the pass and what was not deducted — for the central system and the desk to settle.
  Nothing is deducted for it: whether the member went through is not known — nor is the
  member fined for a no-show the grant may have been the entry to (sync/store/unconfirmed.py).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from rules.tap import Tap
from rules.timeutil import iso_utc
from sync.store import desk_requests
from sync.store.desk_requests import DeskRequest
from sync.store.ledger import Ledger, amount_json, unconfirmed_fields
from sync.store.rows import ts
from sync.store.transaction import Committed, Transactions


class TokenUsed(Exception):
    """The grant's QR token was used up meanwhile (at another daemon of the site, heard
    between the decision and the intent): the grant must not open (`qr_replayed`)."""


class Intents:
    def __init__(self, conn: sqlite3.Connection, transactions: Transactions, ledger: Ledger):
        self.conn = conn
        self.transactions = transactions
        self.ledger = ledger

    def open(self, tap: Tap, now: datetime, request: DeskRequest | None = None) -> int:
        """Write the intent — the grant's first record (Ledger.first_record: its QR token
        used up); its id goes to commit_tap. Raises TokenUsed when the token was used up
        meanwhile. `request`: the desk's check-in this grant is, begun with the intent
        (sync/store/desk_requests.py): from here its retry never opens again."""
        gate, decision, qr_token = tap.gate, tap.decision, tap.qr_token
        body: dict[str, Any] = {
            "gate": gate.id,
            "member": decision.member,
            "reason": decision.reason.value,
            "booking": decision.booking,
            "pass": decision.pass_id,
            "amount": amount_json(decision.amount),
            "cause": decision.cause,
            "credential": tap.credential.kind.value,
            "granted_at": iso_utc(now),
            "zone": gate.zone,  # for the no-show fee, should it be reported (sync/store/unconfirmed.py)
            **{k: v for k, v in tap.detail.items() if v is not None},
        }
        with self.transactions.open() as tx:  # durable: every ordinary transaction is FULL
            if not self.ledger.first_record(tx, tap, now):
                raise TokenUsed(qr_token[0] if qr_token else "")  # rolls the transaction back: nothing written
            cur = self.conn.execute(
                "INSERT INTO grant_intents(gate, member_id, body, at) VALUES (?,?,?,?)",
                (gate.id, decision.member, json.dumps(body), ts(now)),
            )
            if request is not None:
                desk_requests.begin(self.conn, request, now)
        return int(cur.lastrowid or 0)

    def pending(self) -> list[dict[str, Any]]:
        return [
            {"id": int(r[0]), **json.loads(r[1])}
            for r in self.conn.execute("SELECT id, body FROM grant_intents ORDER BY id")
        ]

    def report_unconfirmed(self, now: datetime) -> Committed:
        """Every intent a previous run left becomes a `passage_unconfirmed` event, in one
        transaction with the intents' deletion."""
        intents = self.pending()
        if not intents:
            return Committed()
        with self.transactions.open() as tx:
            for it in intents:
                fields = unconfirmed_fields(it)
                tx.emit("passage_unconfirmed", now, **fields)
                zone = it.get("zone")  # none in an intent an older version wrote: its booking still counts
                self.ledger.unconfirmed_grant(fields, zone if isinstance(zone, str) else None)
            self.conn.execute("DELETE FROM grant_intents WHERE id <= ?", (intents[-1]["id"],))
        return tx.committed


__all__ = ["Intents", "TokenUsed"]
