"""rules/clock.py as a table: readings of the wall clock (POSIX seconds), the monotonic
clock and the system's synchronisation in, trust and the time the gate acts at out."""

from __future__ import annotations

import pytest

from rules.clock import ClockPolicy, ClockState, ClockTrust, confirm, observe, start

P = ClockPolicy(tolerance=2.0, settle=5.0, accept_ahead_after=300.0)
T0 = 1_800_000_000.0  # a wall time the gate trusts
DAY = 86_400.0


def run(state: ClockState, readings: list[tuple[float, float, bool | None]]) -> list[tuple[ClockTrust, float]]:
    """Each reading (wall offset from T0 + mono, mono, synchronised) -> (trust, acting at - T0)."""
    out = []
    for wall_off, mono, synced in readings:
        wall = T0 + wall_off
        state = observe(state, wall, mono, synced, P)
        out.append((state.trust, round(state.acting_at(wall, mono) - T0, 3)))
    return out


def trusted_at_start() -> ClockState:
    return start(T0, 0.0, T0 - 3600, P)


@pytest.mark.parametrize(
    "name, readings, expected",
    [
        ("slewing within the tolerance is followed",
         [(1.001, 1.0, False), (2.002, 2.0, False)],
         [(ClockTrust.TRUSTED, 1.001), (ClockTrust.TRUSTED, 2.002)]),
        ("a day ahead for 8 s and back: acts at the anchored time throughout",
         [(1.0, 1.0, False), (DAY + 2.0, 2.0, False), (DAY + 9.0, 9.0, False), (10.0, 10.0, False)],
         [(ClockTrust.TRUSTED, 1.0), (ClockTrust.AHEAD, 2.0), (ClockTrust.AHEAD, 9.0), (ClockTrust.TRUSTED, 10.0)]),
        ("an hour back, unsynchronised, stays untrusted however long",
         [(1.0, 1.0, False), (-3600 + 2.0, 2.0, False), (-3600 + 1000.0, 1000.0, False)],
         [(ClockTrust.TRUSTED, 1.0), (ClockTrust.BEHIND, 2.0), (ClockTrust.BEHIND, 1000.0)]),
        ("an hour back that NTP confirms is accepted once steady",
         [(1.0, 1.0, True), (-3600 + 2.0, 2.0, True), (-3600 + 5.0, 5.0, True), (-3600 + 7.5, 7.5, True)],
         [(ClockTrust.TRUSTED, 1.0), (ClockTrust.BEHIND, 2.0), (ClockTrust.BEHIND, 5.0), (ClockTrust.TRUSTED, -3592.5)]),
        ("forward and staying there: taken after accept_ahead_after without NTP (not confirmed: below)",
         [(1.0, 1.0, False), (600.0 + 2.0, 2.0, False), (600.0 + 200.0, 200.0, False), (600.0 + 303.0, 303.0, False)],
         [(ClockTrust.TRUSTED, 1.0), (ClockTrust.AHEAD, 2.0), (ClockTrust.AHEAD, 200.0), (ClockTrust.TRUSTED, 903.0)]),
        ("a wall clock that keeps jumping is never steady",
         [(1.0, 1.0, True), (DAY + 2.0, 2.0, True), (2 * DAY + 4.0, 4.0, True), (3 * DAY + 8.0, 8.0, True)],
         [(ClockTrust.TRUSTED, 1.0), (ClockTrust.AHEAD, 2.0), (ClockTrust.AHEAD, 4.0), (ClockTrust.AHEAD, 8.0)]),
    ],
)
def test_a_trusted_clock(name: str, readings: list[tuple[float, float, bool | None]],
                         expected: list[tuple[ClockTrust, float]]) -> None:
    assert run(trusted_at_start(), readings) == expected, name


def test_a_boot_in_2000_acts_at_the_last_trusted_time_until_the_clock_is_put_right() -> None:
    floor = T0
    y2000 = 946_684_800.0
    s = start(y2000, 0.0, floor, P)
    assert s.trust is ClockTrust.BEHIND and s.acting_at(y2000, 0.0) == floor
    s = observe(s, y2000 + 30, 30.0, False, P)
    assert s.trust is ClockTrust.BEHIND and s.acting_at(y2000 + 30, 30.0) == floor + 30  # the floor, moving on
    # NTP's first step: to today, past the floor (the box was off for a while)
    now = floor + 3600
    s = observe(s, now, 31.0, False, P)
    assert s.trust is ClockTrust.AHEAD and s.acting_at(now, 31.0) == floor + 31
    s = observe(s, now + 5.0, 36.0, False, P)
    assert s.trust is ClockTrust.TRUSTED and s.acting_at(now + 5.0, 36.0) == now + 5.0
    assert s.floor == now + 5.0


def test_a_clock_not_behind_the_floor_is_trusted_at_start_and_the_floor_follows_it() -> None:
    s = start(T0, 10.0, T0 - 60, P)
    assert s.trusted and s.floor == T0
    s = observe(s, T0 + 1, 11.0, None, P)
    assert s.trusted and s.floor == T0 + 1


def test_a_boot_with_the_clock_hours_ahead_and_no_ntp_decides_taps_but_settles_nothing_until_confirmed() -> None:
    """A hardware clock kept in local time (a dual-boot desk PC): Linux boots two hours on,
    NTP not synchronised yet. Taps are decided at the wall clock (nothing to disagree with),
    but no-shows and fees wait: classes that have not begun would be settled."""
    floor = T0 - 600  # the last trusted instant: the box was off for ten minutes
    s = start(T0 + 7200, 0.0, floor, P, synchronised=False)
    assert s.trusted and not s.confirmed and not s.may_settle
    assert s.acting_at(T0 + 7200, 0.0) == T0 + 7200
    # NTP synchronises and steps it back: behind, then trusted and confirmed once steady
    states = [s]
    for wall_off, mono in [(7200 + 10.0, 10.0), (12.0, 12.0), (17.5, 17.5)]:
        states.append(observe(states[-1], T0 + wall_off, mono, True, P))
    assert [(x.trust, x.may_settle) for x in states[1:]] == [
        (ClockTrust.TRUSTED, True), (ClockTrust.BEHIND, False), (ClockTrust.TRUSTED, True)]


