"""Installer tools that talk to hardware directly (the daemon must not be running)."""

from __future__ import annotations

import asyncio

from drivers.outputs.gate import GateController
from drivers.outputs.modbus import OutputFault
from gated.config import Config


async def test_relay(config: Config, gate_id: str) -> int:
    gate = next((g for g in config.gates if g.id == gate_id), None)
    if gate is None:
        print(f"no gate {gate_id!r} in the configuration")
        return 2
    if gate.output is None:
        print(f"gate {gate_id} has no output configured")
        return 2
    ctl = GateController(gate.id, gate.output)
    await ctl.start()
    try:
        print(f"relay {gate.output.transport} unit {gate.output.unit}: {ctl.output.health}")
        try:
            before = await ctl.output.read_inputs()
            print(f"inputs before: passage={before.passage} door_open={before.door_open}")
            print(f"pulsing coil {gate.output.coil} for {gate.output.pulse}s; walk through to test the sensor")
            passed = await ctl.open_once()
            after = await ctl.output.read_inputs()
        except OutputFault as e:
            print(f"FAILED: the board does not answer: {e}")
            return 1
        print(f"passage seen: {passed}; inputs after: passage={after.passage} door_open={after.door_open}")
        return 0
    finally:
        await ctl.stop()
        await asyncio.sleep(0)
