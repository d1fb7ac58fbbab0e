"""A decision made in a test, as the tap the store records (rules.tap.Tap)."""

from __future__ import annotations

from datetime import datetime

from rules.credential import Credential, CredentialKind
from rules.decide import Decision, Presented
from rules.messages import message
from rules.model import Gate
from rules.tap import Tap


def tap_of(gate: Gate, decision: Decision, now: datetime, card: str = "C0") -> Tap:
    cred = Credential.card(card, "r1")
    return Tap(gate, cred, Presented(CredentialKind.CARD), decision, message(decision.reason), now)
