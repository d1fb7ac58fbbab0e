"""What the gate knows it is missing, as the scheduler's no-show horizon reads it
(gated/knowledge.py): a replica known to miss deltas holds the no-shows of the classes that
ended after its last sync."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gated.knowledge import Knowledge
from rules.model import Policy
from rules.timeutil import iso_utc
from sync.link.peer_marks import PeerMarks, WorkClaim
from sync.records import BookingIn
from sync.store import Store, SyncBatch
from tests.test_numbering import POLICY, at, new_store


def spin(bid: str, start: Any, end: Any, status: str = "booked") -> BookingIn:
    return BookingIn.model_validate({
        "id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
        "starts_at": start.isoformat(), "ends_at": end.isoformat(), "deducted": False, "status": status,
    })


def link_session(**kw: Any) -> SimpleNamespace:
    """The link's session as Knowledge reads it: the replica current while connected and
    not behind the central's head (SyncSession.replica_current, tested in test_sync_session.py)."""
    s = SimpleNamespace(peers=PeerMarks(), deltas_behind=0, connected=True, central_online=True, head_heard=True)
    s.__dict__.update(kw)
    s.replica_current = lambda now: s.connected and s.deltas_behind == 0
    return s


def knowledge(store: Store, session: SimpleNamespace, policy: Policy = POLICY) -> Knowledge:
    """A daemon doing the site's time-driven work, alone on its site, as Knowledge reads it."""
    config = SimpleNamespace(time_driven_work=True, peer_wait_limit_delta=lambda: timedelta(hours=1),
                             policy=SimpleNamespace(to_domain=lambda: policy), daemon_id="s1-in-1")
    daemon = SimpleNamespace(config=config, link=SimpleNamespace(session=session, mono=lambda: 0.0), store=store)
    return Knowledge(daemon)  # type: ignore[arg-type]


def test_a_replica_behind_the_central_holds_the_no_shows_of_classes_that_ended_after_its_last_sync(
    tmp_path: Path,
) -> None:
    """Ana cancelled her 10:00 Spinning at the central system at 09:30; the delta saying so
    never reached the gate (a bridge that kept no session across a WAN cut), whose replica,
    synced last at 09:00, still has the booking `booked`. The central's delta head says
    the replica is behind. At 11:01 the class's no-show falls due: settled, it would fine
    her for a class she cancelled. It waits until the replica has caught up (and so does her
    10:00 yoga); the 08:00 class, which ended before the last sync, is settled as usual."""
    store = new_store(tmp_path / "g.db")
    store.run_due(POLICY, at(6))  # the gate's time-driven work begins
    store.apply_sync(SyncBatch(bookings=[spin("b8", at(8), at(8, 45)), spin("b9", at(10), at(10, 45))]), at(9))
    session = link_session(deltas_behind=1)
    k = knowledge(store, session)
    due = store.run_due(POLICY, at(11, 1), *k.no_show_horizon(at(11, 1))).events
    assert [(e["type"], e["booking"]) for e in due] == [("deduction", "b8"), ("attendance", "b8")]
    assert store.run_due(POLICY, at(11, 2), *k.no_show_horizon(at(11, 2))).events == []
    store.apply_delta(SyncBatch(bookings=[spin("b9", at(10), at(10, 45), "cancelled")]), 2, at(11, 3))
    session.deltas_behind = 0
    due = store.run_due(POLICY, at(11, 4), *k.no_show_horizon(at(11, 4))).events
    assert [(e["type"], e["booking"]) for e in due] == [("attendance", "b1")]  # her yoga: paid, no fee
    assert store.balance("p1") == 29  # b8's fee only
    store.close()


def test_a_replica_up_to_date_holds_nothing(tmp_path: Path) -> None:
    store = new_store(tmp_path / "g.db")
    k = knowledge(store, link_session())
    assert k.no_show_horizon(at(11)) == (None, None)
    store.close()


