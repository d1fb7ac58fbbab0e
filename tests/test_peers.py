"""A site whose turnstiles are separate daemons: each learns from the others' events
(sync/store/peer_events.py) what it must know to keep the books — found by `gated sim day`, where
every daemon made every booking a no-show (three no-show events, three fees) and the
desk could not refund a walk-in taken at the other turnstile.

Two stores stand for two daemons of one site; the events of one are handed to the other
as the link hands them (Store.record_peer_events)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gated.safety import Safety
from rules.credential import CredentialKind
from rules.decide import Presented, decide
from rules.model import AntiPassback, Gate, Policy, Site
from rules.reasons import Reason
from rules.schedule import NoShowHorizon
from simulator.central import Central, CentralSettings
from sync.protocol import EventBatch
from sync.records import BookingIn, MemberIn, PassIn, SitePassIn
from sync.store import Store, SyncBatch, evacuation
from sync.store.occupancy import occupancy
from tests.tap_fixtures import tap_of

TZ = ZoneInfo("Europe/Madrid")
SITE = Site(TZ, id="s1")
IN1 = Gate("in-1", "main")
IN2 = Gate("in-2", "main")
POLICY = Policy(no_show_fee=Decimal(1))
DAY = datetime(2026, 11, 18, tzinfo=TZ)
ALWAYS = {"mon-sun": "06:00-22:00"}


def at(hh: int, mm: int = 0) -> datetime:
    return DAY.replace(hour=hh, minute=mm)


_OPENED: list[Store] = []  # closed after each test: a worker runs many files, and a store
# left open holds its files' descriptors (select() in pyserial fails past 1024)


@pytest.fixture(autouse=True)
def _close_stores() -> Iterator[None]:
    yield
    while _OPENED:
        with contextlib.suppress(Exception):
            _OPENED.pop().close()


def opened(store: Store) -> Store:
    _OPENED.append(store)
    return store


def site_store(tmp: Path, daemon: str) -> Store:
    store = opened(Store(tmp / f"{daemon}.db", SITE, daemon_id=daemon, durable=False))
    visits = PassIn.model_validate({
        "id": "p1", "member": "m1", "name": "Multipack", "kind": "visits", "balance": 10, "deduct_on": "access",
        "walk_in_cost": 1, "access_windows": ALWAYS, "applied_seq": 0,
    })

    def booking(bid: str, name: str, start: datetime, end: datetime, points: int) -> BookingIn:
        return BookingIn.model_validate({
            "id": bid, "member": "m1", "pass": "p1", "class": name, "zone": "main",
            "starts_at": start.isoformat(), "ends_at": end.isoformat(), "loyalty_points": points,
        })

    bookings = [booking("b1", "Yoga", at(10), at(10, 45), 10), booking("b2", "Spinning", at(12), at(12, 45), 5)]
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])], [visits], bookings), at(6))
    store.run_due(POLICY, at(6))  # the day's time-driven work began then (nothing before is its)
    return store


def tap(store: Store, gate: Gate, now: datetime) -> Any:
    view = store.view("m1", gate, now)
    d = decide(view, Presented(CredentialKind.CARD), gate, SITE, POLICY, now)
    return d, store.commit_tap(tap_of(gate, d, now), passed=True, now=now)


def share(src: Store, dst: Store, events: list[dict[str, Any]], zones: dict[str, str]) -> dict[str, int]:
    """As the link does: the batch validated as it comes off the wire, then recorded."""
    batch = EventBatch.model_validate({"v": 1, "daemon": src.daemon_id, "events": events, "zones": zones})
    return dst.record_peer_events(src.daemon_id, [e.model_dump(mode="json") for e in batch.events], zones)


def test_a_booking_attended_at_the_other_turnstile_is_no_no_show_here(tmp_path: Path) -> None:
    a, clerk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    d, committed = tap(a, IN2, at(9, 50))
    assert d.reason == Reason.BOOKING and d.booking == "b1"
    seen = share(a, clerk, committed.events, {"in-2": "main"})
    # the booking's charge too: the site's balance of that pass (sync/store/peer_events.py)
    assert seen == {"remote_passages": 1, "remote_attended": 1, "remote_charges": 1}
    # the daemon doing the site's time-driven work: b2 nobody attended, b1 was attended
    due = clerk.run_due(POLICY, at(23))
    kinds = [(e["type"], e.get("booking"), e.get("status") or e.get("cause")) for e in due.events]
    assert ("attendance", "b1", "no_show") not in kinds
    assert ("attendance", "b2", "no_show") in kinds
    # b1's points are credited there, once; b2's member was on site before it ended: no fee
    assert [e["points"] for e in due.events if e["type"] == "loyalty"] == [10]
    assert not [e for e in due.events if e["type"] == "deduction"]
    assert clerk.run_due(POLICY, at(23, 30)).events == []
    # and the booking is not matched again at the clerk's own turnstile: a re-entry
    # within its arrival window is a walk-in (or a re-entry), never a second use of it
    again, _ = tap(clerk, IN1, at(10, 5))
    assert again.booking is None


def test_the_desk_refunds_a_walk_in_taken_at_the_other_turnstile_once(tmp_path: Path) -> None:
    """SPORTRICK's early arrival: charged a walk-in at in-2, the desk (in-1) marks the
    booking attended with a refund; in-2 learns it was refunded and does not refund it too."""
    in2, desk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    d, committed = tap(in2, IN2, at(9, 20))  # before b1's arrival window (09:45): a walk-in
    assert d.reason == Reason.WALK_IN and d.amount == 1
    assert share(in2, desk, committed.events, {"in-2": "main"})["remote_charges"] == 1
    marked = desk.mark_attended("b1", "desk", refund=True, now=at(10, 10))
    refund = [e for e in marked.events if e["type"] == "deduction"]
    assert len(refund) == 1
    assert refund[0]["amount"] == -1 and refund[0]["pass"] == "p1" and refund[0]["cause"] == "refund"
    assert refund[0]["refunds"] == {"daemon": "s1-in-2", "seq": committed.events[1]["seq"]}
    # the site's balance, as every daemon of it sees it: central 10, in-2's charge (1) and
    # the desk's refund (-1) not yet applied there
    assert desk.balance("p1") == Decimal(10)
    # the desk does not give it back twice
    again = desk.mark_attended("b2", "desk", refund=True, now=at(12, 10))
    assert not [e for e in again.events if e["type"] == "deduction"]
    # nor does in-2's own desk, once it has heard of the refund
    seen = share(desk, in2, marked.events + again.events, {})
    assert seen["remote_refunds"] == 1 and seen["remote_attended"] == 2
    assert in2.balance("p1") == Decimal(10)
    third = in2.mark_attended("b1", "other-desk", refund=True, now=at(12, 20))
    assert not [e for e in third.events if e["type"] == "deduction"]


def test_a_desk_refund_before_its_request_in_one_batch_leaves_the_request_given_at_the_others(tmp_path: Path) -> None:
    """SCENARIOS.md orders one action's events deduction, then attendance: the desk's
    refund now reaches the site's other daemons before the request it settles. The request
    must still be known as given there; left open, it would stand ahead of their own
    desk's requests for that member's walk-ins for the rest of the day."""
    in2, desk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    _, charge = tap(in2, IN2, at(9, 20))
    share(in2, desk, charge.events, {"in-2": "main"})
    marked = desk.mark_attended("b1", "desk", refund=True, now=at(10, 10))
    assert [e["type"] for e in marked.events] == ["deduction", "attendance"]
    share(desk, in2, marked.events, {})
    assert in2.conn.execute("SELECT daemon, booking_id, settled FROM site_refund_asks").fetchall() == [
        ("s1-in-1", "b1", 1)]
    # and heard again (a resend, a catch-up) it stays given
    share(desk, in2, marked.events, {})
    assert in2.conn.execute("SELECT settled FROM site_refund_asks").fetchall() == [(1,)]


def test_a_refund_asked_for_before_the_other_turnstile_is_heard_waits_for_its_charge(tmp_path: Path) -> None:
    """The desk asks for the refund of a walk-in charged at in-2 before the desk's daemon
    has heard in-2's events (it had just started; the broker was restarting): not "nothing
    to give back" — the request waits, and the charge is given back when it arrives."""
    in2, desk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    _, committed = tap(in2, IN2, at(9, 20))  # a walk-in at in-2, not heard at the desk yet
    marked = desk.mark_attended("b1", "desk", refund=True, now=at(10, 10), waiting=["s1-in-2"])
    assert [e["type"] for e in marked.events] == ["attendance"]
    wanted = desk.refund_wanted("b1")
    assert wanted is not None and wanted.waiting == ("s1-in-2",) and wanted.asked_at == at(10, 10)
    # still unheard: nothing to do, no transaction
    assert desk.settle_refunds(at(10, 11), lambda _: ["s1-in-2"]).events == []
    share(in2, desk, committed.events, {"in-2": "main"})
    # the charge came, but in-2 is not heard up to the request yet: its own desk may have
    # given it back meanwhile (test_a_charge_found_is_not_given_back_while_its_turnstile_is_unheard)
    assert desk.settle_refunds(at(10, 12), lambda _: ["s1-in-2"]).events == []
    settled = desk.settle_refunds(at(10, 12), lambda _: [])
    [refund] = settled.events
    assert (refund["type"], refund["cause"], refund["amount"], refund["booking"]) == ("deduction", "refund", -1, "b1")
    assert refund["refunds"] == {"daemon": "s1-in-2", "seq": committed.events[1]["seq"]}
    assert desk.refund_wanted("b1") is None and desk.refunds_waiting() == 0
    assert desk.settle_refunds(at(10, 13), lambda _: []).events == []  # once
    audit = desk.conn.execute("SELECT operator, action FROM audit WHERE action LIKE 'refund%'").fetchall()
    assert audit == [("desk", "refund_settled")]
    # a walk-in charged after the desk asked is not this request's
    again = desk.mark_attended("b2", "desk", refund=True, now=at(12, 10), waiting=["s1-in-2"])
    assert desk.refund_wanted("b2") is not None and [e["type"] for e in again.events] == ["attendance"]
    _, later = tap(in2, IN2, at(12, 15))
    share(in2, desk, later.events, {"in-2": "main"})
    assert desk.settle_refunds(at(12, 16), lambda _: ["s1-in-2"]).events == []
    assert desk.refund_wanted("b2") is not None


