"""The link's protocol session, without a broker: messages and time in, actions out
(sync/link/session.py). Each test is a short script of inputs and the actions expected."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from sync.link.actions import SettleNumbering
from sync.link.session import (
    TWIN_HOLD,
    AbortSnapshot,
    Action,
    ApplyDelta,
    ApplyLookup,
    CheckOwnEvents,
    CommitSnapshot,
    Publish,
    PublishHealth,
    RaiseAlarm,
    ReadReplay,
    RecordPeerEvents,
    ServeCatchUp,
    Session,
    SessionConfig,
    StageChunk,
    StoreAck,
    StorePeerMark,
    StoreState,
    Subscribe,
    WakeUplink,
)
from sync.protocol import ReplayRequest

P = "gated/s1"
CONFIG = SessionConfig(prefix="gated", site="s1", daemon="gate-a", ack_timeout=10.0, central_status_wait=2.0,
                       resync_retry=60.0, reconcile_interval=1800.0, health_interval=60.0, lookup_timeout=0.3)


def session(state: StoreState | None = None, **kw: Any) -> Session:
    config = SessionConfig(**{**{f: getattr(CONFIG, f) for f in CONFIG.__dataclass_fields__}, **kw})
    return Session(config, state or StoreState(has_snapshot=True, delta_seq=5), zones={"in-1": "main"})


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def publishes(actions: list[Action], topic: str | None = None) -> list[dict[str, Any]]:
    return [json.loads(a.payload) for a in actions if isinstance(a, Publish) and (topic is None or a.topic == topic)]


def resyncs(actions: list[Action]) -> list[dict[str, Any]]:
    return publishes(actions, f"{P}/resync")


def online(at: str = "2026-11-18T09:00:00Z") -> bytes:
    return js({"v": 1, "daemon": "central", "state": "online", "at": at})


OFFLINE = js({"v": 1, "daemon": "central", "state": "offline"})


def connected(s: Session, now: float = 100.0) -> Session:
    s.connect(now, "2026-11-18T09:00:00Z")
    s.receive("gated/central/status", online(), now, retained=True)
    return s


def pass_(pid: str = "p1", **kw: Any) -> dict[str, Any]:
    return {"id": pid, "member": "m1", "kind": "visits", "balance": 5, "applied": {"gate-a": 0}, **kw}


def chunk(i: int, n: int, *, sid: str = "snap", delta_seq: int = 5, members: int = 1, **kw: Any) -> bytes:
    return js({"v": 1, "snapshot_id": sid, "chunk": i, "chunks": n, "delta_seq": delta_seq,
               "members": [{"id": f"m{i}-{k}"} for k in range(members)], **kw})


# -- connecting and the one resync per connection ----------------------------------------------


def test_connect_subscribes_announces_and_waits_for_the_central_status() -> None:
    s = session()
    out = s.connect(100.0, "2026-11-18T09:00:00Z")
    subs = {(a.topic, a.qos, a.no_local) for a in out if isinstance(a, Subscribe)}
    assert subs == {
        ("gated/central/status", 1, False), (f"{P}/gate-a/ack", 1, False), (f"{P}/gate-a/replay", 1, False),
        (f"{P}/gate-a/lookup/response", 0, False), (f"{P}/snapshot", 1, False), (f"{P}/delta", 1, False), (f"{P}/delta/head", 1, False),
        (f"{P}/gate-a/history", 1, False), (f"{P}/+/events", 1, True), (f"{P}/+/status", 1, True),
        (f"{P}/catchup", 1, True), (f"{P}/+/catchup/answer", 1, True),
    }
    status = [a for a in out if isinstance(a, Publish) and a.topic == f"{P}/gate-a/status"]
    assert len(status) == 1 and status[0].retain and status[0].qos == 1
    body = json.loads(status[0].payload)
    assert body["state"] == "online" and body["protocol"] == "1.10"
    assert resyncs(out) == []  # not yet: is the central system there to hear it?


@pytest.mark.parametrize(
    ("state", "reason", "since"),
    [
        (StoreState(), "startup", None),
        (StoreState(has_snapshot=True, delta_seq=7), "reconnect", 7),
        (StoreState(has_snapshot=True, delta_seq=7, snapshot_reason="card_rule"), "card_rule", None),
    ],
)
def test_the_retained_central_status_triggers_exactly_one_resync(state: StoreState, reason: str, since: int | None) -> None:
    s = session(state)
    s.connect(100.0, "x")
    out = s.receive("gated/central/status", online(), 100.01, retained=True)
    assert [(r["reason"], r.get("since_delta_seq")) for r in resyncs(out)] == [(reason, since)]
    # nothing else asks again on this connection: not the timer, not the same status again
    assert resyncs(s.tick(103.0)) == []
    assert resyncs(s.receive("gated/central/status", online(), 103.5, retained=True)) == []
    assert s.stats["resync_requests"] == 1


def test_without_a_central_status_the_resync_goes_after_the_wait() -> None:
    s = session()
    s.connect(100.0, "x")
    assert resyncs(s.tick(101.9)) == []
    assert len(resyncs(s.tick(102.0))) == 1
    assert resyncs(s.tick(104.0)) == []


def test_a_central_said_offline_is_waited_for_then_asked_once() -> None:
    s = session()
    s.connect(100.0, "x")
    assert s.receive("gated/central/status", OFFLINE, 100.0, retained=True) == []
    assert resyncs(s.tick(110.0)) == []  # not at central_status_wait: it is offline
    out = s.receive("gated/central/status", online("2026-11-18T09:01:00Z"), 111.0)
    assert len(resyncs(out)) == 1
    assert resyncs(s.tick(112.0)) == []


def test_a_central_connecting_after_the_gate_gets_what_was_sent_before_again() -> None:
    """Broker restarted with its state wiped, the gate back first: what it sent before the
    central system subscribed is lost; the central's live `online` rewinds, and the one
    resync of the connection goes with it."""
    s = session(StoreState(has_snapshot=True, last_seq=3))
    s.connect(100.0, "x")
    s.uplink([ev(1), ev(2), ev(3)], 100.1)
    assert s.uplink_after(100.1) is None
    out = s.receive("gated/central/status", online("2026-11-18T09:07:00Z"), 100.5)
    assert WakeUplink() in out and len(resyncs(out)) == 1
    assert s.uplink_after(100.5) == 0 and s.stats["resync_requests"] == 1


def test_the_central_coming_back_is_one_more_resync_and_a_resend() -> None:
    s = connected(session(), 100.0)
    s.events_committed(3)
    s.uplink([{"id": "a", "seq": 1, "type": "x", "at": "t"}], 100.0)
    again = s.receive("gated/central/status", online("2026-11-18T09:00:00Z"), 101.0)  # a QoS 1 repeat
    assert again == []
    s.receive("gated/central/status", OFFLINE, 102.0)  # its last will
    out = s.receive("gated/central/status", online("2026-11-18T09:05:00Z"), 103.0)
    assert len(resyncs(out)) == 1 and WakeUplink() in out
    assert s.uplink_after(103.0) == 0  # from the last acknowledged event again
    # back without a will seen in between (a new `at`): also a new connection of the central
    assert len(resyncs(s.receive("gated/central/status", online("2026-11-18T09:09:00Z"), 104.0))) == 1
    assert s.stats["central_back"] == 2


def test_a_snapshot_is_asked_again_while_waiting_then_reconcile() -> None:
    s = connected(session(StoreState()), 100.0)
    assert s.awaiting_snapshot
    assert resyncs(s.tick(159.0)) == []
    assert [r["reason"] for r in resyncs(s.tick(160.0))] == ["startup"]
    for a in s.receive(f"{P}/snapshot", chunk(0, 1, requested_by=["gate-a"]), 161.0):
        assert isinstance(a, StageChunk) and a.first and a.last
    assert s.snapshot_staged(0, 1, 161.5) == [CommitSnapshot("snap", 5)]
    assert s.snapshot_committed(162.0) == []
    assert not s.awaiting_snapshot and s.delta_seq == 5
    assert resyncs(s.tick(1961.0)) == []
    assert [(r["reason"], r["since_delta_seq"]) for r in resyncs(s.tick(1962.0))] == [("reconcile", 5)]


def test_a_card_rule_change_asks_for_snapshots_but_deltas_go_on() -> None:
    """The store's cards were typed under another rule: a snapshot is wanted, yet the
    replica is consistent, so deltas still apply meanwhile (unlike a gap)."""
    s = connected(session(StoreState(has_snapshot=True, delta_seq=5, snapshot_reason="card_rule")), 100.0)
    assert not s.awaiting_snapshot
    out = s.receive(f"{P}/delta", js({"v": 1, "delta_seq": 6, "members": [{"id": "m9"}]}), 101.0)
    assert [type(a).__name__ for a in out] == ["ApplyDelta"] and s.delta_seq == 6
    assert resyncs(s.tick(159.0)) == []
    assert [r["reason"] for r in resyncs(s.tick(160.0))] == ["card_rule"]  # every resync_retry
    assert s.want_snapshot("card_rule", 161.0) == []  # just asked: not again
    for a in s.receive(f"{P}/snapshot", chunk(0, 1, delta_seq=6, requested_by=["gate-a"]), 162.0):
        assert isinstance(a, StageChunk)
    assert s.snapshot_staged(0, 1, 162.5) == [CommitSnapshot("snap", 6)]
    s.snapshot_committed(163.0)
    assert s.snapshot_reason is None and resyncs(s.tick(400.0)) == []
    # a reload changes the rule while connected: asked at once, with no since_delta_seq
    assert [(r["reason"], r.get("since_delta_seq")) for r in resyncs(s.want_snapshot("card_rule", 500.0))] == [("card_rule", None)]


def test_health_at_connect_and_every_interval() -> None:
    s = connected(session(), 100.0)
    assert PublishHealth() in s.tick(100.5)
    assert PublishHealth() not in s.tick(150.0)
    assert PublishHealth() in s.tick(160.5)


# -- uplink and acks ------------------------------------------------------------------------------


def ev(seq: int, gate: str | None = "in-1", size: int = 0) -> dict[str, Any]:
    e: dict[str, Any] = {"id": f"e{seq}", "seq": seq, "type": "access", "at": "2026-11-18T09:00:00Z", "gate": gate}
    if size:
        e["message"] = "x" * size
    return e


def test_uplink_sends_in_order_with_zones_and_splits_what_is_too_big() -> None:
    s = connected(session(StoreState(has_snapshot=True, acked_seq=2, last_seq=2), max_payload=1500, batch_events=3))
    assert s.uplink_after(100.0) is None
    assert s.events_committed(6) == [WakeUplink()]
    assert s.uplink_after(100.0) == 2
    msg = s.uplink([ev(3), ev(4, None), ev(5)], 100.0)
    assert msg is not None and msg.topic == f"{P}/gate-a/events" and msg.qos == 1 and not msg.retain
    body = json.loads(msg.payload)
    assert body["v"] == 1 and body["daemon"] == "gate-a" and body["zones"] == {"in-1": "main"}
    assert [e["seq"] for e in body["events"]] == [3, 4, 5]
    assert s.uplink_after(100.0) == 5
    big = s.uplink([ev(6, size=1000), ev(7, size=1000)], 100.0)  # does not fit 1500 bytes together
    assert big is not None and [e["seq"] for e in json.loads(big.payload)["events"]] == [6]


def test_acks_prune_resend_after_timeout_and_refuse_what_was_never_sent() -> None:
    s = connected(session(StoreState(has_snapshot=True, last_seq=10)), 100.0)
    s.uplink([ev(i) for i in range(1, 11)], 100.0)
    assert s.uplink_after(100.0) is None
    assert s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 4}), 101.0) == [StoreAck(4), WakeUplink()]
    assert s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 3}), 101.5) == [WakeUplink()]  # late, old
    assert WakeUplink() not in s.tick(111.0)
    assert WakeUplink() in s.tick(111.1)  # ack_timeout without progress: from the acked point again
    assert s.uplink_after(111.1) == 4 and s.stats["rewind_timeout"] == 1
    # an ack beyond the last event: refused, counted, one alarm per interval
    out = s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 11}), 112.0)
    assert [type(a) for a in out] == [RaiseAlarm] and out[0].kind == "ack_beyond_last_seq"  # type: ignore[union-attr]
    assert s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 99}), 113.0) == []
    assert s.acked_seq == 4 and s.stats["ack_beyond_last_seq"] == 2 and s.stats["alarms"] == 1
    assert isinstance(s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 12}), 173.0)[0], RaiseAlarm)


def test_no_resend_after_the_ack_timeout_while_the_central_is_offline_and_one_when_it_is_back() -> None:
    """The central system offline (its last will), the broker up: nobody acks, and every
    resend piled up at the broker for the central's session — the whole backlog again
    every ack_timeout, for as long as it was away (an outside tester: 20 GB a day for
    7,500 events, 16 copies of each at its return). Now new events still go (the site's
    other gates hear them; the broker keeps one copy for the central), nothing goes
    twice while it is away, and its return resends once from the acked point."""
    s = connected(session(StoreState(has_snapshot=True, last_seq=4)), 100.0)
    s.uplink([ev(i) for i in range(1, 5)], 100.0)
    s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 2}), 100.5)
    s.receive("gated/central/status", OFFLINE, 101.0)
    assert s.central_online is False
    for t in range(102, 700):
        assert WakeUplink() not in s.tick(float(t)), t
        assert s.uplink_after(float(t)) is None, t
    assert s.stats["rewind_timeout"] == 0 and s.stats["resend_held_central_offline"] > 0
    # new events while it is away go once, and are not sent again either
    s.events_committed(6)
    assert s.uplink_after(700.0) == 4
    s.uplink([ev(5), ev(6)], 700.0)
    for t in range(701, 800):
        assert WakeUplink() not in s.tick(float(t)) and s.uplink_after(float(t)) is None, t
    assert s.stats["rewind_timeout"] == 0
    # back: one resend from what it acknowledged, then the ack timeout as ever
    out = s.receive("gated/central/status", online("2026-11-18T10:00:00Z"), 800.0)
    assert WakeUplink() in out and s.uplink_after(800.0) == 2 and s.stats["rewind_central_online"] == 1
    s.uplink([ev(i) for i in range(3, 7)], 800.0)
    assert s.uplink_after(800.5) is None
    assert WakeUplink() in s.tick(810.5) and s.uplink_after(810.5) == 2 and s.stats["rewind_timeout"] == 1


def test_the_ack_timeout_still_resends_to_a_central_online_but_silent_unknown_or_acking_though_said_offline() -> None:
    """Held only while the central is known offline: online but not acking, no status at
    all (an old central system: None), or acking though its status says offline (a stale
    retained `offline`) — each gets the resend after ack_timeout, as before."""
    silent = connected(session(StoreState(has_snapshot=True, last_seq=3)), 100.0)
    unknown = session(StoreState(has_snapshot=True, last_seq=3))
    unknown.connect(100.0, "2026-11-18T09:00:00Z")
    stale = session(StoreState(has_snapshot=True, last_seq=3))
    stale.connect(100.0, "2026-11-18T09:00:00Z")
    stale.receive("gated/central/status", OFFLINE, 100.0, retained=True)
    for s in (silent, unknown, stale):
        s.uplink([ev(1), ev(2), ev(3)], 100.0)
    stale.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 1}), 100.5)
    assert silent.central_online is True and unknown.central_online is None and stale.central_online is False
    for s, at in ((silent, 110.1), (unknown, 110.1), (stale, 110.6)):
        assert WakeUplink() not in s.tick(at - 0.2)
        assert WakeUplink() in s.tick(at) and s.stats["rewind_timeout"] == 1
    assert silent.uplink_after(110.1) == 0 and unknown.uplink_after(110.1) == 0 and stale.uplink_after(110.6) == 1
    # the stale one's status says offline again (a will): held again until an ack or `online`
    stale.uplink([ev(2), ev(3)], 111.0)
    stale.receive("gated/central/status", OFFLINE, 111.0)
    assert all(WakeUplink() not in stale.tick(float(t)) for t in range(112, 200))


def test_unsure_of_its_numbering_the_gate_asks_with_its_last_event_and_settles_before_counting_acks() -> None:
    """The ledger lost its mark of what it sent (sync/store/numbering.py): the last event
    that may leave goes again though acknowledged (its ack says how far the central system
    got), and any ack is first handed to the shell to settle the numbering — one beyond
    the last event is the news, not an error."""
    s = connected(session(StoreState(has_snapshot=True, acked_seq=6, last_seq=6, numbering_unsure=True)), 100.0)
    assert s.uplink_after(100.0) == 5
    # its heartbeat claims nothing meanwhile: the others must not take it as heard through now
    beat = json.loads(s.status("online", "2026-11-18T09:00:00Z", as_of="2026-11-18T09:00:05Z").payload)
    assert "last_seq" not in beat and "as_of" not in beat
    s.uplink([ev(6)], 100.0)
    beyond = s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 30}), 100.1)
    assert [type(a) for a in beyond] == [SettleNumbering] and s.acked_seq == 6 and not s.stats["ack_beyond_last_seq"]
    # the shell settled it: the held events now follow 30
    out = s.numbering_settled(33, beyond[0].ack, 100.2)  # type: ignore[union-attr]
    assert StoreAck(30) in out and s.acked_seq == 30 and s.uplink_after(100.2) == 30
    beat = json.loads(s.status("online", "2026-11-18T09:00:00Z", as_of="2026-11-18T09:00:10Z").payload)
    assert (beat["last_seq"], beat["as_of"]) == (33, "2026-11-18T09:00:10Z")
    assert isinstance(s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 40}), 100.3)[0], RaiseAlarm)  # sure now


def test_unsure_with_nothing_of_its_own_to_send_the_gate_asks_for_a_snapshot() -> None:
    """A new box that held nothing at its start has no event whose ack would say how far
    the central system got: only a snapshot's passes say it. Restarted after its first
    snapshot's switch and before its settle (a kill), it asked for the deltas since and
    waited for good at a quiet site (tests/test_sync_kill.py hung on it). Now it asks for
    a snapshot; once sure, for the deltas again."""
    s = session(StoreState(has_snapshot=True, delta_seq=5, last_seq=0, numbering_unsure=True))
    s.connect(100.0, "2026-11-18T09:00:00Z")
    [req] = resyncs(s.receive("gated/central/status", online(), 100.0, retained=True))
    assert req["reason"] == "startup" and req.get("since_delta_seq") is None
    sure = session(StoreState(has_snapshot=True, delta_seq=5, last_seq=0))
    sure.connect(100.0, "2026-11-18T09:00:00Z")
    [req] = resyncs(sure.receive("gated/central/status", online(), 100.0, retained=True))
    assert req["reason"] == "reconnect" and req["since_delta_seq"] == 5
    # with an event of its own before the hold, its ack is the word: deltas, as before
    held = session(StoreState(has_snapshot=True, delta_seq=5, last_seq=6, acked_seq=6, numbering_unsure=True))
    held.connect(100.0, "2026-11-18T09:00:00Z")
    [req] = resyncs(held.receive("gated/central/status", online(), 100.0, retained=True))
    assert req["reason"] == "reconnect"


def test_a_gap_ack_resends_from_the_central_systems_point_once_a_second() -> None:
    s = connected(session(StoreState(has_snapshot=True, last_seq=6)), 100.0)
    s.uplink([ev(i) for i in range(1, 7)], 100.0)
    out = s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 2, "gap": True}), 100.1)
    assert out == [StoreAck(2), WakeUplink()] and s.uplink_after(100.1) == 2
    s.uplink([ev(i) for i in range(3, 7)], 100.2)
    s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 2, "gap": True}), 100.3)  # the same gap, repeated
    assert s.uplink_after(100.3) is None and s.stats["rewind_gap"] == 1


def test_replay_resends_what_the_gate_still_holds_below_its_acked_point() -> None:
    s = connected(session(StoreState(has_snapshot=True, last_seq=50, acked_seq=50)), 100.0)
    out = s.receive(f"{P}/gate-a/replay", js({"v": 1, "request_id": "r1", "from_seq": 11}), 100.0)
    assert out == [ReadReplay(ReplayRequest(request_id="r1", from_seq=11))]
    out = s.replay_ready(ReplayRequest(request_id="r1", from_seq=11), first_held=21, now=100.0)
    assert publishes(out, f"{P}/gate-a/replay/answer") == [
        {"v": 1, "daemon": "gate-a", "request_id": "r1", "from_seq": 11, "first_seq": 21, "last_seq": 50}
    ]
    assert s.uplink_after(100.0) == 20 and s.replaying
    s.disconnect(100.0)
    s.connect(100.0, "x")  # a reconnect in the middle of a replay goes on with it
    assert s.uplink_after(100.0) == 20 and s.replaying
    s.uplink([ev(i) for i in range(21, 41)], 100.0)
    # acks below the acked point are progress now (the restored central system climbing back)
    assert s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 40}), 101.0) == [WakeUplink()]
    s.uplink([ev(i) for i in range(41, 46)], 101.0)
    assert WakeUplink() not in s.tick(110.5)
    assert s.tick(111.5).count(WakeUplink()) == 1 and s.uplink_after(111.5) == 40  # timeout: from 40, not 50
    s.uplink([ev(i) for i in range(41, 51)], 112.0)
    s.receive(f"{P}/gate-a/ack", js({"v": 1, "applied_seq": 50}), 113.0)
    assert not s.replaying and s.stats["replays_done"] == 1
    # nothing held from there: the answer says so, nothing is resent
    out = s.replay_ready(ReplayRequest(request_id="r2", from_seq=5), first_held=51, now=114.0)
    assert publishes(out)[0]["first_seq"] == 51 and s.uplink_after(114.0) is None


# -- deltas and snapshots -------------------------------------------------------------------------


def delta(seq: int, **kw: Any) -> bytes:
    return js({"v": 1, "delta_seq": seq, **kw})


def test_deltas_in_order_old_ones_ignored_a_gap_waits_for_a_snapshot() -> None:
    s = connected(session(), 100.0)
    out = s.receive(f"{P}/delta", delta(6, passes=[pass_()]), 101.0)
    assert [type(a) for a in out] == [ApplyDelta] and s.delta_seq == 6
    assert s.receive(f"{P}/delta", delta(6), 101.0) == [] and s.stats["deltas_old"] == 1
    out = s.receive(f"{P}/delta", delta(9), 102.0)
    assert [r["reason"] for r in resyncs(out)] == ["gap"] and s.awaiting_snapshot
    assert s.receive(f"{P}/delta", delta(10), 102.5) == []  # held
    s.receive(f"{P}/snapshot", chunk(0, 2, delta_seq=8, requested_by=["gate-a"]), 103.0)
    assert s.receive(f"{P}/delta", delta(11), 103.1) == []  # held while importing
    s.receive(f"{P}/snapshot", chunk(1, 2, delta_seq=8, requested_by=["gate-a"]), 103.2)
    assert s.snapshot_staged(2, 2, 103.3) == [CommitSnapshot("snap", 8)]
    out = s.snapshot_committed(103.4)
    assert [a.delta.delta_seq for a in out if isinstance(a, ApplyDelta)] == [9, 10, 11]
    assert s.delta_seq == 11 and not s.awaiting_snapshot


def test_a_pass_without_applied_is_refused() -> None:
    s = connected(session(), 100.0)
    no_applied = {k: v for k, v in pass_().items() if k != "applied"}
    assert s.receive(f"{P}/delta", delta(6, passes=[no_applied]), 101.0) == []
    assert s.stats["invalid"] == 1 and s.delta_seq == 5


def test_versions_unknown_keys_are_ignored_another_major_is_dropped() -> None:
    s = connected(session(), 100.0)
    out = s.receive(f"{P}/delta", delta(6, members=[{"id": "m1", "nickname": "A"}], future={"x": 1}), 101.0)
    assert [type(a) for a in out] == [ApplyDelta]
    assert s.receive(f"{P}/delta", js({"v": 2, "delta_seq": 7}), 101.0) == []
    assert s.stats["unsupported_version"] == 1 and s.delta_seq == 6


@pytest.mark.parametrize(
    ("held", "in_snapshot", "full", "applied"),
    [
        (100, 51, False, True),   # removes 49 %: applied
        (100, 49, False, False),  # removes 51 %: held
        (100, 0, False, False),   # empties the site: held
        (100, 0, True, True),     # unless the central system means it
        (0, 0, False, True),      # a first snapshot removes nothing
    ],
)
def test_the_snapshot_guard(held: int, in_snapshot: int, full: bool, applied: bool) -> None:
    s = connected(session(), 100.0)
    out = s.receive(f"{P}/snapshot", chunk(0, 1, members=in_snapshot, full_replacement=full), 101.0)
    assert [type(a) for a in out] == [StageChunk]
    out = s.snapshot_staged(held, in_snapshot, 102.0)  # the members the worker built
    if applied:
        assert out == [CommitSnapshot("snap", 5)]
    else:
        assert out[0] == AbortSnapshot("held") and isinstance(out[1], RaiseAlarm) and out[1].kind == "snapshot_held"
        assert s.stats["snapshots_held"] == 1 and not s.importing


def test_snapshots_not_for_us_stale_or_out_of_order() -> None:
    s = connected(session(), 100.0)
    assert s.receive(f"{P}/snapshot", chunk(0, 1, requested_by=["gate-b"]), 101.0) == []
    assert s.receive(f"{P}/snapshot", chunk(0, 1, delta_seq=4), 101.0) == []
    assert s.stats["snapshots_stale"] == 1 and s.stats["snapshot_chunks_ignored"] == 1
    assert s.receive(f"{P}/snapshot", chunk(1, 2, sid="other"), 101.0) == []
    assert s.stats["snapshot_chunks_ignored"] == 2
    s.receive(f"{P}/snapshot", chunk(0, 3), 102.0)
    out = s.receive(f"{P}/snapshot", chunk(2, 3), 102.1)  # chunk 1 was lost
    assert out[0] == AbortSnapshot("expected chunk 1/3, got 2/3")
    assert [r["reason"] for r in resyncs(out)] == ["snapshot_failed"] and s.awaiting_snapshot


def test_losing_the_connection_mid_snapshot_abandons_it() -> None:
    s = connected(session(), 100.0)
    s.receive(f"{P}/snapshot", chunk(0, 3), 101.0)
    assert s.disconnect(102.0) == [AbortSnapshot("connection lost")]
    assert not s.importing and s.awaiting_snapshot
    assert s.uplink_after(103.0) is None and s.tick(103.0) == []
    s.connect(104.0, "x")
    out = s.receive("gated/central/status", online(), 104.0, retained=True)
    assert [r["reason"] for r in resyncs(out)] == ["gap"]


# -- look-ups -------------------------------------------------------------------------------------


def test_lookup_answers_on_time_late_or_forgotten() -> None:
    s = connected(session(), 100.0)
    req = s.lookup("04A1", b"c1", 100.0)
    assert req is not None and req.topic == f"{P}/lookup/request" and req.qos == 0
    assert req.response_topic == f"{P}/gate-a/lookup/response" and req.correlation == b"c1"
    answer = js({"v": 1, "found": True, "members": [{"id": "m9", "cards": ["04A1"]}], "passes": [pass_(member="m9")]})
    out = s.receive(f"{P}/gate-a/lookup/response", answer, 100.1, correlation=b"c1")
    assert [type(a) for a in out] == [ApplyLookup] and out[0].correlation == b"c1"  # type: ignore[union-attr]
    assert s.receive(f"{P}/gate-a/lookup/response", answer, 100.2, correlation=b"c1") == []  # once
    # seconds after lookup_timeout: still applied (the tap gave up, the next one finds the card)
    s.lookup("04A2", b"c2", 200.0)
    assert [type(a) for a in s.receive(f"{P}/gate-a/lookup/response", answer, 205.0, correlation=b"c2")] == [ApplyLookup]
    s.lookup("04A3", b"c3", 300.0)
    s.tick(331.0)  # forgotten after lookup_keep
    assert s.receive(f"{P}/gate-a/lookup/response", answer, 331.0, correlation=b"c3") == []
    assert s.stats["lookup_unmatched"] == 2 and s.stats["lookup_expired"] == 1
    s.disconnect(400.0)
    assert s.lookup("04A4", b"c4", 400.0) is None and s.stats["lookup_offline"] == 1


# -- other gates of the site ----------------------------------------------------------------------


def test_other_gates_events_are_handed_to_the_store_repeats_too() -> None:
    """What the others did (passages, booking outcomes, charges, refunds) goes to the store,
    every time it comes: a repeat may carry one we missed (sync/store/peer_events.py records each
    once). Denials and the rest are not the others' business."""
    s = connected(session(), 100.0)
    batch = {"v": 1, "daemon": "gate-b", "zones": {"in-2": "main"}, "events": [
        {"id": "x1", "seq": 1, "type": "access", "at": "2026-11-18T09:00:00Z", "gate": "in-2", "member": "m1",
         "decision": "granted", "reason": "walk_in", "passed": True},
        {"id": "x2", "seq": 2, "type": "deduction", "at": "2026-11-18T09:00:00Z", "gate": "in-2", "member": "m1",
         "pass": "p1", "amount": 1, "cause": "walk_in"},
        {"id": "x3", "seq": 3, "type": "access", "at": "2026-11-18T09:00:05Z", "gate": "in-2", "member": "m2",
         "decision": "denied", "reason": "no_pass"},
        {"id": "x4", "seq": 4, "type": "attendance", "at": "2026-11-18T09:00:06Z", "member": "m3", "booking": "b1",
         "status": "attended", "by": "desk"},
        {"id": "x5", "seq": 5, "type": "alarm", "at": "2026-11-18T09:00:07Z", "kind": "relay_offline"},
    ]}
    out = s.receive(f"{P}/gate-b/events", js(batch), 101.0)
    assert len(out) == 1 and isinstance(out[0], RecordPeerEvents) and out[0].sender == "gate-b"
    assert [e["seq"] for e in out[0].events] == [1, 2, 4] and out[0].zones == {"in-2": "main"}
    assert s.receive(f"{P}/gate-b/events", js(batch), 101.0) == out  # a repeat: the store's job
    assert s.receive(f"{P}/gate-c/events", js(batch), 101.0) == []  # says it is someone else
    assert s.receive(f"{P}/gate-a/events", js(batch), 101.0) == [] and s.stats["own_events_echo"] == 1