def test_a_gate_cut_off_holds_the_no_shows_of_classes_that_ended_since_it_last_knew(tmp_path: Path) -> None:
    """An outside tester's day: the gate lost its broker (or the central went offline) at
    09:30; Ana cancelled her 10:00 Spinning at the central meanwhile. The gate, unable to
    hear it, settled the no-show at 11:01 with its fee, and nothing gave the fee back when
    the cancellation arrived. A gate that cannot tell its replica is the central's latest
    holds the no-shows of the classes that ended since it last could; the 08:00 class,
    ended while it could, is settled as usual; back and current, the cancellation is in."""
    store = new_store(tmp_path / "g.db")
    store.run_due(POLICY, at(6))
    store.apply_sync(SyncBatch(bookings=[spin("b8", at(8), at(8, 45)), spin("b9", at(10), at(10, 45))]), at(7))
    session = link_session()
    k = knowledge(store, session)
    assert k.no_show_horizon(at(9, 30)) == (None, None)  # current: the last instant it knew
    session.connected = False  # cut off
    # said with the uplink's gap (`uplink_stalled`): the desk learns why no-shows wait
    assert k._no_shows_wait(at(11, 1)).endswith(f"after {iso_utc(at(9, 30))} wait for it")
    due = store.run_due(POLICY, at(11, 1), *k.no_show_horizon(at(11, 1))).events
    assert [(e["type"], e["booking"]) for e in due] == [("deduction", "b8"), ("attendance", "b8")]
    assert store.run_due(POLICY, at(12), *k.no_show_horizon(at(12))).events == []  # b9 waits
    session.connected = True  # back: the cancellation comes with the resync's answer
    store.apply_delta(SyncBatch(bookings=[spin("b9", at(10), at(10, 45), "cancelled")]), 2, at(12, 1))
    due = store.run_due(POLICY, at(12, 2), *k.no_show_horizon(at(12, 2))).events
    assert [(e["type"], e["booking"]) for e in due] == [("attendance", "b1")]  # her yoga: paid, no fee
    assert store.balance("p1") == 29  # b8's fee only, never b9's
    store.close()


def test_the_replica_is_as_of_the_last_instant_the_central_said_nothing_newer(tmp_path: Path) -> None:
    """An outside tester's day: the central came back after an outage with nothing new, so
    no delta came, and the gate refused walk-ins `cache_stale` for up to half an hour (its
    replica's age was its last sync's). Online, its delta head equal to the replica's, the
    central says the replica is current; a central without a head leaves it to the syncs."""
    store = new_store(tmp_path / "g.db")
    store.apply_sync(SyncBatch(), at(7))
    session = link_session(connected=False)
    k = knowledge(store, session)
    assert k.replica_as_of(at(9)) == at(7)
    session.connected = True
    assert k.replica_as_of(at(9, 5)) == at(9, 5)
    session.connected = False
    assert k.replica_as_of(at(10)) == at(9, 5)  # cut off: as of the last word
    session.connected, session.head_heard = True, False
    assert k.replica_as_of(at(11)) == at(9, 5)  # no head: the syncs say how current it is
    store.close()


# -- the site's time-driven work handed over (Knowledge.handover) ----------------------------------

OLD, NEW = "s1-in-1", "s1-in-2"


class Mono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def site_knowledge(store: Store, me: str, marks: PeerMarks, mono: Mono, *, heard_site: bool = True,
                   alarms: list[tuple[str, str]] | None = None) -> Knowledge:
    """A daemon given the site's time-driven work (`time_driven_work: true`), its link
    hearing the site's other daemons' heartbeats (`marks`)."""
    raised = alarms if alarms is not None else []
    config = SimpleNamespace(time_driven_work=True, peer_wait_limit_delta=lambda: timedelta(hours=1),
                             policy=SimpleNamespace(to_domain=lambda: POLICY), daemon_id=me)
    session = SimpleNamespace(
        peers=marks, deltas_behind=0, connected=heard_site, config=SimpleNamespace(share_access=True, mark_interval=5.0),
        heard_the_site=lambda now: heard_site, own_history=SimpleNamespace(wanted=None),
        uplink_stall=lambda now: None, delta_seq=0, twin=None, replica_current=lambda now: True,
        central_online=True, head_heard=True,
    )
    daemon = SimpleNamespace(
        config=config, link=SimpleNamespace(session=session, mono=mono), store=store, clock_guard=None,
        alarms=SimpleNamespace(raise_=lambda gate, kind, detail: raised.append((kind, detail))),
        metrics=SimpleNamespace(knowledge_gap=SimpleNamespace(labels=lambda kind: SimpleNamespace(set=lambda v: None))),
    )
    return Knowledge(daemon, monotonic=mono)  # type: ignore[arg-type]