def test_one_walk_in_is_given_back_once_for_two_waiting_requests(tmp_path: Path) -> None:
    """A member with two classes that day paid one walk-in at in-2; the desk marks both
    attended with a refund while in-2 is not heard. One scheduler pass settles both: the
    walk-in is given back once (both took the same charge before: the balance went up)."""
    in2, desk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    _, committed = tap(in2, IN2, at(9, 20))
    desk.mark_attended("b1", "desk", refund=True, now=at(12, 30), waiting=["s1-in-2"])
    desk.mark_attended("b2", "desk", refund=True, now=at(12, 31), waiting=["s1-in-2"])
    share(in2, desk, committed.events, {"in-2": "main"})
    settled = desk.settle_refunds(at(12, 40), lambda _: [])
    refunds = [e for e in settled.events if e["type"] == "deduction"]
    assert [(e["booking"], e["refunds"]) for e in refunds] == [("b1", {"daemon": "s1-in-2", "seq": committed.events[1]["seq"]})]
    assert desk.refunds_waiting() == 0
    audit = desk.conn.execute("SELECT action FROM audit WHERE action LIKE 'refund%' ORDER BY rowid").fetchall()
    assert audit == [("refund_settled",), ("refund_none",)]
    assert desk.balance("p1") == Decimal(10)  # central 10, in-2's charge and the one refund


def test_a_charge_found_is_not_given_back_while_its_turnstile_is_unheard(tmp_path: Path) -> None:
    """The desk (in-1) asks for the refund of in-2's walk-in with in-2 not heard up to the
    request; in-2's own desk gives the same walk-in back (another class of the member's
    day). in-1 hears in-2's charge before that refund (a catch-up comes in order, in
    chunks): it waits, and once in-2 is heard up to the request the charge is given back
    already — nothing twice."""
    in2, desk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    _, charge = tap(in2, IN2, at(9, 20))
    share(in2, desk, charge.events, {"in-2": "main"})  # the charge is here already
    marked = desk.mark_attended("b1", "desk", refund=True, now=at(12, 30), waiting=["s1-in-2"])
    assert [e["type"] for e in marked.events] == ["attendance"]  # found, but in-2 may have given it back
    theirs = in2.mark_attended("b2", "desk-2", refund=True, now=at(12, 29))
    assert [e["cause"] for e in theirs.events if e["type"] == "deduction"] == ["refund"]
    assert desk.settle_refunds(at(12, 40), lambda _: ["s1-in-2"]).events == []
    share(in2, desk, theirs.events, {"in-2": "main"})
    assert desk.settle_refunds(at(12, 41), lambda _: []).events == []
    assert desk.conn.execute("SELECT action FROM audit WHERE action LIKE 'refund%'").fetchall() == [("refund_none",)]
    assert desk.balance("p1") == Decimal(10)


def test_a_walk_in_given_back_twice_is_an_alarm_at_each_daemon_that_gave_it(tmp_path: Path) -> None:
    """Two desks gave back the same walk-in, neither having heard the other's refund (one
    of them a daemon of an older version, whose requests the others do not order, or one
    left out of the site's configuration): the member was paid back twice. Each daemon
    whose refund it is says so when it hears of the other — once, whatever is sent again
    — and a daemon that gave neither says nothing."""
    in2, desk, out = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1"), site_store(tmp_path, "s1-out-1")
    _, charge = tap(in2, IN2, at(9, 20))
    for other in (desk, out):
        share(in2, other, charge.events, {"in-2": "main"})
    ours = desk.mark_attended("b1", "desk", refund=True, now=at(12, 30), waiting=[])
    theirs = in2.mark_attended("b2", "desk-2", refund=True, now=at(12, 29), waiting=[])
    refund = {s.daemon_id: [e for e in c.events if e["type"] == "deduction"]
              for s, c in ((desk, ours), (in2, theirs))}
    assert all(len(r) == 1 and r[0]["cause"] == "refund" for r in refund.values())
    the_charge = {"daemon": "s1-in-2", "seq": charge.events[1]["seq"]}
    both = [{"daemon": "s1-in-2", "seq": refund["s1-in-2"][0]["seq"]},  # 12:29, then 12:30
            {"daemon": "s1-in-1", "seq": refund["s1-in-1"][0]["seq"]}]

    def alarms(store: Store) -> list[dict[str, Any]]:
        rows = store.conn.execute("SELECT body FROM events WHERE type = 'alarm'").fetchall()
        return [a for a in (json.loads(r[0]) for r in rows) if a["kind"] == "double_refund"]

    share(desk, in2, ours.events, {})
    share(in2, desk, theirs.events, {"in-2": "main"})
    for store in (in2, desk):
        [alarm] = alarms(store)
        assert (alarm["member"], alarm["pass"], alarm["charges"], alarm["refunds"]) == ("m1", "p1", [the_charge], both)
        assert "given back twice" in alarm["detail"]
    # sent again (a resend, a catch-up): no second alarm
    share(desk, in2, ours.events, {})
    share(in2, desk, theirs.events, {"in-2": "main"})
    assert len(alarms(in2)) == 1 and len(alarms(desk)) == 1
    # a third daemon hearing both: neither refund is its own
    share(desk, out, ours.events, {})
    share(in2, out, theirs.events, {"in-2": "main"})
    assert alarms(out) == []
    # the site's balance says it too: central 10, one walk-in, two refunds
    assert out.balance("p1") == Decimal(11)


def test_a_waiting_refund_with_nothing_charged_is_dropped_once_everyone_is_heard(tmp_path: Path) -> None:
    desk = site_store(tmp_path, "s1-in-1")
    desk.mark_attended("b1", "desk", refund=True, now=at(10, 10), waiting=["s1-in-2", "s1-out-1"])
    asked: list[datetime] = []

    def only_out(instant: datetime) -> list[str]:
        asked.append(instant)
        return ["s1-out-1"]

    assert desk.settle_refunds(at(10, 11), only_out).events == []  # who it waits for, updated
    assert asked and set(asked) == {at(10, 10)}  # heard up to the request, not up to now
    wanted = desk.refund_wanted("b1")
    assert wanted is not None and wanted.waiting == ("s1-out-1",)
    assert desk.settle_refunds(at(10, 12), lambda _: []).events == []
    assert desk.refund_wanted("b1") is None
    assert desk.conn.execute("SELECT action FROM audit WHERE action LIKE 'refund%'").fetchall() == [("refund_none",)]
    # and a refund asked for with everyone heard and nothing charged is none at once
    desk.mark_attended("b2", "desk", refund=True, now=at(12, 10), waiting=[])
    assert desk.refunds_waiting() == 0


