"""A turnstile on a real pymodbus server, for tests, demos and installer rehearsals.

The turnstile model owns the state; the pymodbus datastore is only its window. A SimDevice
`action` hook (pymodbus 3.16's server API) sees every request before it touches the
datastore: it records coil writes into the model and paints the model's coil and inputs
into the registers just before a read is answered. That keeps the model authoritative, lets
the server be stopped and started again without losing state, and gives a natural place
for fault injection (slow answers). Silence (no_answer: nothing done; lost_answer: done,
unanswered) is made with the server's trace_packet hook, which can drop the outgoing frame.

A board answers only its own unit id (`_OwnUnitsOnly`): over RTU another id gets silence,
as from a real board that ignores frames for other units; over TCP it gets exception 11
(gateway target device failed to respond), as from a gateway with nothing behind that id.

Model: when the coil makes the turnstile unlocked, one rotation is armed. The next person
(from a scripted queue, or the default behaviour) turns it after `delay` seconds, or not at
all. A rotation opens the door contact, pulses the passage input for `passage_pulse`
seconds, and closes the door `hold_door` seconds after the rotation ends.

About 560 lines: the board's Modbus server and the person who turns the turnstile are one
simulated device; its registers are what the person and the daemon both touch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simcore import SimCore

from drivers.outputs.bus import LineTiming

from .rs485_line import EmulatedLine
from .socat_pair import socat_pty_pair

log = logging.getLogger(__name__)

_READ_COILS, _READ_DISCRETE, _READ_INPUT_REGISTERS = 1, 2, 4
_WRITE_COIL, _WRITE_COILS = 5, 15
_READS = {1, 2, 3, 4}


@dataclass(frozen=True, slots=True)
class Person:
    """What the next person at the turnstile does once it unlocks."""

    turns: bool = True
    delay: float = 0.3  # seconds from unlock to the start of the rotation
    hold_door: float = 0.0  # seconds the door stays open after the rotation


class Fault(StrEnum):
    NONE = "none"
    NO_ANSWER = "no_answer"  # requests are received but never answered (and not applied)
    LOST_ANSWER = "lost_answer"  # requests are carried out, their answers lost on the way back
    SLOW_ANSWER = "slow_answer"  # every answer is delayed by slow_ms


class SimTurnstile:
    """`async with SimTurnstile(...) as t:` serves a turnstile until the block ends.

    For transport "tcp" connect to (t.host, t.port). For "rtu" without `device`, a socat
    pty pair is created and the client opens t.device; with `device`, the server opens that
    serial port itself (a real RS-485 adapter, or a pty the caller made).
    """

    def __init__(
        self,
        *,
        transport: Literal["tcp", "rtu"] = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        device: str | None = None,
        baudrate: int = 9600,
        unit: int = 1,
        coil: int = 0,
        passage_input: int | None = 0,
        door_contact: int | None = 1,
        fire_alarm_input: int | None = 2,
        passage_counter: int | None = None,
        active_low: bool = False,
        passage_active_low: bool = False,
        door_contact_active_low: bool = False,
        fire_alarm_active_low: bool = False,
        passage_pulse: float = 0.2,
        person: Person | None = None,
        turn_probability: float | None = None,
        seed: int | None = None,
        latch: bool = True,
        initial_coil: bool | None = None,
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.device = device
        self.baudrate = baudrate
        self.unit = unit
        self.coil = coil
        self.passage_input = passage_input
        self.door_contact = door_contact
        self.fire_alarm_input = fire_alarm_input
        # an input register counting the passage input's pulses, as IO boards' counters do
        self.passage_counter = passage_counter
        self.pulse_count = 0
        self.input_reads = 0  # how often the inputs were read: what a test waits on, not a sleep
        self.active_low = active_low
        self.passage_active_low = passage_active_low
        self.door_contact_active_low = door_contact_active_low
        self.fire_alarm_active_low = fire_alarm_active_low
        self.passage_pulse = passage_pulse
        self.person = person or Person()
        self.turn_probability = turn_probability
        self.latch = latch  # True: a pulse arms one rotation even if the relay drops first
        self._rng = random.Random(seed)
        self._script: deque[Person] = deque()
        # Raw coil bit as the board holds it. Default: the locked level.
        self._coil_raw = active_low if initial_coil is None else initial_coil
        self.coil_history: list[tuple[float, bool]] = []  # (monotonic time, raw coil bit)
        self.passages: list[float] = []  # monotonic time each rotation completed
        self.unlocks = 0
        self.decisions: list[bool] = []  # per unlock: did the person decide to turn
        self._passage = False
        self._passage_stuck = False  # the sensor reads active whatever the arm does
        self._rotor = asyncio.Lock()
        self.rotation_gap = 0.1  # seconds the passage input stays low between rotations
        self._door_by_person = 0  # people currently holding the door open
        self._door_forced = False
        self._fire = False
        self._fault = Fault.NONE
        self._slow = 0.0
        # called as the arm is released (a test pauses the daemon there: a frozen process)
        self.on_release: Callable[[], None] | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._server_port: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stack = contextlib.AsyncExitStack()

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> SimTurnstile:
        try:
            if self.transport == "rtu":
                if self.device is None:
                    pair = await self._stack.enter_async_context(socat_pty_pair())
                    self._server_port, self.device = pair.server_end, pair.client_end
                else:
                    self._server_port = self.device
            await self.start_server()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_model()
        await self.stop_server()
        await self._stack.aclose()

    async def stop_model(self) -> None:
        """Stop the people walking through (their tasks), for hosts of several models."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    async def start_server(self) -> None:
        """Start (or restart, after stop_server) answering; the model state is kept."""
        if self._server is not None:
            return
        device = self._build_device()
        server: ModbusTcpServer | ModbusSerialServer
        if self.transport == "tcp":
            server = ModbusTcpServer(
                device, address=(self.host, self.port), trace_packet=self._trace_packet
            )
        else:
            assert self._server_port is not None
            server = ModbusSerialServer(
                device,
                port=self._server_port,
                baudrate=self.baudrate,
                trace_packet=self._trace_packet,
                ignore_missing_devices=True,
            )
        _own_units_only(server, [device])
        await server.serve_forever(background=True)
        if self.transport == "tcp" and self.port == 0:
            # Port 0 lets the OS pick a free port without a probe-then-bind race; keep it
            # so a restart comes back on the same address, as a real board would.
            self.port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    async def stop_server(self) -> None:
        """The board goes away: listener and connections closed (a power cut, a cable pulled)."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- scripting ------------------------------------------------------------------------

    def set_person(self, turns: bool = True, delay: float = 0.3, hold_door: float = 0.0) -> None:
        """Default behaviour for every unlock without a queued person."""
        self.person = Person(turns=turns, delay=delay, hold_door=hold_door)

    def queue_people(self, *people: Person) -> None:
        """Scripted people, one per unlock, before falling back to the default behaviour."""
        self._script.extend(people)

    def inject(self, fault: Fault | str, *, slow_ms: float = 0.0) -> None:
        """Fault injection: Fault.NONE clears it."""
        self._fault = Fault(fault)
        self._slow = slow_ms / 1000.0

    def push_through(self, person: Person | None = None) -> bool:
        """Someone pushes the arm without a tap (an evacuee at a released gate): it goes
        round only while the gate stands unlocked. False: it is locked."""
        if not self.unlocked:
            return False
        self._spawn(self._walk_through(person or Person()))
        return True

    def set_fire_alarm(self, active: bool) -> None:
        self._fire = active

    def stick_passage(self, stuck: bool = True) -> None:
        """The passage sensor reads active for good (a jammed sensor, a frozen I/O module):
        people still go through, no pulse shows and the board counts none. False: it works
        again."""
        self._passage_stuck = stuck

    def force_door_open(self) -> None:
        """Someone opens the door without an unlock (kicked, pulled, held by a tailgater)."""
        self._door_forced = True

    def close_door(self) -> None:
        self._door_forced = False

    # -- observable state -----------------------------------------------------------------

    @property
    def coil_state(self) -> bool:
        """The raw coil bit on the board."""
        return self._coil_raw

    @property
    def unlocked(self) -> bool:
        return self._coil_raw != self.active_low

    @property
    def door_open(self) -> bool:
        return self._door_forced or self._door_by_person > 0

    @property
    def passage_active(self) -> bool:
        return self._passage

    @property
    def people_moving(self) -> int:
        """People on their way through (an arm armed, a door not yet shut behind them)."""
        return len(self._tasks)

    @property
    def fire_alarm(self) -> bool:
        return self._fire

    # -- the model ------------------------------------------------------------------------

    def _on_coil_write(self, raw: bool) -> None:
        if raw == self._coil_raw:
            return
        self._coil_raw = raw
        self.coil_history.append((time.monotonic(), raw))
        if not self.unlocked:
            return
        self.unlocks += 1
        if self.on_release is not None:
            self.on_release()
        person = self._script.popleft() if self._script else self.person
        turns = person.turns
        if self.turn_probability is not None:
            turns = turns and self._rng.random() < self.turn_probability
        self.decisions.append(turns)
        if turns:
            self._spawn(self._walk_through(person))

    async def _walk_through(self, person: Person) -> None:
        await asyncio.sleep(person.delay)
        if not self.latch and not self.unlocked:
            return  # relocked before they pushed: the arm stays blocked
        # One rotation at a time: the next person waits for the arm to come round, and the
        # passage input drops between two rotations, as on a real rotor.
        async with self._rotor:
            self._door_by_person += 1
            self._passage = True
            if not self._passage_stuck:  # a stuck input has no edge to count
                self.pulse_count = (self.pulse_count + 1) % 65536  # the board counts the rising edge
            try:
                await asyncio.sleep(self.passage_pulse)
                self._passage = False
                self.passages.append(time.monotonic())
                self._spawn(self._close_door_after(person.hold_door))
                await asyncio.sleep(self.rotation_gap)
            except BaseException:
                self._door_by_person -= 1
                raise
            finally:
                self._passage = False

    async def _close_door_after(self, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        finally:
            self._door_by_person -= 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _input_bits(self) -> dict[int, bool]:
        bits: dict[int, bool] = {}
        if self.passage_input is not None:
            bits[self.passage_input] = (self._passage or self._passage_stuck) != self.passage_active_low
        if self.door_contact is not None:
            bits[self.door_contact] = self.door_open != self.door_contact_active_low
        if self.fire_alarm_input is not None:
            bits[self.fire_alarm_input] = self._fire != self.fire_alarm_active_low
        return bits

    # -- pymodbus plumbing ----------------------------------------------------------------

    def _build_device(self) -> SimDevice:
        addrs = [self.coil] + [
            a
            for a in (self.passage_input, self.door_contact, self.fire_alarm_input)
            if a is not None
        ]
        size = (max(addrs) // 16 + 1) * 16
        registers = (self.passage_counter or 0) + 1
        # Separate blocks (the tuple form): coils and discrete inputs each have their own
        # address space, as on relay boards, instead of sharing registers.
        return SimDevice(
            id=self.unit,
            simdata=(
                [SimData(0, count=size, values=False, datatype=DataType.BITS)],
                [SimData(0, count=size, values=False, datatype=DataType.BITS)],
                [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=registers, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self._fault is Fault.NO_ANSWER:
            return ExcCodes.DEVICE_BUSY  # not applied; trace_packet drops the answer anyway
        # Writes call the hook twice (write, then read-back): delay only the first call.
        if self._fault is Fault.SLOW_ANSWER and (set_values is not None or function_code in _READS):
            await asyncio.sleep(self._slow)
        if function_code in (_WRITE_COIL, _WRITE_COILS) and set_values is not None:
            offset = self.coil - address
            if 0 <= offset < len(set_values):
                self._on_coil_write(bool(set_values[offset]))
        if function_code in (_READ_COILS, _WRITE_COIL, _WRITE_COILS) and set_values is None:
            _paint(registers, start_address, {self.coil: self._coil_raw})
        elif function_code == _READ_DISCRETE:
            self.input_reads += 1
            _paint(registers, start_address, self._input_bits())
        elif function_code == _READ_INPUT_REGISTERS and self.passage_counter is not None:
            index = self.passage_counter - start_address
            if 0 <= index < len(registers):
                registers[index] = self.pulse_count
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if sending and self._fault in (Fault.NO_ANSWER, Fault.LOST_ANSWER):
            return b""
        return data


class _OwnUnitsOnly(SimCore):
    """The boards' registers, for the unit ids they have and no other. pymodbus 3.16's
    SimCore serves an unknown id from a device 0 if there is one, and otherwise fails with
    a KeyError that its server answers as exception 4 (server device failure): every unit
    id of a line seemed to hold a broken board. Here an unknown id is NoSuchIdException,
    pymodbus's own word for it, which its server answers as `ignore_missing_devices`
    says: silence (given on RTU), or exception 11, gateway target device failed to respond
    (TCP)."""

    def _check(self, device_id: int) -> None:
        if device_id not in self.devices:
            raise NoSuchIdException(f"no unit {device_id} here")

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        self._check(device_id)
        return await super().async_getValues(device_id, func_code, address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        self._check(device_id)
        return await super().async_setValues(device_id, func_code, address, values)


def _own_units_only(server: ModbusTcpServer | ModbusSerialServer, devices: list[SimDevice]) -> None:
    # the server builds a plain SimCore from the devices it is given; there is no argument
    # for another, so it is put in its place before the server answers anything
    server.context = _OwnUnitsOnly(devices)


def _paint(registers: list[int], start_register: int, bits: dict[int, bool]) -> None:
    """Write single bits into a bit block's 16-bit registers (bit 0 = lowest address)."""
    for address, value in bits.items():
        index = address // 16 - start_register
        if 0 <= index < len(registers):
            mask = 1 << (address % 16)
            registers[index] = (registers[index] | mask) if value else (registers[index] & ~mask)