def heard(peer: str, through: Any, work: WorkClaim | None, online: bool = True) -> PeerMarks:
    marks = PeerMarks({peer: (5, through.timestamp())})
    marks.mark(peer).online = online
    if work is not None:
        marks.announced(peer, work)
    return marks


def test_the_work_handed_over_between_two_reloads_settles_the_class_that_fell_due_in_between(tmp_path: Path) -> None:
    """The desk's daemon (s1-in-1) did the site's time-driven work through 10:15 and was
    reloaded with `time_driven_work: false` at 10:30; Ana's Yoga (10:00-10:45) fell due at
    11:00; s1-in-2 was reloaded with `true` at 11:05. It begins where the desk's heartbeat
    said it had settled: her no-show is made, once. (From its own first run, 10:50, it was
    nobody's: the booking stayed `booked` for good.)"""
    old = new_store(tmp_path / "old.db")
    old.run_due(POLICY, at(6))
    assert old.run_due(POLICY, at(10, 30)).events == []  # nothing due: settled through 10:15
    old.leave_time_driven_work()
    assert old.time_driven_work() == (None, at(10, 15))  # what its heartbeat says now
    marks = heard(OLD, at(11, 5), WorkClaim(False, None, at(10, 15).timestamp()))
    new = new_store(tmp_path / "new.db")
    k = site_knowledge(new, NEW, marks, Mono())
    h = k.handover(at(11, 5))
    assert (h.ready, h.defer_to, h.settled_through, h.others) == (True, None, at(10, 15), ())
    due = new.run_due(POLICY, at(11, 5), *k.no_show_horizon(at(11, 5)), settled_by_site=h.settled_through).events
    assert [(e["type"], e["booking"], e["status"]) for e in due] == [("attendance", "b1", "no_show")]
    assert new.run_due(POLICY, at(11, 6), *k.no_show_horizon(at(11, 6))).events == []  # once
    assert new.time_driven_work() == (at(10, 15), at(10, 50))
    # without the desk's word, as before: its first run takes nothing that fell due before it
    blind = new_store(tmp_path / "blind.db")
    assert blind.run_due(POLICY, at(11, 5)).events == []
    assert blind.run_due(POLICY, at(11, 6)).events == []
    for s in (old, new, blind):
        s.close()


