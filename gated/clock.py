"""The daemon's clock: the wall clock, or — for the simulator only — a simulated one.

`gated sim day` runs a whole day of a site in minutes: every daemon, the central system
and the traffic share one simulated clock that starts at a given instant and runs `speed`
times faster than real time. Rules, the scheduler (no-shows, loyalty) and events all read
the daemon's clock, so they see the simulated day; hardware timings (a relay pulse, a
passage timeout) stay in real seconds.

A simulated clock can never be switched on by accident on a real site: it needs both the
`simulation:` section in the configuration *and* the environment variable
`GATED_SIMULATION=1`; with only one of them `gated run` refuses to start, `gated status`
and the console say `simulated clock`, and check-config warns.

On a real site the daemon's clock is a `GuardedClock`: the wall clock while it can be
trusted, and while it cannot (it jumped, or it is before the last instant the gate
trusted) the anchored time — the policy is rules/clock.py's, the readings are taken here:
the wall clock, the monotonic clock, and the kernel's word on NTP (adjtimex).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rules.clock import ClockPolicy, ClockState, ClockTrust, SimulatedTime, confirm, observe, start

SIMULATION_ENV = "GATED_SIMULATION"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SimulatedClock:
    """`start` at the moment the epoch (a shared instant in real time, `time.time()`) was,
    running `speed` times faster: several processes given the same start, speed and epoch
    agree on the time (the arithmetic is rules/clock.py's `SimulatedTime`, which the
    simulator's harness shares)."""

    def __init__(self, start: datetime, speed: float, epoch: float | None = None):
        self.sim = SimulatedTime(start, speed, time.time() if epoch is None else epoch)

    def __call__(self) -> datetime:
        return self.sim.at(time.time())


@dataclass(frozen=True, slots=True)
class Correction:
    """The clock was trusted again and the time acted at jumped from the anchored time to
    the wall clock: everything stamped since `since` (the time acted at when the doubt
    began) was stamped `delta` seconds off the clock now trusted. The anchored time moves
    at the monotonic clock's pace, so the offset is the same for every stamp of the doubt."""

    since: datetime
    delta: float


# No gym ran this software before it was written: a wall clock before this is wrong, and a
# gate with nothing stored yet still knows that much (a box booted in 2000).
SOFTWARE_EPOCH = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h): only the return value and `status` are read
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


_TIME_ERROR = 5  # adjtimex's answer while the clock is not synchronised (STA_UNSYNC)
_libc: Any = None


