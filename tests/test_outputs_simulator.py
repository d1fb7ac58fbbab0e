"""The simulated turnstile itself, driven by a plain pymodbus client."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from simulator.turnstile import Person, SimTurnstile, serve_turnstile
from tests.outputs_fixtures import wait_until


@contextlib.asynccontextmanager
async def client_for(sim: SimTurnstile, timeout: float = 0.5):
    client = AsyncModbusTcpClient(
        sim.host, port=sim.port, timeout=timeout, retries=0, reconnect_delay=0
    )
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


async def test_unlock_turn_passage_door() -> None:
    async with SimTurnstile(person=Person(delay=0.05, hold_door=0.1)) as sim, client_for(sim) as c:
        await c.write_coil(0, True, device_id=1)
        await wait_until(lambda: sim.passage_active, what="rotation")
        di = await c.read_discrete_inputs(0, count=3, device_id=1)
        assert di.bits[:3] == [True, True, False]  # passage, door open, no fire alarm
        await wait_until(lambda: not sim.door_open, what="door closed")
        assert len(sim.passages) == 1
        coils = await c.read_coils(0, count=1, device_id=1)
        assert coils.bits[0] is True  # the relay stays where the client put it


async def test_seeded_turn_probability_is_reproducible() -> None:
    async def run(seed: int) -> list[bool]:
        async with SimTurnstile(
            person=Person(delay=0.0), turn_probability=0.5, seed=seed, passage_pulse=0.01
        ) as sim:
            async with client_for(sim) as c:
                for _ in range(8):
                    await c.write_coil(0, True, device_id=1)
                    await c.write_coil(0, False, device_id=1)
            await wait_until(lambda: len(sim.passages) == sum(sim.decisions), what="walks")
            return sim.decisions

    first, second = await run(7), await run(7)
    assert first == second
    assert True in first and False in first


async def test_no_answer_neither_answers_nor_applies() -> None:
    async with SimTurnstile() as sim, client_for(sim, timeout=0.2) as c:
        sim.inject("no_answer")
        with pytest.raises(ModbusException):
            await c.write_coil(0, True, device_id=1)
        assert not sim.unlocked
        sim.inject("none")
        await c.connect()  # pymodbus drops a connection after repeated silence
        resp = await c.write_coil(0, True, device_id=1)
        assert not resp.isError()
        assert sim.unlocked


async def test_lost_answer_applies_but_does_not_answer() -> None:
    async with SimTurnstile(person=Person(turns=False)) as sim, client_for(sim, timeout=0.2) as c:
        sim.inject("lost_answer")
        with pytest.raises(ModbusException):
            await c.write_coil(0, True, device_id=1)
        assert sim.unlocked  # carried out: the client cannot tell this from no_answer


async def test_fire_alarm_input_and_polarity() -> None:
    async with SimTurnstile(fire_alarm_active_low=True) as sim, client_for(sim) as c:
        assert (await c.read_discrete_inputs(2, count=1, device_id=1)).bits[0] is True
        sim.set_fire_alarm(True)
        assert (await c.read_discrete_inputs(2, count=1, device_id=1)).bits[0] is False


async def test_restart_keeps_state_and_address() -> None:
    async with SimTurnstile() as sim:
        port = sim.port
        sim.force_door_open()
        await sim.stop_server()
        assert not sim.running
        await sim.start_server()
        assert sim.port == port
        async with client_for(sim) as c:
            assert (await c.read_discrete_inputs(1, count=1, device_id=1)).bits[0] is True


async def test_serve_turnstile_runs_until_cancelled() -> None:
    ready: asyncio.Future[SimTurnstile] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve_turnstile("tcp", "127.0.0.1", 0, delay=0.05, on_ready=ready.set_result)
    )
    sim = await asyncio.wait_for(ready, 10)
    async with client_for(sim) as c:
        await c.write_coil(0, True, device_id=1)
        await wait_until(lambda: len(sim.passages) == 1, what="passage")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert not sim.running