def peer_status(last_seq: int | None, as_of: str | None, state: str = "online", daemon: str = "gate-b") -> bytes:
    body: dict[str, Any] = {"v": 1, "daemon": daemon, "state": state, "at": "2026-11-18T08:00:00Z"}
    if last_seq is not None:
        body.update(last_seq=last_seq, as_of=as_of)
    return js(body)


def pev(seq: int, **kw: Any) -> dict[str, Any]:
    return {"id": f"b{seq}", "seq": seq, "type": "access", "at": "2026-11-18T09:00:00Z", "gate": "in-2",
            "member": "m1", "decision": "granted", "reason": "walk_in", "passed": True, **kw}


def catch_ups(actions: list[Action]) -> list[dict[str, Any]]:
    return publishes(actions, f"{P}/catchup")


def test_the_heartbeat_says_our_last_seq_every_mark_interval() -> None:
    s = session(mark_interval=5.0, state=StoreState(has_snapshot=True, delta_seq=5, last_seq=7))
    out = s.connect(100.0, "2026-11-18T09:00:00Z")
    [first] = publishes(out, f"{P}/gate-a/status")
    assert (first["last_seq"], first["as_of"], first["at"]) == (7, "2026-11-18T09:00:00Z", "2026-11-18T09:00:00Z")
    assert publishes(s.tick(103.0, "2026-11-18T09:00:03Z"), f"{P}/gate-a/status") == []
    s.events_committed(9)
    [beat] = publishes(s.tick(105.0, "2026-11-18T09:00:05Z"), f"{P}/gate-a/status")
    # the connection's instant stays (a repeat is not a reconnection); the claim moves
    assert (beat["at"], beat["last_seq"], beat["as_of"]) == ("2026-11-18T09:00:00Z", 9, "2026-11-18T09:00:05Z")


