"""What a lost ledger knew, back from the central system (sync/store/own_history.py,
sync/link/own_history.py; docs/protocol.md "A gate's own events back"): a new box settles
its numbering after what the central system holds, asks for those events, and records
them — the site's facts as a peer's, its charges as its own under their own numbers."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace as dc_replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rules.credential import CredentialKind
from rules.decide import Presented, QrClaim, decide
from rules.model import AntiPassback, Gate, Policy
from sync.link.actions import Publish, RecordOwnHistory, Subscribe
from sync.link.session import Session, SessionConfig, StoreState
from sync.records import BookingIn
from sync.store import Store, SyncBatch
from sync.store.own_history import HORIZON, LATE_KEY, Wanted
from sync.store.sent_mark import SentMark
from tests.tap_fixtures import tap_of
from tests.test_numbering import DAEMON, IN1, SITE, at, new_store, open_store, walk_in, without_mark

ZONES = {"in-1": "main"}
POLICY = Policy(no_show_fee=Decimal(1))


def z(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def old_box_events() -> list[dict[str, Any]]:
    """What the old box recorded this morning (seqs 1..5): Ana walked in at 09:30 (early for
    her 10:00 yoga: a walk-in charge), showed a QR code at 09:40, an evacuation at 09:50."""
    return [
        {"id": "e1", "seq": 1, "type": "access", "at": z(at(9, 30)), "gate": "in-1", "member": "m1",
         "decision": "granted", "reason": "walk_in", "passed": True, "pass": "p1"},
        {"id": "e2", "seq": 2, "type": "deduction", "at": z(at(9, 30)), "gate": "in-1", "member": "m1",
         "pass": "p1", "amount": 1, "booking": None, "cause": "walk_in", "balance": 29},
        {"id": "e3", "seq": 3, "type": "qr_used", "at": z(at(9, 40)), "gate": "in-1", "member": "m1",
         "token": "tok-1", "expires": z(at(23))},
        {"id": "e4", "seq": 4, "type": "alarm", "at": z(at(9, 45)), "gate": None, "kind": "door_held"},
        {"id": "e5", "seq": 5, "type": "deduction", "at": z(at(9, 46)), "gate": "in-1", "member": "m1",
         "pass": "p1", "amount": 2, "booking": None, "cause": "walk_in"},
    ]


def settled_new_box(path: Path, central_seq: int = 5) -> Store:
    """A new box (no ledger but the first sync's replica: the central system had applied
    `central_seq` of this daemon's events), held, then settled by the central's word."""
    store = without_mark(path, applied=central_seq)
    store.hold_unsure()
    store.settle_numbering(central_seq, at(11))
    return store


# -- the store ---------------------------------------------------------------------------------


def test_the_settle_that_finds_more_at_the_central_wants_those_events(tmp_path: Path) -> None:
    store = settled_new_box(tmp_path / "g.db")
    assert store.own_history_wanted() == Wanted(1, 5, at(11) - HORIZON)
    store.close()
    store = open_store(tmp_path / "g.db")  # survives a restart: asked again
    assert store.own_history_wanted() == Wanted(1, 5, at(11) - HORIZON)
    store.close()


def test_a_settle_with_nothing_lost_wants_nothing(tmp_path: Path) -> None:
    store = without_mark(tmp_path / "g.db", applied=0)
    store.hold_unsure()
    store.settle_numbering(0, at(11))
    assert store.own_history_wanted() is None
    store.close()


def test_a_ledger_put_back_behind_its_mark_wants_what_it_lacks(tmp_path: Path) -> None:
    """A copy of the ledger that ends before what the gate had sent (its mark kept):
    numbered on after the mark, and the events in between asked for back."""
    path = tmp_path / "g.db"
    store = new_store(path)
    walk_in(store, at(7))
    store.close()
    SentMark(path).advance(9, at(8).timestamp())
    store = open_store(path)
    w = store.own_history_wanted()
    assert w is not None and (w.from_seq, w.to_seq) == (3, 9)  # a walk-in is two events
    store.close()


def test_the_old_box_events_are_recorded_as_it_knew_them(tmp_path: Path) -> None:
    store = settled_new_box(tmp_path / "g.db")
    w = store.own_history_wanted()
    assert w is not None
    before = store.balance("p1")
    assert before == Decimal(30)  # the central's balance has both charges; applied is back at 5
    seen = store.record_own_history(w, old_box_events(), ZONES, True)
    assert seen["charges"] == 2 and seen["remote_passages"] == 1 and seen["remote_qr_used"] == 1
    assert store.own_history_wanted() is None
    # not counted again: the central system applied them (the pass says 5)
    assert store.balance("p1") == before
    presence = store.view("m1", IN1, at(11)).presence["main"]
    assert presence.last_entry_at == at(9, 30)
    assert store.qr_seen("tok-1")
    rows = store.conn.execute("SELECT seq, cause, amount FROM main.deductions ORDER BY seq").fetchall()
    assert rows == [(2, "walk_in", "1"), (5, "walk_in", "2")]
    # the ledger holds them again in place of the voids: a peer's catch-up, the central's
    # replay after a restore get the events, not "nothing was here"
    held = store.events_after(0, 5)
    assert [(e["seq"], e["id"], e["type"]) for e in held] == [(e["seq"], e["id"], e["type"]) for e in old_box_events()]
    assert seen["put_back"] == 5
    store.close()


def spin(bid: str, start: datetime, end: datetime) -> BookingIn:
    """A class paid at the gate: its no-show is fined (POLICY's fee)."""
    return BookingIn.model_validate({
        "id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
        "starts_at": start.isoformat(), "ends_at": end.isoformat(), "deducted": False,
    })


def ana_came(seq: int, booking: str, when: datetime) -> list[dict[str, Any]]:
    """The old box let Ana in on her booking (seqs `seq`, `seq` + 1)."""
    return [
        {"id": f"a{seq}", "seq": seq, "type": "access", "at": z(when), "gate": "in-1", "member": "m1",
         "decision": "granted", "reason": "booking", "booking": booking, "passed": True, "pass": "p1"},
        {"id": f"a{seq + 1}", "seq": seq + 1, "type": "attendance", "at": z(when), "gate": "in-1", "member": "m1",
         "booking": booking, "status": "attended", "by": "gate"},
    ]


def kinds(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["type"], e.get("booking"), e.get("status") or e.get("cause"), e.get("unheard")) for e in events]


def test_a_new_box_holds_the_no_shows_of_the_classes_its_lost_events_bear_on(tmp_path: Path) -> None:
    """The old box let Ana in for her 10:00 Spinning at 09:55; it died, and the new box
    settles its numbering at 10:05 and asks the central system for those events. At 11:01
    the class's no-show falls due while they are not back: settled then, it would fine a
    member who came. It waits — as for a daemon of the site not heard — and so does the
    morning yoga's (the lost events may hold Ana on site); a class after midnight does not
    (nothing before the loss bears on it). Back, the attendance makes the Spinning no
    no-show, and the yoga's no-show no fee."""
    store = without_mark(tmp_path / "g.db", applied=3)
    night = at(0, 30) + timedelta(days=1)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(10), at(10, 45)),
                                         spin("b-night", night, night + timedelta(minutes=45))]), at(9))
    store.hold_unsure()
    store.settle_numbering(3, at(10, 5))
    w = store.own_history_wanted()
    assert w is not None
    assert store.run_due(POLICY, at(11, 1)).events == []
    after_midnight = night + timedelta(hours=1, minutes=1)  # the night class due; still waiting
    assert kinds(store.run_due(POLICY, after_midnight).events) == [
        ("deduction", "b-night", "no_show_fee", None), ("attendance", "b-night", "no_show", None)]
    store.record_own_history(w, ana_came(1, "b9", at(9, 55)), ZONES, True)
    assert kinds(store.run_due(POLICY, after_midnight + timedelta(minutes=1)).events) == [
        ("attendance", "b1", "no_show", None)]  # on site: no fee (b1 is paid anyway)
    assert store.conn.execute("SELECT outcome FROM main.booking_outcomes WHERE booking_id = 'b9'").fetchone() == (
        "attended",)
    store.close()