def test_a_refund_waiting_a_day_for_a_daemon_never_heard_again_is_an_alarm(tmp_path: Path) -> None:
    desk = site_store(tmp_path, "s1-in-1")
    desk.mark_attended("b1", "desk", refund=True, now=at(10, 10), waiting=["s1-in-2"])
    assert desk.settle_refunds(at(10, 10) + timedelta(hours=23), lambda _: ["s1-in-2"]).events == []
    [alarm] = desk.settle_refunds(at(10, 10) + timedelta(hours=24), lambda _: ["s1-in-2"]).events
    assert (alarm["type"], alarm["kind"]) == ("alarm", "refund_unsettled")
    assert "b1" in alarm["detail"] and "s1-in-2" in alarm["detail"]
    assert desk.refunds_waiting() == 0


def test_a_waiting_refund_survives_a_restart(tmp_path: Path) -> None:
    in2, desk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    _, committed = tap(in2, IN2, at(9, 20))
    desk.mark_attended("b1", "desk", refund=True, now=at(10, 10), waiting=["s1-in-2"])
    desk.close()
    again = opened(Store(tmp_path / "s1-in-1.db", SITE, daemon_id="s1-in-1", durable=False))
    share(in2, again, committed.events, {"in-2": "main"})
    [refund] = again.settle_refunds(at(10, 20), lambda _: []).events
    assert refund["refunds"] == {"daemon": "s1-in-2", "seq": committed.events[1]["seq"]}


def test_a_charge_at_the_other_turnstile_counts_once_after_the_central_applied_it(tmp_path: Path) -> None:
    """The decision's balance is the site's balance: a peer's charge the central system
    has applied (its `applied` map names it) is in the central balance already and is not
    taken off again. Before the fix the member view took every peer charge ever heard off
    the central balance, so a member with one visit left was refused at every other
    turnstile once the central had counted a visit made at one of them."""
    in2, in1 = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    d, committed = tap(in2, IN2, at(9, 20))  # a walk-in at in-2: 10 -> 9
    assert d.reason == Reason.WALK_IN
    share(in2, in1, committed.events, {"in-2": "main"})
    (charge,) = [e for e in committed.events if e["type"] == "deduction"]
    assert in1.balance("p1") == Decimal(9)
    assert [p.balance for p in in1.view("m1", IN1, at(9, 30)).passes] == [Decimal(9)]
    # the central system applied in-2's charge (and other visits since): one visit left
    applied = SitePassIn.model_validate({
        "id": "p1", "member": "m1", "name": "Multipack", "kind": "visits", "balance": 1, "deduct_on": "access",
        "walk_in_cost": 1, "access_windows": ALWAYS, "applied_seq": 0, "applied_peers": {"s1-in-2": charge["seq"]},
    })
    in1.apply_sync(SyncBatch([], [applied], []), at(9, 40))
    assert in1.balance("p1") == Decimal(1)
    assert [p.balance for p in in1.view("m1", IN1, at(9, 45)).passes] == [Decimal(1)]
    d, _ = tap(in1, IN1, at(9, 45))  # for Yoga at 10:00, on the last visit
    assert d.granted and d.booking == "b1" and d.pass_id == "p1" and d.amount == 1
    assert in1.balance("p1") == Decimal(0)


def test_a_peer_no_show_does_not_undo_an_attendance(tmp_path: Path) -> None:
    a, b = site_store(tmp_path, "a"), site_store(tmp_path, "b")
    _, committed = tap(a, IN1, at(9, 50))
    late_no_show = {"id": "x1", "seq": 99, "type": "attendance", "at": "2026-11-18T10:01:00Z", "member": "m1",
                    "booking": "b1", "status": "no_show", "by": "gate"}
    share(a, b, committed.events, {"in-1": "main"})
    assert share(a, b, [late_no_show], {}) == {}  # attended stays attended
    assert b.booking_status("b1") is not None and b.booking_status("b1").value == "attended"  # type: ignore[union-attr]


def test_a_no_show_fee_taken_without_hearing_a_turnstile_is_given_back_when_its_attendance_arrives(
    tmp_path: Path,
) -> None:
    """in-2 lets m1 in on b1 at 09:50 and then goes unheard; the clerk (in-1), having
    waited `peer_wait_limit`, settles b1 as a no-show and takes its fee. in-2 comes back:
    its attendance wins over the no-show — and the clerk, who took the fee, gives it back
    (a refund naming it), once, however often the attendance is sent; in-2, which hears
    the fee and its refund, gives nothing back."""
    in2, clerk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    d, came = tap(in2, IN2, at(9, 50))
    assert d.booking == "b1"
    due = clerk.run_due(POLICY, at(12, 30), NoShowHorizon(at(11), forced=True), lambda _: ["s1-in-2"]).events
    [fee] = [e for e in due if e["type"] == "deduction"]
    assert (fee["booking"], fee["cause"], fee["amount"]) == ("b1", "no_show_fee", 1)
    assert clerk.balance("p1") == Decimal(9)
    last = clerk.last_seq
    share(in2, clerk, came.events, {"in-2": "main"})
    assert clerk.booking_status("b1") is not None and clerk.booking_status("b1").value == "attended"  # type: ignore[union-attr]
    [refund] = clerk.events_after(last)
    assert (refund["type"], refund["cause"], refund["amount"], refund["booking"], refund["refunds"]) == (
        "deduction", "refund", -1, "b1", {"daemon": "s1-in-1", "seq": fee["seq"], "cause": "no_show_fee"})
    # central 10, in-2's booking charge (1), the fee (1) and its refund (-1)
    assert clerk.balance("p1") == Decimal(9)
    share(in2, clerk, came.events, {"in-2": "main"})  # a resend, a catch-up
    assert clerk.events_after(last) == [refund]
    assert clerk.mark_attended("b1", "desk", refund=False, now=at(12, 40)).events[-1]["type"] == "attendance"
    assert [e["type"] for e in clerk.events_after(refund["seq"])] == ["attendance"]  # given back once
    before = in2.last_seq
    share(clerk, in2, due + [refund], {})
    assert in2.last_seq == before and in2.balance("p1") == Decimal(9)


def test_staff_marking_a_fined_no_show_attended_leave_the_fee_standing(tmp_path: Path) -> None:
    """Nobody came to b2 (12:00) as far as the gates saw: a no-show and its fee. The desk
    marks it attended: the fee stands (the contract's mark_attended gives back a walk-in and
    nothing else; the fee stands in for the class b2 was to pay at the gate). With a walk-in
    that day, the refund gives back the walk-in only. A site's other daemon that hears the
    desk's attendance gives nothing back either, and the fee stays kept for good: a gate's
    attendance heard afterwards does not give it back."""
    store = site_store(tmp_path, "s1-in-1")
    due = store.run_due(POLICY, at(13, 5)).events
    fees = {e["booking"]: e for e in due if e["type"] == "deduction"}
    assert sorted(fees) == ["b1", "b2"] and store.balance("p1") == Decimal(8)
    marked = store.mark_attended("b2", "desk", refund=False, now=at(13, 30)).events
    assert [(e["type"], e.get("status"), e.get("by")) for e in marked] == [("attendance", "attended", "desk")]
    assert store.balance("p1") == Decimal(8)
    assert store.refund_given("b2") is None
    _, walk_in = tap(store, IN1, at(13, 40))
    with_refund = store.mark_attended("b1", "desk", refund=True, now=at(13, 50)).events
    back = [e for e in with_refund if e["type"] == "deduction"]
    assert [e["refunds"]["seq"] for e in back] == [walk_in.events[1]["seq"]]
    assert store.refund_given("b1") == {"pass": "p1", "amount": 1, "balance": 8}
    # a gate's attendance of b2 heard afterwards (a resend with the wrong word, say): kept
    gate_said = {"id": "g1", "seq": 7, "type": "attendance", "at": "2026-11-18T12:10:00Z", "gate": "in-2",
                 "member": "m1", "booking": "b2", "status": "attended", "by": "gate"}
    last = store.last_seq
    store.record_peer_events("s1-in-2", [gate_said], {"in-2": "main"}, now=at(14))
    assert [e for e in store.events_after(last) if e["type"] == "deduction"] == []
    assert store.balance("p1") == Decimal(8)


def test_a_peer_desk_marking_our_fined_no_show_attended_leaves_our_fee_standing(tmp_path: Path) -> None:
    """The clerk (in-1) fined b1's no-show; in-2's desk marks b1 attended. The clerk hears
    it: the fee stands there too (only a gate's attendance shows the member was on site)."""
    in2, clerk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    due = clerk.run_due(POLICY, at(11, 5)).events
    assert [e["booking"] for e in due if e["type"] == "deduction"] == ["b1"]
    share(clerk, in2, due, {})
    marked = in2.mark_attended("b1", "desk-2", refund=False, now=at(12)).events
    last = clerk.last_seq
    share(in2, clerk, marked, {})
    assert clerk.booking_status("b1") is not None and clerk.booking_status("b1").value == "attended"  # type: ignore[union-attr]
    assert clerk.events_after(last) == [] and clerk.balance("p1") == Decimal(9)