class SimRtuLine:
    """Several turnstiles, one unit each, on one RS-485 line: one Modbus RTU server
    answering for each of their units and silent for any other, behind an EmulatedLine at
    `baudrate` (the timing of a real bus; `emulate=False` for a bare pty pair). The gates'
    client opens `device`.

    The turnstiles are models only here (build them with transport="rtu" and distinct
    units, do not enter them); fault injection by silence is per server, so not offered.
    """

    def __init__(
        self,
        turnstiles: list[SimTurnstile],
        *,
        baudrate: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        emulate: bool = True,
        record: bool = False,
    ) -> None:
        units = [t.unit for t in turnstiles]
        if len(set(units)) != len(units):
            raise ValueError("every turnstile on a line needs its own unit")
        self.turnstiles = turnstiles
        self.timing = LineTiming(baudrate, parity, stopbits)
        self.emulate = emulate
        self.record = record  # the emulated line logs every request (EmulatedLine.requests)
        self.line: EmulatedLine | None = None
        self.device = ""
        self._server: ModbusSerialServer | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> SimRtuLine:
        try:
            if self.emulate:
                # a request for a unit nobody has takes the line's time but reaches no one
                units = {t.unit for t in self.turnstiles}
                self.line = await self._stack.enter_async_context(
                    EmulatedLine(self.timing, units=units, record=self.record)
                )
                server_port, self.device = self.line.slave_device, self.line.master_device
            else:
                pair = await self._stack.enter_async_context(socat_pty_pair())
                server_port, self.device = pair.server_end, pair.client_end
            devices = [t._build_device() for t in self.turnstiles]
            server = ModbusSerialServer(
                devices,
                port=server_port,
                baudrate=self.timing.baudrate,
                parity=self.timing.parity,
                stopbits=self.timing.stopbits,
                ignore_missing_devices=True,
            )
            _own_units_only(server, devices)
            await server.serve_forever(background=True)
            self._server = server
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self.turnstiles:
            await t.stop_model()
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]
        await self._stack.aclose()