def test_while_another_daemon_says_it_does_the_work_this_one_settles_nothing_and_raises_an_alarm(
    tmp_path: Path,
) -> None:
    """Two daemons given the work: the one that began first goes on (then the lower daemon
    id; one that has begun before one that has not), the other defers — never both — and
    each says `two_workers`. A daemon offline is not doing it; a daemon of an older version
    says nothing and is not waited for."""
    new = new_store(tmp_path / "new.db")
    alarms: list[tuple[str, str]] = []
    began = WorkClaim(True, at(5).timestamp(), at(10, 15).timestamp())
    k = site_knowledge(new, NEW, heard(OLD, at(11, 5), began), Mono(), alarms=alarms)
    h = k.handover(at(11, 5))
    assert (h.defer_to, h.others) == (OLD, (OLD,))
    k.check(at(11, 5))
    [(kind, detail)] = alarms
    assert kind == "two_workers" and f"settles nothing while {OLD} does it" in detail
    # neither has begun: the lower id begins, the other waits for it
    waiting = WorkClaim(True)
    assert site_knowledge(new, NEW, heard(OLD, at(11, 5), waiting), Mono()).handover(at(11, 5)).defer_to == OLD
    assert site_knowledge(new, "s1-in-0", heard(OLD, at(11, 5), waiting), Mono()).handover(at(11, 5)).defer_to is None
    # this one has begun (05:45: 06:00 less the no-show delay): it goes on before one that began later
    new.run_due(POLICY, at(6))
    later = WorkClaim(True, at(9).timestamp(), at(10, 15).timestamp())
    assert site_knowledge(new, NEW, heard(OLD, at(11, 5), later), Mono()).handover(at(11, 5)).defer_to is None
    assert site_knowledge(new, NEW, heard(OLD, at(11, 5), waiting), Mono()).handover(at(11, 5)).defer_to is None
    assert site_knowledge(new, NEW, heard(OLD, at(11, 5), began), Mono()).handover(at(11, 5)).defer_to == OLD
    offline = site_knowledge(new, NEW, heard(OLD, at(11, 5), began, online=False), Mono()).handover(at(11, 5))
    assert (offline.defer_to, offline.others) == (None, ())
    older = site_knowledge(new, NEW, heard(OLD, at(11, 5), None), Mono()).handover(at(11, 5))
    assert (older.defer_to, older.settled_through) == (None, None)
    new.close()


def test_a_daemon_given_the_work_begins_once_it_has_heard_the_site_and_a_wait_costs_no_class(tmp_path: Path) -> None:
    """Restarted with `time_driven_work: true`, its first scheduler runs come before its link
    has heard the site's heartbeats: it does not begin blind (the previous worker's word is
    on its way). Not connected for `peer_wait_limit`, it begins without that word — from
    when it was given the work, not from when it stopped waiting."""
    new = new_store(tmp_path / "new.db")
    mono = Mono()
    k = site_knowledge(new, NEW, PeerMarks(), mono, heard_site=False)
    first = k.handover(at(10, 50))  # given the work; Ana's Yoga (10:00-10:45) falls due at 11:00
    assert not first.ready and first.settled_through == at(10, 35)
    mono.t += 3599
    assert not k.handover(at(12)).ready
    mono.t += 1
    late = k.handover(at(12))
    assert late.ready and late.settled_through == at(10, 35)  # from 10:50, when it was given the work
    due = new.run_due(POLICY, at(12), settled_by_site=late.settled_through).events
    assert [(e["type"], e["booking"]) for e in due] == [("attendance", "b1")]
    new.close()


def test_a_clock_unconfirmed_longer_than_accept_ahead_after_is_an_alarm() -> None:
    """A boot an hour ahead, the system not synchronised: time passing never confirms it
    (rules/clock.py), so no-shows would wait unseen for ever — once it has waited
    `accept_ahead_after`, a `clock_unconfirmed` alarm says so; confirmed, it ends."""
    from gated.clock import GuardedClock
    from rules.clock import ClockPolicy

    t = [0.0]
    floor = 1_800_000_000.0
    guard = GuardedClock(floor, ClockPolicy(), wall=lambda: floor + 3600 + t[0], monotonic=lambda: 1000.0 + t[0],
                         synchronised=lambda: False)
    raised: list[tuple[str, str]] = []
    gauges: dict[str, float] = {}
    metrics = SimpleNamespace(knowledge_gap=SimpleNamespace(
        labels=lambda kind: SimpleNamespace(set=lambda v: gauges.__setitem__(kind, v))))
    daemon = SimpleNamespace(clock_guard=guard, link=None, store=None, config=SimpleNamespace(time_driven_work=True),
                             alarms=SimpleNamespace(raise_=lambda gate, kind, detail: raised.append((kind, detail))),
                             metrics=metrics)
    k = Knowledge(daemon, monotonic=lambda: 1000.0 + t[0])  # type: ignore[arg-type]
    for second in range(0, 600):
        t[0] = float(second)
        now = guard.tick()
        k.check(now)
        if second == 299:
            assert raised == [] and guard.state.trusted and not guard.may_settle
    assert [kind for kind, _ in raised] == ["clock_unconfirmed"] and gauges["clock_unconfirmed"] == 1
    assert "not synchronised" in raised[0][1] and "gated clock confirm" in raised[0][1]
    assert not guard.may_settle  # ten minutes on: still not
    guard.confirm()
    k.check(guard.tick())
    assert [kind for kind, _ in raised] == ["clock_unconfirmed", "clock_unconfirmed_ended"]
    assert guard.may_settle and gauges["clock_unconfirmed"] == 0


