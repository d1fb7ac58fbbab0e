"""One grant's wait for its passage, as a state machine: readings and time in, the
grant's one outcome out — the way DoorSupervisor is for door alarms. No I/O, no clock
reads (`now` is passed in); gate.py feeds it and waits for its verdict.

A release is followed by readings of the gate's inputs, each numbered by its first
exchange on the line, and the release by its write's (ModbusDevice.sent: the line runs one
exchange at a time). A reading numbered after the release was sampled after it, all of it:
one made of several requests (a counter and the bits, inputs far apart) may have the
release's write between them, and then it is not after the release — numbered as it came
back, a rotation read before a tap confirmed the grant. The grant ends, once, in exactly
one of:

| outcome | when |
| --- | --- |
| PASSED | a rising edge (a rotation, or the door opening where there is no passage sensor) in a reading taken after the release |
| NOT_PASSED | `passage_timeout` of time *with the board answering* went by without one, and nothing went unseen (a `not_opened` alarm) |
| UNKNOWN | the board stayed silent for `stall_limit`; or it was silent for a while — or nobody read it for more than `blind_limit` (the daemon's own loop starved: no reading came back at all), or its passage input read stuck active (no rotation can show as an edge) — and then `passage_timeout` went by without a passage: a person may have gone through while nobody could read (`passage_unconfirmed`) — unless the board counts passages itself (`counts_unseen`: its counter covers the time nobody read it, not a stuck input, nor a counter that began again — the first reading after the board was silent, which may hide a restart, `rebased`); or the gate is stopping |

`because` says why an UNKNOWN outcome could not be seen (the `because` of the
`passage_unconfirmed` event): `relay_unreadable` (the board was silent), `inputs_unread`
(the board answered but nobody read it: the daemon was paused or starved),
`passage_input_stuck` or `stopping`.

Time the board does not answer does not count towards `passage_timeout`: a board that
stalls mid-tap carries out the release when it answers again (its queued writes), and
the person goes through then — that passage belongs to this grant and is charged to it.

Every rising edge no grant claims is kept in `unclaimed` (with the last grant's outcome
and how long ago it ended, for the desk): a rotation with no grant — someone pushed a
locked arm, a person came through after the gate gave up waiting, two people on one
release — is never lost, and the shell reports each (`passage_without_grant`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Passage(StrEnum):
    """What a release led to."""

    PASSED = "passed"
    NOT_PASSED = "not_passed"
    UNKNOWN = "unknown"


class Unseen(StrEnum):
    """Why a grant's passage could not be seen (an UNKNOWN outcome)."""

    RELAY_UNREADABLE = "relay_unreadable"  # the board was silent (or its counter began again)
    # the board answered, but nobody read it for longer than a rotation's pulse: the daemon
    # itself was paused or starved (a frozen box, a VM paused, a flooded loop)
    INPUTS_UNREAD = "inputs_unread"
    PASSAGE_INPUT_STUCK = "passage_input_stuck"  # the input read active beyond any rotation
    STOPPING = "stopping"  # the gate stopped looking


@dataclass(frozen=True, slots=True)
class Unclaimed:
    """A rotation no grant claimed; `after`: the last grant before it, if any, as
    (its outcome, seconds between its end and this rotation)."""

    at: float
    after: tuple[Passage, float] | None


@dataclass(slots=True)
class _Grant:
    after: int  # the number of the release's write (readings numbered after it were sampled after it)
    last_at: float
    read_at: float  # the last reading back (or the release)
    waited: float = 0.0  # time with the board answering
    stalled: float = 0.0  # time with the board silent
    board_ok: bool = True
    unseen: bool = False  # a passage may have gone unseen (any of the reasons below)
    silent: bool = False  # the board was silent at some point (or its counter began again)
    stuck: bool = False  # the passage input read stuck at some point: a rotation showed no edge
    rebased: bool = False  # the board's counter began again (a restart, or a silence that may hide one)


