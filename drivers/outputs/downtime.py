"""Rotations while the daemon was not reading the board: what a counting board tells at
start, as pure functions over immutable data (no I/O, no clock reads: `at` is passed in).

A board that counts the passage input's pulses itself (`passage_counter`: an input
register, 16 bits, wrapping) goes on counting while the daemon is killed, restarting or
stopped. The daemon keeps the last count it saw (a `Mark`, in the ledger: gated/while_down.py)
and compares the board's first reading after it starts with it (`compare`):

| the board's first reading | what it says | `WhileDown` |
| --- | --- | --- |
| the mark's count | nobody went through | None |
| n ahead, n plausible for the time between (`plausible`) | n rotations nobody read | `people` n |
| behind the mark, or further ahead than a crowd could make in that time | the board restarted (its counter began again at 0, or wrapped by a restart near the wrap): how many went through is not known | `people` None |
| — a release of this run was written before it was sampled | the grant's own person may be among them: not known how many were the daemon's absence | `people` None |
| another board (`board` differs: a board replaced at another address, the gate's config changed) | no comparison: a new baseline | None |
| no mark (a first start, a ledger without one) | a baseline | None |

A restart of the board that then counted past the mark (3, a restart, 5 people: 5) reads as
2 people: indistinguishable from people, and an undercount, never an invented crowd. A
board restarted near the wrap (65,000 -> 0 is a step of 536) is what `plausible` refuses:
more people than one turnstile passes in the time the daemon was away (`MAX_RATE`), or
more than `MAX_STEP` in any time.

A board with no counter (the level of the passage input or the door contact only) cannot
tell: `board_identity` is None and nothing is compared (`gated status` says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import ModbusOutputConfig, OutputTransport
from .plan import COUNTER_MODULO, MAX_STEP

# people a second one turnstile lets through at most, pushed hard and released (a fire
# drill): a real tripod arm turns in about a second, so twice that is generous
MAX_RATE = 2.0
# whatever the time (a clock that went back, a mark stamped just before): this many are
# always plausible
MIN_PLAUSIBLE = 3


@dataclass(frozen=True, slots=True)
class Mark:
    """The last count the daemon saw of one board, and when (POSIX seconds)."""

    board: str
    count: int
    at: float


@dataclass(frozen=True, slots=True)
class WhileDown:
    """What a counting board says of the time the daemon did not read it: `people`
    rotations between `since` (the mark) and `until` (the first reading), or None when it
    cannot be known (`why`)."""

    people: int | None
    since: float
    until: float
    step: int  # the counter's step forward (modulo 2**16), as read
    why: str = ""


def board_identity(cfg: ModbusOutputConfig) -> str | None:
    """What names the counter a mark is of: the board's address and its register. None
    without a counter (nothing to compare)."""
    if cfg.passage_counter is None:
        return None
    where = f"rtu:{cfg.device}" if cfg.transport is OutputTransport.RTU else f"tcp:{cfg.host}:{cfg.port}"
    return f"{where}/unit{cfg.unit}/ir{cfg.passage_counter}"


def plausible(step: int, seconds: float | None) -> bool:
    """`step` people in `seconds` (None: not known) through one turnstile."""
    if step > MAX_STEP:
        return False
    if seconds is None:
        return True
    return step <= max(MIN_PLAUSIBLE, math.ceil(MAX_RATE * max(0.0, seconds)))


def compare(mark: Mark | None, board: str, count: int, at: float, *, released_before: bool = False,
            clock_trusted: bool = True) -> WhileDown | None:
    """The board `board` read `count` at `at` for the first time since the daemon started
    (`released_before`: a release of this run was written before the reading was sampled).
    `clock_trusted`: False when the wall clock the mark and `at` are stamped by cannot be
    trusted (a jump: the time away is not known, only MAX_STEP bounds the step).
    None when there is nothing to say (no mark, another board, no step)."""
    if mark is None or mark.board != board:
        return None
    step = (count - mark.count) % COUNTER_MODULO
    if step == 0:
        return None
    since, until = mark.at, max(at, mark.at)
    if released_before:
        return WhileDown(None, since, until, step, f"the counter moved {step} and a release was written before the "
                         "first reading: its person may be among them")
    if not plausible(step, (at - mark.at) if clock_trusted else None):
        back = count < mark.count
        what = f"went back from {mark.count} to {count}" if back else f"moved {step} ({mark.count} to {count})"
        return WhileDown(None, since, until, step, f"the board's counter {what}, more than the time "
                         "allows: the board restarted (or was replaced) while the daemon was down")
    return WhileDown(step, since, until, step)


__all__ = ["MAX_RATE", "MIN_PLAUSIBLE", "Mark", "WhileDown", "board_identity", "compare", "plausible"]