def test_the_heartbeat_says_how_far_each_peer_is_heard_and_hears_how_far_we_are() -> None:
    """Status.heard: a new box under our id numbers on after what the site heard of the
    old one (sync/store/numbering.py), not only after what the central system holds."""
    s = connected(session(mark_interval=5.0, state=StoreState(
        has_snapshot=True, delta_seq=5, last_seq=7, peer_marks={"gate-b": (5, 1000.0), "gate-c": (None, None)})), 100.0)
    [beat] = publishes(s.tick(105.0, "2026-11-18T09:00:05Z"), f"{P}/gate-a/status")
    assert beat["heard"] == {"gate-b": 5}  # gate-c: known, nothing of it heard
    assert s.site_heard_of_us is None
    for peer, ours in (("gate-b", 40), ("gate-c", 42), ("gate-d", None)):
        body = json.loads(peer_status(3, "2026-11-18T09:00:00Z", daemon=peer))
        if ours is not None:
            body["heard"] = {"gate-a": ours, "gate-b": 3}
        s.receive(f"{P}/{peer}/status", js(body), 106.0, retained=True)
    assert s.site_heard_of_us == 42
    too_many = json.loads(peer_status(3, "2026-11-18T09:00:00Z"))
    too_many["heard"] = {f"g{i}": 1 for i in range(300)} | {"gate-a": 10**6}
    assert s.receive(f"{P}/gate-b/status", js(too_many), 107.0) == [] and s.site_heard_of_us == 42


