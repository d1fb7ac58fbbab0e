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
from rules.credential import CredentialKind
from rules.decide import Decision, Presented, decide
from rules.model import AntiPassback, Direction, Gate, Policy, Site
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import Store, SyncBatch
from tests.tap_fixtures import tap_of

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
    from gated.knowledge import Handover

    engine = Engine(store, SITE, {"in-1": Gate("in-1", "main")}, POLICY)
    from gated.daemon import Daemon

    keeper = SimpleNamespace(clock_guard=box.clock, store=store, _floor_saved=0.0,
                             while_down=SimpleNamespace(refresh=lambda tx: None))
    fake = SimpleNamespace(
        _keep_clock=lambda: Daemon._keep_clock(keeper),  # type: ignore[arg-type]
        clock=box.clock, clock_guard=box.clock,
        knowledge=SimpleNamespace(check=lambda now: None, unheard=lambda instant: list(unheard),
                                  no_show_horizon=lambda now: (None, None), announce=lambda: None,
                                  handover=lambda now: Handover(True, None, None)),
        engine=engine, config=SimpleNamespace(time_driven_work=True), storage=None, store=store, taps=None,
        while_down=SimpleNamespace(check=lambda: None),
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
    keep_clock(box, store, 10)  # the daemon's clock keeping: the doubt's stamps moved by the step
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


IN_HARD = Gate("in-1", "main", anti_passback=AntiPassback.HARD)
IN_GRACE = Gate("in-1", "main", reentry_grace=timedelta(minutes=30))
IN = Gate("in-1", "main")
OUT = Gate("out-1", "main", direction=Direction.OUT)


def tap(store: Store, gate: Gate, now: datetime) -> Decision:
    d = decide(store.view("m1", gate, now), Presented(CredentialKind.CARD), gate, SITE, POLICY, now)
    store.commit_tap(tap_of(gate, d, now), passed=d.granted, now=now)
    return d


def keep_clock(box: Box, store: Store, seconds: float) -> None:
    """The daemon's once-a-second clock keeping (gated/daemon.py `_keep_clock`) for a while."""
    from gated.daemon import Daemon

    d = SimpleNamespace(clock_guard=box.clock, store=store, _floor_saved=0.0,
                        while_down=SimpleNamespace(refresh=lambda tx: None))
    end = box.t + seconds
    while box.t < end:
        box.t = min(end, box.t + 1.0)
        Daemon._keep_clock(d)  # type: ignore[arg-type]


def boot_an_hour_ahead_then_ntp(store: Store) -> Box:
    """08:00 real; the RTC keeps local time (an hour ahead), no NTP: taps decided at it."""
    return Box(at(8), offset=3600, floor=at(22, day=-1), synced=False)


def ntp_steps_it_back(box: Box, store: Store) -> None:
    keep_clock(box, store, 120)
    box.offset, box.synced = 0.0, True
    keep_clock(box, store, 10)
    assert box.clock.may_settle and abs(box.clock().timestamp() - box.real().timestamp()) < 1


def test_hard_anti_passback_lets_back_in_a_member_who_left_after_ntp_stepped_the_clock_back(tmp_path: Path) -> None:
    """Ana comes in at real 08:00, stamped 09:00 by the clock an hour ahead. NTP steps it
    back; she leaves at 08:30 (stamped 08:30) and comes back at 08:45. Her 09:00 entry
    stayed 'the last passage' (presence orders by time): she was refused `anti_passback`
    though she had gone out. This daemon's passages stamped after the step are brought
    back to it."""
    store = new_store(tmp_path / "g.db")
    box = boot_an_hour_ahead_then_ntp(store)
    assert tap(store, IN_HARD, box.clock()).granted
    ntp_steps_it_back(box, store)
    keep_clock(box, store, 30 * 60 - 130)
    out = tap(store, OUT, box.clock())
    assert out.granted and out.reason == "exit"
    keep_clock(box, store, 15 * 60)
    again = tap(store, IN_HARD, box.clock())
    assert again.granted, again.reason
    store.close()


def test_a_reentry_within_the_grace_is_not_charged_again_after_ntp_stepped_the_clock_back(tmp_path: Path) -> None:
    """A 30-minute re-entry grace. Ana pays a walk-in at real 08:00 (stamped 09:00), steps
    out to her car and comes back at 08:10: her entry was still 50 minutes 'ahead', so no
    re-entry — a second walk-in. After the step back it is at the step's time."""
    store = new_store(tmp_path / "g.db")
    box = boot_an_hour_ahead_then_ntp(store)
    assert tap(store, IN_GRACE, box.clock()).reason == "walk_in"
    ntp_steps_it_back(box, store)
    keep_clock(box, store, 10 * 60 - 130)
    again = tap(store, IN_GRACE, box.clock())
    assert (again.reason.value, store.balance("p1")) == ("reentry", Decimal(29))
    store.close()


def test_a_step_back_moves_only_this_daemon_s_passages_stamped_after_it(tmp_path: Path) -> None:
    store = new_store(tmp_path / "g.db")
    tap(store, IN_GRACE, at(7))
    tap(store, OUT, at(9))
    tap(store, IN_GRACE, at(9, 5))
    store.ledger.record_passage("m1", "main", Direction.IN, at(9, 30), "in-2", "s1-in-2")  # another daemon's
    assert store.clamp_own_passages(at(8)) == 2
    rows = store.conn.execute("SELECT at, direction, origin FROM passages ORDER BY id").fetchall()
    assert [(datetime.fromtimestamp(r[0], UTC), r[1], r[2]) for r in rows] == [
        (at(7), "in", "local"), (at(8), "out", "local"), (at(8), "in", "local"), (at(9, 30), "in", "s1-in-2")]
    presence = store.zone_presence("m1", "main")
    assert presence.last_direction is Direction.IN and presence.last_at == at(9, 30)  # the peer's, untouched
    store.close()


def fees(store: Store) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in store.conn.execute(
        "SELECT booking_id, amount FROM deductions WHERE cause = 'no_show_fee'")]