def test_a_ledger_put_back_holds_the_no_show_of_a_class_attended_in_the_part_it_lost(tmp_path: Path) -> None:
    """A copy of the ledger from 09:00 is put back after the disk died; at 11:55 Ana had
    come in on her 12:00 class, and that had been sent. Its no-show falls due at 13:00,
    after the last event sent: it waits for the lost events, and once they are back it is
    no no-show."""
    path = tmp_path / "g.db"
    store = new_store(path)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(12), at(12, 45))]), at(9))
    store.close()
    shutil.copy(path, tmp_path / "copy.db")
    store = open_store(path)
    d = decide(store.view("m1", IN1, at(11, 55)), Presented(CredentialKind.CARD), IN1, SITE, POLICY, at(11, 55))
    assert d.booking == "b9"
    lost = store.commit_tap(tap_of(IN1, d, at(11, 55)), passed=True, now=at(11, 55)).events
    store.close()
    SentMark(path).advance(lost[-1]["seq"], at(11, 55).timestamp())
    shutil.copy(tmp_path / "copy.db", path)
    store = open_store(path)
    w = store.own_history_wanted()
    assert w is not None and store.unsure_after is None
    due = store.run_due(POLICY, at(13, 1)).events
    assert not [e for e in due if e.get("booking") == "b9"]
    store.record_own_history(w, lost, ZONES, True)
    assert not [e for e in store.run_due(POLICY, at(13, 2)).events if e.get("booking") == "b9"]
    assert store.balance("p1") == Decimal(29)  # the class, charged at the turnstile; no fee
    store.close()