def test_a_peer_heard_of_for_the_first_time_is_asked_for_its_day() -> None:
    s = connected(session(catch_up_grace=3.0, catch_up_retry=10.0), 100.0)
    assert s.receive(f"{P}/gate-b/status", peer_status(5, "2026-11-18T09:00:00Z"), 100.5, retained=True) == []
    # its retained status: what it claims was published before we subscribed, and nothing
    # of it is on its way (a clean session): asked at once, not after the grace
    [req] = catch_ups(s.tick(101.0, "2026-11-18T09:00:01Z"))
    assert (req["peer"], req["daemon"], req.get("from_seq"), req["since"]) == (
        "gate-b", "gate-a", None, "2026-11-17T09:00:01Z")
    assert catch_ups(s.tick(105.0, "2026-11-18T09:00:05Z")) == []  # asked: not again before the retry
    # the answer: gate-b's events of the horizon start at 3
    answer = {"v": 1, "daemon": "gate-b", "to": "gate-a", "request_id": req["request_id"], "first_seq": 3,
              "last_seq": 5, "events": [pev(3), pev(4), pev(5)], "zones": {"in-2": "main"}}
    [rec] = s.receive(f"{P}/gate-b/catchup/answer", js(answer), 106.0)
    assert isinstance(rec, RecordPeerEvents) and [e["seq"] for e in rec.events] == [3, 4, 5]
    heard_at = datetime(2026, 11, 18, 9, 0, tzinfo=UTC).timestamp()
    assert rec.mark == (5, heard_at)  # all of it up to its heartbeat's as_of: written with the events
    assert s.peers.through() == heard_at
    assert catch_ups(s.tick(120.0, "2026-11-18T09:00:20Z")) == []


