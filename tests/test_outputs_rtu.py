"""The same gate over Modbus RTU: pymodbus serial server on one end of a socat pty pair,
the gate's serial client on the other, as on an RS-485 line."""

from __future__ import annotations

import pytest

from drivers.outputs import FireAlarmInputConfig
from drivers.outputs.fire import FireAlarmMonitor
from drivers.outputs.grant import Passage
from drivers.outputs.modbus import OutputFault, OutputHealth
from simulator.turnstile import SimTurnstile
from tests.outputs_fixtures import *  # noqa: F403 (pytest fixtures)
from tests.outputs_fixtures import AlarmRecorder, needs_socat, wait_until


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
    # On a serial line nothing "disconnects": the board simply stops answering. The release
    # went out unanswered (the board might have carried it out): UNKNOWN, then refusals.
    assert await gate.grant_passage() is Passage.UNKNOWN
    await alarms.wait_for("relay_offline")
    with pytest.raises(OutputFault):
        await gate.grant()
    assert gate.health is OutputHealth.OFFLINE
    await sim_rtu.start_server()
    await wait_until(lambda: gate.health is OutputHealth.ONLINE, what="reconnect")
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
        assert gate.health is OutputHealth.ONLINE
    finally:
        await monitor.stop()


# -- one RS-485 line, several gates, real line timing --------------------------------------


async def _line_gates(line, turnstiles, alarms=None):  # type: ignore[no-untyped-def]
    from drivers.outputs import ModbusOutputConfig
    from drivers.outputs.gate import GateController

    gates = []
    for t in turnstiles:
        cfg = ModbusOutputConfig(
            transport="rtu", device=line.device, baudrate=9600, unit=t.unit, coil=0,
            passage_input=0, door_contact=1, pulse=1.0, passage_timeout=3.0, timeout=0.5,
        )  # fmt: skip
        gate = GateController(f"gate-{t.unit}", cfg, on_alarm=alarms)
        await gate.start()
        gates.append(gate)
    return gates


async def test_three_gates_tapped_at_once_see_every_100_ms_passage(caplog: pytest.LogCaptureFixture) -> None:
    # Issue 22: three gates on one 9,600-baud line tapped at once, 100 ms passage pulses:
    # with coil writes always first, the third unit went unread for 238-294 ms while the
    # other two were read and relocked, and 6 of 30 people went through unseen (a false
    # not_opened, no charge). The people here start turning 0-300 ms after the release
    # (seeded), so their pulses fall at every phase of the polling.
    # The promise is for a line within its budget (the gate warns above 70 % busy). On a
    # shared 2-core box beside the rest of the suite the simulated boards and the gates
    # were starved past it (82-91 % busy) and one pulse in 30 went unread: such a run
    # measured the box, not the gate, and is run again (three runs at most); a miss on a
    # line within its budget fails at once.
    for attempt in range(3):
        caplog.clear()
        unseen = await _three_gates_at_once()
        if not unseen:
            return
        overloaded = "busy (above" in caplog.text
        assert overloaded and attempt < 2, f"{len(unseen)} of 30 passages unseen: {unseen}" + (
            " (three runs, each on a line over its budget)" if overloaded else "")