def test_a_no_show_whose_entry_nobody_saw_is_not_fined_here_nor_at_the_other_daemons(tmp_path: Path) -> None:
    """At in-2 m1 is granted on b1 (Yoga 10:00) at 09:50, the turnstile released — and the
    relay board goes silent: nobody knows whether she went through (`passage_unconfirmed`).
    She may have been in Yoga, and on site for Spinning (12:00) too: neither no-show is
    fined, at in-2 or at the clerk who hears in-2 (once, however often it is sent), and
    each no-show names the grant for the person who settles it. A daemon that never heard
    of the grant fines both, as ever."""
    in2, clerk, unaware = (site_store(tmp_path, d) for d in ("s1-in-2", "s1-in-1", "s1-out-1"))
    d = decide(in2.view("m1", IN2, at(9, 50)), Presented(CredentialKind.CARD), IN2, SITE, POLICY, at(9, 50))
    assert d.granted and d.booking == "b1"
    opened = in2.open_intent(tap_of(IN2, d, at(9, 50)), at(9, 50))
    unseen = in2.commit_tap(opened, passed=False, now=at(9, 51), unconfirmed="relay_unreadable").events
    assert [e["type"] for e in unseen] == ["access", "passage_unconfirmed"]
    grant = {"gate": "in-2", "granted_at": "2026-11-18T08:50:00Z"}

    def settled(store: Store) -> list[tuple[str, str, Any]]:
        due = store.run_due(POLICY, at(13, 5)).events
        return [(e["type"], e["booking"], e.get("unconfirmed") or e.get("cause")) for e in due]

    no_fees = [("attendance", "b1", [grant]), ("attendance", "b2", [grant])]
    assert settled(in2) == no_fees and in2.balance("p1") == Decimal(10)
    assert share(in2, clerk, unseen, {"in-2": "main"}) == {"remote_unconfirmed": 1}
    assert share(in2, clerk, unseen, {"in-2": "main"}) == {}  # a resend, a catch-up
    assert settled(clerk) == no_fees and clerk.balance("p1") == Decimal(10)
    assert settled(unaware) == [("deduction", "b1", "no_show_fee"), ("attendance", "b1", None),
                                ("deduction", "b2", "no_show_fee"), ("attendance", "b2", None)]


def test_a_grant_a_crash_cut_off_is_not_fined_as_a_no_show(tmp_path: Path) -> None:
    """The daemon dies between releasing the turnstile for m1's Yoga booking and the commit
    (a power cut): the next start reports the grant (`passage_unconfirmed`). The member may
    have gone through: Yoga's no-show is not fined."""
    store = site_store(tmp_path, "s1-in-1")
    d = decide(store.view("m1", IN1, at(9, 50)), Presented(CredentialKind.CARD), IN1, SITE, POLICY, at(9, 50))
    assert d.booking == "b1"
    store.open_intent(tap_of(IN1, d, at(9, 50)), at(9, 50))
    store.close()
    store = opened(Store(tmp_path / "s1-in-1.db", SITE, daemon_id="s1-in-1", durable=False))
    [reported] = store.report_unconfirmed(at(9, 58)).events
    assert reported["type"] == "passage_unconfirmed" and "zone" not in reported
    due = store.run_due(POLICY, at(11, 5)).events
    assert [(e["type"], e["booking"], e.get("unconfirmed")) for e in due] == [
        ("attendance", "b1", [{"gate": "in-1", "granted_at": "2026-11-18T08:50:00Z"}])]
    assert store.balance("p1") == Decimal(10)


def test_peer_events_with_garbage_are_counted_not_recorded(tmp_path: Path) -> None:
    a, b = site_store(tmp_path, "a"), site_store(tmp_path, "b")
    bad = [
        {"id": "1", "seq": 1, "type": "deduction", "at": "2026-11-18T09:00:00Z", "gate": "in-1", "member": "m1",
         "pass": "p1", "amount": "Infinity", "cause": "walk_in"},
        {"id": "2", "seq": 2, "type": "deduction", "at": "not a time", "gate": "in-1", "member": "m1",
         "pass": "p1", "amount": 1, "cause": "walk_in"},
        {"id": "3", "seq": 3, "type": "deduction", "at": "2026-11-18T09:00:00Z", "gate": "in-1", "member": "m1",
         "pass": "p1", "amount": -1, "cause": "refund", "refunds": {"daemon": 5, "seq": "x"}},
    ]
    # the refund still moves the pass's balance; what it names as refunded is not believed
    assert share(a, b, bad, {"in-1": "main"}) == {"invalid": 2, "remote_charges": 1}
    assert b.conn.execute("SELECT COUNT(*) FROM site_refunds").fetchone()[0] == 0
    assert b.mark_attended("b1", "desk", refund=True, now=at(10)).events[0]["type"] == "attendance"


def test_the_central_keeps_attended_over_a_later_no_show(tmp_path: Path) -> None:
    central = Central(CentralSettings(), tmp_path / "central.db")
    central.load("s1", [{"id": "m1", "cards": ["C1"]}], [], [])

    def batch(daemon: str, status: str) -> EventBatch:
        return EventBatch.model_validate({"v": 1, "daemon": daemon, "events": [
            {"id": f"{daemon}-1", "seq": 1, "type": "attendance", "at": "2026-11-18T10:00:00Z", "member": "m1",
             "booking": "b1", "status": status, "by": "gate"}]})

    central.apply_events("s1", batch("in-2", "attended"))
    central.apply_events("s1", batch("in-1", "no_show"))  # the clerk had not heard of it
    assert central.attendance("s1", "b1") == "attended"
    central.apply_events("s1", batch("in-3", "attended"))
    assert central.attendance("s1", "b1") == "attended"
    other = Central(CentralSettings(), tmp_path / "c2.db")
    other.apply_events("s1", batch("in-1", "no_show"))
    other.apply_events("s1", batch("desk", "attended"))  # staff mark a no-show attended
    assert other.attendance("s1", "b1") == "attended"


def test_the_others_events_do_not_fill_the_time_cache(tmp_path: Path) -> None:
    """Found by `gated sim day --trace-memory`: every other daemon's event went through the
    cached parse of times; each `at` is unique, so the cache only grew (65,536 entries,
    18 MB, freed only by a restart). Class times are cached; event times are not."""
    from rules.timeutil import parse_instant

    a, b = site_store(tmp_path, "a"), site_store(tmp_path, "b")
    before = parse_instant.cache_info().currsize
    events = [{"id": f"e{i}", "seq": i, "type": "access", "at": f"2026-11-18T09:{i // 60:02d}:{i % 60:02d}.{i:06d}Z",
               "gate": "in-1", "member": "m1", "decision": "granted", "reason": "walk_in", "passed": True}
              for i in range(1, 301)]
    assert share(a, b, events, {"in-1": "main"})["remote_passages"] == 300
    assert parse_instant.cache_info().currsize == before



# -- an evacuation (sync/store/evacuation.py) --------------------------------------------------


async def test_an_evacuation_at_one_daemon_lets_everyone_back_in_at_every_daemon(tmp_path: Path) -> None:
    """m1 came in at in-1 and left with everyone when the fire alarm went off at in-2's
    daemon (its fire input), through a released door, without a tap. Back after the alarm,
    at either turnstile: not refused as still inside (hard anti-passback), not counted in
    the zone's occupancy, and not charged a second visit."""
    a, b = site_store(tmp_path, "s1-in-1"), site_store(tmp_path, "s1-in-2")
    hard1, hard2 = (replace(g, anti_passback=AntiPassback.HARD) for g in (IN1, IN2))
    d, committed = tap(a, hard1, at(9))
    assert d.reason == Reason.WALK_IN and d.amount == 1
    share(a, b, committed.events, {"in-1": "main"})
    assert occupancy(b, "main", at(9, 5)) == occupancy(a, "main", at(9, 5)) == 1

    async def alarm(kind: str, detail: str) -> None:
        pass

    fire = Safety(b, {}, lambda: at(10, 30), alarm)
    await fire.fire_input_read(True)
    assert evacuation.latest(b.conn) == at(10, 30)
    raised = [e for e in b.outbox.events_after(0) if e["type"] == "fire_alarm"]
    assert [e["active"] for e in raised] == [True]
    seen = share(b, a, raised, {"in-2": "main"})
    assert seen["remote_evacuations"] == 1
    assert evacuation.latest(a.conn) == at(10, 30)
    # the all-clear (its event says active: false) moves nothing
    fire.clock = lambda: at(11)
    await fire.fire_input_read(False)
    cleared = [e for e in b.outbox.events_after(raised[-1]["seq"]) if e["type"] == "fire_alarm"]
    assert [e["active"] for e in cleared] == [False]
    assert share(b, a, cleared, {"in-2": "main"}).get("remote_evacuations", 0) == 0
    # an old alarm heard late (a catch-up) does not move it back
    old = {**raised[0], "seq": raised[0]["seq"], "at": at(8).astimezone(ZoneInfo("UTC")).isoformat()}
    assert share(b, a, [old], {"in-2": "main"}).get("remote_evacuations", 0) == 0
    assert evacuation.latest(a.conn) == at(10, 30)

    for store, gate in ((a, hard1), (b, hard2)):
        assert occupancy(store, "main", at(11, 5)) == 0
        assert store.view("m1", gate, at(11, 5)).presence["main"].evacuated_at == at(10, 30)
    d, committed = tap(a, hard1, at(11, 10))
    assert d.granted and d.reason == Reason.REENTRY and d.amount == 0
    assert a.balance("p1") == 9  # the one visit of the morning
    # back inside now, by the rules as usual: counted, and refused a second entry at in-2
    share(a, b, committed.events, {"in-1": "main"})
    assert occupancy(a, "main", at(11, 15)) == occupancy(b, "main", at(11, 15)) == 1
    d, _ = tap(b, hard2, at(11, 20))
    assert d.reason == Reason.ANTI_PASSBACK


