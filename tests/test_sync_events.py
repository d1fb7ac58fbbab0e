"""The events a gate sends are the ones docs/protocol.md and the `event` schema describe:
a daemon (in process, no relay: commit on grant) taps, denies, opens for the desk, locks
down, releases the doors, raises an alarm and reports a cut grant; every event it wrote
validates against its model in sync/events.py and carries no field the model does not
name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gated.config import Config
from gated.daemon import Daemon
from rules.credential import Credential
from sync.events import BY_TYPE, EVENT_MODELS
from sync.qrtoken import generate_private_key, mint, public_key_text
from tests.photos import ANA_URL, jpeg

SEED = {
    "members": [{"id": "m1", "name": "Ana", "cards": ["C1"]}],
    "passes": [{"id": "p1", "member": "m1", "kind": "visits", "balance": 5, "deduct_on": "access",
                "access_windows": {"mon-sun": "00:00-24:00"}}],
}


KEY = generate_private_key()  # this run's QR signing key


def config(tmp: Path) -> Config:
    return Config.model_validate({
        "site": {"id": "s1", "timezone": "Europe/Madrid"},
        "daemon_id": "gate-a",
        "qr": {"public_keys": [public_key_text(KEY.public_key())]},
        "stale_cache": {"max_age": None, "policy": "keep"},
        "gates": [{"id": "in-1", "zone": "main"}, {"id": "out-1", "zone": "main", "direction": "out"}],
        "store": {"path": str(tmp / "gate.db")},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
        "control": {"socket": str(tmp / "c.sock")},
        "unknown_cards": {"individual": 1},  # the second unknown card goes into a burst
    })


def names(model: type[Any]) -> set[str]:
    return {f.alias or n for n, f in model.model_fields.items()}


async def test_every_event_the_daemon_writes_is_documented(tmp_path: Path) -> None:
    from sync.records import MemberIn, PassIn
    from sync.store.batch import SyncBatch

    d = Daemon(config(tmp_path))
    await d.start()
    try:
        store = d.store
        assert store is not None and d.taps is not None
        store.apply_sync(
            SyncBatch(members=[MemberIn.model_validate(m) for m in SEED["members"]],
                      passes=[PassIn.model_validate(p) for p in SEED["passes"]]),
            datetime.now(UTC),
        )
        await d.handle_credential("in-1", Credential.card("C1", "r1"))  # granted: access + deduction
        await d.handle_credential("in-1", Credential.card("C1", "r1"))  # denied: anti-passback or no balance
        await d.handle_credential("in-1", Credential.card("ffee01", "r1"))  # unknown card: `card`
        await d.handle_credential("in-1", Credential.card("ffee02", "r1"))  # past the quota: `unknown_cards`
        d.taps.record_unknown_cards(all_=True)
        await d.handle_credential("out-1", Credential.card("C1", "r2"))
        # a QR code where the site's daemons share their QR uses: `qr_used`, at the intent
        store.set_site_wide_qr(True)
        now = datetime.now(UTC)
        code = mint(KEY, token_id="t-1", member="m1", issued=now, expires=now + timedelta(seconds=60))
        await d.handle_credential("in-1", Credential.qr(code, "r1"))
        await d.operator.check_in("in-1", "m1", "desk", "forgot the card")
        # an override needs a relay (none here): the ledger writes it the same way
        store.commit_override(d.taps.engine.gate("in-1"), "desk", "delivery", datetime.now(UTC))
        store.adjust_points("m1", 5, "desk", "goodwill", datetime.now(UTC))
        unknown = [e for e in store.events_after(0, 1000) if e.get("reason") == "unknown_card"]
        store.enrol_card(unknown[0]["card"], "m1", "desk", datetime.now(UTC))  # the desk enrols it
        await d.operator.set_member_photo("m1", jpeg(ANA_URL), "desk")  # the desk's camera
        await d.operator.set_lockdown(True, "admin", "intruder in the car park")
        await d.operator.set_lockdown(False, "admin", None)
        await d.operator.set_emergency(True, "admin", "gas smell in the plant room")
        await d.operator.set_emergency(False, "admin", None)
        await d.on_alarm("in-1", "door_held", "open 60 s")
        # a grant whose commit a crash cut: reported at the next start
        pending = d.taps.engine.decide("in-1", Credential.card("C1", "r1"), datetime.now(UTC), {"reader": "r1"})
        store.open_intent(pending, datetime.now(UTC))
        store.report_unconfirmed(datetime.now(UTC))
        events = store.events_after(0, limit=1000)
    finally:
        await d.stop()

    seen: set[str] = set()
    for ev in events:
        model = BY_TYPE.get(ev["type"])
        assert model is not None, f"undocumented event type {ev['type']!r}: {ev}"
        model.model_validate(ev)
        extra = set(ev) - names(model)
        assert not extra, f"{ev['type']} carries undocumented fields {extra}: {ev}"
        seen.add(ev["type"])
    access = [e for e in events if e["type"] == "access"]
    assert all(e.get("reader") for e in access if e["credential"] == "card")
    cards = [e["card"] for e in access if e["reason"] == "unknown_card"]
    assert len(cards) == 1 and cards[0].upper().endswith("FFEE01") and ":" in cards[0]  # a typed key
    assert [e["card"] for e in events if e["type"] == "card_enrolled"] == cards
    assert [e["token"] for e in events if e["type"] == "qr_used"] == ["t-1"]
    assert [(e["member"], e["photo"]) for e in events if e["type"] == "member_photo"] == [("m1", ANA_URL)]
    # every documented type but attendance (it needs a booking: tests/test_ledger.py) and
    # void (a hole an earlier version left: tests/test_event_log.py) was written
    documented = {m.model_fields["type"].annotation.__args__[0] for m in EVENT_MODELS}  # type: ignore[union-attr]
    assert documented - seen == {"attendance", "void"}, seen
    assert {"access", "deduction", "override", "lockdown", "fire_alarm", "alarm", "passage_unconfirmed", "loyalty",
            "card_enrolled"} <= seen