def test_a_daemon_restarted_asks_at_once_for_what_a_peer_did_meanwhile_and_a_live_gap_waits_the_grace() -> None:
    """Restarted with gate-b heard up to 5: gate-b's retained status says 9, so 6..9 were
    published while this daemon was away and will never come by themselves — asked for at
    the first tick. A live heartbeat beyond what came waits the grace (events in flight)."""
    s = connected(session(catch_up_grace=3.0, catch_up_retry=10.0, state=StoreState(
        has_snapshot=True, delta_seq=5, peer_marks={"gate-b": (5, 1000.0), "gate-c": (3, 1000.0)})), 100.0)
    s.receive(f"{P}/gate-b/status", peer_status(9, "2026-11-18T09:00:00Z"), 100.2, retained=True)
    s.receive(f"{P}/gate-c/status", peer_status(3, "2026-11-18T09:00:00Z", daemon="gate-c"), 100.2, retained=True)
    [req] = catch_ups(s.tick(100.5, "2026-11-18T09:00:01Z"))
    assert (req["peer"], req["from_seq"]) == ("gate-b", 6)
    s.receive(f"{P}/gate-c/status", peer_status(4, "2026-11-18T09:00:02Z", daemon="gate-c"), 101.0)  # live: 4 may be on its way
    assert catch_ups(s.tick(102.0, "2026-11-18T09:00:03Z")) == []
    [req] = catch_ups(s.tick(104.5, "2026-11-18T09:00:05Z"))
    assert (req["peer"], req["from_seq"]) == ("gate-c", 4)


def test_a_gap_in_a_peers_events_is_asked_for_from_the_first_missing_seq() -> None:
    s = connected(session(catch_up_grace=3.0, catch_up_retry=10.0, state=StoreState(
        has_snapshot=True, delta_seq=5, peer_marks={"gate-b": (5, 1000.0)})), 100.0)
    s.receive(f"{P}/gate-b/status", peer_status(5, "2026-11-18T09:00:00Z"), 100.0)
    batch = {"v": 1, "daemon": "gate-b", "zones": {"in-2": "main"}, "events": [pev(8)]}
    [rec] = s.receive(f"{P}/gate-b/events", js(batch), 101.0)
    assert rec.mark is None  # 6 and 7 are missing: the mark stays at 5
    s.receive(f"{P}/gate-b/status", peer_status(8, "2026-11-18T09:00:10Z"), 102.0)
    [req] = catch_ups(s.tick(105.5, "2026-11-18T09:00:15Z"))
    assert (req["peer"], req["from_seq"], req.get("since")) == ("gate-b", 6, None)
    answer = {"v": 1, "daemon": "gate-b", "to": "gate-a", "request_id": req["request_id"], "first_seq": 6,
              "last_seq": 8, "events": [pev(6), pev(7), pev(8)]}
    [rec] = s.receive(f"{P}/gate-b/catchup/answer", js(answer), 106.0)
    assert rec.mark == (8, datetime(2026, 11, 18, 9, 0, 10, tzinfo=UTC).timestamp())


def test_a_peer_that_pruned_what_we_missed_is_counted_and_we_go_on() -> None:
    s = connected(session(state=StoreState(has_snapshot=True, delta_seq=5, peer_marks={"gate-b": (5, None)})), 100.0)
    answer = {"v": 1, "daemon": "gate-b", "to": "gate-a", "request_id": "r1", "first_seq": 9, "last_seq": 9,
              "events": [pev(9)]}
    [rec] = s.receive(f"{P}/gate-b/catchup/answer", js(answer), 106.0)
    assert rec.mark is not None and rec.mark[0] == 9
    assert s.stats["peer_events_lost"] == 3


