"""The MQTT contract: committed JSON Schemas match the models; payloads are strict."""

from __future__ import annotations

import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from sync.link.settings import MqttSettings
from sync.protocol import (
    Ack,
    Delta,
    EventBatch,
    PassOut,
    SnapshotChunk,
    Topics,
    schema_text,
    schemas,
)
from sync.records import BookingIn

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def test_committed_schemas_match_the_models() -> None:
    for name, schema in schemas().items():
        path = SCHEMAS / f"{name}.schema.json"
        assert path.exists(), f"{path} missing: run python -m sync.protocol"
        assert path.read_text(encoding="utf-8") == schema_text(schema), f"{path} is stale: run python -m sync.protocol"
    assert {p.name for p in SCHEMAS.glob("*.schema.json")} == {f"{n}.schema.json" for n in schemas()}


def test_payloads_are_versioned_and_forward_compatible() -> None:
    assert Ack.model_validate_json('{"v":1,"applied_seq":3}').applied_seq == 3
    # an optional key added by a later minor version is ignored, not an error
    assert Ack.model_validate_json('{"v":1,"applied_seq":3,"x":1}') == Ack(applied_seq=3)
    for bad in ('{"v":2,"applied_seq":3}', '{"v":1,"applied_seq":-1}', '{"applied_seq":"a"}', "[]", "{"):
        with pytest.raises(ValidationError):
            Ack.model_validate_json(bad)
    with pytest.raises(ValidationError):
        SnapshotChunk.model_validate({"v": 1, "snapshot_id": "s", "chunk": 2, "chunks": 2, "delta_seq": 0})
    with pytest.raises(ValidationError):  # a pass breaking the record rules
        Delta.model_validate({"v": 1, "delta_seq": 1, "passes": [{"id": "p", "member": "m", "kind": "visits"}]})


def test_event_batch_keeps_the_store_event_and_needs_consecutive_seqs() -> None:
    ev = {"id": "a", "seq": 1, "type": "deduction", "at": "2026-11-18T09:00:00Z", "pass": "p1", "amount": 1}
    batch = EventBatch.model_validate({"v": 1, "daemon": "g", "events": [ev, {**ev, "id": "b", "seq": 2}]})
    assert batch.events[0].model_dump(by_alias=True)["pass"] == "p1"
    with pytest.raises(ValidationError):
        EventBatch.model_validate({"v": 1, "daemon": "g", "events": [ev, {**ev, "id": "b", "seq": 3}]})
    with pytest.raises(ValidationError):
        EventBatch.model_validate({"v": 1, "daemon": "g/#", "events": [ev]})


def test_pass_applied_seq_is_per_daemon() -> None:
    p = PassOut.model_validate({"id": "p1", "member": "m1", "kind": "visits", "balance": 5, "applied": {"a": 7}})
    assert p.record_for("a").applied_seq == 7
    assert p.record_for("b").applied_seq == 0
    assert p.for_daemon("a").applied_seq == 7


def test_topics_and_settings() -> None:
    t = Topics("acme/gated", "madrid", "door-2")
    assert t.events == "acme/gated/madrid/door-2/events"
    assert t.site_events == "acme/gated/madrid/+/events"
    assert t.ack == "acme/gated/madrid/door-2/ack"
    assert t.snapshot == "acme/gated/madrid/snapshot"
    assert t.lookup_request == "acme/gated/madrid/lookup/request"
    assert t.central_status == "acme/gated/central/status"
    s = MqttSettings(site="madrid", daemon="door-2")
    assert s.lookup_timeout == 0.3 and s.reconcile_interval == 1800
    for bad in ({"site": "a/b"}, {"daemon": "+"}, {"daemon": "central"}, {"prefix": "x/#"}):
        with pytest.raises(ValidationError):
            MqttSettings(**{"site": "s", "daemon": "d", **bad})
    json.dumps(schemas())


def test_the_schema_command_writes_what_is_committed(tmp_path: Path) -> None:
    """`python -m sync.protocol DIR`, as docs/protocol.md says to run it."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "sync.protocol", str(tmp_path)], check=True, capture_output=True)
    written = {p.name: p.read_text(encoding="utf-8") for p in tmp_path.glob("*.schema.json")}
    committed = {p.name: p.read_text(encoding="utf-8") for p in SCHEMAS.glob("*.schema.json")}
    assert written == committed


@pytest.mark.parametrize(("starts", "ends", "valid"), [
    ("2026-11-18T10:00", "2026-11-18T11:00", True),
    ("2026-11-18T10:00+01:00", "2026-11-18T09:30Z", True),  # 09:00Z to 09:30Z
    ("2026-11-18T10:00Z", "2026-11-18T09:59Z", False),  # instants: exact
    ("2026-11-18T13:00", "2026-11-18T10:00", False),  # wall times 3 h backwards: no zone makes it right
    # wall times whose order only the site's zone tells (the autumn hour, the spring gap):
    # checked where the zone is known (gated/scenario_file.py), not refused here
    ("2026-03-29T03:10", "2026-03-29T02:40", True),
    ("2026-10-25T02:50", "2026-10-25T02:10+01:00", True),
    ("2026-11-18T10:00", "2026-11-17T06:00Z", False),  # a wall time and an instant a day and more apart
])
def test_a_booking_ends_after_it_starts_as_far_as_a_record_can_tell(starts: str, ends: str, valid: bool) -> None:
    """A record carries no zone: two instants compare exactly, wall times to within what a
    zone's clock changes (or any offset, against an instant) could make right."""
    raw = {"id": "b1", "member": "m1", "pass": "p1", "zone": "main", "starts_at": starts, "ends_at": ends}
    if valid:
        assert not BookingIn.model_validate(raw).ends_before_start(ZoneInfo("Europe/Madrid"))
    else:
        with pytest.raises(ValidationError, match="ends_at is before starts_at"):
            BookingIn.model_validate(raw)


def test_the_protocol_page_names_the_minor_version_the_gate_speaks() -> None:
    """A central system written from the page read "version 1.2" in its title, a table up to
    1.9 and a central status example saying 1.1: which to advertise was a guess."""
    from sync.protocol import PROTOCOL

    page = (SCHEMAS.parent / "protocol.md").read_text()
    assert page.splitlines()[0].endswith(f"(version {PROTOCOL})")
    assert f'"protocol": "{PROTOCOL}"' in page
    assert f"| {PROTOCOL} |" in page  # its row in the table of minors
    assert not [v for v in ('"protocol": "1.0"', '"protocol": "1.1"', '"protocol": "1.2"') if v in page]
