"""A ledger without its mark of what it sent (sync/store/numbering.py): a new box under
the same daemon id, or a copy restored without `gated.db.sent`. Once a sync link is to
send from it, its events after the last one at open are held until the central system
says how far it got; then they move past that — every column and reference with them —
and nothing about them changes but their numbers."""

from __future__ import annotations

import json
import sqlite3
import tempfile
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.credential import CredentialKind
from rules.decide import Presented, decide
from rules.model import Gate, Policy, Site
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import Store, SyncBatch, numbering
from sync.store.numbering import OTHER_SEQS, OWN_SEQS
from sync.store.sent_mark import SentMark, sent_path
from sync.store.transaction import Transaction
from tests.tap_fixtures import tap_of

TZ = ZoneInfo("Europe/Madrid")
SITE = Site(TZ, id="s1")
IN1 = Gate("in-1", "main")
POLICY = Policy(no_show_fee=Decimal(1))
DAY = datetime(2026, 12, 7, tzinfo=TZ)
DAEMON = "s1-in-1"


def at(hh: int, mm: int = 0) -> datetime:
    return DAY.replace(hour=hh, minute=mm)


def open_store(path: Path) -> Store:
    return Store(path, SITE, daemon_id=DAEMON, durable=False)


def new_store(path: Path, applied: int = 0) -> Store:
    """A gate with a member, a visits pass the central system had applied up to
    `applied`, and a morning class."""
    store = open_store(path)
    visits = PassIn.model_validate({
        "id": "p1", "member": "m1", "name": "Multipack", "kind": "visits", "balance": 30, "deduct_on": "access",
        "walk_in_cost": 1, "access_windows": {"mon-sun": "06:00-22:00"}, "applied_seq": applied,
    })
    yoga = BookingIn.model_validate({
        "id": "b1", "member": "m1", "pass": "p1", "class": "Yoga", "zone": "main",
        "starts_at": at(10).isoformat(), "ends_at": at(10, 45).isoformat(), "deducted": True,
    })
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])], [visits], [yoga]), at(6))
    return store


def walk_in(store: Store, now: datetime) -> None:
    d = decide(store.view("m1", IN1, now), Presented(CredentialKind.CARD), IN1, SITE, POLICY, now)
    store.commit_tap(tap_of(IN1, d, now), passed=True, now=now)


def forget_mark(path: Path) -> None:
    sent_path(path).unlink(missing_ok=True)


def without_mark(path: Path, applied: int = 0) -> Store:
    """The gate of new_store, opened again with its mark gone (not yet held)."""
    new_store(path, applied=applied).close()
    forget_mark(path)
    return open_store(path)