@dataclass(slots=True)
class GrantTracker:
    passage_timeout: float
    stall_limit: float
    # the board's own pulse counter: a gate nobody read hides no passage (a board that was
    # silent may have restarted: its counter's step then is no count, `rebased`)
    counts_unseen: bool = False
    # Longer than this between two readings is not a busy line but a blind gate: a
    # rotation's pulse (100 ms or more) may have come and gone unread (issue 22: a flood
    # starved the loop and three grants lapsed as "did not pass" while the arm turned).
    blind_limit: float = 1.0
    _grant: _Grant | None = None
    outcome: Passage | None = None  # the last grant's, once settled
    because: Unseen | None = None  # why the last grant's passage was not seen, when UNKNOWN
    _ended_at: float | None = None
    unclaimed: list[Unclaimed] = field(default_factory=list)

    @property
    def waiting(self) -> bool:
        return self._grant is not None

    def release(self, now: float, readings: int, *, board_ok: bool = True, stuck: bool = False,
                since: float | None = None) -> None:
        """The relay was released for one person; `readings`: the number of its write (a
        reading numbered higher was sampled after it). `board_ok`: False when the release's answer was lost (the board
        went silent as it wrote). `stuck`: the passage input reads stuck active (plan.StuckInput).
        `since`: when the release was written — nothing was read from then until `now`, and
        longer than `blind_limit` of that is a blind gate like any other (a daemon paused
        between the write and its answer: the person went through meanwhile, unseen)."""
        since = now if since is None else min(since, now)
        self._grant = _Grant(after=readings, last_at=now, read_at=since, board_ok=board_ok,
                             unseen=not board_ok or stuck or now - since > self.blind_limit, stuck=stuck,
                             silent=not board_ok)
        self.outcome = None
        self.because = None

    def reading(self, now: float, number: int, ok: bool, people: int = 0, *, stuck: bool = False,
                rebased: bool = False) -> Passage | None:
        """Reading `number` (its first exchange's) came back (`ok`: the board answered) with `people` new
        passages (rising edges, or the board's counter); `stuck`: its passage input reads
        stuck active, so a person going through shows no edge; `rebased`: the board's counter
        is a new baseline (plan.PassageCounter), so what it counted before is lost. The
        outcome, when this settles the grant."""
        g = self._grant
        if g is not None:
            if people and number > g.after:
                people -= 1  # one release, one person (the edge wins over a deadline met now)
                self._settle(Passage.PASSED, now)
            else:
                self._account(g, now)
                g.board_ok = ok
                g.unseen = g.unseen or not ok or stuck or rebased
                g.silent = g.silent or not ok or rebased
                g.stuck = g.stuck or stuck
                g.rebased = g.rebased or rebased
                g.read_at = now
        for _ in range(people):
            last = None if self.outcome is None or self._ended_at is None else (self.outcome, now - self._ended_at)
            self.unclaimed.append(Unclaimed(now, last))
        return self.outcome if self._grant is None and g is not None else None

    def tick(self, now: float) -> Passage | None:
        """Time went by (no reading): the outcome, when this settles the grant."""
        g = self._grant
        if g is None:
            return None
        self._account(g, now)
        return self.outcome if self._grant is None else None

    def abandon(self, now: float) -> Passage | None:
        """The gate stops looking: a grant still waiting ends UNKNOWN."""
        if self._grant is None:
            return None
        self._settle(Passage.UNKNOWN, now, Unseen.STOPPING)
        return Passage.UNKNOWN

    def take_unclaimed(self) -> list[Unclaimed]:
        out, self.unclaimed = self.unclaimed, []
        return out

    def _account(self, g: _Grant, now: float) -> None:
        dt = max(0.0, now - g.last_at)
        g.last_at = now
        if now - g.read_at > self.blind_limit:
            g.unseen = True
        if g.board_ok:
            g.waited += dt
        else:
            g.stalled += dt
        if g.waited >= self.passage_timeout:
            # a pulse counter covers a gate nobody read, not a stuck input (its pulses stop
            # too), nor a counter that began again (a board restart: its count is lost)
            if g.stuck:
                self._settle(Passage.UNKNOWN, now, Unseen.PASSAGE_INPUT_STUCK)
            elif g.unseen and (not self.counts_unseen or g.rebased):
                self._settle(Passage.UNKNOWN, now, Unseen.RELAY_UNREADABLE if g.silent else Unseen.INPUTS_UNREAD)
            else:
                self._settle(Passage.NOT_PASSED, now)
        elif g.stalled >= self.stall_limit:
            self._settle(Passage.UNKNOWN, now, Unseen.RELAY_UNREADABLE)

    def _settle(self, outcome: Passage, now: float, because: Unseen | None = None) -> None:
        self._grant = None
        self.outcome = outcome
        self.because = because
        self._ended_at = now


def describe(u: Unclaimed, released_for: str | None = None) -> str:
    """The detail of a `passage_without_grant` alarm, for the desk to settle (the last
    grant before the rotation), or of a `passage_while_released` (what held the gate
    released: `released_for`)."""
    if u.after is None:
        text = "a rotation with no grant"
    else:
        outcome, ago = u.after
        what = {Passage.PASSED: "a grant that was passed", Passage.NOT_PASSED: "a grant that saw no passage",
                Passage.UNKNOWN: "a grant whose passage could not be seen (passage_unconfirmed)"}[outcome]
        text = f"a rotation with no grant, {ago:.1f} s after {what}"
    return text if released_for is None else f"{text}, while the gate stood released for {released_for}"


__all__ = ["GrantTracker", "Passage", "Unclaimed", "Unseen", "describe"]
