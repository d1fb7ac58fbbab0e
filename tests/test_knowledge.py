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
from sync.link.peer_marks import PeerMarks
from sync.records import BookingIn
from sync.store import Store, SyncBatch
from tests.test_numbering import POLICY, at, new_store


def spin(bid: str, start: Any, end: Any, status: str = "booked") -> BookingIn:
    return BookingIn.model_validate({
        "id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
        "starts_at": start.isoformat(), "ends_at": end.isoformat(), "deducted": False, "status": status,
    })


def knowledge(store: Store, session: SimpleNamespace, policy: Policy = POLICY) -> Knowledge:
    """A daemon doing the site's time-driven work, alone on its site, as Knowledge reads it."""
    config = SimpleNamespace(time_driven_work=True, peer_wait_limit_delta=lambda: timedelta(hours=1),
                             policy=SimpleNamespace(to_domain=lambda: policy), daemon_id="s1-in-1")
    daemon = SimpleNamespace(config=config, link=SimpleNamespace(session=session), store=store)
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
    session = SimpleNamespace(peers=PeerMarks(), deltas_behind=1)
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
    k = knowledge(store, SimpleNamespace(peers=PeerMarks(), deltas_behind=0))
    assert k.no_show_horizon(at(11)) == (None, None)
    store.close()


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
