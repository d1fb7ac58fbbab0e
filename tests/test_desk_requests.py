"""The desk's requests in the ledger (sync/store/desk_requests.py): written in the
transaction of the record they produced — both or neither — found again by a new store on
the same files, forgotten where nothing was done; an existing ledger opens with the table;
what the page sends is validated (gated/console/once.py)."""

from __future__ import annotations

import json
import sqlite3
import string
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gated.console.once import REQUEST_ID, desk_request, request_id
from gated.operator import ActionRefused
from rules.decide import Decision
from rules.model import Gate, Site
from rules.reasons import Reason
from sync.records import MemberIn, SitePassIn
from sync.store import Store, SyncBatch, desk_requests
from sync.store.desk_requests import BEGUN, DONE, DeskRequest
from sync.store.schema import SCHEMA_VERSION
from tests.tap_fixtures import tap_of

TZ = ZoneInfo("Europe/Madrid")
SITE = Site(TZ, id="s1")
IN1 = Gate("in-1", "main")
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def open_store(tmp: Path) -> Store:
    return Store(tmp / "gated.db", SITE, daemon_id="s1-in-1")


def seeded(tmp: Path) -> Store:
    store = open_store(tmp)
    p = SitePassIn.model_validate({"id": "p1", "member": "m1", "name": "p1", "kind": "visits", "balance": 10,
                                   "deduct_on": "access", "walk_in_cost": 1})
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])], [p], []), NOW)
    return store


def req(rid: str = "request-0001", action: str = "/api/members/m1/points", asked: str = '{"points":5}') -> DeskRequest:
    return DeskRequest("desk", action, rid, asked)


def walk_in() -> Decision:
    return Decision(True, Reason.WALK_IN, "m1", pass_id="p1", amount=Decimal(1), cause="walk_in")


def test_points_and_their_request_are_one_transaction_found_again_after_a_restart(tmp_path: Path) -> None:
    store = seeded(tmp_path)
    committed = store.adjust_points("m1", 5, "desk", "birthday", NOW, req())
    store.flush_now()
    store.close()
    store = open_store(tmp_path)  # a restart: a new store on the same files
    seen = store.desk_request(req())
    assert seen is not None and seen.state == DONE and seen.answer is None
    assert seen.seqs == [e["seq"] for e in committed.events] and seen.asked == '{"points":5}'
    store.save_desk_answer(req(), {"ok": True, "points": 5})
    seen = store.desk_request(req())
    assert seen is not None and seen.answer == {"ok": True, "points": 5}
    assert store.desk_request(req("request-0002")) is None
    store.close()


def test_a_transaction_that_fails_leaves_neither_the_record_nor_its_request(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = seeded(tmp_path)
    last = store.last_seq

    def full(*a: Any, **kw: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(desk_requests, "done", full)  # the request's row, last in the transaction
    with pytest.raises(sqlite3.OperationalError):
        store.adjust_points("m1", 5, "desk", "birthday", NOW, req())
    with pytest.raises(sqlite3.OperationalError):
        store.commit_tap(tap_of(IN1, walk_in(), NOW), passed=True, now=NOW, request=req("tap-00001"))
    monkeypatch.undo()
    assert store.points("m1") == 0 and store.last_seq == last and store.balance("p1") == 10
    assert store.desk_request(req()) is None and store.desk_request(req("tap-00001")) is None
    store.close()


def test_a_check_in_is_begun_with_its_intent_done_by_a_grant_forgotten_by_a_denial(tmp_path: Path) -> None:
    store = seeded(tmp_path)
    granted, denied = req("check-in-01", "/api/members/m1/check-in", "{}"), req("check-in-02", "/api/members/m1/check-in", "{}")
    tap = store.open_intent(tap_of(IN1, walk_in(), NOW), NOW, granted)
    seen = store.desk_request(granted)
    assert seen is not None and seen.state == BEGUN  # on disk before the pulse
    store.commit_tap(tap, passed=True, now=NOW, request=granted)
    seen = store.desk_request(granted)
    assert seen is not None and seen.state == DONE and store.balance("p1") == 9
    # a grant the relay then refused (a lockdown came in): nothing opened, the request forgotten
    tap = store.open_intent(tap_of(IN1, walk_in(), NOW), NOW, denied)
    store.commit_tap(tap.refused(Reason.LOCKDOWN), passed=False, now=NOW, request=denied)
    assert store.desk_request(denied) is None and store.balance("p1") == 9
    # a crash between the intent and the commit: begun, across the restart and its report
    tap = store.open_intent(tap_of(IN1, walk_in(), NOW), NOW, denied)
    store.flush_now()
    store.close()
    store = open_store(tmp_path)
    assert [e["type"] for e in store.report_unconfirmed(NOW).events] == ["passage_unconfirmed"]
    seen = store.desk_request(denied)
    assert seen is not None and seen.state == BEGUN
    store.close()


def test_an_existing_ledger_opens_with_the_table(tmp_path: Path) -> None:
    store = seeded(tmp_path)
    store.adjust_points("m1", 5, "desk", "birthday", NOW)
    store.close()
    conn = sqlite3.connect(tmp_path / "gated.db", isolation_level=None)  # as the version before left it
    conn.execute("DROP TABLE desk_requests")
    conn.execute("UPDATE meta SET value = '14' WHERE key = 'schema_version'")
    conn.close()
    store = open_store(tmp_path)
    assert store.meta("schema_version") == str(SCHEMA_VERSION) == "15"
    assert store.points("m1") == 5 and store.desk_request(req()) is None
    store.adjust_points("m1", 1, "desk", "again", NOW + timedelta(seconds=1), req())
    assert store.desk_request(req()) is not None
    store.close()


# -- what the page sends -------------------------------------------------------------------------

ID_CHARS = string.ascii_letters + string.digits + "-_"


@given(st.text(alphabet=ID_CHARS, min_size=8, max_size=64))
def test_an_id_of_8_to_64_letters_digits_dash_underscore_is_taken_as_sent(rid: str) -> None:
    assert request_id({"request_id": rid}) == rid


@given(st.one_of(
    st.text(max_size=100).filter(lambda t: not REQUEST_ID.fullmatch(t)),
    st.text(alphabet=ID_CHARS, max_size=7), st.text(alphabet=ID_CHARS, min_size=65, max_size=200),
    st.integers(), st.floats(), st.booleans(), st.lists(st.text(alphabet=ID_CHARS, min_size=8, max_size=8)),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
))
def test_anything_else_is_refused_400_before_anything_is_done(value: Any) -> None:
    with pytest.raises(ActionRefused) as e:
        request_id({"request_id": value})
    assert e.value.status == 400


def test_no_id_is_no_request_and_a_newline_is_not_an_id() -> None:
    assert request_id({}) is None and desk_request("desk", "/api/x", {}, {"a": 1}) is None
    with pytest.raises(ActionRefused):
        request_id({"request_id": "abcdefgh\n"})  # `$` alone would take it
    with pytest.raises(ActionRefused):
        desk_request("desk", "/api/" + "x" * 400, {"request_id": "abcdefgh"}, {})


@given(st.dictionaries(st.sampled_from(["points", "reason", "gate", "pass", "booking", "refund"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20))))
def test_what_was_asked_is_the_same_text_whatever_the_order_of_its_keys(asked: dict[str, Any]) -> None:
    a = desk_request("desk", "/api/x", {"request_id": "abcdefgh"}, asked)
    b = desk_request("desk", "/api/x", {"request_id": "abcdefgh"}, dict(reversed(list(asked.items()))))
    assert a is not None and a == b and json.loads(a.asked) == asked
