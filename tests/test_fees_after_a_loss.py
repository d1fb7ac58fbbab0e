"""A no-show fee given back after this daemon lost part of its ledger (a copy put back,
a new box): the lost part may have given it back already. Found by a review of the
merged fixes of 2026-12-06 (sync/store/ledger.py give_back_no_show_fees): each case gave
a fee back twice, or settled a desk's waiting walk-in request on a fee's refund."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sync.store import Store, SyncBatch
from sync.store.sent_mark import SentMark
from tests.test_numbering import forget_mark
from tests.test_own_history import (
    POLICY,
    ZONES,
    at,
    new_store,
    old_box_fee,
    open_store,
    spin,
    without_mark,
    z,
)
from tests.test_peers import IN2, share, site_store, tap
from tests.test_peers import POLICY as PP
from tests.test_peers import at as pat

PEER = [{"id": "p1", "seq": 1, "type": "attendance", "at": None, "gate": "in-9", "member": "m1",
         "booking": "b9", "status": "attended", "by": "gate"}]


def peer_att() -> list[dict[str, Any]]:
    return [{**PEER[0], "at": z(at(10, 1))}]


def fee_refunds(store: Store) -> list[tuple[Any, ...]]:
    rows = store.conn.execute(
        "SELECT seq, cause, amount, refunded_by FROM deductions WHERE booking_id = 'b9' ORDER BY seq").fetchall()
    return rows


def _lost_part(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Old ledger: b9's fee F; copy taken; then the lost part gives F back (R) on hearing in-9."""
    path = tmp_path / "g.db"
    store = new_store(path)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(10), at(10, 45))]), at(9))
    store.run_due(POLICY, at(9, 1))
    assert [e.get("cause") for e in store.run_due(POLICY, at(11, 1)).events if e["type"] == "deduction"] == [
        "no_show_fee"]
    store.close()
    shutil.copy(path, tmp_path / "copy.db")
    store = open_store(path)
    start = store.last_seq
    store.record_peer_events("s1-in-9", peer_att(), {"in-9": "main"}, now=at(11, 30))
    lost = store.events_after(start)
    assert [e.get("cause") for e in lost if e["type"] == "deduction"] == ["refund"]
    store.close()
    return path, lost


def test_an_attendance_heard_while_the_numbering_is_held_gives_a_fee_back_once(tmp_path: Path) -> None:
    """A copy put back WITHOUT its mark (or a new box): held unsure until the central's
    word; own_history is not wanted yet, so a peer catch-up in that window gives F back;
    then the lost part's R comes back: two refunds of one fee."""
    path, lost = _lost_part(tmp_path)
    shutil.copy(tmp_path / "copy.db", path)
    forget_mark(path)
    store = open_store(path)
    store.hold_unsure()
    assert store.unsure_after is not None and store.own_history_wanted() is None
    store.record_peer_events("s1-in-9", peer_att(), {"in-9": "main"}, now=at(11, 40))  # catch-up, before the word
    store.settle_numbering(lost[-1]["seq"], at(11, 45))
    w = store.own_history_wanted()
    assert w is not None
    store.record_own_history(w, lost, ZONES, True)
    rows = fee_refunds(store)
    # fee + one refund expected; the bug gives fee + two refunds
    assert [r[1] for r in rows] == ["no_show_fee", "refund"], rows


def test_a_fee_the_lost_part_may_have_given_back_is_for_a_person_when_it_never_comes(tmp_path: Path) -> None:
    """Copy put back with its mark: F wanted-held; the central never answers; on expiry
    (done=True, expired=True) the sweep gives F back though the lost part (R) had."""
    path, lost = _lost_part(tmp_path)
    SentMark(path).advance(lost[-1]["seq"], at(11, 30).timestamp())
    shutil.copy(tmp_path / "copy.db", path)
    store = open_store(path)
    w = store.own_history_wanted()
    assert w is not None
    store.record_peer_events("s1-in-9", peer_att(), {"in-9": "main"}, now=at(11, 40))
    assert [r[1] for r in fee_refunds(store)] == ["no_show_fee"]
    store.record_own_history(w, [], ZONES, True, expired=True, now=w.expires)
    rows = fee_refunds(store)
    assert [r[1] for r in rows] == ["no_show_fee"], rows  # lost part's R exists at the central
    # not given back blindly: a person is asked to, once
    alarms = [e for e in store.events_after(0) if e["type"] == "alarm" and e["kind"] == "refund_unsettled"]
    assert len(alarms) == 1 and "b9" in alarms[0]["detail"]
    store.record_peer_events("s1-in-9", peer_att(), {"in-9": "main"}, now=at(12))
    assert len([e for e in store.events_after(0) if e["type"] == "alarm" and e["kind"] == "refund_unsettled"]) == 1