async def serve_turnstile(
    transport: Literal["tcp", "rtu"] = "tcp",
    host: str = "127.0.0.1",
    port: int = 5020,
    device: str | None = None,
    unit: int = 1,
    coil: int = 0,
    passage_input: int | None = 0,
    door_contact: int | None = 1,
    *,
    fire_alarm_input: int | None = 2,
    active_low: bool = False,
    turns: bool = True,
    delay: float = 0.8,
    turn_probability: float | None = None,
    baudrate: int = 9600,
    on_ready: Callable[[SimTurnstile], None] | None = None,
) -> None:
    """Serve a simulated turnstile until cancelled (the `gated sim turnstile` command).

    For RTU without `device`, a socat pty pair is made and its client end is reported
    through on_ready (and the log) for the daemon's `device:` setting.
    """
    async with SimTurnstile(
        transport=transport,
        host=host,
        port=port,
        device=device,
        baudrate=baudrate,
        unit=unit,
        coil=coil,
        passage_input=passage_input,
        door_contact=door_contact,
        fire_alarm_input=fire_alarm_input,
        active_low=active_low,
        person=Person(turns=turns, delay=delay),
        turn_probability=turn_probability,
    ) as sim:
        where = f"{sim.host}:{sim.port}" if transport == "tcp" else f"device {sim.device}"
        log.info("simulated turnstile on %s, unit %s, coil %s", where, unit, coil)
        if on_ready is not None:
            on_ready(sim)
        seen_unlocks = seen_passages = 0
        while True:  # report what happens, for a human watching a rehearsal
            await asyncio.sleep(0.1)
            if sim.unlocks != seen_unlocks:
                seen_unlocks = sim.unlocks
                log.info("turnstile unlocked (%d so far)", seen_unlocks)
            if len(sim.passages) != seen_passages:
                seen_passages = len(sim.passages)
                log.info("person passed (%d so far)", seen_passages)
