"""The same gate over Modbus RTU: pymodbus serial server on one end of a socat pty pair,
the gate's serial client on the other, as on an RS-485 line."""

from __future__ import annotations

import pytest

from drivers.outputs import FireAlarmInputConfig, FireAlarmMonitor, OutputFault, OutputHealth
from simulator.turnstile import SimTurnstile
from tests.outputs_fixtures import *  # noqa: F403 (pytest fixtures)
from tests.outputs_fixtures import needs_socat, wait_until


async def test_rtu_grant_sees_passage(sim_rtu: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_rtu)
    assert gate.cfg.transport == "rtu"
    assert await gate.grant() is True
    assert sim_rtu.unlocks == 1
    assert not sim_rtu.unlocked
    assert "not_opened" not in alarms.kinds()


async def test_rtu_person_who_does_not_turn(sim_rtu: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_rtu)
    sim_rtu.set_person(turns=False)
    assert await gate.grant() is False
    await alarms.wait_for("not_opened")


async def test_rtu_active_low_and_safe_state(make_gate) -> None:
    needs_socat()
    async with SimTurnstile(transport="rtu", active_low=True, initial_coil=False) as sim:
        sim.set_person(turns=True, delay=0.05)
        assert sim.unlocked  # active-low board powered up released
        gate, _ = await make_gate(sim)
        assert sim.coil_state is True and not sim.unlocked
        assert await gate.grant() is True
        assert [raw for _, raw in sim.coil_history] == [True, False, True]


async def test_rtu_server_stops_and_returns(sim_rtu: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_rtu)
    await sim_rtu.stop_server()
    # On a serial line nothing "disconnects": the board simply stops answering.
    with pytest.raises(OutputFault):
        await gate.grant()
    await alarms.wait_for("relay_offline")
    assert gate.health is OutputHealth.offline
    await sim_rtu.start_server()
    await wait_until(lambda: gate.health is OutputHealth.online, what="reconnect")
    await wait_until(lambda: alarms.kinds()[-1] == "relay_online", what="relay_online alarm")
    assert await gate.grant() is True


async def test_rtu_fire_monitor_shares_the_bus(sim_rtu: SimTurnstile, make_gate) -> None:
    # One RS-485 adapter, one serial port: the fire input and the relay share the client.
    gate, _ = await make_gate(sim_rtu, mode="fail_safe")
    cfg = FireAlarmInputConfig(
        transport="rtu",
        device=sim_rtu.device,
        baudrate=sim_rtu.baudrate,
        unit=sim_rtu.unit,
        input=sim_rtu.fire_alarm_input,
        active_low=False,
        poll_interval=0.05,
    )
    monitor = FireAlarmMonitor(cfg, gate.set_fire_alarm)
    await monitor.start()
    try:
        sim_rtu.set_fire_alarm(True)
        await wait_until(lambda: sim_rtu.unlocked, what="fire release over RTU")
        sim_rtu.set_fire_alarm(False)
        await wait_until(lambda: not sim_rtu.unlocked, what="relocked over RTU")
        assert gate.health is OutputHealth.online
    finally:
        await monitor.stop()
