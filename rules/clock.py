"""When the gate may trust its wall clock, and what time it acts at when it may not.

A gate box without a battery-backed clock boots with a wrong time and NTP steps it later;
an operator sets the time by hand; a virtual machine is restored. Each is a *step* of the
wall clock, which the monotonic clock (seconds since boot, never stepped) does not make.
So the gate keeps an anchor — a wall time it trusted and the monotonic reading then — and
compares: the wall clock has jumped when it disagrees with `anchor + elapsed` by more than
`tolerance` (NTP's own slewing is at most half a millisecond per second).

The policy (docs/rules.md, "When the clock cannot be trusted"):

| state | how it starts | what the gate acts at | how it ends |
| --- | --- | --- | --- |
| trusted | the wall clock agrees with the anchor | the wall clock | a jump of more than `tolerance` |
| ahead | the wall clock jumped forward | anchor + elapsed | back within `tolerance`; or steady there for `settle` with the system synchronised (NTP), or for `accept_ahead_after` without (a clock put right forward, a restored VM: taken for taps, but its time of day confirmed only if the system cannot say whether it is synchronised) |
| behind | the wall clock jumped back, or is before the last instant the gate trusted (a boot in 2000) | anchor + elapsed (the last trusted instant plus the time since) | back within `tolerance`; steady for `settle` with the system synchronised; or, never trusted since start, moved to or past the last trusted instant and steady for `settle` (NTP's first step) |

A start is the one moment the clock has no anchor to disagree with: a wall clock at or
after the floor is taken for taps at once (a box that was off for a weekend is two days on,
rightly), but its time of day is only *confirmed* once the system says it is synchronised,
or it was found within `accept_ahead_after` of the floor (a restart), or a person says it
is right (`confirm`: `gated clock confirm`). Until then the gate decides taps at it but
settles nothing by it: a hardware clock kept in local time, or set by hand a few hours
on, would otherwise make the bookings of classes that have not begun yet no-shows, with
fees, in the first second. Time passing never confirms a clock the system says is *not*
synchronised (the kernel says so until NTP sets it, and again once someone sets the time
by hand): an hour ahead stays an hour ahead however long it runs. Only where the system
cannot say (`synchronised is None`) does `accept_ahead_after` without a jump confirm it.
The same for a jump ahead taken after `accept_ahead_after`: decided at, not settled by,
until NTP or a person confirms it.

While not trusted the gate does nothing irreversible that depends on the time of day — no
no-show, no fee, no loyalty credit, no pruning of used QR codes or of events, no expiry of
stored facts — and decides taps, and stamps what it records, at the anchored time: a
lower bound of the real time that moves at the right speed. A clock is never accepted
*back* without the system saying it is synchronised: that would undo time in the books.

Pure: readings in (wall as POSIX seconds, monotonic seconds, synchronised or not), a new
state out.

Here too, the arithmetic of a simulated clock (`SimulatedTime`, for `gated sim day`): the
daemons (gated/clock.py) and the simulator's harness and central system
(simulator/day/harness/) must turn the same real instant into the same simulated one, so
the formula is written once, below all of them; each reads the real clock itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum


class ClockTrust(StrEnum):
    TRUSTED = "trusted"
    AHEAD = "ahead"  # the wall clock is ahead of what the monotonic clock says
    BEHIND = "behind"


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    tolerance: float = 2.0
    settle: float = 5.0
    accept_ahead_after: float = 300.0


@dataclass(frozen=True, slots=True)
class ClockState:
    trust: ClockTrust
    anchor_wall: float  # the last wall time trusted ...
    anchor_mono: float  # ... and the monotonic reading then
    floor: float  # the latest instant known to have passed (stored across restarts)
    since: float = 0.0  # monotonic: when the current state began
    steady_offset: float | None = None  # wall - mono, as it stood ...
    steady_since: float | None = None  # ... since then (monotonic)
    trusted_in_run: bool = False
    jump: float = 0.0  # seconds the wall clock is off the anchored time (+ ahead)
    confirmed: bool = True  # its time of day too, not only its pace (start, above)
    doubted_since: float | None = None  # monotonic: since when the time of day has waited to be confirmed

    @property
    def trusted(self) -> bool:
        return self.trust is ClockTrust.TRUSTED

    @property
    def may_settle(self) -> bool:
        """Time-driven work (no-shows, fees, credits, pruning) may act at this time."""
        return self.trusted and self.confirmed

    def expected(self, mono: float) -> float:
        """The anchored time: the last trusted wall time plus the time since."""
        return self.anchor_wall + (mono - self.anchor_mono)

    def acting_at(self, wall: float, mono: float) -> float:
        """The time the gate decides and records at."""
        return wall if self.trusted else self.expected(mono)


def start(
    wall: float, mono: float, floor: float, policy: ClockPolicy, synchronised: bool | None = None,
    *, floor_stored: bool = True,
) -> ClockState:
    """At start: the wall clock is trusted unless it is before the last instant the gate
    knows to have passed (`floor`: the last trusted time it stored, and never before the
    software existed); confirmed unless the system says it is not synchronised and the
    clock reads further past a stored floor than a restart explains (a first start has
    nothing to hold it against, and nothing of its own to settle yet)."""
    if wall < floor - policy.tolerance:
        return ClockState(ClockTrust.BEHIND, floor, mono, floor, since=mono, jump=wall - floor)
    confirmed = synchronised is not False or not floor_stored or wall - floor <= policy.accept_ahead_after
    return ClockState(ClockTrust.TRUSTED, wall, mono, max(floor, wall), since=mono, trusted_in_run=True,
                      confirmed=confirmed, doubted_since=None if confirmed else mono)


def observe(state: ClockState, wall: float, mono: float, synchronised: bool | None, policy: ClockPolicy) -> ClockState:
    """One reading of both clocks (`synchronised`: what the system says of NTP, None when
    it cannot say)."""
    off = wall - state.expected(mono)
    if abs(off) <= policy.tolerance:
        if state.trusted:  # follow the wall clock (slewing), a fresh anchor
            # time passing confirms it only where the system cannot say: one that says
            # "not synchronised" is waited on for NTP (or a person: `confirm`)
            confirmed = state.confirmed or bool(synchronised) or (
                synchronised is None and mono - state.since >= policy.accept_ahead_after)
            return replace(state, anchor_wall=wall, anchor_mono=mono, floor=max(state.floor, wall), jump=0.0,
                           confirmed=confirmed, doubted_since=None if confirmed else state.doubted_since)
        return _trust(state, wall, mono, state.confirmed or bool(synchronised))  # back where it was
    if state.trusted:
        trust = ClockTrust.AHEAD if off > 0 else ClockTrust.BEHIND
        return replace(state, trust=trust, since=mono, steady_offset=wall - mono, steady_since=mono, jump=off)
    # not trusted: is the wall clock at least steady where it is now?
    offset = wall - mono
    steady_since = state.steady_since
    if state.steady_offset is None or abs(offset - state.steady_offset) > policy.tolerance:
        steady_since = mono
    state = replace(
        state, trust=ClockTrust.AHEAD if off > 0 else ClockTrust.BEHIND, steady_offset=offset,
        steady_since=steady_since, jump=off,
    )
    steady = mono - (steady_since if steady_since is not None else mono)
    if synchronised and steady >= policy.settle:
        # NTP says this is the time: a correction, back as well as forward (the floor too
        # goes back: what was stored was the wrong clock's)
        return replace(_trust(state, wall, mono, True), floor=wall)
    if off > 0 and not state.trusted_in_run and wall >= state.floor and steady >= policy.settle:
        # a clock that was wrong from the start, put right: confirmed as a start's is
        confirmed = synchronised is not False or wall - state.floor <= policy.accept_ahead_after
        return _trust(state, wall, mono, confirmed)
    if off > 0 and steady >= policy.accept_ahead_after:
        # forward, and it stays there: time moved on (a clock put right, a restored VM) —
        # or someone set it hours ahead by hand. Taps are decided at it; its time of day is
        # confirmed by time only where the system cannot say whether it is synchronised
        return _trust(state, wall, mono, synchronised is not False, doubted_since=state.since)
    return state


def confirm(state: ClockState, wall: float, mono: float) -> ClockState:
    """A person says the wall clock's time is right (`gated clock confirm`): a clock
    trusted but not confirmed is confirmed, one that jumped ahead is taken at once. Not a
    clock behind what the gate trusted: ValueError (only NTP takes the books back)."""
    if state.trust is ClockTrust.BEHIND:
        raise ValueError("the wall clock is behind the last time this gate trusted: only NTP may set it back "
                         "(the books would go back in time)")
    if state.trusted:
        return replace(state, anchor_wall=wall, anchor_mono=mono, floor=max(state.floor, wall), jump=0.0,
                       confirmed=True, doubted_since=None)
    return _trust(state, wall, mono, True)


def _trust(
    state: ClockState, wall: float, mono: float, confirmed: bool, *, doubted_since: float | None = None,
) -> ClockState:
    doubted = None
    if not confirmed:  # the earliest instant its time of day was in doubt, kept through jumps
        doubted = next((t for t in (state.doubted_since, doubted_since) if t is not None), mono)
    return ClockState(
        ClockTrust.TRUSTED, wall, mono, max(state.floor, wall), since=mono, trusted_in_run=True, confirmed=confirmed,
        doubted_since=doubted,
    )


@dataclass(frozen=True, slots=True)
class SimulatedTime:
    """`start` at the moment the epoch (a shared instant in real time, POSIX seconds) was,
    running `speed` times faster: processes given the same three agree on the time."""

    start: datetime
    speed: float
    epoch: float

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("a simulated clock starts at an aware instant")

    def at(self, real: float) -> datetime:
        """The simulated instant at the real instant `real` (POSIX seconds)."""
        return self.start + timedelta(seconds=(real - self.epoch) * self.speed)


__all__ = ["ClockPolicy", "ClockState", "ClockTrust", "SimulatedTime", "confirm", "observe", "start"]