def test_catch_up_requests_and_answers_for_others_are_not_ours() -> None:
    s = connected(session(), 100.0)
    mine = {"v": 1, "daemon": "gate-b", "peer": "gate-a", "request_id": "r1", "from_seq": 4}
    [serve] = s.receive(f"{P}/catchup", js(mine), 101.0)
    assert isinstance(serve, ServeCatchUp) and serve.request.from_seq == 4
    assert s.receive(f"{P}/catchup", js({**mine, "peer": "gate-c"}), 101.0) == []
    assert s.receive(f"{P}/catchup", js({**mine, "since": "2026-11-18T00:00:00Z"}), 101.0) == []  # both: invalid
    other = {"v": 1, "daemon": "gate-b", "to": "gate-c", "request_id": "r1", "first_seq": 1, "last_seq": 1,
             "events": [pev(1)]}
    assert s.receive(f"{P}/gate-b/catchup/answer", js(other), 101.0) == []
    chunk = s.catch_up_answer(serve.request, [pev(4, gate="in-1")], 4, more=False)
    body = json.loads(chunk.payload)
    assert chunk.topic == f"{P}/gate-a/catchup/answer" and body["to"] == "gate-b" and body["zones"] == {"in-1": "main"}


def test_a_cleared_status_takes_a_daemon_out_of_the_site() -> None:
    s = connected(session(state=StoreState(has_snapshot=True, delta_seq=5, peer_marks={"gate-b": (5, 10.0)})), 100.0)
    assert s.peers.known() == ["gate-b"]
    assert s.receive(f"{P}/gate-b/status", b"", 101.0, retained=True) == [StorePeerMark("gate-b", None, None)]
    assert s.peers.known() == [] and s.peers.through() is None


def test_bad_input_is_counted_never_raised() -> None:
    s = connected(session(max_payload=1024), 100.0)
    for topic, payload in [(f"{P}/delta", b"{"), (f"{P}/gate-a/ack", b"[]"), (f"{P}/snapshot", b"x" * 2000),
                           ("gated/central/status", js({"v": 1, "daemon": "gate-b", "state": "online"})),
                           (f"{P}/elsewhere", b"{}")]:
        assert s.receive(topic, payload, 101.0) == []
    assert s.stats["malformed"] == 1 and s.stats["oversized"] == 1 and s.stats["unexpected_topic"] == 1
    assert s.stats["dropped"] == 4
    assert s.take_notes() and s.take_notes() == []


# -- the central's delta head: a delta lost on the way is noticed ---------------------------------


def head(seq: int) -> bytes:
    return js({"v": 1, "delta_seq": seq, "at": "2026-11-18T09:00:00Z"})


def test_a_head_beyond_the_replica_asks_for_the_missed_deltas_after_the_grace() -> None:
    s = connected(session(head_grace=5.0, resync_retry=60.0))
    s.tick(103.0)  # the connection's resync is behind us
    assert s.receive(f"{P}/delta/head", head(6), 110.0) == []  # the delta may still be on its way
    assert s.deltas_behind == 1
    assert resyncs(s.tick(114.0)) == []
    [req] = resyncs(s.tick(115.0))
    assert (req["reason"], req["since_delta_seq"]) == ("behind", 5)
    assert resyncs(s.tick(116.0)) == []  # asked: not again before resync_retry
    [again] = resyncs(s.tick(175.0))
    assert again["reason"] == "behind"


def test_a_head_the_delta_follows_asks_for_nothing() -> None:
    s = connected(session(head_grace=5.0))
    s.tick(103.0)
    s.receive(f"{P}/delta/head", head(6), 110.0)
    [apply] = s.receive(f"{P}/delta", delta(6), 111.0)
    assert isinstance(apply, ApplyDelta)
    assert s.deltas_behind == 0 and s.behind_for(112.0) is None
    assert resyncs(s.tick(120.0)) == []


@pytest.mark.parametrize("seq", [3, 5])
def test_a_head_at_or_below_the_replica_is_not_news(seq: int) -> None:
    s = connected(session(head_grace=5.0))
    s.tick(103.0)
    s.receive(f"{P}/delta/head", head(seq), 110.0)
    assert s.deltas_behind == 0
    assert resyncs(s.tick(200.0)) == []


def test_a_head_while_a_snapshot_is_awaited_does_not_ask_twice() -> None:
    s = connected(session(head_grace=5.0), 100.0)
    s.receive(f"{P}/delta", delta(9), 101.0)  # a gap: a snapshot is asked for
    assert s.awaiting_snapshot
    s.receive(f"{P}/delta/head", head(9), 102.0)
    assert [r["reason"] for r in resyncs(s.tick(120.0))] == []


def test_an_invalid_head_is_dropped_and_counted() -> None:
    s = connected(session())
    assert s.receive(f"{P}/delta/head", b'{"v": 1, "delta_seq": -1}', 110.0) == []
    assert s.stats["invalid"] == 1 and s.deltas_behind == 0


# -- two daemons under one daemon id (a cloned SD card) ----------------------------------------


def own_status(at: str, as_of: str | None, state: str = "online", last_seq: int = 3) -> bytes:
    body: dict[str, Any] = {"v": 1, "daemon": "gate-a", "state": state, "at": at}
    if as_of is not None:
        body.update(last_seq=last_seq, as_of=as_of)
    return js(body)


def twin_ev(seq: int, prefix: str) -> dict[str, Any]:
    return {"id": f"{prefix}{seq}", "seq": seq, "type": "deduction", "at": "2026-11-18T09:00:00Z", "gate": "in-1",
            "member": "ben", "pass": "p-ben", "amount": 1, "cause": "walk_in"}


def test_a_twin_under_our_id_loses_events_at_the_central_so_it_is_an_alarm_and_events_are_held(
    tmp_path: Any,
) -> None:
    """Two boxes with one daemon id both number 1..N: the central system keeps one event of
    each seq and drops the other's as repeats, and acks both. Each box sees its twin's
    retained status (this run did not publish it) and its batches on the site's topic."""
    from simulator.central_db import CentralDB
    from sync.protocol import EventBatch

    central = CentralDB(tmp_path / "central.db")
    central.apply_events("s1", EventBatch(daemon="gate-a", events=[twin_ev(n, "one-") for n in (1, 2, 3)]))
    ack2, _ = central.apply_events("s1", EventBatch(daemon="gate-a", events=[twin_ev(n, "two-") for n in (1, 2, 3)]))
    assert central.stats["duplicates"] == 3 and ack2.applied_seq == 3  # box 2's charges: gone, acked

    s = connected(session(state=StoreState(has_snapshot=True, delta_seq=5, last_seq=5, acked_seq=3)), 100.0)
    assert s.uplink_after(100.0) == 3
    # our own status echoed (a bridge), and our last run's retained one: nothing
    assert s.receive(f"{P}/gate-a/status", own_status("2026-11-18T09:00:00Z", "2026-11-18T09:00:00Z"), 101.0) == []
    assert s.receive(f"{P}/gate-a/status", own_status("2026-11-18T07:00:00Z", "2026-11-18T08:59:55Z"), 101.0,
                     retained=True) == []
    assert s.receive(f"{P}/gate-a/status", own_status("2026-11-18T07:00:00Z", None, "offline"), 101.0) == []
    assert s.twin is None and s.uplink_after(101.0) == 3
    # the twin's heartbeat
    out = s.receive(f"{P}/gate-a/status", own_status("2026-11-18T09:00:02Z", "2026-11-18T09:00:07Z"), 102.0,
                    retained=True)
    [alarm] = [a for a in out if isinstance(a, RaiseAlarm)]
    assert alarm.kind == "daemon_id_in_use" and "gate-a" in alarm.detail
    assert s.twin is not None and s.stats["daemon_id_in_use"] == 1
    # held while it lasts: the events stay in the outbox, nothing is published
    assert s.uplink_after(103.0) is None
    stall = s.uplink_stall(103.0)
    assert stall is not None and "daemon_id_in_use" in stall[1]
    # its batches: the shell compares them with the ledger
    batch = {"v": 1, "daemon": "gate-a", "zones": {"in-1": "main"}, "events": [twin_ev(4, "two-")]}
    [check] = s.receive(f"{P}/gate-a/events", js(batch), 110.0)
    assert isinstance(check, CheckOwnEvents) and check.events[0]["id"] == "two-4"
    assert s.twin_seen("events numbered otherwise", 110.0) == []  # said within alarm_interval: counted
    assert s.uplink_after(150.0) is None
    # no sign of it for TWIN_HOLD: the events leave again
    out = s.tick(110.0 + TWIN_HOLD, "2026-11-18T09:02:00Z")
    assert WakeUplink() in out and s.twin is None and s.uplink_after(110.0 + TWIN_HOLD) == 3