@pytest.mark.parametrize("floor", [None, at(11, 58)], ids=["sent_mark", "clock_floor"])
def test_a_ledger_put_back_at_a_boot_whose_clock_reads_2000_still_waits_for_the_lost_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, floor: datetime | None,
) -> None:
    """The case above, with the box's clock not set yet when the daemon opens the store (a
    flat RTC cell: 2000-01-01; the store is opened before the daemon builds its guarded
    clock). The loss and its wait were stamped from 2000: the wait was over before it
    began, and at 13:01 Ana's class, attended in the lost part, was a no-show with a fee.
    The open now stamps no earlier than the last event sent, nor the last instant the
    daemon's clock trusted (its floor, when the store holds one)."""
    import sync.store.store as store_mod
    from sync.store.meta import CLOCK_FLOOR_KEY

    path = tmp_path / "g.db"
    store = new_store(path)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(12), at(12, 45))]), at(9))
    store.run_due(POLICY, at(9))
    store.close()
    shutil.copy(path, tmp_path / "copy.db")
    store = open_store(path)
    d = decide(store.view("m1", IN1, at(11, 55)), Presented(CredentialKind.CARD), IN1, SITE, POLICY, at(11, 55))
    assert d.booking == "b9"
    lost = store.commit_tap(tap_of(IN1, d, at(11, 55)), passed=True, now=at(11, 55)).events
    store.close()
    SentMark(path).advance(lost[-1]["seq"], (at(11, 55) if floor is None else at(9)).timestamp())
    shutil.copy(tmp_path / "copy.db", path)
    if floor is not None:
        store = Store(path, SITE, daemon_id=DAEMON, durable=False)
        store.set_meta(CLOCK_FLOOR_KEY, repr(floor.timestamp()))
        store.close()

    class Y2K(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return datetime(2000, 1, 1, tzinfo=UTC)

    with monkeypatch.context() as m:
        m.setattr(store_mod, "datetime", Y2K)
        store = open_store(path)  # the open at boot, the clock not set
    w = store.own_history_wanted()
    assert w is not None and w.expires > at(13, 1), w
    assert not [e for e in store.run_due(POLICY, at(13, 1)).events if e.get("booking") == "b9"]
    assert all(e["at"] >= "2026" for e in store.events_after(0)), "stamped in 2000"
    store.close()


@given(link=st.booleans())
@settings(max_examples=2, deadline=None)
def test_lost_events_that_never_come_back_leave_the_no_show_named_unheard(link: bool) -> None:
    """The central system never sends the lost events back. A day after the loss the gate
    stops waiting for them — the link gives up (`expired`), or, a gate without one, the
    clock says so — and the held no-show is settled naming this daemon as not heard, as a
    no-show settled past `peer_wait_limit` names the peer."""
    with tempfile.TemporaryDirectory() as tmp:
        store = without_mark(Path(tmp) / "g.db", applied=3)
        store.apply_sync(SyncBatch(bookings=[spin("b9", at(10), at(10, 45))]), at(9))
        store.hold_unsure()
        store.settle_numbering(3, at(10, 5))
        w = store.own_history_wanted()
        assert w is not None and w.expires == at(10, 5) + timedelta(days=1)
        assert store.run_due(POLICY, w.expires - timedelta(minutes=1)).events == []
        if link:
            store.record_own_history(w, [], ZONES, True, expired=True, now=w.expires)
            assert store.own_history_wanted() is None
        due = store.run_due(POLICY, w.expires + timedelta(minutes=1)).events
        assert kinds(due) == [("attendance", "b1", "no_show", [DAEMON]),
                              ("deduction", "b9", "no_show_fee", None), ("attendance", "b9", "no_show", [DAEMON])]
        store.close()


def test_a_chunk_twice_changes_nothing_and_only_the_range_counts(tmp_path: Path) -> None:
    store = settled_new_box(tmp_path / "g.db", central_seq=4)
    w = store.own_history_wanted()
    assert w is not None
    events = old_box_events()
    early = {**events[1], "id": "e0", "seq": 1, "at": z(w.since - timedelta(minutes=1))}
    first = store.record_own_history(w, [early, *events[1:]], ZONES, False)
    assert first["outside"] == 2  # before `since`; seq 5 is the new box's own number now
    again = store.record_own_history(w, events, ZONES, True)
    assert again["charges_again"] == 1 and again["outside"] == 1
    assert again["kept"] == 3 and again["put_back"] == 1  # seq 1 was left void by the early one
    assert [e["type"] for e in store.events_after(0, 4)] == ["access", "deduction", "qr_used", "alarm"]
    assert store.conn.execute("SELECT COUNT(*) FROM main.passages WHERE member_id = 'm1'").fetchone()[0] == 1
    assert store.conn.execute("SELECT seq FROM main.deductions").fetchall() == [(2,)]
    store.close()


def test_the_desk_refunds_a_walk_in_the_old_box_charged(tmp_path: Path) -> None:
    """Ana came early for her yoga and paid a walk-in at the old box; the desk marks her
    attended with the refund on the new box: it finds that charge, once."""
    store = settled_new_box(tmp_path / "g.db")
    w = store.own_history_wanted()
    assert w is not None
    store.record_own_history(w, old_box_events()[:3], ZONES, True)
    committed = store.mark_attended("b1", "desk", refund=True, now=at(11, 5))
    [refund] = [e for e in committed.events if e["type"] == "deduction"]
    assert refund["refunds"] == {"daemon": DAEMON, "seq": 2} and Decimal(str(refund["amount"])) == -1
    assert refund["seq"] > 5
    again = store.mark_attended("b1", "desk", refund=True, now=at(11, 6))
    assert not [e for e in again.events if e["type"] == "deduction"]  # refunded once
    store.close()


def test_an_old_refund_marks_the_old_charge(tmp_path: Path) -> None:
    store = settled_new_box(tmp_path / "g.db", central_seq=6)
    w = store.own_history_wanted()
    assert w is not None
    refund = {"id": "e6", "seq": 6, "type": "deduction", "at": z(at(10, 5)), "gate": None, "member": "m1",
              "pass": "p1", "amount": -1, "booking": "b1", "cause": "refund", "refunds": {"daemon": DAEMON, "seq": 2}}
    store.record_own_history(w, [*old_box_events(), refund], ZONES, True)
    assert store.conn.execute("SELECT refunded_by FROM main.deductions WHERE seq = 2").fetchone() == (6,)
    committed = store.mark_attended("b1", "desk", refund=True, now=at(11, 5))
    [refund2] = [e for e in committed.events if e["type"] == "deduction"]
    assert refund2["refunds"]["seq"] == 5  # the other walk-in, not the one refunded already
    store.close()


def test_an_old_refund_request_does_not_take_a_walk_in_from_the_new_box_desk(tmp_path: Path) -> None:
    """The old box's desk asked for b1's refund at 10:04 and gave walk-in 2 back. On the
    new box, the desk asks for the refund of Ana's afternoon class: the old request, back
    from the central system, was settled — it does not stand ahead and take walk-in 5."""
    store = settled_new_box(tmp_path / "g.db", central_seq=7)
    later = BookingIn.model_validate({
        "id": "b2", "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
        "starts_at": at(13).isoformat(), "ends_at": at(13, 45).isoformat(), "deducted": True,
    })
    store.apply_sync(SyncBatch(bookings=[later]), at(11))
    w = store.own_history_wanted()
    assert w is not None
    asked = {"id": "e6", "seq": 6, "type": "attendance", "at": z(at(10, 4)), "gate": None, "member": "m1",
             "booking": "b1", "status": "attended", "by": "desk", "refund": True}
    refund = {"id": "e7", "seq": 7, "type": "deduction", "at": z(at(10, 4)), "gate": None, "member": "m1",
              "pass": "p1", "amount": -1, "booking": "b1", "cause": "refund", "refunds": {"daemon": DAEMON, "seq": 2}}
    store.record_own_history(w, [*old_box_events(), asked, refund], ZONES, True)
    # the old desk's attendance stands: b1 was attended, whatever the request with it
    assert store.conn.execute("SELECT outcome FROM main.booking_outcomes WHERE booking_id = 'b1'").fetchone() == (
        "attended",)
    committed = store.mark_attended("b2", "desk", refund=True, now=at(13, 5))
    [refund2] = [e for e in committed.events if e["type"] == "deduction"]
    assert refund2["refunds"] == {"daemon": DAEMON, "seq": 5}
    store.close()


def test_a_fee_given_back_in_the_lost_part_is_not_given_back_again(tmp_path: Path) -> None:
    """A copy of the ledger is put back. In the lost part a turnstile's late attendance had
    b9's no-show fee given back; the turnstile's catch-up brings that attendance again
    before the lost events are back: the fee is given back once, not twice."""
    path = tmp_path / "g.db"
    store = new_store(path)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(10), at(10, 45))]), at(9))
    store.run_due(POLICY, at(9, 1))  # the time-driven work begins
    assert [e.get("cause") for e in store.run_due(POLICY, at(11, 1)).events if e["type"] == "deduction"] == [
        "no_show_fee"]
    store.close()
    shutil.copy(path, tmp_path / "copy.db")
    peer = [{"id": "p1", "seq": 1, "type": "attendance", "at": z(at(10, 1)), "gate": "in-9", "member": "m1",
             "booking": "b9", "status": "attended", "by": "gate"}]
    store = open_store(path)
    start = store.last_seq
    store.record_peer_events("s1-in-9", peer, {"in-9": "main"}, now=at(11, 30))
    lost = store.events_after(start)
    assert [e.get("cause") for e in lost if e["type"] == "deduction"] == ["refund"]
    store.close()
    SentMark(path).advance(lost[-1]["seq"], at(11, 30).timestamp())
    shutil.copy(tmp_path / "copy.db", path)  # put back
    store = open_store(path)
    w = store.own_history_wanted()
    assert w is not None
    store.record_peer_events("s1-in-9", peer, {"in-9": "main"}, now=at(11, 40))  # the catch-up
    store.record_own_history(w, lost, ZONES, True)
    rows = store.conn.execute("SELECT cause FROM deductions WHERE booking_id = 'b9' ORDER BY seq").fetchall()
    assert rows == [("no_show_fee",), ("refund",)]
    store.close()