def system_synchronised() -> bool | None:
    """The kernel's word on the clock (what `timedatectl` shows as "System clock
    synchronized"): True once NTP (chrony, systemd-timesyncd, ntpd) has set it, False
    before; None where it cannot be asked. A read-only adjtimex: changes nothing."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        tx = _Timex()
        state = _libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)


class GuardedClock:
    """The daemon's clock on a real site (rules/clock.py): the wall clock while trusted,
    else the anchored time. Call it for the time; `tick()` once a second asks the kernel
    whether the clock is synchronised."""

    def __init__(
        self,
        floor: float,
        policy: ClockPolicy | None = None,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        synchronised: Callable[[], bool | None] = system_synchronised,
    ):
        self.policy = policy or ClockPolicy()
        self._wall = wall
        self._mono = monotonic
        self._synchronised = synchronised
        self.synced = synchronised()
        # a step back accepted (NTP: rules/clock.py): the time acted at then, for the daemon
        # to bring what it stamped after it back to it (Daemon._keep_clock); None: none since
        self.stepped_back_to: datetime | None = None
        # The time acted at since the time of day has been in doubt (not trusted, or not
        # confirmed; None: it is not), and the corrections owed to what was stamped since
        # (Daemon._keep_clock applies them; time-driven work waits for them)
        self.doubt_since: datetime | None = None
        self.corrections: list[Correction] = []
        self._doubt_from_start = False  # the doubt began as this run started: no row of it is before
        w, m = wall(), monotonic()
        self.state: ClockState = start(w, m, max(floor, SOFTWARE_EPOCH), self.policy, self.synced,
                                       floor_stored=floor > SOFTWARE_EPOCH)
        self._follow(self.state, w, m)
        self._doubt_from_start = self.doubt_since is not None

    def __call__(self) -> datetime:
        wall, mono = self._wall(), self._mono()
        before = self.state
        self.state = observe(before, wall, mono, self.synced, self.policy)
        self._follow(before, wall, mono)
        # Until the daemon has moved the doubt's stamps, the time handed out stays on the
        # doubt's timeline: a tap stamped in between is moved with them, not twice
        owed = sum(c.delta for c in self.corrections)
        now = datetime.fromtimestamp(self.state.acting_at(wall, mono) - owed, UTC)
        if self.state.trusted and self.state.floor < before.floor:
            # only NTP takes the floor back: what was stamped since it stood there is ahead
            self.stepped_back_to = now if self.stepped_back_to is None else min(now, self.stepped_back_to)
        return now

    def _follow(self, before: ClockState, wall: float, mono: float) -> None:
        """The doubt's beginning, and the correction owed when the clock is trusted again:
        the time acted at jumps then from the anchored time (a lower bound of the real time
        while the clock was behind; the ahead clock's own time, continued, after a step
        back) to the wall clock now trusted. A member let in at real 08:00 by a clock an
        hour ahead was stamped 09:00: her entry and her charge are an hour off — a class
        that ended at 08:50 would fine her as a no-show."""
        st = self.state
        if not before.trusted and st.trusted:
            delta = wall - before.expected(mono)
            # Back: only when the whole run was in doubt. A clock trusted and confirmed that
            # NTP steps back was ahead before the doubt too; moving the doubt's few rows back
            # alone would put them before the rows of just before (an exit before the entry
            # it follows): those are brought back to the step's instant, in order (the clamp)
            back_alone = delta < 0 and not self._doubt_from_start
            if self.doubt_since is not None and abs(delta) > self.policy.tolerance and not back_alone:
                self.corrections.append(Correction(self.doubt_since, delta))
                # still in doubt (trusted, not confirmed): the doubt's stamps now read on this clock
                self.doubt_since += timedelta(seconds=delta)
        if st.may_settle:
            self.doubt_since = None
            self._doubt_from_start = False
        elif self.doubt_since is None:
            self.doubt_since = datetime.fromtimestamp(st.acting_at(wall, mono), UTC)

    def tick(self) -> datetime:
        self.synced = self._synchronised()
        return self()

    @property
    def trusted(self) -> bool:
        return self.state.trusted

    @property
    def may_settle(self) -> bool:
        """No-shows, fees, credits and pruning may act at this time (rules/clock.py, start),
        and what was stamped while the clock was in doubt has been corrected."""
        return self.state.may_settle and not self.corrections

    def confirm(self) -> datetime:
        """A person says the wall clock is right (`gated clock confirm`): the time it is
        taken at. ValueError for a clock behind the last trusted time (rules/clock.py)."""
        wall, mono = self._wall(), self._mono()
        before = self.state
        self.state = observe(before, wall, mono, self.synced, self.policy)
        self._follow(before, wall, mono)
        before = self.state
        self.state = confirm(before, wall, mono)
        self._follow(before, wall, mono)
        return datetime.fromtimestamp(wall, UTC)

    def doubted_for(self) -> float | None:
        """Seconds the clock's time of day has waited to be confirmed (None: it has not)."""
        st = self.state
        if not st.trusted or st.confirmed:
            return None
        return self._mono() - (st.doubted_since if st.doubted_since is not None else st.since)

    def unconfirmed(self) -> str:
        """Why time-driven work waits although taps are decided at the wall clock (empty
        when it does not)."""
        st = self.state
        if not st.trusted or st.confirmed:
            return ""
        wall = datetime.fromtimestamp(self._wall(), UTC).isoformat(timespec="seconds")
        why = (f"the wall clock ({wall}) read further past the last time this gate trusted than a restart explains, "
               "or jumped ahead and stayed there")
        if self.synced is None:
            left = max(0.0, self.policy.accept_ahead_after - (self._mono() - st.since))
            return (f"{why}: taps are decided at it; no-shows, fees and credits wait for it to run {left:.0f} s "
                    "more without a jump (the system cannot say whether it is synchronised), or for "
                    "`gated clock confirm`")
        return (f"{why}, and the system is not synchronised: taps are decided at it; no-shows, fees, credits and "
                "the refunds given up after a day wait for NTP to synchronise the system, or for a person who has "
                "checked the time to run `gated clock confirm`")

    def describe(self) -> str:
        """Why the clock is not trusted, in a sentence (empty when it is)."""
        st = self.state
        if st.trusted:
            return ""
        acting = datetime.fromtimestamp(st.expected(self._mono()), UTC).isoformat(timespec="seconds")
        wall = datetime.fromtimestamp(self._wall(), UTC).isoformat(timespec="seconds")
        if st.trust is ClockTrust.BEHIND and not st.trusted_in_run:
            why = f"the wall clock ({wall}) is before the last time this gate trusted"
        else:
            why = f"the wall clock jumped {st.jump:+.0f} s (it reads {wall})"
        sync = {True: "synchronised", False: "not synchronised", None: "synchronisation unknown"}[self.synced]
        return f"{why}; the system says {sync}; acting at {acting} (the last trusted time plus the time since)"

    def as_dict(self) -> dict[str, Any]:
        st = self.state
        return {
            "trusted": st.trusted, "state": st.trust.value, "synchronised": self.synced, "confirmed": st.confirmed,
            "jump_s": round(st.jump, 3),
            "wall": datetime.fromtimestamp(self._wall(), UTC).isoformat(),
            "acting_at": self().isoformat(),
            "detail": self.describe() or self.unconfirmed() or None,
        }


class SimulationNotAllowed(Exception):
    pass


def allowed() -> bool:
    return os.environ.get(SIMULATION_ENV) == "1"


__all__ = [
    "SIMULATION_ENV", "SOFTWARE_EPOCH", "Clock", "Correction", "GuardedClock", "SimulatedClock", "SimulationNotAllowed", "allowed",
    "system_synchronised", "utc_now",
]