def test_takeovers_of_our_connection_by_our_client_id_are_a_twin() -> None:
    s = connected(session(), 100.0)
    assert s.taken_over(100.0) == []  # once: a blip (our own dead connection's)
    assert [a.kind for a in s.taken_over(200.0) if isinstance(a, RaiseAlarm)] == ["daemon_id_in_use"]
    s2 = connected(session(), 100.0)
    assert s2.taken_over(100.0) == [] and s2.taken_over(100.0 + 601.0) == []  # far apart


def test_another_connections_last_will_under_our_id_is_a_takeover_and_twice_a_twin() -> None:
    """A broker (Debian's 2.0) hands our client id to another connection without MQTT 5's reason 142:
    it closes the old socket and publishes the old connection's last will. So each will
    carries its connection's `at`: an `offline` under our id from a connection this run
    never made is a takeover between the two (tests/test_twin_boxes.py, the real broker)."""
    s = session(state=StoreState(has_snapshot=True, delta_seq=5, last_seq=5, acked_seq=3))
    will = s.will("2026-11-18T09:00:00Z")
    body = json.loads(will.payload)
    assert will.retain and (body["state"], body["at"], body.get("last_seq")) == ("offline", "2026-11-18T09:00:00Z", None)
    connected(s, 100.0)
    topic = f"{P}/gate-a/status"
    # our own connection's will (a connection of ours the broker still held), our last run's,
    # a will without `at` (an older gate's): nothing
    assert s.receive(topic, own_status("2026-11-18T09:00:00Z", None, "offline"), 101.0, retained=True) == []
    assert s.receive(topic, own_status("2026-11-18T08:59:00Z", None, "offline"), 101.0, retained=True) == []
    assert s.receive(topic, js({"v": 1, "daemon": "gate-a", "state": "offline"}), 101.0, retained=True) == []
    # another connection's, taken over by ours: once is a takeover, the same one again nothing
    other = own_status("2026-11-18T09:00:05Z", None, "offline")
    assert s.receive(topic, other, 102.0, retained=True) == []
    assert s.receive(topic, other, 103.0, retained=True) == []
    assert s.twin is None and s.stats["own_id_foreign_offline"] == 1 and s.uplink_after(103.0) == 3
    # a second one: a twin — an alarm, events held
    out = s.receive(topic, own_status("2026-11-18T09:00:09Z", None, "offline"), 104.0, retained=True)
    assert [a.kind for a in out if isinstance(a, RaiseAlarm)] == ["daemon_id_in_use"]
    assert s.twin is not None and "last will" in s.twin and s.uplink_after(104.0) is None


def test_while_a_twin_holds_a_lost_connection_waits_a_quarter_of_the_hold() -> None:
    """Two boxes with one client id take the connection from each other at every attempt:
    at the usual 0.1 s, about six times a second each, forever (each connection a resync at
    the central system). While the twin holds, a quarter of `twin_hold` — so each still sees
    a sign of the other within half a hold, and the hold goes on until one is gone."""
    from sync.link.reconnect import Reconnect

    s = connected(session(twin_hold=8.0), 100.0)
    assert s.reconnect_wait(100.0) is None
    s.twin_seen("test", 100.0)
    assert s.reconnect_wait(107.9) == 2.0 and s.reconnect_wait(108.0) is None
    s.disconnect(101.0)
    assert s.tick(200.0) == []  # not connected: held until a connection's timers end it
    plan = Reconnect([("a", 1), ("b", 2)], initial=0.1, maximum=1.0, refused=30.0, rand=lambda: 0.0)
    plan.first()
    plan.connected()
    assert plan.lost(2.0).delay == 2.0 and plan.lost(None).delay == 0.1 and plan.lost(0.01).delay == 0.1
    assert plan.failed().delay == 0.0  # the next broker at once, the doubling from `initial` as before
    assert plan.failed().delay == 0.1


def test_the_ledger_tells_a_twins_events_from_our_own_echoed(tmp_path: Any) -> None:
    from tests.test_numbering import at, new_store, walk_in

    store = new_store(tmp_path / "gated.db")
    try:
        walk_in(store, at(9))
        ours = store.events_after(0, 100)
        assert store.events_not_ours(ours) == []  # our own, back through a bridge
        theirs = [{**e, "id": f"twin-{e['seq']}"} for e in ours]
        beyond = {**ours[-1], "seq": store.last_seq + 1, "id": "twin-x"}
        assert store.events_not_ours([*theirs, beyond]) == [e["seq"] for e in ours] + [store.last_seq + 1]
    finally:
        store.close()


def test_the_heartbeat_says_what_the_gate_does_of_the_time_driven_work_and_the_peers_are_heard_saying_it() -> None:
    """docs/protocol.md 1.6: the status says whether the gate does the site's time-driven
    work and how far it has settled (`time_driven_work`), and a peer's word is kept — also
    once its last will, which does not carry it, says it went offline."""
    from sync.link.peer_marks import WorkClaim

    s = session()
    s.work = WorkClaim(True, 1_794_985_200.0, 1_794_992_400.5)
    [status] = [a for a in s.connect(100.0, "2026-11-18T09:00:00Z")
                if isinstance(a, Publish) and a.topic == f"{P}/gate-a/status"]
    assert json.loads(status.payload)["time_driven_work"] == {
        "on": True, "since": "2026-11-18T07:00:00Z", "through": "2026-11-18T09:00:00.500000Z"}
    assert "time_driven_work" not in json.loads(s.status("offline").payload)  # the last will: it would go stale
    assert not s.heard_the_site(100.0) and s.heard_the_site(100.0 + s.config.mark_interval)
    s.receive(f"{P}/gate-b/status", js({"v": 1, "daemon": "gate-b", "state": "online", "last_seq": 3,
                                         "as_of": "2026-11-18T09:00:01Z",
                                         "time_driven_work": {"on": False, "through": "2026-11-18T08:45:00Z"}}), 101.0)
    s.receive(f"{P}/gate-b/status", js({"v": 1, "daemon": "gate-b", "state": "offline"}), 102.0)
    mark = s.peers.marks["gate-b"]
    assert not mark.online and mark.work == WorkClaim(False, None, 1_794_991_500.0)
    # a gate of an older version says nothing of it: nothing is made up
    s.receive(f"{P}/gate-c/status", js({"v": 1, "daemon": "gate-c", "state": "online"}), 103.0)
    assert s.peers.marks["gate-c"].work is None


# -- found by a central system written from docs/protocol.md alone --------------------------------


def test_a_snapshot_whose_chunks_stop_coming_is_abandoned_and_asked_again() -> None:
    """A central system that crashed part-way through a snapshot: the import stayed open
    for good, the deltas after it were held for after it, and no resync was ever sent —
    a member blocked centrally was let in for as long as it lasted."""
    s = connected(session(snapshot_stall=120.0), 100.0)
    s.receive(f"{P}/snapshot", chunk(0, 3), 101.0)
    s.receive(f"{P}/snapshot", chunk(1, 3), 150.0)
    s.receive(f"{P}/delta", delta(6), 151.0)  # held for after the import
    s.receive(f"{P}/delta/head", head(6), 151.0)
    assert s.importing and resyncs(s.tick(269.0)) == []  # 119 s since chunk 1: still on its way
    out = s.tick(270.5)
    assert out[0] == AbortSnapshot("no chunk for 120 s after chunk 1 of 3")
    assert [r["reason"] for r in resyncs(out)] == ["snapshot_failed"]
    assert not s.importing and s.awaiting_snapshot and s.stats["snapshots_failed"] == 1
    # the new snapshot comes whole: the held delta follows it
    s.receive(f"{P}/snapshot", chunk(0, 1, sid="again"), 271.0)
    s.snapshot_staged(1, 1, 272.0)
    assert [type(a) for a in s.snapshot_committed(272.0)] == [ApplyDelta] and s.delta_seq == 6