def old_box_fee() -> list[dict[str, Any]]:
    """What the old box did at 10:00, events 1..2: b9 a no-show (in-9 not heard) and its fee."""
    return [
        {"id": "e1", "seq": 1, "type": "deduction", "at": z(at(10)), "gate": None, "member": "m1", "pass": "p1",
         "amount": 1, "booking": "b9", "cause": "no_show_fee"},
        {"id": "e2", "seq": 2, "type": "attendance", "at": z(at(10)), "gate": None, "member": "m1",
         "booking": "b9", "status": "no_show", "by": "gate", "unheard": ["s1-in-9"]},
    ]


@pytest.mark.parametrize("peer_first", [False, True])
def test_a_fee_of_the_old_box_is_given_back_whichever_comes_first(tmp_path: Path, peer_first: bool) -> None:
    """The old box fined b9 (in-9 unheard) and died. The new box hears in-9's attendance of
    b9 and gets the fee back from the central system, in either order: the fee goes back."""
    store = without_mark(tmp_path / "g.db", applied=2)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(8), at(8, 45))]), at(7))
    store.hold_unsure()
    store.settle_numbering(2, at(11))
    w = store.own_history_wanted()
    assert w is not None
    lost = old_box_fee()
    peer = [{"id": "p1", "seq": 1, "type": "attendance", "at": z(at(8, 1)), "gate": "in-9", "member": "m1",
             "booking": "b9", "status": "attended", "by": "gate"}]
    if peer_first:
        store.record_peer_events("s1-in-9", peer, {"in-9": "main"}, now=at(11, 10))
        store.record_own_history(w, lost, ZONES, True)
    else:
        store.record_own_history(w, lost, ZONES, True)
        store.record_peer_events("s1-in-9", peer, {"in-9": "main"}, now=at(11, 10))
    rows = store.conn.execute("SELECT cause, refunded_by IS NOT NULL FROM deductions WHERE booking_id = 'b9' "
                              "ORDER BY seq").fetchall()
    assert rows == [("no_show_fee", 1), ("refund", 0)]
    store.close()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8,
)
FIELDS = st.fixed_dictionaries(
    {"seq": st.integers(-2, 12) | JSON, "type": st.sampled_from(["deduction", "access", "qr_used", "attendance"]) | JSON,
     "at": st.sampled_from([z(at(9)), z(at(9) - timedelta(days=3)), "9999-12-31T23:59:59Z", "x"]) | JSON},
    optional={"member": JSON | st.just("m1"), "pass": JSON | st.just("p1"), "amount": JSON,
              "cause": st.sampled_from(["walk_in", "refund", "booking"]) | JSON, "gate": st.just("in-1") | JSON,
              "refunds": JSON | st.fixed_dictionaries({"daemon": st.just(DAEMON), "seq": st.integers(-1, 2**63)}),
              "booking": JSON, "decision": st.just("granted"), "passed": st.booleans(), "token": JSON,
              "expires": JSON},
)