async def _three_gates_at_once() -> list[tuple[int, str, Passage]]:
    """One run of the test above: the passages it did not see (then nothing else is
    checked); none, once everything else held too."""
    import asyncio
    import random

    from simulator.turnstile import Person, SimRtuLine

    needs_socat()
    rounds = 10
    rng = random.Random(22)
    turnstiles = [SimTurnstile(transport="rtu", unit=u, passage_pulse=0.1) for u in (1, 2, 3)]
    for t in turnstiles:
        t.queue_people(*[Person(delay=rng.uniform(0.0, 0.3)) for _ in range(rounds)])
    alarms = AlarmRecorder()
    async with SimRtuLine(turnstiles, baudrate=9600) as line:
        assert line.line is not None
        gates = await _line_gates(line, turnstiles, alarms)
        try:
            unseen: list[tuple[int, str, Passage]] = []
            for n in range(rounds):
                results = await asyncio.gather(*[g.grant_passage() for g in gates])
                unseen += [(n, g.gate_id, r) for g, r in zip(gates, results, strict=True) if r is not Passage.PASSED]
                await wait_until(
                    lambda: not any(t.passage_active for t in turnstiles)
                    and not any(g.detector.level for g in gates),
                    what="the rotations ended and were read",
                )
            if unseen:
                return unseen
            assert [len(t.passages) for t in turnstiles] == [rounds] * 3
            assert "not_opened" not in alarms.kinds()
            # the promise, from the wire: one read, the gate's pause and one exchange of
            # each other gate fit in a 100 ms pulse at 9,600 baud...
            timing = line.timing
            assert timing.shortest_pulse_seen_s(3, gates[0].passage_interval) < 0.1
            # ...and no reading waited for more than one exchange of each other gate
            stats = gates[0].line
            assert stats is not None and stats["stations"] == 3, stats
            assert stats["max_poll_turns"] <= 2 and stats["max_write_turns"] <= 2, stats
            assert line.line.stats.violations == 0
            return []
        finally:
            for g in gates:
                await g.stop()


async def test_raw_pymodbus_cancelled_poll_glues_frames_on_the_line() -> None:
    # The failure seen on site, reproduced with the bare library: the line emulator must
    # see it, or the test below proves nothing.
    import asyncio

    from pymodbus.client import AsyncModbusSerialClient

    from simulator.turnstile import SimRtuLine

    needs_socat()
    # 1,200 baud: a request is on the wire for 90 ms, a margin no loaded box can eat.
    async with SimRtuLine([SimTurnstile(transport="rtu", unit=1)], baudrate=1200) as line:
        assert line.line is not None
        stats = line.line.stats
        client = AsyncModbusSerialClient(line.device, baudrate=1200, timeout=1.0, retries=0)
        await client.connect()
        try:
            poll = asyncio.create_task(client.read_discrete_inputs(0, count=2, device_id=1))
            await wait_until(lambda: stats.frames == 1, what="the request on the wire")
            poll.cancel()
            await asyncio.wait([poll])
            await client.write_coil(0, False, device_id=1)
        finally:
            client.close()
        assert line.line.stats.violations >= 1


async def test_three_gates_on_one_line_cancelled_requests_never_glue_frames() -> None:
    import asyncio
    import random

    from simulator.turnstile import SimRtuLine

    needs_socat()
    # a rotation as long as a real arm's (0.6 s): three gates' polls share one 9,600-baud
    # line, and on a loaded machine a 0.2 s pulse can fall between two polls of a gate —
    # what this test is about is the frames on the line, not the poll rate
    turnstiles = [SimTurnstile(transport="rtu", unit=u, passage_pulse=0.6) for u in (1, 2, 3)]
    for t in turnstiles:
        t.set_person(turns=True, delay=0.05)
    async with SimRtuLine(turnstiles, baudrate=9600) as line:
        assert line.line is not None
        gates = await _line_gates(line, turnstiles)
        try:
            rng = random.Random(7)
            # Grants on every gate at once, and reads whose callers give up mid-exchange.
            for _ in range(4):
                grants = [asyncio.create_task(g.grant()) for g in gates]
                for _ in range(3):
                    read = asyncio.create_task(gates[rng.randrange(3)].output.read_inputs())
                    await asyncio.sleep(rng.uniform(0.0, 0.02))
                    read.cancel()
                assert await asyncio.gather(*grants) == [True, True, True]
            assert line.line.stats.violations == 0, line.line.snapshot()
            assert [t.unlocks for t in turnstiles] == [4, 4, 4]
            stats = gates[0].line
            assert stats is not None and stats["writes"] >= 24 and 0 < stats["load"] <= 1
        finally:
            for g in gates:
                await g.stop()


