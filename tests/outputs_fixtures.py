"""Fixtures and helpers for the outputs tests: a simulated turnstile on a real pymodbus
server (TCP on loopback, RTU over a socat pty pair) and gates pointed at it.

Test modules load the fixtures with `from tests.outputs_fixtures import *`.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from drivers.outputs import ModbusOutputConfig
from drivers.outputs.gate import GateController
from drivers.outputs.modbus import ModbusGateOutput
from simulator.turnstile import SimTurnstile

# Generous bound for "eventually": a liveness limit on a loaded CI box, not a performance
# claim. Every wait in these tests ends as soon as the condition holds.
EVENTUALLY = 10.0

# Short but realistic timings: the person reacts in 50 ms, a grant lapses after 1 s.
FAST = {"pulse": 0.3, "passage_timeout": 1.0, "held_open_after": 0.4, "timeout": 0.3}


async def wait_until(
    condition: Callable[[], bool], timeout: float = EVENTUALLY, what: str = "condition"
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.01)


class AlarmRecorder:
    """An on_alarm callback that remembers every alarm, in order."""

    def __init__(self) -> None:
        self.alarms: list[tuple[str, str, str]] = []

    def __call__(self, gate_id: str, kind: str, detail: str) -> None:
        self.alarms.append((gate_id, kind, detail))

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.alarms]

    async def wait_for(self, kind: str, timeout: float = EVENTUALLY) -> tuple[str, str, str]:
        await wait_until(lambda: kind in self.kinds(), timeout, f"alarm {kind}")
        return next(a for a in self.alarms if a[1] == kind)


def output_cfg(sim: SimTurnstile, **overrides: Any) -> ModbusOutputConfig:
    """A config that points at the simulator, with the simulator's wiring."""
    fields: dict[str, Any] = {
        "unit": sim.unit,
        "coil": sim.coil,
        "active_low": sim.active_low,
        "passage_input": sim.passage_input,
        "door_contact": sim.door_contact,
        **FAST,
    }
    if sim.transport == "tcp":
        fields.update(transport="tcp", host=sim.host, port=sim.port)
    else:
        fields.update(transport="rtu", device=sim.device, baudrate=sim.baudrate)
    fields.update(overrides)
    return ModbusOutputConfig(**fields)


def needs_socat() -> None:
    if shutil.which("socat") is None:
        pytest.fail("socat is required for the RTU tests (make system-deps installs it)")


@pytest.fixture
async def sim_tcp() -> AsyncIterator[SimTurnstile]:
    async with SimTurnstile(transport="tcp") as sim:
        sim.set_person(turns=True, delay=0.05)
        yield sim


@pytest.fixture
async def sim_rtu() -> AsyncIterator[SimTurnstile]:
    needs_socat()
    async with SimTurnstile(transport="rtu", baudrate=19200) as sim:
        sim.set_person(turns=True, delay=0.05)
        yield sim


GateFactory = Callable[..., Awaitable[tuple[GateController, AlarmRecorder]]]


@pytest.fixture
async def make_gate() -> AsyncIterator[GateFactory]:
    """make_gate(sim, **cfg_overrides) -> started (gate, alarms); stopped at teardown."""
    gates: list[GateController] = []

    async def factory(sim: SimTurnstile, **overrides: Any) -> tuple[GateController, AlarmRecorder]:
        alarms = AlarmRecorder()
        gate = GateController("turnstile-1", output_cfg(sim, **overrides), on_alarm=alarms)
        gates.append(gate)
        await gate.start()
        return gate, alarms

    yield factory
    for gate in gates:
        await gate.stop()


@pytest.fixture
async def make_output() -> AsyncIterator[Callable[..., Awaitable[ModbusGateOutput]]]:
    """make_output(sim, **cfg_overrides) -> connected ModbusGateOutput; closed at teardown."""
    outputs: list[ModbusGateOutput] = []

    async def factory(sim: SimTurnstile, **overrides: Any) -> ModbusGateOutput:
        out = ModbusGateOutput(output_cfg(sim, **overrides))
        outputs.append(out)
        await out.connect()
        return out

    yield factory
    for out in outputs:
        await out.close()
