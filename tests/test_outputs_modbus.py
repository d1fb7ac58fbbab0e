"""ModbusGateOutput on its own, and the installer config, against the TCP simulator."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from drivers.outputs import ModbusOutputConfig
from drivers.outputs.modbus import InputsSnapshot, ModbusGateOutput, OutputFault, OutputHealth
from simulator.turnstile import SimTurnstile
from tests.outputs_fixtures import *  # noqa: F403 (pytest fixtures)
from tests.outputs_fixtures import output_cfg, wait_until


async def test_pulse_returns_once_coil_is_set(sim_tcp: SimTurnstile, make_output) -> None:
    out = await make_output(sim_tcp, pulse=0.2)
    sim_tcp.set_person(turns=False)
    await out.pulse()
    assert sim_tcp.unlocked  # set before pulse() returned, released later
    await wait_until(lambda: not sim_tcp.unlocked, what="end of pulse")
    assert [raw for _, raw in sim_tcp.coil_history] == [True, False]


async def test_explicit_pulse_length_and_retrigger(sim_tcp: SimTurnstile, make_output) -> None:
    out = await make_output(sim_tcp)
    sim_tcp.set_person(turns=False)
    await out.pulse(5.0)
    await out.pulse(0.1)  # a second release while the first is on: a fresh edge
    assert sim_tcp.unlocks == 2
    await wait_until(lambda: not sim_tcp.unlocked, what="end of the shorter pulse")


async def test_read_inputs_respects_polarity() -> None:
    async with SimTurnstile(passage_active_low=True, door_contact_active_low=True) as sim:
        out = ModbusGateOutput(
            output_cfg(sim, passage_active_low=True, door_contact_active_low=True)
        )
        await out.connect()
        try:
            assert await out.read_inputs() == InputsSnapshot(passage=False, door_open=False)
            sim.force_door_open()
            assert await out.read_inputs() == InputsSnapshot(passage=False, door_open=True)
        finally:
            await out.close()


async def test_inputs_far_apart_and_missing(make_output) -> None:
    async with SimTurnstile(passage_input=3, door_contact=40, fire_alarm_input=None) as sim:
        out = await make_output(sim)
        sim.force_door_open()
        assert await out.read_inputs() == InputsSnapshot(passage=False, door_open=True)
        bare = await make_output(sim, passage_input=None, door_contact=None)
        assert await bare.read_inputs() == InputsSnapshot(passage=None, door_open=None)


async def test_safe_state_and_hold(sim_tcp: SimTurnstile, make_output) -> None:
    out = await make_output(sim_tcp, pulse=5.0)
    sim_tcp.set_person(turns=False)
    await out.hold(unlocked=True)
    assert sim_tcp.unlocked and out.released
    await out.drive_safe_state(locked=True)
    assert not sim_tcp.unlocked and not out.released
    await out.pulse()
    await out.hold(unlocked=False)  # a hold cancels the running pulse
    await asyncio.sleep(0.1)
    assert not sim_tcp.unlocked


async def test_unknown_unit_is_an_error_not_offline(sim_tcp: SimTurnstile, make_output) -> None:
    out = await make_output(sim_tcp, unit=7)  # nothing answers as unit 7 on this board
    assert out.health is OutputHealth.ERROR
    assert out.last_error
    with pytest.raises(OutputFault):
        await out.pulse()


async def test_wrong_coil_address_is_reported(sim_tcp: SimTurnstile, make_output) -> None:
    out = await make_output(sim_tcp, coil=500)
    assert out.health is OutputHealth.ERROR
    assert "exception 2 (illegal data address)" in (out.last_error or "")


async def test_reconnect_rewrites_the_remembered_level(sim_tcp: SimTurnstile, make_output) -> None:
    out = await make_output(sim_tcp)
    await sim_tcp.stop_server()
    with pytest.raises(OutputFault):
        await out.hold(unlocked=True)  # e.g. a fire release while the board is down
    assert out.health is OutputHealth.OFFLINE
    assert not sim_tcp.unlocked
    await sim_tcp.start_server()
    await wait_until(lambda: out.health is OutputHealth.ONLINE, what="reconnect")
    assert sim_tcp.unlocked  # applied as soon as the board answered


@pytest.mark.parametrize("unlocked", [True, False])
async def test_hold_on_a_board_known_offline_fails_fast_and_the_reconnect_writes_the_held_level(
    sim_tcp: SimTurnstile, make_output, unlocked: bool
) -> None:
    """A fire release (or its end) asked of a board already seen offline: it does not wait
    out a request timeout on it (the caller drives other doors), and the level it held —
    released or locked, not just "locked" — is the one written when the board is back."""
    out = await make_output(sim_tcp, timeout=2.0, retries=0, reconnect_max=0.2)
    await out.hold(unlocked=not unlocked)
    sim_tcp.inject("no_answer")  # a frozen board: every request waits out the timeout
    with pytest.raises(OutputFault):
        await out.read_inputs()  # seen offline
    assert out.health is OutputHealth.OFFLINE
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(OutputFault):
        await out.hold(unlocked=unlocked)
    assert loop.time() - t0 < 1.0, "waited for a board known offline"  # its timeout is 2 s
    assert out.released is unlocked  # planned
    sim_tcp.inject("none")
    await wait_until(lambda: out.health is OutputHealth.ONLINE, what="reconnect")
    assert sim_tcp.unlocked is unlocked  # the held level, written by the reconnect probe


async def test_board_never_reachable_at_start(make_output) -> None:
    async with SimTurnstile() as sim:
        port = sim.port
    cfg = ModbusOutputConfig(transport="tcp", host="127.0.0.1", port=port, timeout=0.2)
    out = ModbusGateOutput(cfg)
    try:
        assert await out.connect() is False
        assert out.health is OutputHealth.OFFLINE
        with pytest.raises(OutputFault):
            await out.read_inputs()
    finally:
        await out.close()


async def test_on_health_sees_every_change(sim_tcp: SimTurnstile) -> None:
    changes: list[OutputHealth] = []
    out = ModbusGateOutput(output_cfg(sim_tcp), on_health=lambda h, _e: changes.append(h))
    await out.connect()
    try:
        sim_tcp.inject("no_answer")
        with pytest.raises(OutputFault):
            await out.read_inputs()
        sim_tcp.inject("none")
        await wait_until(lambda: out.health is OutputHealth.ONLINE, what="recovery")
        assert changes == [OutputHealth.ONLINE, OutputHealth.OFFLINE, OutputHealth.ONLINE]
    finally:
        await out.close()


# -- configuration --------------------------------------------------------------------------


def test_config_defaults_and_names() -> None:
    cfg = ModbusOutputConfig(host="192.0.2.10")
    assert cfg.transport == "tcp" and cfg.port == 502 and cfg.unit == 1
    assert cfg.passage_timeout == 8 and cfg.timeout == 0.5
    assert cfg.mode == "fail_safe" and cfg.passage_input is None
    schema = ModbusOutputConfig.model_json_schema()
    assert all("description" in prop for prop in schema["properties"].values())


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"transport": "tcp"}, "needs 'host'"),
        ({"transport": "rtu"}, "needs 'device'"),
        ({"host": "h", "coil_adress": 3}, "Extra inputs are not permitted"),
        ({"host": "h", "mode": "fail_open"}, "fail_safe"),
        ({"host": "h", "passage_input": 2, "door_contact": 2}, "must be different"),
        ({"host": "h", "parity": "X"}, "'N'"),
        ({"host": "h", "pulse": 0}, "greater than 0"),
    ],
)
def test_config_errors_are_clear(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as err:
        ModbusOutputConfig(**fields)
    assert message in str(err.value)