def test_a_fee_only_the_site_may_have_seen_given_back_is_for_a_person(tmp_path: Path) -> None:
    """New box: the central has the old box's fee (1) and no-show (2); only the site heard
    its refund of the fee (3). GIVEN_UP is set, history comes back, and the done-sweep
    gives the fee back a second time (R only the site heard)."""
    store = without_mark(tmp_path / "g.db", applied=2)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(8), at(8, 45))]), at(7))
    store.hold_unsure()
    store.settle_numbering(2, at(11), site_seq=3)
    assert store.conn.execute("SELECT value FROM meta WHERE key='own_history_given_up'").fetchone() is not None
    w = store.own_history_wanted()
    assert w is not None
    lost = old_box_fee()
    # the old box's refund of e1 (seq 3: only the site heard it) is gone for good
    store.record_peer_events("s1-in-9", [{**PEER[0], "at": z(at(8, 1))}], {"in-9": "main"}, now=at(11, 10))
    store.record_own_history(w, lost, ZONES, True)
    rows = store.conn.execute("SELECT seq, cause FROM deductions WHERE booking_id = 'b9' ORDER BY seq").fetchall()
    assert rows == [(1, "no_show_fee")], rows
    assert [e["kind"] for e in store.events_after(0) if e["type"] == "alarm" and e["kind"] == "refund_unsettled"] == [
        "refund_unsettled"]




def test_a_fee_refund_of_a_fee_never_heard_does_not_settle_the_request(tmp_path: Path) -> None:
    """As test_peers' test, but in-2 never heard in-1's fee (a gap in what it heard of
    in-1): the fee's refund says it gave back a fee (`refunds.cause`), so in-1's desk
    request still stands ahead at in-2, and the walk-in goes back once."""
    in2, in1 = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    due = in1.run_due(PP, pat(11, 5)).events
    share(in1, in2, [e for e in due if e["type"] != "deduction"], {})  # the fee not heard
    _, charge = tap(in2, IN2, pat(11, 10))
    share(in2, in1, charge.events, {"in-2": "main"})
    first = in1.mark_attended("b1", "desk-1", refund=True, now=pat(12, 30), waiting=["s1-in-2"])
    share(in1, in2, first.events, {})
    second = in2.mark_attended("b2", "desk-2", refund=True, now=pat(12, 31), waiting=["s1-in-1"])
    share(in2, in1, second.events, {"in-2": "main"})
    given = in2.settle_refunds(pat(12, 32), lambda _: []).events + in1.settle_refunds(pat(12, 32), lambda _: []).events
    walk_ins = [(e["booking"], e["refunds"]["seq"]) for e in given if e["type"] == "deduction"]
    assert walk_ins == [("b1", charge.events[1]["seq"])]


def test_a_fee_the_lost_desk_left_standing_stands_when_its_events_come_back(tmp_path: Path) -> None:
    """Old ledger: b9's fee F; copy taken; then the lost part's desk marks b9 attended (the
    fee stands: Ledger.keep_no_show_fees). The copy put back, the lost events come back from
    the central system: b9 is attended again, and F still stands — the sweep of fees for
    bookings attended after a loss (give_back_attended_fees) does not give it back."""
    path = tmp_path / "g.db"
    store = new_store(path)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(10), at(10, 45))]), at(9))
    store.run_due(POLICY, at(9, 1))
    store.run_due(POLICY, at(11, 1))
    store.close()
    shutil.copy(path, tmp_path / "copy.db")
    store = open_store(path)
    start = store.last_seq
    store.mark_attended("b9", "desk", refund=False, now=at(11, 30))
    lost = store.events_after(start)
    assert [(e["type"], e.get("by")) for e in lost] == [("attendance", "desk")]
    SentMark(path).advance(lost[-1]["seq"], at(11, 30).timestamp())
    store.close()
    shutil.copy(tmp_path / "copy.db", path)
    store = open_store(path)
    w = store.own_history_wanted()
    assert w is not None
    store.record_own_history(w, lost, ZONES, True, now=at(11, 40))
    assert store.booking_status("b9") is not None and store.booking_status("b9").value == "attended"  # type: ignore[union-attr]
    assert [r[1] for r in fee_refunds(store)] == ["no_show_fee"]
