"""The relay's pulse/hold plan and the passage edge detector, as pure state machines.

No I/O, no clock reads: the async shell (modbus.py, gate.py) passes `now` in and writes
the coil levels these return, in order. Levels are logical: True = gate released.

RelayPlan rules:
- a pulse releases for `seconds`; the level returns to the *rest* level at the deadline;
- a pulse during a running pulse writes locked then released: turnstile controllers count
  release edges, one rotation each, so a relay still on would not let a second person in;
- hold(level) (fire alarm, lockdown, safe state) cancels any pulse and becomes the rest
  level, so a pulse in flight when the fire release came cannot relock after it;
- after a failed write nobody knows the coil's level: the plan falls back to the rest
  level, which the reconnect probe writes (`desired`).

PassageDetector: one person is one rising edge of the passage input (or, without one, of
the door contact). An unknown level (board not answering) forgets the last one, so an
input already active when the board answers again is not a new person.

ReleaseTail: a release held on purpose (a fire alarm, a hand's hold) ends with a relock the
line writes in its turn. While that write is out, and in the first reading back after it, a
door seen opening may have opened while the relay still stood released (an evacuee
mid-push as the panel is reset): no forced door (door.Observation.release_ended). The line
runs one request at a time, so readings back after the write returned were taken after it.

StuckInput: a passage input that reads active for longer than any rotation holds it (a
stuck sensor, a frozen I/O module) shows no rising edge: every person goes through unseen.
It is named (`passage_input_stuck`, then `passage_input_stuck_cleared` when it reads
inactive again) and, while it lasts, a grant's passage cannot be confirmed (grant.py). An
unknown level (board silent) neither raises nor clears it: nothing was read.

PassageCounter: where the board counts the passage pulses itself, one person is one step
of its 16-bit counter (which wraps), between two readings that both answered: it sees the
pulses that fall between polls, and a gate nobody read for a while (a starved loop) missed
none (the grant tracker's `counts_unseen`). Its step across a failed reading is never
trusted: the board may have restarted meanwhile, and a counter that began again from 0
near the wrap (65,000 -> 0 is a step of 536) or just after a few people (3 -> 0 then one
person) is indistinguishable from people. The first reading after a silence — and the
first at all, and any step of more than a crowd could make (MAX_STEP) — is a new baseline,
and says so (`rebased`): a grant waiting then cannot know from the counter whether its
person went through (grant.py: it ends unconfirmed, never "did not pass").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(slots=True)
class RelayPlan:
    desired: bool = False  # the level the coil should have now
    rest: bool = False  # the level a pulse returns to
    pulse_until: float | None = None  # deadline of the running pulse

    @property
    def pulsing(self) -> bool:
        return self.pulse_until is not None

    def pulse(self, now: float, seconds: float) -> list[bool]:
        retrigger = self.pulse_until is not None
        self.pulse_until = now + seconds
        self.desired = True
        return [False, True] if retrigger else [True]

    def due(self, now: float) -> list[bool]:
        """The writes owed at `now`: the end of a pulse whose deadline passed."""
        if self.pulse_until is None or now < self.pulse_until:
            return []
        return self.end_pulse()

    def end_pulse(self) -> list[bool]:
        """Relock now instead of at the deadline (the person has passed)."""
        if self.pulse_until is None:
            return []
        self.pulse_until = None
        self.desired = self.rest
        return [self.rest]

    def hold(self, released: bool) -> list[bool]:
        self.pulse_until = None
        self.desired = self.rest = released
        return [released]

    def write_failed(self) -> None:
        # We cannot know whether the write landed; the reconnect probe writes the rest level.
        self.pulse_until = None
        self.desired = self.rest


@dataclass(slots=True)
class PassageDetector:
    level: bool | None = None  # last level seen; None = unknown
    edges: int = 0  # rising edges seen so far: people through

    def observe(self, level: bool | None) -> bool:
        """Feed one reading; True when it is a new person (a rising edge)."""
        rising = level is True and self.level is False
        self.level = level
        if rising:
            self.edges += 1
        return rising


@dataclass(slots=True)
class ReleaseTail:
    """What a release held on purpose (a fire alarm, an emergency release, a hand's hold)
    leaves behind its relock. Two things, as a grant's pulse leaves them:

    - one reading's doubt: an opening seen by the first reading after the relock may have
      begun while the door stood released (an evacuee mid-push as the panel is reset);
    - one turn, at a turnstile (a gate with a passage sensor): an arm pushed while
      released is armed for that rotation, as a pulse arms one (the latch), and may come
      round after the relock — an evacuee who was on the way. One door opening and one
      rotation within the gate's `passage_timeout` of the relock are the release's, like a
      grant's window; the next ones are judged as usual.
    """

    through: float = -1  # readings numbered up to this may predate the relock (inf: being written)
    why: str = "a release"  # what the last release was for, in the alarms' words
    turn_until: float = float("-inf")  # the armed turn may come round until then (monotonic s)
    turn_left: frozenset[str] = frozenset()  # of "door", "rotation": what of the turn is still due

    def ending(self, why: str, door_open: bool | None = False, *, latches: bool = True) -> None:
        """The release for `why` is ending: its relock is about to be written. A door open
        now is the last turn under way: its opening was the release's, and it spends the
        turn's door opening. `latches`: the gate is a turnstile (it has a passage sensor);
        a door's lock holds once relocked, so it leaves only the reading's doubt."""
        self.through = float("inf")
        self.why = why
        self.turn_until = float("inf")
        left = ("rotation",) if door_open else ("door", "rotation")
        self.turn_left = frozenset(left if latches else ())

    def relocked(self, readings: int, now: float, turn_window: float) -> None:
        """The relock's write returned (or failed: a board that did not answer is read again
        only after its reconnect, whose first reading proves nothing of the door) after
        `readings` readings had come back, at `now`; the armed turn may follow until
        `turn_window` seconds later."""
        self.through = readings
        self.turn_until = now + turn_window

    def covers(self, reading: int) -> bool:
        """Reading number `reading` may show an opening that began before the relock."""
        return reading - 1 <= self.through

    def last_turn(self, what: str, now: float) -> bool:
        """A door opening or a rotation (`what`) seen at `now` that nothing else explains:
        True once per relock when it can be the turn the release armed (and spends it)."""
        if what not in self.turn_left or now > self.turn_until:
            return False
        self.turn_left -= {what}
        return True


@dataclass(slots=True)
class StuckInput:
    limit: float  # seconds active beyond which no rotation explains it
    since: float | None = None  # active since (the first reading that showed it), monotonic s
    stuck: bool = False

    def observe(self, level: bool | None, now: float) -> bool | None:
        """Feed one reading of the passage input (None: unknown); True when it has just
        become stuck, False when a stuck input has just read inactive, else None."""
        if level is None:
            if not self.stuck:
                self.since = None  # active across a silence is not known to be one stretch
            return None
        if not level:
            self.since = None
            if self.stuck:
                self.stuck = False
                return False
            return None
        if self.since is None:
            self.since = now
        if not self.stuck and now - self.since > self.limit:
            self.stuck = True
            return True
        return None

    def active_for(self, now: float) -> float:
        return 0.0 if self.since is None else now - self.since


COUNTER_MODULO = 1 << 16
MAX_STEP = 1000  # people between two readings, a silence included: more is a counter that began again


class Counted(NamedTuple):
    people: int  # people through since the last reading that answered
    rebased: bool  # this reading is a new baseline: what happened before it is not known


@dataclass(slots=True)
class PassageCounter:
    last: int | None = None  # the count at the last reading that did not fail; None: none yet
    people: int = 0  # counted so far
    silent: bool = False  # a reading failed since `last`: the board may have restarted

    def observe(self, count: int | None) -> Counted:
        """Feed one reading of the board's counter (None: it failed); the people through
        since the last reading, and whether this one is a new baseline."""
        if count is None:
            self.silent = self.silent or self.last is not None
            return Counted(0, False)
        new = 0 if self.last is None or self.silent else (count - self.last) % COUNTER_MODULO
        rebased = self.last is None or self.silent or new > MAX_STEP
        if rebased:
            new = 0  # a restart (or a silence that may hide one): the counter begins from here
        self.last = count
        self.silent = False
        self.people += new
        return Counted(new, rebased)
