"""rules/tap.py: what a tap carries from its decision to the ledger, decided once."""

from __future__ import annotations

from datetime import UTC, datetime

from rules.credential import Credential, CredentialKind
from rules.decide import Decision, Presented
from rules.model import Direction, Gate
from rules.reasons import Reason
from rules.tap import Tap, unreadable

NOW = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)
GATE = Gate(id="in-1", zone="main")


def tap(decision: Decision, cred: Credential | None = None, **kw: object) -> Tap:
    cred = cred or Credential.card("04A1B2C3D4", "r1")
    return Tap(GATE, cred, Presented(cred.kind), decision, "msg", NOW, **kw)  # type: ignore[arg-type]


def test_the_access_event_detail() -> None:
    unknown = tap(Decision(False, Reason.UNKNOWN_CARD, None), detail={"reader": "r1", "operator": None})
    assert unknown.event_detail() == {"reader": "r1", "decided_at": "2026-11-18T10:00:00Z", "card": "em:04A1B2C3D4"}
    known = tap(Decision(True, Reason.WALK_IN, "m1"), detail={"reader": "r1"})
    assert "card" not in known.event_detail()  # a member's card is never in an event
    qr = tap(Decision(False, Reason.UNKNOWN_CARD, None), Credential.qr("GQ1.x", "r1"))
    assert "card" not in qr.event_detail()


def test_a_refused_grant_says_why_and_holds_nothing() -> None:
    granted = tap(Decision(True, Reason.WALK_IN, "m1"), qr_token=("t1", NOW))
    assert granted.holds() == ["member:m1", "qr:t1"]
    refused = granted.refused(Reason.QR_REPLAYED)
    assert not refused.granted and refused.decision.reason == Reason.QR_REPLAYED and refused.holds() == []
    assert refused.message != granted.message and granted.granted  # a new value; the old one stands
    with_intent = granted.with_intent(7, NOW)
    assert (with_intent.intent, with_intent.intent_at) == (7, NOW) and granted.intent is None


def test_an_exit() -> None:
    assert tap(Decision(True, Reason.EXIT, "m1")).is_exit
    assert not tap(Decision(True, Reason.WALK_IN, "m1")).is_exit
    assert tap(Decision(True, Reason.WALK_IN, "m1")).credential.kind == CredentialKind.CARD


def test_a_tap_the_store_could_not_be_read_to_decide() -> None:
    """An entrance fails closed; an exit lets the person out all the same, for nobody the
    gate can name: nothing to write an intent or an access event for, nothing to charge."""
    card = Credential.card("04A1B2C3D4", "r1")
    entry = unreadable(GATE, card, NOW)
    assert (entry.granted, entry.decision.reason, entry.unrecorded) == (False, Reason.STORAGE_FAULT, False)
    exit_gate = Gate(id="out-1", zone="main", direction=Direction.OUT)
    out = unreadable(exit_gate, card, NOW)
    assert (out.granted, out.decision.reason, out.decision.member, out.unrecorded) == (True, Reason.EXIT, None, True)
    assert out.is_exit and out.holds() == [] and out.decision.amount == 0
    assert out.refused(Reason.HARDWARE_FAULT).unrecorded  # a relay that failed it still wrote nothing