def test_every_seq_column_of_the_ledger_is_known(tmp_path: Path) -> None:
    """A column added later that holds our seqs must move with a renumbering (OWN_SEQS), or
    be said to hold someone else's (OTHER_SEQS)."""
    store = open_store(tmp_path / "gated.db")
    try:
        tables = [r[0] for r in store.conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")]
        seq_columns = {
            (t, c[1]) for t in tables for c in store.conn.execute(f"PRAGMA main.table_info([{t}])") if "seq" in c[1]
        }
        seq_columns -= {("meta", "value")}
        known = set(OWN_SEQS) | OTHER_SEQS
        assert seq_columns <= known, seq_columns - known
        assert set(OWN_SEQS) <= seq_columns | {("deductions", "refunded_by")}
    finally:
        store.close()


def test_a_store_no_link_sends_from_holds_nothing(tmp_path: Path) -> None:
    """Tests, tools and a gate without MQTT: nothing of the ledger leaves, nothing is held."""
    db = tmp_path / "gated.db"
    store = new_store(db)
    store.run_due(POLICY, at(6))  # the gate's time-driven work begins
    walk_in(store, at(9))
    assert not sent_path(db).exists()
    assert store.unsure_after is None and store.sendable_seq == store.last_seq
    assert store.run_due(POLICY, at(12)).events  # the class's no-show is settled
    store.close()


def test_a_ledger_from_before_the_mark_is_taken_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "gated.db"
    store = new_store(db)
    walk_in(store, at(9))
    last = store.last_seq
    store.conn.execute("UPDATE main.meta SET value = '9' WHERE key = 'schema_version'")  # written by version 9
    store.close()
    store = open_store(db)
    store.hold_unsure()
    assert store.unsure_after is None
    assert SentMark(db).found and SentMark(db).value == last
    store.close()


@settings(max_examples=40, deadline=None)
@given(
    before=st.integers(0, 4),  # walk-ins the ledger kept
    held=st.integers(0, 5),  # walk-ins after the restart, before the central system's word
    refund=st.booleans(),  # the desk gives back one of the held charges
    beyond=st.integers(-3, 40),  # how far the central system got, against the ledger's end
    new_box=st.booleans(),
)
def test_held_events_move_past_what_the_central_system_holds(
    before: int, held: int, refund: bool, beyond: int, new_box: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "gated.db"
        store = new_store(db)
        for i in range(before):
            walk_in(store, at(7, i))
        kept = store.last_seq
        store.close()
        if new_box:
            for f in Path(tmp).iterdir():
                f.unlink()
            store, kept = new_store(db), 0
            store.close()
        forget_mark(db)

        store = open_store(db)
        store.hold_unsure()
        assert store.unsure_after == kept
        for i in range(held):
            walk_in(store, at(9, i))
        if refund and held:
            store.mark_attended("b1", "desk", refund=True, now=at(9, 30))
        old = store.events_after(0, 10_000)
        balance = store.balance("p1")
        assert store.sendable_seq == kept
        assert store.run_due(POLICY, at(12)).events == []  # no settling while unsure

        central = max(kept + beyond, 0)
        store.settle_numbering(central, at(9, 40))
        events = store.events_after(0, 10_000)
        moved = max(central - kept, 0)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # no gap
        assert events[:kept] == old[:kept]
        if moved:
            assert [(e["type"], e["reason"]) for e in events[kept:central]] == [("void", "restored")] * moved
            assert [e["id"] for e in events[central:-1]] == [e["id"] for e in old[kept:]]
            assert events[-1]["kind"] == "ledger_restored"
        else:
            assert events == old
        for e, o in zip(events[kept + moved:], old[kept:], strict=False):
            assert {k: v for k, v in e.items() if k not in ("seq", "refunds")} == {
                k: v for k, v in o.items() if k not in ("seq", "refunds")}
        by_seq = {e["seq"]: e for e in events}
        rows = store.conn.execute("SELECT seq, pass_id, amount, refunded_by FROM main.deductions").fetchall()
        assert sorted(r[0] for r in rows) == sorted(e["seq"] for e in events if e["type"] == "deduction")
        assert any(r[3] is not None for r in rows) == (refund and held > 0)  # the refund names its charge
        for seq, pass_id, amount, refunded_by in rows:
            assert (by_seq[seq]["pass"], Decimal(str(by_seq[seq]["amount"]))) == (pass_id, Decimal(amount))
            if refunded_by is not None:
                assert by_seq[refunded_by]["refunds"] == {"daemon": DAEMON, "seq": seq}
        assert store.balance("p1") == balance  # the held charges still count against it
        assert store.unsure_after is None and store.sendable_seq == store.last_seq
        assert SentMark(db).found
        last = store.last_seq
        store.close()

        store = open_store(db)  # the next start is sure of its numbering
        store.hold_unsure()
        assert store.unsure_after is None and store.last_seq == last
        store.close()


@pytest.mark.parametrize("back", [True, False], ids=["history_back", "history_never_came"])
def test_while_unsure_nothing_is_settled_and_then_what_the_lost_part_tells(tmp_path: Path, back: bool) -> None:
    """The lost part may have made the morning class's no-show (and its fee): it waits for
    the lost events, with the class ending after the central system's word. Back whole
    (nothing of m1's among them): the lost part did not settle it, and the central system
    has no no-show of it — both are settled as usual (before, the morning class was named
    for a person though nothing was missing: a box replaced just before classes fell due
    left them no-show to nobody). Never back: the morning class is named in an alarm, once,
    not settled; the later one is settled naming this daemon as not heard."""
    db = tmp_path / "gated.db"
    store = without_mark(db)
    store.hold_unsure()
    assert store.run_due(POLICY, at(12)).events == []
    store.settle_numbering(5, at(12, 5))
    later = BookingIn.model_validate({
        "id": "b2", "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
        "starts_at": at(13).isoformat(), "ends_at": at(13, 45).isoformat(), "deducted": True,
    })
    store.apply_sync(SyncBatch(bookings=[later]), at(12, 6))
    due = store.run_due(POLICY, at(15)).events
    # both wait for the lost part's events (they may hold a no-show of b1, or m1 on site)
    assert [e for e in due if e["type"] in ("alarm", "attendance")] == []
    wanted = store.own_history_wanted()
    assert wanted is not None
    if back:
        store.record_own_history(wanted, [], {"in-1": "main"}, True)  # back: nothing of m1's among them
        due = store.run_due(POLICY, at(15, 1)).events
        assert [(e["type"], e["booking"], e["status"]) for e in due if e["type"] == "attendance"] == [
            ("attendance", "b1", "no_show"), ("attendance", "b2", "no_show")]
        assert not [e for e in due if e["type"] == "alarm"]
    else:
        store.record_own_history(wanted, [], {"in-1": "main"}, True, expired=True, now=at(15, 1))  # as the link gives up
        due = store.run_due(POLICY, at(15, 2)).events
        named = [e for e in due if e["type"] == "alarm"]
        assert len(named) == 1 and named[0]["kind"] == "ledger_restored" and "b1" in named[0]["detail"], named
        settled = [e for e in due if e["type"] == "attendance"]
        assert [(e["booking"], e["status"], e["unheard"]) for e in settled] == [("b2", "no_show", [DAEMON])]
        # a snapshot that lists b1 again: not named a second time, never settled
        yoga = BookingIn.model_validate({
            "id": "b1", "member": "m1", "pass": "p1", "class": "Yoga", "zone": "main",
            "starts_at": at(10).isoformat(), "ends_at": at(10, 45).isoformat(), "deducted": True,
        })
        store.apply_sync(SyncBatch(bookings=[yoga]), at(15, 3))
        assert [e for e in store.run_due(POLICY, at(15, 4)).events if e["type"] in ("alarm", "attendance")] == []
    store.close()


def test_a_mark_that_cannot_be_written_keeps_the_events_held_and_they_move_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gated.db"
    store = without_mark(db)
    store.hold_unsure()
    walk_in(store, at(9))
    ids = [e["id"] for e in store.events_after(0, 100)]

    def full(self: SentMark, seq: int, at: float) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SentMark, "advance", full)
    with pytest.raises(OSError):
        store.settle_numbering(10, at(9, 5))
    assert store.unsure_after == 10 and store.sendable_seq == 10  # moved, still held
    monkeypatch.undo()
    store.settle_numbering(10, at(9, 6))  # the same word again: not moved a second time
    events = store.events_after(0, 100)
    assert [e["id"] for e in events[10:-1]] == ids and events[10]["seq"] == 11
    assert store.sendable_seq == store.last_seq
    store.close()


@pytest.mark.parametrize("moved", [True, False], ids=["central_holds_more", "central_holds_as_much"])
def test_a_restart_before_the_central_systems_word_holds_from_where_the_hold_began(
    tmp_path: Path, moved: bool
) -> None:
    """A new box that took walk-ins while the central system was away, then restarted (a
    power cut, a kill) before it heard from it: its held events are still held — not taken
    for numbered right because they are in the ledger at this open (they were this box's,
    under the numbers the central system holds of the old one: it would have dropped them
    as repeats; soak seed 3's short day, a power cut at a replaced box during a WAN cut)."""
    db = tmp_path / "gated.db"
    store = without_mark(db)
    store.hold_unsure()
    walk_in(store, at(9))
    walk_in(store, at(9, 5))
    ids = [e["id"] for e in store.events_after(0, 100)]
    store.close()
    store = open_store(db)  # the restart: still no mark
    store.hold_unsure()
    assert store.unsure_after == 0 and store.sendable_seq == 0
    walk_in(store, at(9, 10))
    store.settle_numbering(7 if moved else 0, at(9, 15))
    events = store.events_after(0, 100)
    first = 8 if moved else 1
    assert [e["id"] for e in events[first - 1 : first + 3]] == ids and events[first - 1]["seq"] == first
    assert store.sendable_seq == store.last_seq
    store.close()
    store = open_store(db)  # settled: the mark is there, the hold is over
    store.hold_unsure()
    assert store.unsure_after is None
    store.close()


def test_a_hold_whose_start_could_not_be_written_is_written_with_its_first_held_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk was full when the new box started: where its hold began could not be
    written. The first held event carries it into the ledger, so a restart before the
    central system's word still holds from there; and the settle that follows removes it
    (a settle's own events do not write it back)."""
    db = tmp_path / "gated.db"
    store = without_mark(db)
    real = Transaction.set_meta

    def full(self: Transaction, key: str, value: str) -> None:
        if key == numbering.HELD_KEY:
            raise sqlite3.OperationalError("database or disk is full")
        real(self, key, value)

    monkeypatch.setattr(Transaction, "set_meta", full)
    store.hold_unsure()  # logged, held in memory
    assert store.unsure_after == 0
    monkeypatch.undo()
    walk_in(store, at(9))
    walk_in(store, at(9, 5))
    assert store.conn.execute("SELECT value FROM main.meta WHERE key = ?", (numbering.HELD_KEY,)).fetchone() == ("0",)
    store.close()
    store = open_store(db)  # the restart: still no mark
    store.hold_unsure()
    assert store.unsure_after == 0 and store.sendable_seq == 0  # not 4: the held events stay held
    store.settle_numbering(7, at(9, 15))
    assert store.unsure_after is None
    assert store.conn.execute("SELECT value FROM main.meta WHERE key = ?", (numbering.HELD_KEY,)).fetchone() is None
    store.close()
    # the central system's word before any held event: its settle's events leave no hold behind
    forget_mark(db)
    again = open_store(db)
    monkeypatch.setattr(Transaction, "set_meta", full)
    again.hold_unsure()
    monkeypatch.undo()
    again.settle_numbering(again.last_seq + 3, at(9, 20))
    assert again.unsure_after is None
    assert again.conn.execute("SELECT value FROM main.meta WHERE key = ?", (numbering.HELD_KEY,)).fetchone() is None
    again.close()


def test_the_replicas_applied_seq_cannot_hide_a_held_charge(tmp_path: Path) -> None:
    """The replica's passes say the central system applied up to 20 (the lost part's
    charges); a charge of ours numbered 2 now is not among those: it counts."""
    db = tmp_path / "gated.db"
    store = without_mark(db, applied=20)
    assert store.balance("p1") == Decimal(30)
    store.hold_unsure()
    walk_in(store, at(9))
    assert store.balance("p1") == Decimal(29)
    body: dict[str, Any] = json.loads(store.conn.execute("SELECT body FROM main.events WHERE type = 'deduction'")
                                      .fetchone()[0])
    assert body["seq"] <= 20
    store.close()


def test_peer_refs_and_other_daemons_seqs_do_not_move(tmp_path: Path) -> None:
    """Only our own numbers move: the other daemons' charges keep theirs, and a refund
    another daemon gave of the lost part's charge (heard while unsure) names that charge,
    not the held one that comes to have its number."""
    db = tmp_path / "gated.db"
    store = without_mark(db)
    store.hold_unsure()
    store.record_peer_events(
        "s1-in-2",
        [{"id": "x1", "seq": 3, "type": "deduction", "at": at(8).isoformat(), "gate": "in-2", "member": "m1",
          "pass": "p1", "amount": 1, "cause": "walk_in", "booking": None, "balance": 29}],
        {"in-2": "main"}, None, at(8),
    )
    store.record_peer_events(
        "s1-in-2",
        [{"id": "x2", "seq": 4, "type": "deduction", "at": at(8, 5).isoformat(), "gate": "in-2", "member": "m1",
          "pass": "p1", "amount": -1, "cause": "refund", "booking": None, "balance": 30,
          "refunds": {"daemon": DAEMON, "seq": 3}}],
        {"in-2": "main"}, None, at(8, 5),
    )
    walk_in(store, at(9))
    store.settle_numbering(7, at(9, 1))
    assert store.conn.execute("SELECT daemon, seq FROM main.site_charges ORDER BY seq").fetchall() == [
        ("s1-in-2", 3), ("s1-in-2", 4)]
    assert store.conn.execute("SELECT daemon, seq FROM main.site_refunds").fetchall() == [(DAEMON, 3)]
    assert store.events_after(0, 100)[-1]["kind"] == "ledger_restored"
    store.close()


def test_only_the_central_systems_passes_say_how_far_it_got(tmp_path: Path) -> None:
    """The link's port reads the word from the passes of the sync it applies — not from the
    replica, whose passes the store marked down to the ledger's end: a delta without a pass
    says nothing (read from the replica, the marked-down value would release the held
    events under numbers the central system holds)."""
    from sync.link.port import StorePort
    from sync.protocol import Delta

    db = tmp_path / "gated.db"
    store = without_mark(db, applied=20)
    port = StorePort(store, DAEMON, batch_rows=100)
    try:
        assert port.numbering_unsure and port.last_seq == store.unsure_after == store.last_seq
        port.apply_delta(Delta.model_validate({"v": 1, "delta_seq": 1, "members": [
            {"id": "m2", "name": "Bo", "status": "active", "cards": ["C2"]}]}), at(8))
        assert port.central_applied() is None
        pass_ = {"id": "p2", "member": "m2", "name": "Ten", "kind": "visits", "balance": 10, "deduct_on": "access",
                 "walk_in_cost": 1, "applied": {DAEMON: 25, "s1-in-2": 40}}
        port.apply_delta(Delta.model_validate({"v": 1, "delta_seq": 2, "passes": [pass_]}), at(8, 1))
        assert port.central_applied() == 25 and port.central_applied() is None  # read once
    finally:
        store.close()


def test_a_settle_the_disk_refuses_leaves_the_events_held_and_the_held_charges_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The word came with a delta that wrote its passes as the central system sent them
    (applied 20, beyond the held charge's number); the renumbering fails on a full disk:
    still held, and the passes marked down again, so the held charge still counts."""
    import sqlite3

    import sync.store.numbering

    db = tmp_path / "gated.db"
    store = without_mark(db)
    store.hold_unsure()
    walk_in(store, at(9))
    assert store.balance("p1") == Decimal(29)
    store.conn.execute("UPDATE replica.passes SET applied_seq = 20")  # the delta's passes
    assert store.balance("p1") == Decimal(30)

    def full(*args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sync.store.numbering, "shift", full)
    with pytest.raises(sqlite3.OperationalError):
        store.settle_numbering(20, at(9, 5))
    assert store.unsure_after == 0 and store.balance("p1") == Decimal(29)
    monkeypatch.undo()
    store.settle_numbering(20, at(9, 6))
    assert store.unsure_after is None and store.balance("p1") == Decimal(29)
    store.close()


# -- a new box while a daemon of the site that heard the old one beyond the central is offline --

PEER = "s1-in-2"


def _cfg(daemon: str) -> Any:
    from sync.link.session import SessionConfig

    return SessionConfig(prefix="gated", site="s1", daemon=daemon, ack_timeout=10.0, central_status_wait=2.0,
                         resync_retry=60.0, reconcile_interval=1800.0, health_interval=60.0, lookup_timeout=0.3)


def _old_box_event(seq: int, kind: str, when: datetime) -> dict[str, Any]:
    base = {"id": f"old-{seq}", "seq": seq, "at": when.isoformat(), "gate": IN1.id, "member": "m1"}
    if kind == "deduction":
        return {**base, "type": "deduction", "pass": "p1", "amount": 1, "cause": "walk_in"}
    return {**base, "type": "access", "decision": "granted", "reason": "walk_in", "passed": True, "pass": "p1"}


def test_a_new_box_waits_for_the_word_of_each_daemon_of_the_site_before_it_settles() -> None:
    """The peer heard the old box through seq 5 (the central system only through 3) and
    went offline: what the site holds of it is its last will, without `heard`. The new
    box waits `settle_peer_wait` for its heartbeat, then settles naming it; a peer whose
    heartbeat comes ends the wait with its word."""
    from sync.link.session import Session, StoreState

    peer = Session(_cfg(PEER), StoreState(has_snapshot=True, peer_marks={DAEMON: (5, None)}), zones={"in-2": "main"})
    will = peer.status("offline").payload
    assert "heard" not in json.loads(will)  # fixed at connect: it could not be current
    box = Session(_cfg(DAEMON), StoreState(has_snapshot=True, numbering_unsure=True), zones={"in-1": "main"})
    assert box.settle_unheard(99.0) == ([], False)  # a site of one: nothing to wait for
    box.connect(100.0, "2026-12-07T08:00:00Z")
    box.receive(f"gated/s1/{PEER}/status", will, 100.0, retained=True)
    assert box.settle_unheard(100.0) == ([PEER], True)
    assert box.settle_unheard(100.0 + box.config.settle_peer_wait - 1) == ([PEER], True)
    assert box.settle_unheard(100.0 + box.config.settle_peer_wait) == ([PEER], False)  # settles, naming it
    # the peer comes back: its heartbeat says how far it heard the old box
    peer.connect(200.0, "2026-12-07T08:01:00Z")
    beat = peer.status("online", "2026-12-07T08:01:00Z", as_of="2026-12-07T08:01:00Z").payload
    box.receive(f"gated/s1/{PEER}/status", beat, 201.0)
    assert box.settle_unheard(201.0) == ([], False) and box.site_heard_of_us == 5


def test_a_charge_under_a_seq_held_for_another_is_a_numbering_collision_not_a_silent_repeat(tmp_path: Path) -> None:
    """Settled on the central system's word alone (3), the new box numbers its walk-in 5:
    the peer holds 5 for the old box's charge. It was dropped as a repeat, silently."""
    (tmp_path / "peer").mkdir()
    peer = open_store(tmp_path / "peer" / "gated.db")
    old = [_old_box_event(4, "access", at(8)), _old_box_event(5, "deduction", at(8))]
    peer.record_peer_events(DAEMON, old, {IN1.id: "main"}, (5, None), at(8))

    path = tmp_path / "new" / "gated.db"
    path.parent.mkdir()
    new_store(path).close()
    sent_path(path).unlink(missing_ok=True)
    box = open_store(path)
    box.hold_unsure()
    walk_in(box, at(9))
    box.settle_numbering(3, at(9, 1), None)  # no peer's `heard`: the central system's 3
    [charge] = [e for e in box.events_after(0, 100) if e["type"] == "deduction"]
    assert charge["seq"] == 5

    def collisions() -> list[dict[str, Any]]:
        return [e for e in peer.events_after(0, 100) if e["type"] == "alarm" and e["kind"] == "numbering_collision"]

    seen = peer.record_peer_events(DAEMON, [charge], {IN1.id: "main"}, None, at(9, 2))
    assert seen.get("peer_seq_collisions") == 1
    [alarm] = collisions()
    assert alarm["other"] == DAEMON and alarm["seqs"] == [5] and "p1" in alarm["detail"]
    peer.record_peer_events(DAEMON, [charge], {IN1.id: "main"}, None, at(9, 3))  # its resend: said once
    peer.record_peer_events(DAEMON, old, {IN1.id: "main"}, None, at(9, 3))  # the old one's: a repeat
    assert len(collisions()) == 1
    box.close()
    peer.close()


def test_two_daemons_both_unsure_of_their_numbering_do_not_wait_for_each_other() -> None:
    """A site's boxes all started without their marks (a fresh install): each holds its
    events and its heartbeat claims no last_seq — but says how far it heard the others,
    so neither waits settle_peer_wait for the other's word."""
    from sync.link.session import Session, StoreState

    a = Session(_cfg(DAEMON), StoreState(has_snapshot=True, numbering_unsure=True), zones={"in-1": "main"})
    b = Session(_cfg(PEER), StoreState(has_snapshot=True, numbering_unsure=True), zones={"in-2": "main"})
    a.connect(100.0, "2026-12-07T08:00:00Z")
    [beat] = [x for x in b.connect(100.0, "2026-12-07T08:00:00Z") if getattr(x, "retain", False)]
    assert "as_of" not in json.loads(beat.payload)
    a.receive(f"gated/s1/{PEER}/status", beat.payload, 100.5, retained=True)
    assert a.settle_unheard(100.5) == ([], False)