def test_evacuation_value_moves_only_forwards_and_a_foreign_value_is_none(tmp_path: Path) -> None:
    store = site_store(tmp_path, "s1-in-1")
    assert evacuation.latest(store.conn) is None
    with store.transaction() as tx:
        assert evacuation.record(tx.conn, at(10))
        assert not evacuation.record(tx.conn, at(9))
        assert not evacuation.record(tx.conn, at(10))
    assert evacuation.latest(store.conn) == at(10)
    store.set_meta(evacuation.KEY, "yesterday")
    assert evacuation.latest(store.conn) is None


def test_evacuations_keep_their_spans(tmp_path: Path) -> None:
    """How long each evacuation lasted, for the no-shows: the earliest all-clear ends it, a
    daemon that saw it first moves its start back, one seen again (a restart) or heard
    late adds nothing, and only the last `KEPT` are kept."""
    store = site_store(tmp_path, "s1-in-1")
    spans = lambda: evacuation.spans_of(store.conn)  # noqa: E731
    with store.transaction() as tx:
        assert not evacuation.record_end(tx.conn, at(9))  # nothing under way
        evacuation.record(tx.conn, at(10, 1))
        evacuation.record(tx.conn, at(10))  # another daemon's input read a second earlier
        evacuation.record(tx.conn, at(10, 5))  # a daemon restarted during it
        assert spans() == [(at(10), None)]
        assert evacuation.record_end(tx.conn, at(10, 21))
        assert not evacuation.record_end(tx.conn, at(10, 22))  # the next daemon's all-clear
        assert evacuation.record_end(tx.conn, at(10, 20))  # an earlier one, heard after
        evacuation.record(tx.conn, at(10, 10))  # within it, heard late
        evacuation.record(tx.conn, at(8))  # before it, heard late: its end unknown
        assert spans() == [(at(10), at(10, 20))]
        evacuation.record(tx.conn, at(15))
        assert not evacuation.record_end(tx.conn, at(14))  # an all-clear from before it began
        assert spans() == [(at(10), at(10, 20)), (at(15), None)]
        for i in range(evacuation.KEPT):
            evacuation.record_end(tx.conn, at(16, 2 * i))
            evacuation.record(tx.conn, at(16, 2 * i + 1))
    assert len(spans()) == evacuation.KEPT and spans()[-1] == (at(16, 2 * evacuation.KEPT - 1), None)
    store.set_meta(evacuation.SPANS_KEY, '[["noon", null]]')
    assert spans() == []


async def test_a_class_the_site_was_evacuated_during_charges_no_no_show_fee(tmp_path: Path) -> None:
    """The fire alarm sounds at in-2's daemon at 10:30, during m1's 10:00 Yoga class; the
    all-clear comes at 10:40. The desk's daemon (in-1), settling the no-shows, has heard
    both: the Yoga booking is a no-show without a fee (the gate kept everyone out, the class
    was cut short); the 12:00 class, well after the all-clear, is charged as ever."""
    a, b = site_store(tmp_path, "s1-in-1"), site_store(tmp_path, "s1-in-2")

    async def alarm(kind: str, detail: str) -> None:
        pass

    fire = Safety(b, {}, lambda: at(10, 30), alarm)
    await fire.fire_input_read(True)
    fire.clock = lambda: at(10, 40)
    await fire.fire_input_read(False)
    assert evacuation.spans_of(b.conn) == [(at(10, 30), at(10, 40))]
    events = [e for e in b.outbox.events_after(0) if e["type"] == "fire_alarm"]
    seen = share(b, a, events, {"in-2": "main"})
    assert seen["remote_evacuations"] == 1 and seen["remote_all_clears"] == 1
    assert evacuation.spans_of(a.conn) == [(at(10, 30), at(10, 40))]
    committed = a.run_due(POLICY, at(13, 5))
    outcomes = {e["booking"]: e["status"] for e in committed.events if e["type"] == "attendance"}
    assert outcomes == {"b1": "no_show", "b2": "no_show"}
    fees = [(e["booking"], Decimal(str(e["amount"]))) for e in committed.events if e["type"] == "deduction"]
    assert fees == [("b2", Decimal(1))]
    assert a.balance("p1") == 9


def test_events_heard_but_not_recorded_are_not_heard() -> None:
    """The link heard in-2's events 4..6 but the store could not record them (a full
    disk): the mark goes back to 3 and says nothing heard through any instant until a
    catch-up brings them again and a heartbeat covers them. Before, in-2's next heartbeat
    made them "heard": its walk-in charge and attendance missing for good, a refund
    decided without them, a no-show settled against a class attended there."""
    from sync.link.peer_marks import PeerMarks

    marks = PeerMarks(grace=3.0, retry=10.0)
    marks.answered("in-2", 1, 3, [1, 2, 3])
    marks.claimed("in-2", 3, 1000.0, True, now=0.0)
    assert marks.behind(1000.0) == [] and marks.through() == 1000.0
    assert marks.heard("in-2", [4, 5, 6])
    marks.not_recorded("in-2", 4)
    assert marks.marks["in-2"].heard_seq == 3
    marks.claimed("in-2", 6, 1010.0, True, now=1.0)  # its next heartbeat
    assert marks.behind(1005.0) == ["in-2"] and marks.through() == float("-inf")  # until it is covered again
    [due] = marks.due(now=5.0)  # past the grace: asked for again from 4
    assert (due.peer, due.from_seq) == ("in-2", 4)
    marks.answered("in-2", 4, 6, [4, 5, 6])
    assert marks.behind(1010.0) == [] and marks.through() == 1010.0
    # events held above a hole, not recorded: dropped from what is heard too
    marks.heard("in-2", [8, 9])
    marks.not_recorded("in-2", 8)
    marks.heard("in-2", [7])
    assert marks.marks["in-2"].heard_seq == 7
    # only the mark not written: nothing heard is undone, the mark is written again
    assert marks.to_save("in-2", min_step=60) == (7, 1010.0)
    assert marks.to_save("in-2", min_step=60) is None
    marks.not_recorded("in-2", None)
    assert marks.marks["in-2"].heard_seq == 7 and marks.to_save("in-2", min_step=60) == (7, 1010.0)


def test_a_chunk_not_recorded_mid_answer_is_asked_for_again_not_taken_for_pruned() -> None:
    """A catch-up answer comes in chunks; the store cannot record the first (4..6). The
    next chunk (7..9) follows it in the same answer: not a sign that in-2 pruned 4..6 (the
    mark jumped to 6 and the next heartbeat made everything heard, 4..6 missing for good).
    It waits above the mark, 4..6 are asked for again, and then all is heard."""
    from sync.link.peer_marks import PeerMarks

    marks = PeerMarks(grace=3.0, retry=10.0)
    marks.answered("in-2", 1, 3, [1, 2, 3], "r1")
    marks.claimed("in-2", 9, 1000.0, True, now=0.0)
    assert marks.answered("in-2", 4, 9, [4, 5, 6], "r2") == 0
    marks.not_recorded("in-2", 4)
    assert marks.answered("in-2", 7, 9, [7, 8, 9], "r2") == 0  # the same answer's next chunk
    assert marks.marks["in-2"].heard_seq == 3 and marks.behind(1000.0) == ["in-2"]
    [due] = marks.due(now=5.0)
    assert due.from_seq == 4
    assert marks.answered("in-2", 4, 9, [4, 5, 6], "r3") == 0
    assert marks.marks["in-2"].heard_seq == 9 and marks.behind(1000.0) == []
    # an answer whose first chunk starts above what was asked: pruned, as before
    marks.claimed("in-2", 20, 1100.0, True, now=6.0)
    assert marks.answered("in-2", 15, 20, [15, 16, 17, 18, 19, 20], "r4") == 5
    assert marks.behind(1100.0) == []