class _SlowBoard:
    """A raw RTU responder on a socat pty (not pymodbus): answers in order, each `latency`
    after the previous one, and says which requests it saw. Nobody ever turns."""

    def __init__(self, path: str, latency: float) -> None:
        self.path = path
        self.latency = latency
        self.coil = False
        self.got: list[str] = []

    def answer(self, req: bytes) -> bytes:
        from drivers.outputs.rtu_probe import with_crc

        unit, fc = req[0], req[1]
        addr = int.from_bytes(req[2:4], "big")
        if fc == 5:
            self.coil = req[4] == 0xFF
            self.got.append(f"write coil {addr}={int(self.coil)}")
            return req  # the echo
        if fc == 2:
            self.got.append(f"read inputs {addr}")
            return with_crc(bytes([unit, 2, 1, 0]))
        if fc == 1:
            return with_crc(bytes([unit, 1, 1, 1 if self.coil else 0]))
        return with_crc(bytes([unit, fc | 0x80, 1]))

    async def run(self) -> None:
        import asyncio
        import os
        import time

        from drivers.outputs.rtu_probe import crc16

        loop = asyncio.get_running_loop()
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        busy_until = 0.0

        async def responder() -> None:
            nonlocal busy_until
            while True:
                req = await queue.get()
                busy_until = max(time.monotonic(), busy_until) + self.latency
                await asyncio.sleep(max(0.0, busy_until - time.monotonic()))
                os.write(fd, self.answer(req))

        answering = asyncio.create_task(responder())
        buf = b""
        try:
            while True:
                await readable.wait()
                readable.clear()
                try:
                    buf += os.read(fd, 256)
                except BlockingIOError:
                    continue
                while len(buf) >= 8:
                    frame, buf = buf[:8], buf[8:]
                    if crc16(frame[:6]).to_bytes(2, "little") == frame[6:]:
                        await queue.put(frame)
                    else:
                        buf = b""
        finally:
            loop.remove_reader(fd)
            answering.cancel()
            os.close(fd)


async def test_a_late_answer_is_not_taken_for_the_next_requests() -> None:
    """A board that answers later than `timeout` (0.3 s) but within timeout x (retries + 1):
    pymodbus resent the request on its timeout, took the first answer for the resend's, and
    the resend's answer came during the unit's next request — its RTU framer checks the
    unit id only. The release's echo `01 05 0000 FF00` was read as the passage input
    active: nobody turned, the member was charged and the gate stayed online. gated now
    waits for the late answer itself before anything else goes on the line, and checks
    every answer against its request."""
    import asyncio

    from drivers.outputs import ModbusOutputConfig
    from drivers.outputs.gate import GateController
    from simulator.socat_pair import socat_pty_pair

    needs_socat()
    async with socat_pty_pair() as pair:
        board = _SlowBoard(pair.server_end, latency=0.0)
        runner = asyncio.create_task(board.run())
        cfg = ModbusOutputConfig(transport="rtu", device=pair.client_end, baudrate=19200, unit=1, coil=0,
                                 passage_input=0, timeout=0.3, retries=1, pulse=5.0, passage_timeout=3.0)
        alarms = AlarmRecorder()
        gate = GateController("g1", cfg, on_alarm=alarms)
        try:
            await gate.start()
            assert (await gate.output.read_inputs()).passage is False  # a fast board: nobody there
            board.latency = 0.4  # slower than the timeout, within timeout x (retries + 1)
            seen = [(await gate.output.read_inputs()).passage for _ in range(3)]
            outcome = await gate.grant_passage()
            seen += [(await gate.output.read_inputs()).passage for _ in range(2)]
        finally:
            await gate.stop()
            runner.cancel()
        assert True not in seen, (seen, board.got)
        # nobody went through (UNKNOWN: readings 0.4 s apart may miss a 100 ms pulse)
        assert outcome is not Passage.PASSED, (outcome, alarms.kinds())
        assert "relay_offline" not in alarms.kinds()  # a slow board, answering: no fault