def test_an_unconfirmed_start_is_confirmed_by_ntp_or_by_a_person_not_by_time() -> None:
    """The desk PC whose hardware clock keeps local time, NTP out of reach (the WAN down):
    the clock runs an hour ahead without a jump, so time passing proves nothing. Before
    the fix it was confirmed after accept_ahead_after (5 minutes) and the scheduler made
    no-shows, with fees, of classes not begun."""
    s = start(T0 + DAY, 0.0, T0, P, synchronised=False)  # off for a day, no NTP yet
    assert not s.may_settle
    assert not observe(s, T0 + DAY + 299.0, 299.0, False, P).may_settle
    assert not observe(s, T0 + DAY + 300.0, 300.0, False, P).may_settle
    assert not observe(s, T0 + DAY + 86_400.0, 86_400.0, False, P).may_settle  # a day on: still not
    assert observe(s, T0 + DAY + 1.0, 1.0, True, P).may_settle  # the system says so
    assert confirm(s, T0 + DAY + 1.0, 1.0).may_settle  # a person says so
    # where the system cannot say whether it is synchronised, time without a jump is all there is
    assert observe(s, T0 + DAY + 300.0, 300.0, None, P).may_settle


@pytest.mark.parametrize("synchronised", [False, None])
def test_a_clock_set_ahead_by_hand_is_decided_at_but_not_settled_by_without_ntp(synchronised: bool | None) -> None:
    """A running gate, its clock right (NTP), set three hours ahead by hand (the kernel
    then says unsynchronised): after accept_ahead_after it is taken for taps, but its time
    of day is not confirmed without NTP or a person. Before the fix it was, and the wrong
    time became the floor the next start checks against. Where the system cannot say
    (None), time without a jump still confirms it."""
    s = start(T0, 0.0, T0 - 60, P, synchronised=True)
    s = observe(s, T0 + 10.0, 10.0, True, P)
    assert s.may_settle
    ahead = 3 * 3600.0
    for mono in (11.0, 200.0):
        s = observe(s, T0 + ahead + mono, mono, synchronised, P)
        assert s.trust is ClockTrust.AHEAD and not s.may_settle
    s = observe(s, T0 + ahead + 312.0, 312.0, synchronised, P)
    assert s.trusted and s.acting_at(T0 + ahead + 312.0, 312.0) == T0 + ahead + 312.0  # taps at the wall clock
    assert s.may_settle is (synchronised is None)
    if synchronised is None:
        return
    assert s.doubted_since == 11.0  # in doubt since the jump (the alarm's age)
    s = observe(s, T0 + ahead + 5000.0, 5000.0, False, P)
    assert not s.may_settle  # time on, unsynchronised: still not
    assert observe(s, T0 + ahead + 5001.0, 5001.0, True, P).may_settle  # NTP (here: says it is right)
    assert confirm(s, T0 + ahead + 5001.0, 5001.0).may_settle  # a person


def test_a_person_confirms_a_clock_ahead_not_one_behind() -> None:
    s = observe(trusted_at_start(), T0 + 600.0 + 2.0, 2.0, False, P)
    assert s.trust is ClockTrust.AHEAD
    taken = confirm(s, T0 + 602.0, 2.0)
    assert taken.trusted and taken.may_settle and taken.acting_at(T0 + 602.0, 2.0) == T0 + 602.0
    behind = observe(trusted_at_start(), T0 - 600.0 + 2.0, 2.0, False, P)
    assert behind.trust is ClockTrust.BEHIND
    with pytest.raises(ValueError, match="only NTP"):
        confirm(behind, T0 - 598.0, 2.0)


@pytest.mark.parametrize("synchronised, wall_off, confirmed", [
    (True, DAY, True),  # NTP has set it
    (None, DAY, True),  # the system cannot say: as before, taken
    (False, 60.0, True),  # a restart: within accept_ahead_after of the floor
    (False, 301.0, False),
])
def test_which_starts_are_confirmed(synchronised: bool | None, wall_off: float, confirmed: bool) -> None:
    assert start(T0 + wall_off, 0.0, T0, P, synchronised=synchronised).confirmed is confirmed


def test_a_first_start_has_no_floor_to_hold_the_clock_against() -> None:
    assert start(T0 + DAY, 0.0, T0, P, synchronised=False, floor_stored=False).may_settle


def test_the_daemons_clock_settles_nothing_after_a_boot_hours_ahead_until_ntp_says_so() -> None:
    """gated/clock.py as the daemon builds it, the kernel's word injected."""
    from gated.clock import GuardedClock

    wall, mono, synced = [T0 + 3 * 3600], [100.0], [False]
    clock = GuardedClock(T0, P, wall=lambda: wall[0], monotonic=lambda: mono[0], synchronised=lambda: synced[0])
    assert clock.trusted and not clock.may_settle
    assert clock().timestamp() == T0 + 3 * 3600  # taps at the wall clock
    assert clock.as_dict()["confirmed"] is False and "wait for NTP" in clock.as_dict()["detail"]
    wall[0], mono[0] = T0 + 3 * 3600 + 1, 101.0
    synced[0] = True
    clock.tick()
    assert clock.may_settle and clock.as_dict()["detail"] is None
