"""The simulated day's fault runner (simulator/day/harness/chaos.py) against a stand-in chain:
two stops of the central system that overlap make one outage, and one central system runs
after it (seed 328810 planned two; the second start left a central system running beside
the first, which outlived the day)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from simulator.day import plan as P
from simulator.day.harness.chaos import ChaosRunner
from simulator.day.harness.traffic import Records

T0 = datetime(2026, 11, 18, 13, 0, tzinfo=UTC)
SPEED = 3600.0  # a simulated hour a real second


class Clock:
    def __init__(self) -> None:
        self.real0 = asyncio.get_running_loop().time()

    def now(self) -> datetime:
        return T0 + timedelta(seconds=(asyncio.get_running_loop().time() - self.real0) * SPEED)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / SPEED)

    async def sleep_until(self, at: datetime) -> None:
        await self.sleep(max(0.0, (at - self.now()).total_seconds()))


class Central:
    """The central system's process: how many run, and the most that ever ran at once."""

    def __init__(self) -> None:
        self.running, self.most, self.starts = 1, 1, 0

    @property
    def pid(self) -> int | None:
        return 1 if self.running else None

    def kill9(self) -> None:
        self.running = 0

    def start(self) -> None:  # as CentralProc.start: one central system
        if self.pid is not None:
            return
        self.running += 1
        self.starts += 1
        self.most = max(self.most, self.running)

    async def wait_ready(self, timeout: float) -> None:
        assert self.running


class Chain:
    def __init__(self) -> None:
        self.clock = Clock()
        self.central = Central()


async def test_overlapping_stops_of_the_central_system_are_one_outage() -> None:
    chain = Chain()
    minutes = 60 / SPEED  # a simulated minute, in real seconds
    stops = [P.Chaos(T0 + timedelta(minutes=21), P.STOP_CENTRAL, duration=14 * 60),  # 13:21-13:35
             P.Chaos(T0 + timedelta(minutes=24), P.STOP_CENTRAL, duration=5 * 60)]  # 13:24-13:29, inside it
    plan = P.Plan(T0, T0, T0 + timedelta(hours=1), T0 + timedelta(hours=1), [], [], stops)
    records = Records()
    runner = ChaosRunner(chain, plan, records, 1, traffic=None)  # type: ignore[arg-type]
    down: list[tuple[datetime, bool]] = []

    async def watch() -> None:
        while True:
            down.append((chain.clock.now(), chain.central.running == 0))
            await asyncio.sleep(minutes / 2)

    watcher = asyncio.create_task(watch())
    runner.start()
    await runner.finish(timeout=10)
    watcher.cancel()
    assert not runner.errors
    assert chain.central.starts == 1 and chain.central.most == 1
    phases: list[Any] = [(r["n"], r["phase"], r.get("still_stopped_by_another")) for r in records.chaos]
    assert phases == [(0, "start", None), (1, "start", None), (1, "end", True), (0, "end", None)], phases
    # down from the first stop to the end of the longer one, not started again at 13:29
    inside = [d for t, d in down if T0 + timedelta(minutes=23) < t < T0 + timedelta(minutes=34)]
    assert inside and all(inside)


class Proc:
    """A gate daemon's process: killed, it reads alive until reaped a moment later (as a
    child process does until it is waited for)."""

    def __init__(self, gate: Gate) -> None:
        self.gate, self.killed_at = gate, None  # type: float | None
        self.ready = True

    @property
    def alive(self) -> bool:
        loop = asyncio.get_running_loop()
        return self.killed_at is None or loop.time() - self.killed_at < 0.1

    def kill9(self) -> None:
        if self.killed_at is None:
            self.killed_at = asyncio.get_running_loop().time()
            self.gate.running -= 1

    def freeze(self) -> None: ...

    def thaw(self) -> None: ...


class Disk:
    def cut(self) -> None: ...

    def mount(self) -> None: ...


class Board:
    unlocked = True  # a member in the turnstile: the power cut comes at once
    people_moving = 0


class Gate:
    def __init__(self) -> None:
        self.running, self.most, self.starts = 1, 1, 0
        self.proc, self.disk, self.turnstile = Proc(self), Disk(), Board()


class GateChain(Chain):
    def __init__(self) -> None:
        super().__init__()
        self.gate = Gate()
        self.gates = {("south", "in-2"): self.gate}

    def start_gate(self, rig: Gate) -> None:  # as Chain.start_gate: a new process, whatever runs
        rig.proc = Proc(rig)
        rig.running += 1
        rig.starts += 1
        rig.most = max(rig.most, rig.running)


async def test_a_power_cut_during_a_kill_of_the_same_gate_starts_its_daemon_once() -> None:
    """Seed 44: a power cut a simulated minute into a kill of south/in-2 found the killed
    process not yet reaped ("alive"), cut it again, and each fault started the daemon when it
    ended: two daemons on one ledger for the rest of the day."""
    chain = GateChain()
    faults = [P.Chaos(T0 + timedelta(minutes=1), P.KILL_GATE, site="south", gate="in-2", duration=0.5),
              P.Chaos(T0 + timedelta(minutes=2), P.POWER_CUT, site="south", gate="in-2", duration=0.2)]
    plan = P.Plan(T0, T0, T0 + timedelta(hours=1), T0 + timedelta(hours=1), [], [], faults)
    records = Records()
    runner = ChaosRunner(chain, plan, records, 1, traffic=None)  # type: ignore[arg-type]
    runner.start()
    await runner.finish(timeout=10)
    assert not runner.errors
    assert (chain.gate.starts, chain.gate.most, chain.gate.running) == (1, 1, 1)
    phases = [(r["n"], r["phase"], r.get("why")) for r in records.chaos]
    assert phases == [(0, "start", None), (1, "skipped", "already down"), (0, "end", None)], phases
