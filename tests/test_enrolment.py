"""A card the desk assigns works at once, goes upstream as `card_enrolled`, survives syncs
and snapshots that do not know it yet, and settles when the central system has it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rules.model import Gate, Site
from sync.records import MemberIn
from sync.store import Store
from sync.store.batch import SyncBatch

NOW = datetime(2026, 11, 18, 11, 40, tzinfo=UTC)
GATE = Gate(id="in", zone="main")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "g.db", Site(timezone=ZoneInfo("Europe/Madrid")), daemon_id="t")
    s.apply_sync(SyncBatch(members=[MemberIn(id="m-ana", name="Ana", cards=["04A1"]), MemberIn(id="m-bo", name="Bo", cards=["0B0B"])]), NOW)
    yield s
    s.close()


def test_enrolled_card_works_at_once_and_goes_upstream(store: Store) -> None:
    assert store.member_for_card("CAFE0001") is None
    committed = store.enrol_card("cafe0001", "m-ana", "desk", NOW)
    [ev] = committed.events
    # the card goes upstream as its typed key (rules/credential.py)
    assert (ev["type"], ev["member"], ev["card"], ev["operator"]) == ("card_enrolled", "m-ana", "uid:CAFE0001", "desk")
    assert store.member_for_card("CAFE0001") == "m-ana"
    member = store.member("m-ana")
    assert member is not None and set(member.cards) == {"uid:04A1", "uid:CAFE0001"}
    assert store.view("m-ana", GATE, NOW).member is not None
    audit = store.conn.execute("SELECT operator, action FROM audit").fetchall()
    assert ("desk", "enrol_card") in audit


def test_enrolment_survives_syncs_until_the_central_system_has_it(store: Store) -> None:
    store.enrol_card("CAFE0001", "m-ana", "desk", NOW)
    seq = store.last_seq
    # a delta that does not know the card yet (Ana resent with her old cards) keeps it
    store.apply_delta(SyncBatch(members=[MemberIn(id="m-ana", name="Ana", cards=["04A1"])]), 1, NOW)
    assert store.member_for_card("CAFE0001") == "m-ana"
    store.apply_sync(SyncBatch(members=[MemberIn(id="m-ana", name="Ana", cards=["04A1"]), MemberIn(id="m-bo", name="Bo")]), NOW, snapshot=True)
    assert store.member_for_card("CAFE0001") == "m-ana"
    # the central system took it over: the replica's own row now says so; the enrolment goes
    store.ack(seq)
    store.apply_delta(SyncBatch(members=[MemberIn(id="m-ana", name="Ana", cards=["04A1", "CAFE0001"])]), 2, NOW)
    assert store.conn.execute("SELECT COUNT(*) FROM card_enrolments").fetchone()[0] == 0
    assert store.member_for_card("CAFE0001") == "m-ana"


def test_the_central_systems_later_word_stands(store: Store) -> None:
    store.enrol_card("CAFE0002", "m-ana", "desk", NOW)
    # before the central system applied our event, its older view gives the card to Bo: ours wins
    store.apply_delta(SyncBatch(members=[MemberIn(id="m-bo", name="Bo", cards=["0B0B", "CAFE0002"])]), 1, NOW)
    assert store.member_for_card("CAFE0002") == "m-ana"
    # after it applied the event it still gives the card to Bo: it refused or reassigned it
    store.ack(store.last_seq)
    store.apply_delta(SyncBatch(members=[MemberIn(id="m-bo", name="Bo", cards=["0B0B", "CAFE0002"])]), 2, NOW + timedelta(minutes=1))
    assert store.member_for_card("CAFE0002") == "m-bo"