def test_whatever_an_answer_carries_is_recorded_or_counted(tmp_path: Path) -> None:
    """Events validated only in their common fields (the wire model): any body is recorded
    or counted, never an error, and the local balance stays a number."""
    store = settled_new_box(tmp_path / "g.db", central_seq=10)
    w = store.own_history_wanted()
    assert w is not None

    @settings(max_examples=150, deadline=None, database=None)
    @given(st.lists(FIELDS, max_size=6))
    # a gate that is not a name (a TypeError once: a list looked up among the zones)
    @example([{"seq": 7, "type": "access", "at": z(at(9)), "gate": ["in-1"], "member": "m1", "decision": "granted",
               "passed": True}])
    def check(events: list[dict[str, Any]]) -> None:
        seen = store.record_own_history(w, [json.loads(json.dumps(e, default=str)) for e in events], ZONES, False)
        assert sum(seen.values()) <= 2 * len(events)
        assert store.balance("p1") is not None

    check()
    store.close()


# -- the link's session ------------------------------------------------------------------------

CONFIG = SessionConfig(prefix="gated", site="s1", daemon="gate-a", central_status_wait=2.0)
ASK = "gated/s1/gate-a/history/request"
ANSWER = "gated/s1/gate-a/history"
SINCE = datetime(2026, 11, 17, 11, 0, tzinfo=UTC)