def settle_at_real(box: Box, store: Store, monkeypatch: pytest.MonkeyPatch, until: datetime) -> None:
    keep_clock(box, store, (until.timestamp() - box.real().timestamp()))
    assert box.clock.may_settle and abs(box.clock().timestamp() - box.real().timestamp()) < 1
    scheduler_once(box, store, monkeypatch, [])


@pytest.mark.parametrize("wrong", ["ahead", "behind"])
def test_a_member_let_in_at_a_wrong_clock_is_not_fined_for_her_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wrong: str,
) -> None:
    """An outside tester's day: Ana taps a minute before her 08:05 class (real 08:04). The
    box restarted with its clock two hours ahead (an RTC in local time, not synchronised:
    taps decided at it), or with a flat battery in 2000 (the gate acts at the last trusted
    time, 20:00 the evening before, plus the time since). Either way her class looked
    over, or not yet today: she paid a walk-in. NTP set the clock after her class had
    ended; her entry stayed at the wrong time (brought back only to the step's instant, or
    not at all), the no-show found no entry before the class ended and fined her, and the
    desk's "attended, give the walk-in back" did not find the walk-in. The stamps of the
    doubt are moved by the step when the clock is trusted again, before anything is settled."""
    path = tmp_path / "g.db"
    store = new_store(path, [spin("b1", at(8, 5), at(8, 50))])
    tap(store, IN, at(18, 0, day=-1))  # the evening before, the last run: in and out
    tap(store, OUT, at(19, 59, day=-1))
    scheduler_once(Box(at(19, 59, day=-1), 0.0, at(19, 58, day=-1), synced=True), store, monkeypatch, [])
    store.close()
    store = Store(path, SITE, daemon_id=DAEMON, durable=False)  # this run
    if wrong == "ahead":
        box = Box(at(8, 4), offset=7200, floor=at(20, 0, day=-1), synced=False)
        assert box.clock.trusted and not box.clock.may_settle  # decided at, settled by nothing
    else:
        box = Box(at(8, 4), offset=datetime(2000, 1, 1, tzinfo=UTC).timestamp() - at(8, 4).timestamp(),
                  floor=at(20, 0, day=-1), synced=False)
        assert not box.clock.trusted
    walk_in = tap(store, IN, box.clock())
    assert walk_in.reason == "walk_in"  # her booking looked over (ahead) or a day off (behind)
    keep_clock(box, store, 60 * 60)  # 09:04: the class is over; then NTP sets the clock
    box.offset, box.synced = 0.0, True
    keep_clock(box, store, 10)
    assert not box.clock.corrections
    stamps = [datetime.fromtimestamp(r[0], UTC) for r in store.conn.execute(
        "SELECT at FROM passages WHERE origin = 'local' ORDER BY id")]
    assert stamps[:2] == [at(18, 0, day=-1), at(19, 59, day=-1)]  # the last run's: as they were
    assert abs((stamps[2] - at(8, 4)).total_seconds()) < 1, stamps  # hers: when she came in
    settle_at_real(box, store, monkeypatch, at(9, 10))
    assert fees(store) == []  # on site before the class ended: no fee
    assert store.conn.execute("SELECT outcome FROM booking_outcomes WHERE booking_id = 'b1'").fetchone()[0] == "no_show"
    store.mark_attended("b1", "desk", refund=True, now=at(9, 15))
    given = store.refund_given("b1")
    assert given is not None and given["amount"] == 1, given  # the desk finds her walk-in
    store.close()