def test_a_peer_known_but_never_heard_is_kept_so_a_restart_still_waits_for_it(tmp_path: Path) -> None:
    """in-2's heartbeat came, none of its events (its box went down): its mark is kept
    anyway, as never heard. Restarted, the desk's daemon knows at once it has not heard
    in-2 — a refund waiting for in-2 goes on waiting instead of being dropped as "nothing
    charged" by the scheduler's first pass, before the link has its statuses again."""
    from sync.link.peer_marks import NEVER, PeerMarks

    marks = PeerMarks()
    marks.claimed("in-2", None, None, False, now=0.0)  # its last will: known, never heard
    saved = marks.to_save("in-2", min_step=60)
    assert saved == (None, NEVER)
    assert marks.to_save("in-2", min_step=60) is None
    desk = site_store(tmp_path, "s1-in-1")
    desk.save_peer_mark("in-2", *saved)
    desk.mark_attended("b1", "desk", refund=True, now=at(10, 10), waiting=marks.behind(at(10, 10).timestamp()))
    desk.close()
    again = opened(Store(tmp_path / "s1-in-1.db", SITE, daemon_id="s1-in-1", durable=False))
    restarted = PeerMarks(again.peer_marks())
    assert restarted.behind(at(10, 10).timestamp()) == ["in-2"] and restarted.through() == float("-inf")
    assert again.settle_refunds(at(10, 20), lambda i: restarted.behind(i.timestamp())).events == []
    assert again.refund_wanted("b1") is not None
    # and once heard (its first events, a heartbeat covering them), written as any other
    restarted.answered("in-2", 1, 2, [1, 2], "r1")
    restarted.claimed("in-2", 2, at(10, 30).timestamp(), True, now=1.0)
    assert restarted.to_save("in-2", min_step=60) == (2, at(10, 30).timestamp())


def test_two_desks_asking_for_one_walk_in_give_it_back_once(tmp_path: Path) -> None:
    """Ana paid one walk-in at in-2 and has two classes that day. The desks at in-1 and at
    in-2 each mark one attended with a refund within seconds, neither having heard the
    other's request: each waits, then settles once it has heard the other up to its own
    request. The earlier request (in-1's, 12:30) takes the walk-in at both daemons; the
    later one (12:31) finds nothing left for it. Before, both gave it back (the balance
    went up)."""
    in2, in1 = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    _, charge = tap(in2, IN2, at(9, 20))
    share(in2, in1, charge.events, {"in-2": "main"})
    first = in1.mark_attended("b1", "desk-1", refund=True, now=at(12, 30), waiting=["s1-in-2"])
    second = in2.mark_attended("b2", "desk-2", refund=True, now=at(12, 31), waiting=["s1-in-1"])
    assert [e.get("refund") for e in first.events] == [True] and [e.get("refund") for e in second.events] == [True]
    # each hears the other's request (its attendance), then settles
    share(in2, in1, second.events, {"in-2": "main"})
    share(in1, in2, first.events, {})
    settled_2 = in2.settle_refunds(at(12, 32), lambda _: [])
    settled_1 = in1.settle_refunds(at(12, 32), lambda _: [])
    refunds = [e for e in settled_1.events + settled_2.events if e["type"] == "deduction"]
    assert [(e["booking"], e["refunds"]) for e in refunds] == [("b1", {"daemon": "s1-in-2", "seq": charge.events[1]["seq"]})]
    assert in2.conn.execute("SELECT action FROM audit WHERE action LIKE 'refund%'").fetchall() == [("refund_none",)]
    # in-1's refund reaches in-2: its request is given, and the balance is the site's at both
    share(in1, in2, settled_1.events, {})
    assert in2.conn.execute("SELECT settled FROM site_refund_asks WHERE booking_id = 'b1'").fetchall() == [(1,)]
    assert in1.balance("p1") == in2.balance("p1") == Decimal(10)


def test_a_refund_waiting_for_lost_events_that_never_come_back_is_an_alarm(tmp_path: Path) -> None:
    """A new box asks the central system for its old box's events; the desk asks for a
    refund meanwhile (it waits for this daemon itself). The central system never answers:
    a day after the loss they are given up on — and the refund is not "nothing charged"
    (the old box may well have charged the walk-in) but a `refund_unsettled` alarm."""
    new = site_store(tmp_path, "s1-in-1")
    new.hold_unsure()
    new.settle_numbering(5, at(9, 0))  # the central system holds 1..5 of this daemon: lost here
    wanted = new.own_history_wanted()
    assert wanted is not None
    new.mark_attended("b1", "desk", refund=True, now=at(10, 10), waiting=["s1-in-1"])
    assert new.refund_wanted("b1") is not None
    gone = new.record_own_history(wanted, [], {"in-1": "main"}, True, expired=True, now=at(10, 10) + timedelta(hours=23))
    assert gone == {} or sum(gone.values()) == 0
    assert new.refund_wanted("b1") is None and new.own_history_wanted() is None
    [alarm] = [e for e in new.recent_events(10, ["alarm"]) if e["kind"] == "refund_unsettled"]
    assert "never came back" in alarm["detail"] and "b1" in alarm["detail"]
    assert new.conn.execute("SELECT action FROM audit WHERE action LIKE 'refund%'").fetchall() == [("refund_unsettled",)]
    assert new.settle_refunds(at(10, 10) + timedelta(hours=23, minutes=1), lambda _: []).events == []


def test_an_attendance_heard_before_its_booking_arrives_counts_when_it_does(tmp_path: Path) -> None:
    """in-2 matched b1 (and charged it); the desk's daemon heard that before its own copy
    of b1 came (a delta on its way, a catch-up after a restart heard before the deltas):
    when b1 arrives it is attended there, and the member stepping out and back in at in-1
    is a re-entry, not b1 matched and charged a second time."""
    grace = timedelta(minutes=30)
    in1, in2 = Gate("in-1", "main", reentry_grace=grace), Gate("in-2", "main", reentry_grace=grace)
    a, b = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    b1 = b.get_booking("b1")
    assert b1 is not None
    b.apply_sync(SyncBatch(remove_bookings=["b1"]), at(6))  # b's copy of the booking not in yet
    d, committed = tap(a, in2, at(9, 50))
    assert d.reason == Reason.BOOKING and d.amount == 1
    assert share(a, b, committed.events, {"in-2": "main"})["remote_attended"] == 1
    b.apply_sync(SyncBatch(bookings=[BookingIn.model_validate({
        "id": "b1", "member": "m1", "pass": "p1", "class": "Yoga", "zone": "main",
        "starts_at": at(10).isoformat(), "ends_at": at(10, 45).isoformat(), "loyalty_points": 10,
    })]), at(9, 51))
    again, charged = tap(b, in1, at(9, 55))
    assert (again.reason, again.amount) == (Reason.REENTRY, 0), again
    assert not [e for e in charged.events if e["type"] == "deduction"]
    # and a peer's outcome does not undo a cancellation this daemon holds
    b.apply_sync(SyncBatch(bookings=[BookingIn.model_validate({
        "id": "b2", "member": "m1", "pass": "p1", "class": "Spinning", "zone": "main", "status": "cancelled",
        "starts_at": at(12).isoformat(), "ends_at": at(12, 45).isoformat(),
    })]), at(11))
    late = {**committed.events[-1], "booking": "b2", "seq": 99, "id": "late-b2"}
    assert late["type"] == "attendance"
    assert share(a, b, [late], {"in-2": "main"}).get("remote_attended", 0) == 0