def test_a_snapshot_wholly_received_is_not_timed_out_while_it_is_built() -> None:
    s = connected(session(snapshot_stall=120.0), 100.0)
    s.receive(f"{P}/snapshot", chunk(0, 2), 101.0)
    s.receive(f"{P}/snapshot", chunk(1, 2), 102.0)  # the last: the worker builds the replica
    assert [a for a in s.tick(400.0) if isinstance(a, AbortSnapshot)] == [] and s.importing


@pytest.mark.parametrize("payload", [
    b'{"v": 1, "applied_seq": "5"}',
    b'{"v": 1, "applied_seq": true}',
    b'{"v": 1, "applied_seq": 5, "gap": "yes"}',
    b'{"v": true, "applied_seq": 5}',
])
def test_an_ack_that_breaks_its_schema_is_dropped_and_counted(payload: bytes) -> None:
    """`"5"` and `true` for an integer were read as 5 and 1: a central system's bug went
    unnoticed (docs/protocol.md: a message that breaks its schema is dropped and counted)."""
    s = connected(session())
    assert s.receive(f"{P}/gate-a/ack", payload, 110.0) == []
    assert s.stats["dropped"] == 1 and s.stats["invalid"] + s.stats["unsupported_version"] == 1
    assert s.stats["acks"] == 0


def test_a_delta_with_a_string_for_a_number_is_invalid() -> None:
    s = connected(session())
    assert s.receive(f"{P}/delta", js({"v": 1, "delta_seq": "6"}), 110.0) == []
    assert s.receive(f"{P}/delta", js({"v": 1, "delta_seq": 6, "passes": [pass_(applied={"gate-a": "5"})]}), 110.0) == []
    assert s.stats["invalid"] == 2 and s.delta_seq == 5


def test_a_garbage_lookup_answer_is_malformed_not_unmatched() -> None:
    s = connected(session())
    assert s.receive(f"{P}/gate-a/lookup/response", b"not json", 110.0) == []
    assert s.stats["malformed"] == 1 and s.stats["lookup_unmatched"] == 0
    assert s.receive(f"{P}/gate-a/lookup/response", js({"v": 1, "found": False}), 110.0) == []
    assert s.stats["lookup_unmatched"] == 1


def test_the_snapshot_the_replica_already_is_is_not_imported_again() -> None:
    """A snapshot left retained by a central system (pushed to all) came again at every
    connection and was imported again each time: an import's CPU for nothing."""
    s = connected(Session(CONFIG, StoreState(has_snapshot=True, snapshot_id="snap", delta_seq=5), zones={}), 100.0)
    assert s.receive(f"{P}/snapshot", chunk(0, 1, sid="snap"), 101.0) == []
    assert s.stats["snapshots_repeated"] == 1 and not s.importing
    assert [type(a) for a in s.receive(f"{P}/snapshot", chunk(0, 1, sid="new"), 102.0)] == [StageChunk]
    s.snapshot_staged(1, 1, 103.0)
    s.snapshot_committed(103.0)
    assert s.receive(f"{P}/snapshot", chunk(0, 1, sid="new"), 104.0) == []  # the one just made
    assert s.stats["snapshots_repeated"] == 2
    s.delta_failed(5, "the store refused it", 105.0)  # now the gate waits for one: taken
    assert [type(a) for a in s.receive(f"{P}/snapshot", chunk(0, 1, sid="new"), 106.0)] == [StageChunk]


# one event of each kind the store keeps of another daemon's (sync/store/peer_events.py apply)
PEER_FACTS: dict[str, dict[str, Any]] = {
    "access": {"gate": "in-2", "member": "m1", "decision": "granted", "reason": "walk_in", "passed": True},
    "attendance": {"member": "m1", "booking": "b1", "status": "attended", "by": "gate"},
    "deduction": {"gate": "in-2", "member": "m1", "pass": "p1", "amount": 1, "cause": "walk_in"},
    "passage_unconfirmed": {"gate": "in-2", "member": "m1", "booking": "b1", "reason": "booking",
                            "granted_at": "2026-11-18T09:00:00Z"},
    "fire_alarm": {"active": True},
    "fire_alarm/cleared": {"active": False},
    "alarm/exits_not_recorded": {"kind": "exits_not_recorded", "gates": {"out-2": 3},
                                 "until": "2026-11-18T09:00:00Z"},
    "alarm/rotations_while_down": {"kind": "rotations_while_down", "gate": "out-2", "direction": "out", "count": 2},
    "qr_used": {"gate": "in-2", "member": "m1", "token": "t1", "expires": "2026-11-18T09:05:00Z"},
}


def test_every_kind_of_fact_the_store_keeps_of_a_peer_reaches_it() -> None:
    """The link's filter of another daemon's events dropped `passage_unconfirmed`, `fire_alarm`
    and the exits-unrecorded alarms before the store, whose handlers for them were never
    reached: a member let in at a frozen daemon was fined a no-show by the other, and the
    evacuees of an emergency release at one daemon were refused anti-passback at the other
    (an outside review's probe, a frozen peer). Every kind peer_events.apply handles must
    have its example here, and pass."""
    import re
    from pathlib import Path

    import sync.store.peer_events as pe

    source = Path(pe.__file__).read_text()
    handled = set(re.findall(r'kind == "(\w+)"', source)) | {
        f"alarm/{k}" for k in re.findall(r'ev\.get\("kind"\) == "(\w+)"', source)}
    assert handled - {"alarm"} <= set(PEER_FACTS), handled - set(PEER_FACTS)
    s = connected(session(), 100.0)
    events = [{"id": f"x{i}", "seq": i, "type": name.split("/")[0], "at": "2026-11-18T09:00:00Z", **body}
              for i, (name, body) in enumerate(PEER_FACTS.items(), 1)]
    out = s.receive(f"{P}/gate-b/events", js({"v": 1, "daemon": "gate-b", "zones": {"in-2": "main"},
                                              "events": events}), 101.0)
    assert len(out) == 1 and isinstance(out[0], RecordPeerEvents)
    assert [e["seq"] for e in out[0].events] == [e["seq"] for e in events]


def test_the_replica_is_current_only_while_the_gate_can_tell() -> None:
    """Connected, the central system online, nothing numbered past the replica, for
    head_grace since the connection and since the central came back (its head and a delta
    or resync answer arrive by then). A gate cut off, or whose central is offline, cannot
    tell: a booking cancelled meanwhile would be fined as a no-show (knowledge.py holds
    those). The central's head heard is its word that nothing newer was numbered."""
    s = session(head_grace=5.0)
    assert not s.replica_current(100.0)
    connected(s, 100.0)
    assert not s.replica_current(102.0) and s.replica_current(105.0)
    assert not s.head_heard
    s.receive(f"{P}/delta/head", head(5), 106.0)
    assert s.head_heard and s.replica_current(106.0)
    s.receive(f"{P}/delta/head", head(6), 107.0)  # a delta numbered past the replica
    assert not s.replica_current(107.0)
    s.receive(f"{P}/delta", js({"v": 1, "delta_seq": 6}), 107.5)
    assert s.replica_current(108.0)
    s.receive("gated/central/status", OFFLINE, 110.0)
    assert not s.replica_current(200.0)
    s.receive("gated/central/status", online("2026-11-18T10:00:00Z"), 300.0)  # back: its answer on its way
    assert not s.replica_current(302.0) and s.replica_current(305.0)
    s.disconnect(306.0)
    assert not s.replica_current(400.0)
    connected(s, 500.0)
    assert not s.head_heard and not s.replica_current(501.0) and s.replica_current(505.0)