def test_the_clock_owes_a_correction_before_anything_is_settled() -> None:
    """GuardedClock: the doubt's beginning, and the step owed when the clock is trusted
    again; time-driven work waits until the daemon has applied it."""
    box = Box(at(8), offset=7200, floor=at(20, day=-1), synced=False)
    assert box.clock.doubt_since == at(10)  # the clock ahead: taken for taps
    box.advance(60)
    box.offset, box.synced = 0.0, True
    box.advance(10)
    assert box.clock.trusted and box.clock.state.confirmed
    [c] = box.clock.corrections
    assert c.since == at(10) and abs(c.delta + 7200) < 1
    assert not box.clock.may_settle  # until the stamps are moved
    box.clock.corrections.clear()
    assert box.clock.may_settle and box.clock.doubt_since is None
    trusted = Box(at(8), offset=0.0, floor=at(7, 59), synced=True)
    trusted.advance(30)
    assert trusted.clock.doubt_since is None and not trusted.clock.corrections


@pytest.mark.parametrize("lower_bound", [True, False])
def test_a_fresh_qr_code_is_no_forgery_while_the_time_acted_at_is_a_lower_bound(
    tmp_path: Path, lower_bound: bool,
) -> None:
    """A box booted in 2000 acts at the last trusted time plus the time since, 20:00 the
    evening before: every QR code the central system issued this morning was "issued more
    than 5 minutes in the gate's future" and refused `invalid_qr` until NTP (an outside
    tester's finding). While the time acted at is only a lower bound, a signed issue time
    after it is no forgery; a wrong signature still is, and a trusted clock keeps the check."""
    from gated.engine import Engine
    from rules.credential import Credential
    from sync.qrtoken import TrustedKeys, generate_private_key, mint

    key = generate_private_key()
    store = new_store(tmp_path / "g.db", [spin("b1", at(8, 5), at(8, 50))])
    engine = Engine(store, SITE, {"in-1": IN}, POLICY, TrustedKeys.of([key.public_key()]),
                    time_is_lower_bound=lambda: lower_bound)
    acted = at(20, 0, day=-1)
    code = mint(key, token_id="t1", member="m1", issued=at(8, 3), expires=at(8, 13), booking="b1")
    decision = engine.decide("in-1", Credential.qr(code, "r1"), acted).decision
    if lower_bound:
        assert decision.granted, decision.reason
    else:
        assert decision.reason == "invalid_qr"
    forged = mint(generate_private_key(), token_id="t2", member="m1", issued=at(8, 3), expires=at(8, 13))
    assert engine.decide("in-1", Credential.qr(forged, "r1"), acted).decision.reason == "invalid_qr"
    store.close()


def test_a_tap_as_the_clock_is_trusted_again_is_moved_once(tmp_path: Path) -> None:
    """A review's case: a box booted in 2000 (acting at 20:00 the evening before) is set by
    NTP; the tap whose own clock call saw the clock trusted again was stamped on the new
    clock and then moved by the step again, 12 hours into the future (hard anti-passback
    refused her all day). Until the doubt's stamps are moved, the time stays on its timeline."""
    store = new_store(tmp_path / "g.db")
    box = Box(at(8), offset=datetime(2000, 1, 1, tzinfo=UTC).timestamp() - at(8).timestamp(),
              floor=at(20, day=-1), synced=False)
    keep_clock(box, store, 60)
    box.offset, box.synced = 0.0, True
    keep_clock(box, store, 4)
    while not box.clock.corrections:  # the tap's own clock call sees the clock trusted again
        box.t += 0.1
        now = box.clock()
    assert tap(store, IN_HARD, now).granted
    keep_clock(box, store, 1)
    [(stamp,)] = store.conn.execute("SELECT at FROM passages WHERE origin = 'local' ORDER BY id DESC LIMIT 1")
    assert abs(stamp - box.real().timestamp()) < 5, (datetime.fromtimestamp(stamp, UTC), box.real())


def test_an_exit_during_a_short_step_back_stays_after_the_entry(tmp_path: Path) -> None:
    """A review's case: a clock trusted and confirmed but 20 s ahead (a restart within
    minutes, NTP on); Ana goes in, NTP steps the clock back, she goes out during the 5 s
    the step settles. Moving the doubt's rows back alone put her exit before her entry,
    and hard anti-passback refused her next entry. A step back of a run that was trusted
    before the doubt brings both to the step's instant, in their order."""
    store = new_store(tmp_path / "g.db")
    box = Box(at(8), offset=20, floor=at(8), synced=True)
    assert box.clock.may_settle
    keep_clock(box, store, 100)
    assert tap(store, IN_HARD, box.clock()).granted
    keep_clock(box, store, 1)
    box.offset = 0.0  # NTP steps it back 20 s
    keep_clock(box, store, 2)
    assert not box.clock.trusted
    assert tap(store, OUT, box.clock()).granted
    keep_clock(box, store, 10)
    assert box.clock.may_settle
    keep_clock(box, store, 60)
    again = tap(store, IN_HARD, box.clock())
    assert again.granted, again.reason
