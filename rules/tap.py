"""A tap on its way from the decision to the ledger, as one immutable value.

The shell (gated/taps.py) carries it through its steps — decided, admitted, its grant
intent written, the relay released, the passage seen — each step returning a new `Tap`;
the store (sync/store/intents.py, sync/store/ledger.py) records it from the same value. What the
access event says about a tap beyond the decision is decided here, once: the instant the
rules decided, the reader or the desk's operator and reason, and the whole typed card of
an unknown card (the desk enrols it from the console). So is what a tap the store could not
be read to decide comes to (`unreadable`): an entry refused, an exit let out unrecorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from rules.admission import refused
from rules.credential import Credential, CredentialKind
from rules.decide import Decision, Presented
from rules.messages import message
from rules.model import Direction, Gate
from rules.reasons import Reason
from rules.timeutil import iso_utc


@dataclass(frozen=True, slots=True)
class Tap:
    gate: Gate
    credential: Credential
    presented: Presented
    decision: Decision
    message: str
    decided_at: datetime
    qr_token: tuple[str, datetime] | None = None  # (token id, expiry) of a valid QR code
    # who or what presented it, for the access event: the reader, or the desk's operator
    # and reason (a desk check-in)
    detail: Mapping[str, Any] = field(default_factory=dict)
    intent: int | None = None  # the grant's durable intent (sync/store/intents.py), once written
    intent_at: datetime | None = None
    # an exit let out that nothing will record: the store could not be read to tell whose
    # card it was (`unreadable`). No intent, no access event, nothing to charge: counted
    unrecorded: bool = False

    @property
    def granted(self) -> bool:
        return self.decision.granted

    @property
    def is_exit(self) -> bool:
        return self.decision.reason == Reason.EXIT

    @property
    def unknown_card(self) -> bool:
        return self.decision.reason == Reason.UNKNOWN_CARD and self.credential.kind == CredentialKind.CARD

    def refused(self, reason: Reason) -> Tap:
        """The grant turned into a denial (the site's state, the relay, the store, a QR
        code used up elsewhere): nothing will be deducted or attended."""
        return replace(self, decision=refused(self.decision, reason), message=message(reason))

    def with_intent(self, intent: int, at: datetime) -> Tap:
        return replace(self, intent=intent, intent_at=at)

    def event_detail(self) -> dict[str, Any]:
        """What the access event (and the grant's intent) carries besides the decision."""
        out = {k: v for k, v in self.detail.items() if v is not None}
        # the access event's `at` is its commit, after the turnstile turned (seconds later):
        # the instant the rules decided is what an audit re-decides the tap at
        out["decided_at"] = iso_utc(self.decided_at)
        if self.unknown_card and self.credential.value:
            # the whole card, typed: the event stays on this box and the central system's
            # side (logs mask it)
            out["card"] = self.credential.key
        return out

    def holds(self) -> list[str]:
        """What a granted tap holds until it is committed: its member and its QR token (a
        second tap of either waits and is decided again)."""
        if not self.granted:
            return []
        keys = [f"member:{self.decision.member}"] if self.decision.member else []
        if self.qr_token is not None:
            keys.append(f"qr:{self.qr_token[0]}")
        return keys


def unreadable(gate: Gate, credential: Credential, now: datetime) -> Tap:
    """A tap the store could not be read to decide (a damaged page, a file gone).

    At an entrance: denied `storage_fault` — nothing opens that cannot be recorded. At an
    exit: let out all the same, nobody is locked in (at an exit the rules refuse only a
    card nobody has; unread, this one may well be a member's), for a member nobody can
    name. Such an exit is `unrecorded`: no intent and no access event for nobody, nothing
    to charge; the shell counts it as an exit not recorded."""
    presented = Presented(credential.kind)
    if gate.direction is Direction.OUT:
        let_out = Decision(True, Reason.EXIT, None)
        return Tap(gate, credential, presented, let_out, message(Reason.EXIT), now, unrecorded=True)
    denied = Decision(False, Reason.STORAGE_FAULT, None)
    return Tap(gate, credential, presented, denied, message(Reason.STORAGE_FAULT), now)


__all__ = ["Tap", "unreadable"]