def history_session(wanted: Wanted | None, *, unsure: bool = False) -> Session:
    s = Session(CONFIG, StoreState(has_snapshot=True, numbering_unsure=unsure, own_history=wanted), zones=ZONES)
    s.connect(100.0, "2026-11-18T11:00:00Z")
    s.receive("gated/central/status", json.dumps({"v": 1, "daemon": "central", "state": "online",
                                                   "at": "2026-11-18T11:00:00Z"}).encode(), 100.0, retained=True)
    return s


def asks(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.payload) for a in actions if isinstance(a, Publish) and a.topic == ASK]


def answer(request_id: str, seqs: list[int], more: bool, daemon: str = "gate-a") -> bytes:
    events = [{"id": f"e{q}", "seq": q, "type": "access", "at": "2026-11-18T09:00:00Z"} for q in seqs]
    return json.dumps({"v": 1, "daemon": daemon, "request_id": request_id, "events": events, "more": more}).encode()


def test_the_session_asks_once_its_numbers_are_known_and_again_until_the_last_chunk() -> None:
    s = history_session(Wanted(1, 300, SINCE), unsure=True)
    assert asks(s.tick(101.0, "2026-11-18T11:00:01Z")) == []  # the range is the central's word: not yet
    s.numbering_settled(300, None, 101.5)
    [req] = asks(s.tick(102.0, "2026-11-18T11:00:02Z"))
    assert (req["daemon"], req["from_seq"], req["to_seq"], req["since"]) == ("gate-a", 1, 300, "2026-11-17T11:00:00Z")
    assert asks(s.tick(110.0, "2026-11-18T11:00:10Z")) == []  # asked: not again before the retry
    [late] = asks(s.tick(133.0, "2026-11-18T11:00:33Z"))
    assert late["request_id"] != req["request_id"] and late["from_seq"] == 1
    assert s.receive(ANSWER, answer(req["request_id"], [1, 2], True), 134.0) == []  # an older request's
    assert s.stats["history_unasked"] == 1
    [first] = s.receive(ANSWER, answer(late["request_id"], [1, 2, 7], True), 134.0)
    assert isinstance(first, RecordOwnHistory) and not first.done and [e["seq"] for e in first.events] == [1, 2, 7]
    assert first.zones == ZONES
    # the rest lost with a connection: asked again from after what arrived
    [again] = asks(s.tick(165.0, "2026-11-18T11:01:05Z"))
    assert again["from_seq"] == 8
    [last] = s.receive(ANSWER, answer(again["request_id"], [9], False), 166.0)
    assert isinstance(last, RecordOwnHistory) and last.done
    assert last.wanted == Wanted(1, 300, SINCE)  # wanted again should the store not record it
    assert s.own_history.wanted is None
    s.want_history(last.wanted)  # it did not: asked again from the start
    assert asks(s.tick(167.0, "2026-11-18T11:01:07Z"))[0]["from_seq"] == 1
    s.receive(ANSWER, answer(asks(s.tick(200.0, "2026-11-18T11:01:40Z"))[0]["request_id"], [], False), 201.0)
    assert asks(s.tick(300.0, "2026-11-18T11:05:00Z")) == []


def test_nobody_else_answers_for_it() -> None:
    s = history_session(Wanted(1, 9, SINCE))
    [req] = asks(s.tick(101.0, "2026-11-18T11:00:01Z"))
    assert s.receive(ANSWER, answer(req["request_id"], [1], False, daemon="gate-b"), 102.0) == []
    assert s.receive(ANSWER, b'{"v": 1, "daemon": "gate-a", "request_id": "x", "events": [], "more": 7}', 102.0) == []
    assert s.stats["history_unasked"] == 1 and s.stats["invalid"] == 1
    assert s.own_history.wanted is not None


def test_not_asked_while_the_central_system_is_away_nor_a_day_after_the_loss() -> None:
    s = history_session(Wanted(1, 9, SINCE))
    s.receive("gated/central/status", b'{"v": 1, "daemon": "central", "state": "offline"}', 100.5)
    assert asks(s.tick(101.0, "2026-11-18T11:00:01Z")) == []
    s.receive("gated/central/status", json.dumps({"v": 1, "daemon": "central", "state": "online",
                                                   "at": "2026-11-18T11:00:02Z"}).encode(), 102.0)
    assert len(asks(s.tick(103.0, "2026-11-18T11:00:03Z"))) == 1
    # a day after the settle (`since` + 2 × 24 h), nothing of it is today's: no longer wanted
    [gone] = [a for a in s.tick(200.0, z(SINCE + 2 * HORIZON)) if isinstance(a, RecordOwnHistory)]
    assert gone.done and gone.events == () and gone.expired  # a refund waiting for them: an alarm (test_peers)
    assert s.own_history.wanted is None and s.stats["history_expired"] == 1