def test_points_of_a_booking_attended_elsewhere_wait_for_its_copy_to_arrive(tmp_path: Path) -> None:
    """`gated sim day --short --seed 43`: north/in-1's box was replaced while the central
    system was stopped. The new box heard the site's catch-up (in-2's attendances) with
    its replica still empty, and its time-driven work settled those bookings' points as
    "gone from the replica": nine members never got their points. A booking the replica
    does not hold yet waits for its copy; only one never heard of for two days is settled
    without credit."""
    in2, clerk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    clerk.apply_sync(SyncBatch(remove_bookings=["b1"]), at(6))  # the clerk's copy not in yet
    _, came = tap(in2, IN2, at(9, 50))
    share(in2, clerk, came.events, {"in-2": "main"})
    # b1's points fall due at 10:45 + 3 h: nothing credited, nothing settled
    assert [e for e in clerk.run_due(POLICY, at(14)).events if e["type"] == "loyalty"] == []
    clerk.apply_sync(SyncBatch(bookings=[BookingIn.model_validate({
        "id": "b1", "member": "m1", "pass": "p1", "class": "Yoga", "zone": "main",
        "starts_at": at(10).isoformat(), "ends_at": at(10, 45).isoformat(), "loyalty_points": 10,
    })]), at(14, 5))
    credited = [(e["booking"], e["points"]) for e in clerk.run_due(POLICY, at(14, 10)).events if e["type"] == "loyalty"]
    assert credited == [("b1", 10)]
    assert [e for e in clerk.run_due(POLICY, at(14, 20)).events if e["type"] == "loyalty"] == []
    # an attendance of a booking that never comes: settled without credit after two days
    ghost = {**came.events[-1], "booking": "b9", "seq": 99, "id": "ghost-b9"}
    assert ghost["type"] == "attendance"
    share(in2, clerk, [ghost], {"in-2": "main"})
    unsettled = "SELECT loyalty_settled FROM booking_outcomes WHERE booking_id = 'b9'"
    clerk.run_due(POLICY, at(23))
    assert clerk.conn.execute(unsettled).fetchone() == (0,)
    clerk.run_due(POLICY, at(9, 51) + timedelta(days=2))
    assert clerk.conn.execute(unsettled).fetchone() == (1,)


