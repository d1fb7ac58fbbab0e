"""The imperative shell around the rules: credential in, decision out, result committed.

The daemon and the scenario runner both go through here, so a scenario exercises exactly
the code a turnstile does. Splitting decide() from commit() lets the daemon wait for the
turnstile to turn in between: no passage, no deduction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rules.admission import GateConditions, admit, refused
from rules.credential import Credential, CredentialKind
from rules.decide import Decision, MemberView, Presented, decide, override
from rules.messages import message
from rules.model import Gate, Policy, Site
from rules.reasons import Reason
from rules.schedule import NoShowHorizon
from sync.qrtoken import TrustedKeys
from sync.store import Committed, Store


@dataclass(frozen=True, slots=True)
class PendingTap:
    """A decided tap waiting for the turnstile: commit it with whether the person passed."""

    gate: Gate
    credential: Credential
    presented: Presented
    decision: Decision
    message: str
    qr_token: tuple[str, datetime] | None
    decided_at: datetime


class UnknownGate(KeyError):
    pass


class Engine:
    def __init__(
        self,
        store: Store,
        site: Site,
        gates: dict[str, Gate],
        policy: Policy,
        trusted_keys: TrustedKeys | None = None,
    ):
        self.store = store
        self.site = site
        self.gates = gates
        self.policy = policy
        self.trusted_keys = trusted_keys or TrustedKeys({})

    def gate(self, gate_id: str) -> Gate:
        try:
            return self.gates[gate_id]
        except KeyError:
            raise UnknownGate(gate_id) from None

    def _present(self, credential: Credential) -> tuple[Presented, str | None, tuple[str, datetime] | None]:
        if credential.kind == CredentialKind.CARD:
            card = credential.typed if credential.typed is not None else credential.value
            return Presented.card(), self.store.member_for_card(card), None
        claim = self.trusted_keys.verify(credential.value)
        if claim is None:
            return Presented(CredentialKind.QR, None), None, None
        seen = self.store.qr_seen(claim.token_id)
        return Presented(CredentialKind.QR, claim, seen), claim.member, (claim.token_id, claim.expires)

    def decide(self, gate_id: str, credential: Credential, now: datetime) -> PendingTap:
        gate = self.gate(gate_id)
        if credential.kind == CredentialKind.DESK:
            # the desk names the member; its choices of booking and pass ride in `meta`
            presented = Presented.desk(credential.meta.get("booking"), credential.meta.get("pass"))
            member_id: str | None = credential.value
            qr_token = None
        else:
            presented, member_id, qr_token = self._present(credential)
        view = self.store.view(member_id, gate, now) if member_id else MemberView(None)
        decision = decide(view, presented, gate, self.site, self.policy, now)
        facts = {**decision.hint, "name": view.member.name} if view.member is not None else decision.hint
        return PendingTap(gate, credential, presented, decision, message(decision.reason, facts), qr_token, now)

    def admit(self, pending: PendingTap, conditions: GateConditions) -> PendingTap:
        """The site's and the gate's state applied to the decision (rules.admission)."""
        d = pending.decision
        kind = None
        if d.granted and d.pass_id is not None:
            p = self.store.get_pass(d.pass_id)
            kind = p.kind if p is not None else None
        admitted = admit(d, conditions, kind)
        return pending if admitted is d else self.refuse(pending, admitted.reason)

    def unreadable(self, gate_id: str, credential: Credential, now: datetime) -> PendingTap:
        """The store could not be read to decide: a denial for storage_fault."""
        gate = self.gate(gate_id)
        presented = Presented(credential.kind)
        denied = Decision(False, Reason.STORAGE_FAULT, None)
        return PendingTap(gate, credential, presented, denied, message(Reason.STORAGE_FAULT), None, now)

    def refuse(self, pending: PendingTap, reason: Reason) -> PendingTap:
        """The shell overrules a grant (the relay refused, the intent could not be written)."""
        denied = refused(pending.decision, reason)
        return PendingTap(
            pending.gate, pending.credential, pending.presented, denied, message(reason), pending.qr_token, pending.decided_at
        )

    def commit(
        self, pending: PendingTap, *, passed: bool, now: datetime, intent: int | None = None,
        extra: dict[str, Any] | None = None, unconfirmed: str | None = None,
    ) -> Committed:
        cred = pending.credential
        if pending.decision.reason == Reason.UNKNOWN_CARD and cred.kind == CredentialKind.CARD and cred.value:
            # the desk enrols unknown cards from the console: it needs the whole card, typed
            # (logs mask it; the event stays on this box and the central system's side)
            extra = {**(extra or {}), "card": cred.key}
        return self.store.commit_tap(
            pending.gate,
            pending.decision,
            credential=pending.credential.kind,
            passed=passed,
            now=now,
            qr_token=pending.qr_token,
            message=pending.message,
            intent=intent,
            extra=extra,
            unconfirmed=unconfirmed,
        )

    def tap(self, gate_id: str, credential: Credential, now: datetime, *, passed: bool = True) -> tuple[PendingTap, Committed]:
        pending = self.decide(gate_id, credential, now)
        return pending, self.commit(pending, passed=passed, now=now)

    def override(self, gate_id: str, operator: str, reason: str, now: datetime, *, passed: bool = True) -> tuple[Decision, Committed]:
        gate = self.gate(gate_id)
        return override(gate), self.store.commit_override(gate, operator, reason, now, passed=passed)

    def run_due(
        self, now: datetime, horizon: NoShowHorizon | None = None,
        unheard: Callable[[datetime], list[str]] | None = None,
    ) -> Committed:
        """The time-driven work due by `now` (no-shows only up to `horizon`: the site's
        other daemons heard, gated/knowledge.py)."""
        return self.store.run_due(self.policy, now, horizon, unheard)

    def mark_attended(self, booking_id: str, operator: str, *, refund: bool, now: datetime) -> Committed:
        return self.store.mark_attended(booking_id, operator, refund=refund, now=now)

    def adjust_points(self, member_id: str, points: int, operator: str, reason: str, now: datetime) -> Committed:
        return self.store.adjust_points(member_id, points, operator, reason, now)