def _kinds(k: Knowledge) -> list[str]:
    from gated.console.alarms import conditions

    return sorted(c.kind for c in conditions({"knowledge": k.as_dict()}))


def test_a_peer_silent_for_minutes_is_a_gap_on_every_daemon_whatever_no_shows_wait(tmp_path: Path) -> None:
    """Another turnstile of the site silent for hours was shown only where this daemon did
    the time-driven work and a no-show was held for it (`peers_unheard`): its taps, exits and
    charges — who is inside, anti-passback, balances — were missing here unseen. Now
    `peer_silent` (a warning) on every daemon: status, banner, metric, an alarm event."""
    for works in (True, False):
        store = new_store(tmp_path / f"g-{works}.db")
        mono = Mono()
        marks = PeerMarks({"s1-in-2": (40, at(8).timestamp()), "s1-in-3": (7, at(10, 29).timestamp())})
        marks.mark("s1-in-2").online = False  # its last will said offline; s1-in-3 beats on
        raised: list[tuple[str, str]] = []
        k = site_knowledge(store, "s1-in-1", marks, mono, alarms=raised)
        k.d.config.time_driven_work = works
        now = at(10, 30)  # 2 h 30 after s1-in-2 was last heard; no class ending
        k.check(now)
        # just started (its marks kept from before): counted from its start, not at once
        assert "peer_silent" not in _kinds(k) and raised == []
        mono.t += 299
        k.check(now)
        assert raised == []
        mono.t += 1
        k.check(now)
        assert _kinds(k) == ["peer_silent"], k.as_dict()
        kind, detail = raised[0]
        assert kind == "peer_silent" and "s1-in-2 (offline, heard through" in detail and "s1-in-3" not in detail
        assert "who is inside" in detail
        # heard again: over
        marks.mark("s1-in-2").heard_through = now.timestamp()
        k.check(now)
        assert "peer_silent" not in _kinds(k) and raised[-1][0] == "peer_silent_ended"
        store.close()


def test_a_peer_never_heard_is_silent_once_the_threshold_has_passed_here(tmp_path: Path) -> None:
    store = new_store(tmp_path / "g.db")
    mono = Mono()
    marks = PeerMarks()
    marks.mark("s1-in-2").online = True  # its status came, none of its events
    k = site_knowledge(store, "s1-in-1", marks, mono)
    k.check(at(10))
    mono.t += 301
    k.check(at(10, 5))
    gaps = k.as_dict()["gaps"]
    assert [g["kind"] for g in gaps] == ["peer_silent"] and "never heard" in gaps[0]["detail"]
    store.close()


def test_a_look_up_answer_says_nothing_of_how_current_the_replica_is(tmp_path: Path) -> None:
    """An outside tester's day: the gate was cut off past `stale_cache.max_age`, and back its
    snapshot was held by the guard; a member's new card was looked up, and the answer made
    the whole replica "synced now": members the central had removed walked in as walk-ins.
    One member's records leave the replica's age as it was."""
    from sync.link.port import StorePort
    from sync.protocol import LookupResponse

    store = new_store(tmp_path / "g.db")
    store.apply_sync(SyncBatch(), at(7))
    port = StorePort(store, "s1-in-1", batch_rows=100)
    port.apply_lookup(LookupResponse.model_validate({
        "v": 1, "found": True, "members": [{"id": "m9", "name": "New", "status": "active", "cards": ["C9"]}],
    }), at(9))
    assert store.member_for_card("C9") == "m9"
    assert store.last_sync_at() == at(7)
    store.close()
