"""The books at a wall clock the gate cannot vouch for (DESIGN.md, "What the gate knows":
nothing irreversible that depends on the time of day happens while the wall clock has
jumped or is not synchronised). The daemon's GuardedClock (gated/clock.py) with injected
wall, monotonic and NTP readings; the real store (sync/store); the daemon's scheduler
(gated/daemon.py) run once with the rest of the daemon stood in."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from gated.clock import GuardedClock
from rules.clock import ClockPolicy
from rules.model import Gate, Policy, Site
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import Store, SyncBatch

TZ = ZoneInfo("Europe/Madrid")  # UTC+1 in December: an RTC kept in local time reads 1 h ahead
SITE = Site(TZ, id="s1")
DAEMON = "s1-in-1"
POLICY = Policy(no_show_fee=Decimal(1))
DAY = datetime(2026, 12, 7, tzinfo=TZ)


def at(hh: int, mm: int = 0, day: int = 0) -> datetime:
    return (DAY + timedelta(days=day)).replace(hour=hh, minute=mm)


def spin(bid: str, start: datetime, end: datetime) -> BookingIn:
    return BookingIn.model_validate({
        "id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
        "starts_at": start.isoformat(), "ends_at": end.isoformat(), "deducted": False,
    })


def new_store(path: Path, bookings: list[BookingIn] = ()) -> Store:  # type: ignore[assignment]
    store = Store(path, SITE, daemon_id=DAEMON, durable=False)
    visits = PassIn.model_validate({
        "id": "p1", "member": "m1", "name": "Multipack", "kind": "visits", "balance": 30, "deduct_on": "access",
        "walk_in_cost": 1, "access_windows": {"mon-sun": "06:00-22:00"},
    })
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])], [visits], list(bookings)), at(6, day=-1))
    return store


class Box:
    """The box's clocks: real time R = T0 + t; the wall clock R + offset; NTP's word."""

    def __init__(self, t0: datetime, offset: float, floor: datetime, synced: bool | None = False):
        self.t0 = t0.timestamp()
        self.t = 0.0
        self.offset = offset
        self.synced = synced
        self.clock = GuardedClock(floor.timestamp(), ClockPolicy(), wall=lambda: self.t0 + self.t + self.offset,
                                  monotonic=lambda: 1000.0 + self.t, synchronised=lambda: self.synced)

    def real(self) -> datetime:
        return datetime.fromtimestamp(self.t0 + self.t, UTC)

    def advance(self, seconds: float) -> None:
        """Time passes; the daemon's scheduler ticks the clock once a second."""
        end = self.t + seconds
        while self.t < end:
            self.t = min(end, self.t + 1.0)
            self.clock.tick()


def scheduler_once(box: Box, store: Store, monkeypatch: pytest.MonkeyPatch, unheard: list[str]) -> None:
    """One turn of the daemon's scheduler (gated/daemon.py `_scheduler`) on this box."""
    from gated import daemon as gd
    from gated.engine import Engine

    engine = Engine(store, SITE, {"in-1": Gate("in-1", "main")}, POLICY)
    fake = SimpleNamespace(
        _keep_clock=lambda: box.clock.tick(), clock=box.clock, clock_guard=box.clock,
        knowledge=SimpleNamespace(check=lambda now: None, unheard=lambda instant: list(unheard),
                                  no_show_horizon=lambda now: (None, None)),
        engine=engine, config=SimpleNamespace(time_driven_work=True), storage=None, store=store, taps=None,
    )

    async def stop(_: float) -> None:
        raise asyncio.CancelledError

    with monkeypatch.context() as m:
        m.setattr(gd.asyncio, "sleep", stop)
        m.setattr(gd.status, "update_gauges", lambda d: None)
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(gd.Daemon._scheduler(fake))  # type: ignore[arg-type]


def alarms(store: Store) -> list[str]:
    return [str(r[0]) for r in store.conn.execute("SELECT body FROM events WHERE type = 'alarm'")]


def test_a_waiting_refund_is_not_given_up_at_a_clock_not_confirmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The desk marks Ana's class attended with a refund at 20:00; the other turnstile is
    not heard, so the refund waits. The box restarts the next evening at real 19:30 with
    its RTC an hour ahead and no NTP: trusted for taps, not confirmed. The scheduler gave
    the request up at 20:30 by that clock — a day passed, `refund_unsettled`, for good —
    half an hour before its real time. It waits; once NTP has set the clock and the day
    has really passed, it is given up."""
    store = new_store(tmp_path / "g.db", [spin("b9", at(18), at(18, 45))])
    store.mark_attended("b9", "desk", refund=True, now=at(20), waiting=["s1-in-2"])
    assert store.refunds_waiting() == 1
    box = Box(at(19, 30, day=1), offset=3600, floor=at(22), synced=False)
    assert box.clock.trusted and not box.clock.may_settle
    scheduler_once(box, store, monkeypatch, ["s1-in-2"])
    assert store.refunds_waiting() == 1, alarms(store)
    box.offset, box.synced = 0.0, True  # NTP steps the clock back to the real 19:30
    box.advance(10)
    assert box.clock.may_settle
    scheduler_once(box, store, monkeypatch, ["s1-in-2"])
    assert store.refunds_waiting() == 1  # not a day yet, really
    box.advance(31 * 60)  # 20:01
    scheduler_once(box, store, monkeypatch, ["s1-in-2"])
    assert store.refunds_waiting() == 0 and any("refund_unsettled" in a for a in alarms(store))
    store.close()


def test_a_refund_whose_charge_arrives_is_settled_at_a_clock_not_confirmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settling a refund once everyone is heard does not depend on the time of day: it
    goes on at a clock not confirmed (here the other turnstile is heard, nothing charged)."""
    store = new_store(tmp_path / "g.db", [spin("b9", at(18), at(18, 45))])
    store.mark_attended("b9", "desk", refund=True, now=at(20), waiting=["s1-in-2"])
    box = Box(at(19, 30, day=1), offset=3600, floor=at(22), synced=False)
    scheduler_once(box, store, monkeypatch, [])
    assert store.refunds_waiting() == 0 and not any("refund_unsettled" in a for a in alarms(store))
    store.close()