def test_a_session_without_a_loss_asks_nothing_but_listens() -> None:
    s = Session(CONFIG, StoreState(has_snapshot=True), zones=ZONES)
    subs = [a.topic for a in s.connect(100.0, "2026-11-18T11:00:00Z") if isinstance(a, Subscribe)]
    assert ANSWER in subs
    assert asks(s.tick(200.0, "2026-11-18T11:00:00Z")) == []



# -- what was decided without them, decided again (rules/recheck.py) ----------------------------

GRACE = Gate("in-1", "main", reentry_grace=timedelta(hours=2))
HARD = Gate("in-1", "main", anti_passback=AntiPassback.HARD)


def gap_tap(store: Store, gate: Gate, now: datetime, token: str | None = None) -> list[dict[str, Any]]:
    """Ana at the new box while its history is missing: decided and committed as any tap."""
    presented = (Presented(CredentialKind.QR, QrClaim(token, "m1", now, at(23))) if token
                 else Presented(CredentialKind.CARD))
    d = decide(store.view("m1", gate, now), presented, gate, SITE, POLICY, now)
    t = tap_of(gate, d, now)
    if token is not None:
        t = dc_replace(t, presented=presented, qr_token=(token, at(23)))
    return store.commit_tap(t, passed=True, now=now).events


def refunds(store: Store) -> list[tuple[Any, ...]]:
    return store.conn.execute(
        "SELECT r.amount, r.pass_id, json_extract(e.body, '$.refunds.seq'), json_extract(e.body, '$.because') "
        "FROM main.deductions r JOIN main.events e ON e.seq = r.seq WHERE r.cause = 'refund' ORDER BY r.seq").fetchall()


def alarms(store: Store, kind: str) -> list[dict[str, Any]]:
    return [json.loads(b) for (b,) in store.conn.execute(
        "SELECT body FROM main.events WHERE type = 'alarm' AND json_extract(body, '$.kind') = ?", (kind,))]


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted_before_the_answer"])
def test_a_walk_in_charged_again_within_the_grace_is_given_back_once(tmp_path: Path, restart: bool) -> None:
    """Ana walked in at the old box at 09:30 (old_box_events); at 11:05, its history not back,
    the new box charges her a walk-in (the gate's grace is 2 h: a free re-entry, had it
    known). When the history comes (after a restart, too: the gap is the ledger's) the charge
    is given back, once, naming why — not again on a second answer, nor after a restart."""
    path = tmp_path / "g.db"
    store = settled_new_box(path)
    store.set_gates({"in-1": GRACE})
    w = store.own_history_wanted()
    assert w is not None
    charged = gap_tap(store, GRACE, at(11, 5))
    assert [e["reason"] for e in charged if e["type"] == "access"] == ["walk_in"]
    charge = next(e for e in charged if e["type"] == "deduction")
    assert store.own_history_gap() == (1, 1)
    if restart:
        store.close()
        store = open_store(path)
        store.set_gates({"in-1": GRACE})
    before = store.balance("p1")
    seen = store.record_own_history(w, old_box_events(), ZONES, True, now=at(11, 20))
    assert seen["rechecked"] == 1 and seen["refunded"] == 1
    assert refunds(store) == [("-1", "p1", charge["seq"], "reentry_grace")]
    assert store.balance("p1") == before + 1
    audit = store.conn.execute("SELECT operator, action FROM main.audit WHERE action = 'history_refund'").fetchall()
    assert audit == [("gate", "history_refund")]
    # a second answer, a restart: nothing more
    assert "refunded" not in store.record_own_history(w, old_box_events(), ZONES, True, now=at(11, 30))
    store.close()
    store = open_store(path)
    store.set_gates({"in-1": GRACE})
    assert len(refunds(store)) == 1 and store.own_history_gap() is None
    # the desk cannot give it back again either: the walk-in is marked refunded
    assert store.conn.execute("SELECT refunded_by FROM main.deductions WHERE seq = ?", (charge["seq"],)).fetchone()[0]
    store.close()


