"""Which reading counts as after which write: a board behind a fake pymodbus client, on the
gate's real ModbusLine (bus.py), where the test decides what each request sees and when it
happens. In process: no server, no pty."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymodbus.pdu.bit_message import (
    ReadCoilsResponse,
    ReadDiscreteInputsResponse,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import ReadInputRegistersResponse

from drivers.outputs import ModbusOutputConfig
from drivers.outputs.bus import ModbusLine
from drivers.outputs.gate import GateController
from drivers.outputs.grant import Passage
from drivers.outputs.modbus import ModbusGateOutput, OutputFault, OutputHealth
from tests.outputs_fixtures import AlarmRecorder


class FakeBoard:
    """Coils, inputs and a pulse counter; hooks run inside a request, before it answers."""

    def __init__(self) -> None:
        self.coils: dict[int, bool] = {}
        self.inputs: dict[int, bool] = {}
        self.counter = 0
        self.connected = True
        self.log: list[str] = []
        self.on_register: Callable[[], Awaitable[None]] | None = None
        self.on_bits: Callable[[int], Awaitable[None]] | None = None
        self.stale: list[Any] = []  # answers handed back instead of the right one (late ones)

    async def connect(self) -> bool:
        return True

    def close(self) -> None:
        pass

    async def write_coil(self, address: int, value: bool, device_id: int = 1) -> Any:
        await asyncio.sleep(0.001)
        self.coils[address] = bool(value)
        self.log.append(f"write {address}={int(value)}")
        if self.stale:
            return self.stale.pop(0)
        return WriteSingleCoilResponse(address=address, bits=[bool(value)], dev_id=device_id)

    async def read_coils(self, address: int, count: int = 1, device_id: int = 1) -> Any:
        await asyncio.sleep(0.001)
        self.log.append(f"read coils {address}+{count}")
        if self.stale:
            return self.stale.pop(0)
        bits = [self.coils.get(address + i, False) for i in range(count)]
        return ReadCoilsResponse(bits=bits + [False] * ((8 - count % 8) % 8), dev_id=device_id)

    async def read_discrete_inputs(self, address: int, count: int = 1, device_id: int = 1) -> Any:
        if self.on_bits is not None:
            await self.on_bits(address)
        await asyncio.sleep(0.001)
        self.log.append(f"read inputs {address}+{count}")
        if self.stale:
            return self.stale.pop(0)
        bits = [self.inputs.get(address + i, False) for i in range(count)]
        return ReadDiscreteInputsResponse(bits=bits + [False] * ((8 - count % 8) % 8), dev_id=device_id)

    async def read_input_registers(self, address: int, count: int = 1, device_id: int = 1) -> Any:
        if self.on_register is not None:
            await self.on_register()
        await asyncio.sleep(0.001)
        self.log.append(f"read counter={self.counter}")
        return ReadInputRegistersResponse(registers=[self.counter], dev_id=device_id)


class FakeLink:
    def __init__(self, board: FakeBoard) -> None:
        self.client = board
        self.line = ModbusLine("fake", None)
        self.users = 1
        self.connect_lock = asyncio.Lock()


def _cfg(**cfg: Any) -> ModbusOutputConfig:
    fields: dict[str, Any] = dict(transport="tcp", host="127.0.0.1", port=5020, unit=1, coil=0, pulse=0.3,
                                  passage_timeout=1.0, held_open_after=5.0, timeout=0.3,
                                  poll_interval=0.05, passage_poll_interval=0.02)
    fields.update(cfg)
    return ModbusOutputConfig(**fields)


def _output(board: FakeBoard, **cfg: Any) -> ModbusGateOutput:
    out = ModbusGateOutput(_cfg(**cfg))
    out._link = FakeLink(board)  # type: ignore[assignment]
    return out


async def _gate(board: FakeBoard, **cfg: Any) -> tuple[GateController, AlarmRecorder]:
    out = _output(board, **cfg)
    alarms = AlarmRecorder()
    gate = GateController("g1", out.out_cfg, on_alarm=alarms, output=out)
    await gate.start()
    return gate, alarms


@pytest.mark.parametrize("wiring", ["counter", "inputs_far_apart"])
async def test_a_rotation_read_before_the_release_does_not_confirm_it(wiring: str) -> None:
    """Someone else's rotation (a previous person who turned late, a second person on the
    last release) is read by the first request of a reading (the counter; or the passage
    input, its door contact 40 inputs away) just as the member taps: the release's write
    goes on the line before the reading's second request. The reading was numbered when
    it came back, after the release: the rotation read before it confirmed the member's
    grant (PASSED, charged) though nobody turned after their release. A reading counts as
    after a write only if its first request went out after it."""
    board = FakeBoard()
    if wiring == "counter":
        gate, alarms = await _gate(board, passage_counter=5, passage_input=0, door_contact=1)
    else:
        gate, alarms = await _gate(board, passage_input=0, door_contact=40)
    await asyncio.sleep(0.2)  # idle polls: the baseline
    task: list[asyncio.Task[Passage]] = []
    armed = {"go": True}

    async def someone_elses_rotation_then_the_tap() -> None:
        if not armed["go"]:
            return
        armed["go"] = False
        if wiring == "counter":
            board.counter += 1  # the rotation is counted
        else:
            board.inputs[0] = True  # the passage input is active for this read
        task.append(asyncio.create_task(gate.grant_passage()))  # the member's tap, now
        await asyncio.sleep(0.01)  # the tap's write is queued while this request is on the wire

    async def bits_hook(address: int) -> None:
        if wiring == "inputs_far_apart" and address == 0:
            await someone_elses_rotation_then_the_tap()
        elif wiring == "inputs_far_apart" and address == 40 and not armed["go"]:
            board.inputs[0] = False  # the pulse is over

    if wiring == "counter":
        board.on_register = someone_elses_rotation_then_the_tap
    board.on_bits = bits_hook
    try:
        while not task:
            await asyncio.sleep(0.01)
        outcome = await task[0]
        i = max(k for k, e in enumerate(board.log) if e == "write 0=1")
        assert board.log[i + 1].startswith("read inputs"), board.log[i - 2:i + 2]  # the write went between
        # the member never turned: their release came after the rotation that was read
        assert outcome is not Passage.PASSED, (outcome, board.log[i - 2:i + 2])
        # the rotation is not lost: someone else's, reported for the desk
        await alarms.wait_for("passage_without_grant")
    finally:
        await gate.stop()


@pytest.mark.parametrize("asked", ["read", "write"])
async def test_an_answer_to_another_request_is_a_fault_not_a_reading(asked: str) -> None:
    """The answer handed back for a request is checked against it (function, count, the
    echoed coil and value): a write's echo `01 05 0000 FF00` handed to a read of one input
    (what pymodbus's RTU framer lets through: it checks the unit id only) read as the
    input active; a read's answer handed to a write said the write was done. Either is a
    board out of step: offline, and a write's outcome uncertain."""
    board = FakeBoard()
    out = _output(board, passage_input=0)
    assert await out.connect()
    if asked == "read":
        board.stale.append(WriteSingleCoilResponse(address=0, bits=[True], dev_id=1))
        with pytest.raises(OutputFault, match="not to this request"):
            await out.read_inputs()
    else:
        board.stale.append(ReadDiscreteInputsResponse(bits=[False] * 8, dev_id=1))
        with pytest.raises(OutputFault, match="not to this request"):
            await out.pulse()
        assert out.plan.desired is False  # the write's outcome unknown: the rest level planned
    assert out.health is OutputHealth.OFFLINE
    await out.close()


async def test_an_echo_of_another_write_is_not_this_writes() -> None:
    board = FakeBoard()
    out = _output(board, passage_input=0)
    assert await out.connect()
    board.stale.append(WriteSingleCoilResponse(address=0, bits=[False], dev_id=1))  # the relock's echo
    with pytest.raises(OutputFault, match="not of this write"):
        await out.pulse()
    assert out.health is OutputHealth.OFFLINE
    await out.close()


async def test_a_board_that_cannot_read_its_coil_back_is_not_faulted() -> None:
    """The coil read-back is optional: a board refusing function 1 is checked no more, and
    its gate stays online."""
    from pymodbus.pdu import ExceptionResponse

    board = FakeBoard()
    out = _output(board, passage_input=0)
    assert await out.connect()
    board.stale.append(ExceptionResponse(1, 1))  # illegal function
    assert await out.verify_coil() is None
    assert out.health is OutputHealth.ONLINE and not out.coil_readable
    assert await out.verify_coil() is None and board.log.count("read coils 0+1") == 1
    await out.close()


async def test_a_coil_read_back_holds_the_plan() -> None:
    board = FakeBoard()
    out = _output(board, passage_input=0, active_low=True)
    assert await out.connect()
    assert await out.verify_coil() is True  # locked: active-low coil on
    board.coils[0] = False  # power-on level: released
    assert await out.verify_coil() is False
    assert board.coils[0] is True and board.log[-1] == "write 0=1"
    await out.close()