def test_a_new_box_numbers_on_after_what_the_site_heard_of_the_old_one(tmp_path: Path) -> None:
    """The old box of in-2 charged a walk-in; in-1 heard it, the central system (its uplink
    cut) did not. The box is replaced; the central system says it applied nothing, in-1's
    heartbeat says it heard in-2 up to that charge: the new box's events number on after
    it, so in-1 counts the new box's charge instead of dropping it as a repeat."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old, peer = site_store(tmp_path / "old", "s1-in-2"), site_store(tmp_path, "s1-in-1")
    _, c1 = tap(old, IN2, at(9))
    share(old, peer, c1.events, {"in-2": "main"})
    assert peer.balance("p1") == Decimal(9)
    new = site_store(tmp_path / "new", "s1-in-2")
    new.hold_unsure()
    _, c2 = tap(new, IN2, at(9, 20))  # held: its number is in doubt
    assert [e["seq"] for e in c2.events] == [1, 2]
    new.settle_numbering(0, at(9, 21), site_seq=c1.events[-1]["seq"])
    moved = [e for e in new.events_after(0) if e["type"] == "deduction"]
    assert [e["seq"] for e in moved] == [4]  # after the old box's 1 and 2 (void here), and its own access
    share(new, peer, new.events_after(0), {"in-2": "main"})
    assert peer.balance("p1") == Decimal(8)  # both charges: the old box's and the new one's
    [alarm] = [e for e in new.events_after(0) if e["type"] == "alarm"]
    assert "only the site's other daemons heard" in alarm["detail"]
    assert new.own_history_wanted() is None  # the central system has none of them to send back
    # what they held of the day (b1's attendance, say) never comes back: b1's no-show names
    # this daemon as not heard, for a person
    due = new.run_due(POLICY, at(11, 5)).events
    [b1] = [e for e in due if e["type"] == "attendance" and e["booking"] == "b1"]
    assert b1["status"] == "no_show" and b1.get("unheard") == ["s1-in-2"]


def test_a_fee_given_back_with_a_waiting_refund_does_not_settle_its_request_elsewhere(tmp_path: Path) -> None:
    """The desk (in-1) marks a fined no-show attended with the refund of the walk-in Ana
    paid at in-2, in-2 not heard: the fee stands, the walk-in's refund waits. At in-2 the
    desk's request stands ahead of in-2's own desk's later one, so the walk-in is given
    back once."""
    in2, in1 = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    share(in1, in2, in1.run_due(POLICY, at(11, 5)).events, {})  # b1 a no-show, fined
    _, charge = tap(in2, IN2, at(11, 10))
    share(in2, in1, charge.events, {"in-2": "main"})
    first = in1.mark_attended("b1", "desk-1", refund=True, now=at(12, 30), waiting=["s1-in-2"])
    assert [(e["type"], e.get("cause")) for e in first.events] == [("attendance", None)]
    share(in1, in2, first.events, {})
    assert in2.conn.execute("SELECT daemon, booking_id, settled FROM site_refund_asks").fetchall() == [
        ("s1-in-1", "b1", 0)]
    second = in2.mark_attended("b2", "desk-2", refund=True, now=at(12, 31), waiting=["s1-in-1"])
    share(in2, in1, second.events, {"in-2": "main"})
    given = in2.settle_refunds(at(12, 32), lambda _: []).events + in1.settle_refunds(at(12, 32), lambda _: []).events
    walk_ins = [(e["booking"], e["refunds"]["seq"]) for e in given if e["type"] == "deduction"]
    assert walk_ins == [("b1", charge.events[1]["seq"])]  # the earlier request's, once


# -- exits let out unrecorded (sync/store/unrecorded_exits.py) ---------------------------------


def test_a_member_who_left_by_an_exit_a_storage_fault_did_not_record_is_let_back_in(tmp_path: Path) -> None:
    """m1 came in at in-1; during a storage fault at the exit's daemon, out-1 let somebody
    out whom it could not record (gated/storage_watch.py: the store too damaged to tell
    whose card, or beyond the held exits' bound). It may have been m1: back at a hard
    anti-passback entrance, at either daemon, they are let in and not counted twice in the
    zone — before, they were refused as still inside for the rest of the day. An entry
    after it is known inside as usual; the alarm heard again counts once."""
    from gated.metrics import Metrics
    from gated.storage_watch import StorageWatch
    from sync.store import unrecorded_exits

    a, b = site_store(tmp_path, "s1-in-1"), site_store(tmp_path, "s1-out-1")
    hard1, hard2 = (replace(g, anti_passback=AntiPassback.HARD) for g in (IN1, IN2))
    d, committed = tap(a, hard1, at(9))
    assert d.reason == Reason.WALK_IN
    share(a, b, committed.events, {"in-1": "main"})
    assert tap(a, hard1, at(9, 10))[0].reason == Reason.ANTI_PASSBACK  # inside, as far as anyone knows

    now = [at(9, 30)]
    watch = StorageWatch(b, lambda: now[0], Metrics(), min_free=0, zones={"out-1": "main", "in-2": "main"})
    watch.exit_unrecorded("out-1")
    now[0] = at(9, 31)
    watch.exit_unrecorded("out-1")
    watch._report_unrecorded()  # the store works again: the alarm, and the zone's presence with it
    alarms = [e for e in b.outbox.events_after(0) if e["type"] == "alarm" and e["kind"] == "exits_not_recorded"]
    assert len(alarms) == 1 and alarms[0]["gates"] == {"out-1": 2}, alarms
    assert [(u.count, u.last) for u in unrecorded_exits.of_zone(b.conn, "main")] == [(2, at(9, 31))]
    assert share(b, a, alarms, {"out-1": "main"})["remote_unrecorded_exits"] == 1
    assert share(b, a, alarms, {"out-1": "main"}).get("remote_unrecorded_exits", 0) == 0  # heard again
    assert len(unrecorded_exits.of_zone(a.conn, "main")) == 1

    for store, gate in ((a, hard1), (b, hard2)):
        assert store.view("m1", gate, at(10)).presence["main"].exit_unrecorded_at == at(9, 31)
        assert occupancy(store, "main", at(10)) == 0
        d = decide(store.view("m1", gate, at(10)), Presented(CredentialKind.CARD), gate, SITE, POLICY, at(10))
        assert d.granted and d.reason != Reason.ANTI_PASSBACK, d
    d, committed = tap(a, hard1, at(10))
    assert d.granted
    assert occupancy(a, "main", at(10, 1)) == 1  # this entry came after the exits
    assert tap(a, hard1, at(10, 5))[0].reason == Reason.ANTI_PASSBACK


def test_unrecorded_exits_take_no_more_off_the_count_than_came_in_before_them(tmp_path: Path) -> None:
    """Three exits nobody recorded at 9:30, two people inside who came in before and one
    after: the two may be gone, the one after is inside whatever the count of exits. The
    exits before an evacuation or of another zone take nothing off; a value not written by
    the module reads as none."""
    from sync.store import unrecorded_exits
    from sync.store.occupancy import counted

    store = site_store(tmp_path, "s1-in-1")
    with store.transaction() as tx:
        assert unrecorded_exits.record(tx.conn, "s1-out-1", {"out-1": 3, "gym-out": 1}, {"out-1": "main"},
                                       at(9, 20), at(9, 30)) == 3
        assert unrecorded_exits.record(tx.conn, "s1-out-1", {"out-1": 3}, {"out-1": "main"},
                                       at(9, 20), at(9, 30)) == 0  # the same report again
    entries = [("m1", at(9).timestamp(), "in-1"), ("m2", at(9, 10).timestamp(), "in-1"),
               ("m3", at(10).timestamp(), "in-1")]

    def counted_in(zone: str, es: list[tuple[str, float, str]], start: datetime) -> int:
        gone = unrecorded_exits.gone_since(store.conn, zone, start, at(11))
        return counted((t for _, t, _ in es), *gone)

    assert counted_in("main", entries, at(0)) == 1
    assert counted_in("main", entries[:1], at(0)) == 0
    assert counted_in("main", entries, at(9, 45)) == 3  # after an evacuation at 9:45
    assert counted_in("spa", entries, at(0)) == 3
    store.set_meta(unrecorded_exits.key("main"), "at half past nine")
    assert counted_in("main", entries, at(0)) == 3
    assert unrecorded_exits.last_at("[]") is None


# -- charges decided before the site's earlier events were heard (sync/store/repairs.py) ----------

GRACE_IN1, GRACE_IN2 = replace(IN1, reentry_grace=timedelta(hours=2)), replace(IN2, reentry_grace=timedelta(hours=2))


def graced_stores(tmp: Path) -> tuple[Store, Store]:
    in2, in1 = site_store(tmp, "s1-in-2"), site_store(tmp, "s1-in-1")
    for s in (in1, in2):
        s.set_gates({"in-1": GRACE_IN1, "in-2": GRACE_IN2})
    return in2, in1


def test_a_booking_charged_again_before_the_peer_that_let_her_in_on_it_was_heard_is_given_back(tmp_path: Path) -> None:
    """sim day seed 35: Ana let in on her booking at in-2 (charged), then at in-1 — restarted,
    in-2 not heard yet — on the same booking again, charged again. When in-2's events arrive,
    in-1's charge is given back (a refund naming it, `because: reentry_grace`), once."""
    in2, in1 = graced_stores(tmp_path)
    d2, first = tap(in2, GRACE_IN2, at(9, 50))
    d1, second = tap(in1, GRACE_IN1, at(10, 2))
    assert (d2.reason, d2.booking, d1.reason, d1.booking) == (Reason.BOOKING, "b1", Reason.BOOKING, "b1")
    charged = [e for e in second.events if e["type"] == "deduction"]
    assert len(charged) == 1 and in1.balance("p1") == Decimal(9)
    seen = share(in2, in1, first.events, {"in-2": "main"})
    assert seen["charges_given_back"] == 1
    back = [e for e in in1.events_after(second.events[-1]["seq"]) if e["type"] == "deduction"]
    assert [(e["amount"], e["cause"], e["refunds"], e["because"]) for e in back] == [
        (-1, "refund", {"daemon": "s1-in-1", "seq": charged[0]["seq"]}, "reentry_grace")]
    # the site's balance at in-1: the central's 10, in-2's charge, in-1's charge and its refund
    assert in1.balance("p1") == Decimal(9)
    # heard again (a resend, a catch-up): nothing more
    assert "charges_given_back" not in share(in2, in1, first.events, {"in-2": "main"})
    # in-2, hearing in-1's later entry, charge and refund, gives nothing back of its own
    seen2 = share(in1, in2, second.events + back, {"in-1": "main"})
    assert "charges_given_back" not in seen2 and in2.balance("p1") == Decimal(9)


def test_a_walk_in_charged_within_the_grace_of_an_entry_at_a_peer_not_yet_heard_is_given_back(tmp_path: Path) -> None:
    in2, in1 = graced_stores(tmp_path)
    _, first = tap(in2, GRACE_IN2, at(8, 0))  # a walk-in, no booking in reach
    _, second = tap(in1, GRACE_IN1, at(8, 40))  # a walk-in again: in-2 not heard
    assert [e["cause"] for e in first.events + second.events if e["type"] == "deduction"] == ["walk_in", "walk_in"]
    assert share(in2, in1, first.events, {"in-2": "main"})["charges_given_back"] == 1
    # past the grace it stands
    in2b, in1b = graced_stores(tmp_path / "b")
    _, first = tap(in2b, GRACE_IN2, at(7, 0))
    tap(in1b, GRACE_IN1, at(9, 30))
    assert "charges_given_back" not in share(in2b, in1b, first.events, {"in-2": "main"})


def test_a_due_charge_is_not_given_back_for_another_zones_free_entry_just_before_it(tmp_path: Path) -> None:
    """A review's probe: the pool walk-in at 07:00, the pool again at 07:05 (free), the gym
    at 07:06 (charged, due). The gym charge follows its own access event; the free pool
    entry before it is another tap — never taken for the charge's, so nothing heard of an
    entry at 06:00 (past the gym's grace) gives the gym charge back."""
    pool = Gate("pool-1", "pool", reentry_grace=timedelta(hours=1))
    gym, peer = replace(GRACE_IN1, reentry_grace=timedelta(hours=1)), replace(GRACE_IN2, reentry_grace=timedelta(hours=1))
    in2, in1 = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    for s in (in1, in2):
        s.set_gates({"in-1": gym, "in-2": peer, "pool-1": pool})
    _, entered = tap(in2, peer, at(6, 0))
    tap(in1, pool, at(7, 0))
    _, free = tap(in1, pool, at(7, 5))
    _, gym_charge = tap(in1, gym, at(7, 6))
    assert [e["type"] for e in free.events] == ["access"] and [e["type"] for e in gym_charge.events] == [
        "access", "deduction"]
    seen = share(in2, in1, entered.events, {"in-2": "main"})
    assert "charges_given_back" not in seen
    assert not [e for e in in1.events_after(gym_charge.events[-1]["seq"]) if e.get("cause") == "refund"]


def test_a_charge_decided_before_a_peer_was_heard_and_committed_after_is_given_back(tmp_path: Path) -> None:
    """A review's probe: Ana in the turnstile at in-1 (its intent open) as in-2's catch-up
    arrives with her entry of 08:00: her 08:40 walk-in is rechecked at its commit."""
    in2, in1 = graced_stores(tmp_path)
    _, first = tap(in2, GRACE_IN2, at(8, 0))
    now = at(8, 40)
    d = decide(in1.view("m1", GRACE_IN1, now), Presented(CredentialKind.CARD), GRACE_IN1, SITE, POLICY, now)
    assert d.amount == 1
    pending = in1.open_intent(tap_of(GRACE_IN1, d, now), now)
    in1.record_peer_events("s1-in-2", first.events, {"in-2": "main"}, None, now + timedelta(seconds=1))
    committed = in1.commit_tap(pending, passed=True, now=now + timedelta(seconds=2))
    assert [(e["type"], e.get("cause"), e.get("because")) for e in committed.events if e["type"] == "deduction"] == [
        ("deduction", "walk_in", None), ("deduction", "refund", "reentry_grace")]
    assert in1.balance("p1") == Decimal(9)


async def test_a_walk_in_charged_before_a_peers_evacuation_was_heard_is_given_back(tmp_path: Path) -> None:
    """A review's probe: in-2's fire alarm at 07:30, not heard at in-1 (a split); Ana, in at
    07:00, is back at 09:30 (past the 2 h grace) and charged a walk-in. The alarm arrives
    alone: her visit was cut short by it, the re-entry free — the charge given back."""
    in2, in1 = graced_stores(tmp_path)
    tap(in1, GRACE_IN1, at(7, 0))

    async def alarm(kind: str, detail: str) -> None:
        pass

    fire = Safety(in2, {}, lambda: at(7, 30), alarm)
    await fire.fire_input_read(True)
    fire.clock = lambda: at(8, 0)
    await fire.fire_input_read(False)
    raised = [e for e in in2.outbox.events_after(0) if e["type"] == "fire_alarm"]
    d, _ = tap(in1, GRACE_IN1, at(9, 30))
    assert d.reason == Reason.WALK_IN and in1.balance("p1") == Decimal(8)
    seen = share(in2, in1, raised, {"in-2": "main"})
    assert seen.get("charges_given_back") == 1, seen
    assert in1.balance("p1") == Decimal(9)
    assert "charges_given_back" not in share(in2, in1, raised, {"in-2": "main"})
