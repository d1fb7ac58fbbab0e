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
  Nothing is deducted for it: whether the member went through is not known.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import Any

from rules.credential import CredentialKind
from rules.decide import Decision
from rules.model import Gate
from rules.timeutil import iso_utc
from sync.ledger import Ledger, amount_json, unconfirmed_fields
from sync.rows import ts
from sync.transaction import Committed, Transactions


class TokenUsed(Exception):
    """The grant's QR token was used up meanwhile (at another daemon of the site, heard
    between the decision and the intent): the grant must not open (`qr_replayed`)."""


class Intents:
    def __init__(self, conn: sqlite3.Connection, transactions: Transactions, ledger: Ledger):
        self.conn = conn
        self.transactions = transactions
        self.ledger = ledger

    def open(
        self,
        gate: Gate,
        decision: Decision,
        *,
        credential: CredentialKind | None,
        now: datetime,
        qr_token: tuple[str, datetime] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Write the intent (and use up the QR token); its id goes to commit_tap. Raises
        TokenUsed when the token was used up meanwhile."""
        body: dict[str, Any] = {
            "gate": gate.id,
            "member": decision.member,
            "reason": decision.reason.value,
            "booking": decision.booking,
            "pass": decision.pass_id,
            "amount": amount_json(decision.amount),
            "cause": decision.cause,
            "credential": credential.value if credential is not None else None,
            "granted_at": iso_utc(now),
            **(detail or {}),
        }
        with self.transactions.open() as tx:  # durable: every ordinary transaction is FULL
            if qr_token is not None and not self.ledger.use_qr_token(tx, now, qr_token, gate.id, decision.member):
                raise TokenUsed(qr_token[0])  # rolls the transaction back: nothing written
            cur = self.conn.execute(
                "INSERT INTO grant_intents(gate, member_id, body, at) VALUES (?,?,?,?)",
                (gate.id, decision.member, json.dumps(body), ts(now)),
            )
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
                tx.emit("passage_unconfirmed", now, **unconfirmed_fields(it))
            self.conn.execute("DELETE FROM grant_intents WHERE id <= ?", (intents[-1]["id"],))
        return tx.committed


__all__ = ["Intents", "TokenUsed"]