@pytest.mark.parametrize("kind", ["qr_double_use", "anti_passback_missed"])
def test_a_qr_code_the_lost_part_used_or_an_entry_anti_passback_would_refuse_is_an_alarm(
    tmp_path: Path, kind: str
) -> None:
    """The old box let Ana in at 09:30 and used her QR code tok-1 at 09:40. The new box,
    without that, at 11:05: takes the same QR code again (`qr_double_use`), or lets her in
    under hard anti-passback, charged (`anti_passback_missed`: the charge stands, for the
    desk). Back: the alarm, once."""
    store = settled_new_box(tmp_path / "g.db")
    gate = GRACE if kind == "qr_double_use" else HARD
    store.set_gates({"in-1": gate})
    w = store.own_history_wanted()
    assert w is not None
    token = "tok-1" if kind == "qr_double_use" else None
    tapped = gap_tap(store, gate, at(11, 5), token=token)
    assert [e.get("token") for e in tapped if e["type"] == "access"] == [token]
    seen = store.record_own_history(w, old_box_events(), ZONES, True, now=at(11, 20))
    assert seen[kind] == 1 and "refunded" not in seen
    raised = alarms(store, kind)
    assert len(raised) == 1 and raised[0]["member"] == "m1" and raised[0]["gate"] == "in-1"
    if kind == "qr_double_use":
        assert raised[0]["token"] == "tok-1" and raised[0]["other"] == DAEMON
    else:
        assert "charged 1 on pass p1" in raised[0]["detail"]
    assert refunds(store) == []
    store.record_own_history(w, old_box_events(), ZONES, True, now=at(11, 30))
    assert len(alarms(store, kind)) == 1
    store.close()


def test_what_the_history_does_not_bear_on_stands(tmp_path: Path) -> None:
    """Past the grace (Ana's 09:30 entry, 2 h: at 11:45 a walk-in is due), and taps after the
    history came back: nothing repaired."""
    store = settled_new_box(tmp_path / "g.db")
    store.set_gates({"in-1": GRACE})
    w = store.own_history_wanted()
    assert w is not None
    gap_tap(store, GRACE, at(11, 45))
    seen = store.record_own_history(w, old_box_events(), ZONES, True, now=at(11, 50))
    assert seen["rechecked"] == 1 and "refunded" not in seen and refunds(store) == []
    store.close()


def test_a_grant_decided_before_the_history_came_and_committed_after_is_rechecked_at_its_commit(
    tmp_path: Path,
) -> None:
    """Ana granted a walk-in at 11:05 while the history was missing; she is still in the
    turnstile (the grant's intent open) when the last chunk is recorded at 11:05:30. Her
    commit at 11:06 takes the charge — and gives it back in the same transaction (decided
    without the history); another grant decided after it came is not rechecked."""
    store = settled_new_box(tmp_path / "g.db")
    store.set_gates({"in-1": GRACE})
    w = store.own_history_wanted()
    assert w is not None
    now = at(11, 5)
    d = decide(store.view("m1", GRACE, now), Presented(CredentialKind.CARD), GRACE, SITE, POLICY, now)
    assert d.amount == 1
    pending = store.open_intent(tap_of(GRACE, d, now), now)
    seen = store.record_own_history(w, old_box_events(), ZONES, True, now=now + timedelta(seconds=30))
    assert "rechecked" not in seen and refunds(store) == []
    events = store.commit_tap(pending, passed=True, now=at(11, 6)).events
    charge = next(e for e in events if e["type"] == "deduction" and e["cause"] == "walk_in")
    assert [(e["refunds"]["seq"], e["because"]) for e in events if e.get("cause") == "refund"] == [
        (charge["seq"], "reentry_grace")]
    assert store.conn.execute("SELECT 1 FROM main.meta WHERE key = ?", (LATE_KEY,)).fetchone() is None
    later = at(11, 7)  # out and back in, the history known: a free re-entry, nothing to recheck
    d = decide(store.view("m1", GRACE, later), Presented(CredentialKind.CARD), GRACE, SITE, POLICY, later)
    assert d.amount == 0
    store.commit_tap(store.open_intent(tap_of(GRACE, d, later), later), passed=True, now=later)
    assert len(refunds(store)) == 1
    store.close()


def test_a_booking_the_old_box_let_her_in_on_charged_again_at_the_new_box_is_given_back(tmp_path: Path) -> None:
    """A review's probe: the old box let Ana in on b9 at 11:48 (lost); the new box, at 11:55,
    lets her in on b9 again and charges it again. The history back, b9 was attended and
    11:55 a free re-entry (within the grace): the booking's charge given back."""
    store = without_mark(tmp_path / "g.db", applied=2)
    store.apply_sync(SyncBatch(bookings=[spin("b9", at(12), at(12, 45))]), at(9))
    store.hold_unsure()
    store.settle_numbering(2, at(11, 50))
    store.set_gates({"in-1": GRACE})
    w = store.own_history_wanted()
    assert w is not None
    charged = gap_tap(store, GRACE, at(11, 55))
    acc = next(e for e in charged if e["type"] == "access")
    charge = [e for e in charged if e["type"] == "deduction"]
    assert (acc["reason"], acc["booking"]) == ("booking", "b9") and len(charge) == 1, charged
    store.record_own_history(w, ana_came(1, "b9", at(11, 48)), ZONES, True, now=at(12, 5))
    assert [r[2] for r in refunds(store)] == [charge[0]["seq"]]
