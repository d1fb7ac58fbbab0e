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
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

SIMULATION_ENV = "GATED_SIMULATION"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class SimulatedClock:
    """`start` at the moment the epoch (a shared instant in real time, `time.time()`) was,
    running `speed` times faster: several processes given the same start, speed and epoch
    agree on the time."""

    def __init__(self, start: datetime, speed: float, epoch: float | None = None):
        if start.tzinfo is None:
            raise ValueError("a simulated clock starts at an aware instant")
        self.start = start
        self.speed = speed
        self.epoch = time.time() if epoch is None else epoch

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.epoch) * self.speed)


class SimulationNotAllowed(Exception):
    pass


def allowed() -> bool:
    return os.environ.get(SIMULATION_ENV) == "1"


__all__ = ["SIMULATION_ENV", "Clock", "SimulatedClock", "SimulationNotAllowed", "allowed", "utc_now"]
