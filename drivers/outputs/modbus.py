"""Modbus relay output for one gate: pulse the release relay, read the passage and door inputs.

Health is tracked per output: any failed request marks it offline and starts a background
reconnect with backoff. The desired coil level is remembered, and re-written as soon as the
board answers again, so a pulse that ended or a fire-alarm release issued while the board was
unreachable is never lost.

About 650 lines: one board's whole conversation — the requests, each answer checked against
its request (function, count, echoed address and value), the retries, the coil's read-back,
the health and the reconnect — is one state, and splitting it would pass that state around.
The line's timing and turns are in bus.py, the links in links.py, the plan in plan.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pymodbus.exceptions import ModbusException

from drivers.guard import guarded

from .bus import LineTiming, ModbusLine, Priority
from .config import ModbusLinkConfig, ModbusOutputConfig
from .links import ModbusClient, SharedLink, acquire_link, release_link, where
from .plan import RelayPlan
from .refusals import describe

log = logging.getLogger(__name__)

HealthCallback = Callable[["OutputHealth", str | None], None]

# First pause before reconnecting; it doubles up to cfg.reconnect_max. Short, because a board
# that blinks (a switch port flap) should be back before the next member taps.
RECONNECT_MIN = 0.1


class OutputHealth(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"  # not answering: the daemon denies taps with reason hardware_fault
    ERROR = "error"  # answering with Modbus exceptions: wrong address or unit id, usually


class OutputFault(Exception):
    """The relay board did not do what was asked (no answer, or an exception response)."""


class Refused(OutputFault):
    """The board answered this request with a Modbus exception (health unchanged where the
    request was optional: a coil read-back on a board that cannot read coils)."""


class OutputUncertain(OutputFault):
    """A write went out and its answer never came: the board may have acted on it (a lost
    answer on a noisy RS-485 line, a TCP link that broke after the request). A release
    that ends this way may have let someone through."""


@dataclass(frozen=True, slots=True)
class InputsSnapshot:
    """Logical input states; None where the input is not configured (or unknown)."""

    passage: bool | None
    door_open: bool | None
    passage_count: int | None = None  # the board's pulse counter, where one is configured
    # the number (ModbusDevice.sent) of the snapshot's first exchange: its values were all
    # sampled after that exchange went out, and none of them before — a write numbered
    # before it came before all of them
    first: int = field(default=0, compare=False)
    # the counter was read only after a try went unanswered: the board was silent a while
    counter_after_silence: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class _Expect:
    """What the answer to a request must be: its function code, and the bit or register
    count read, or the coil address and value a write echoes."""

    function: int
    count: int | None = None
    address: int | None = None
    value: bool | None = None


def _mismatch(resp: Any, expect: _Expect) -> str | None:
    """Why `resp` is not the answer to the request `expect` describes; None when it is."""
    function = getattr(resp, "function_code", None)
    if not isinstance(function, int) or function & 0x7F != expect.function:
        return f"answer {resp!r} is not to this request (function {function}, asked {expect.function})"
    if resp.isError():
        return None  # a refusal of this request: the caller names it
    if expect.function == 5:
        bits = list(getattr(resp, "bits", []) or [])
        if getattr(resp, "address", None) != expect.address or bits[:1] != [expect.value]:
            return f"echo {resp!r} is not of this write"
        return None
    assert expect.count is not None
    if expect.function == 4:
        if len(list(getattr(resp, "registers", []) or [])) != expect.count:
            return f"malformed answer {resp!r}"
        return None
    # bits come back whole bytes: count rounded up to 8
    if len(list(getattr(resp, "bits", []) or [])) != 8 * ((expect.count + 7) // 8):
        return f"malformed answer {resp!r}"
    return None


def _describe_refusal(resp: Any) -> str:
    code = getattr(resp, "exception_code", None)
    return describe(code) if isinstance(code, int) else repr(resp)


class ModbusDevice:
    """Requests to one unit on one line, with health tracking and background reconnect."""

    def __init__(self, cfg: ModbusLinkConfig, *, on_health: HealthCallback | None = None) -> None:
        self.cfg = cfg
        self._link: SharedLink | None = None
        self._health = OutputHealth.OFFLINE
        self.last_error: str | None = "not connected yet"
        self.on_health = on_health
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        # a member is at the gate waiting for this board: reconnect at the shortest pause,
        # not backing off (a board that blinks mid-tap is read again in time to see them pass)
        self.urgent = False
        # Hard bound around pymodbus, in case a request never resolves (seen with half-open
        # TCP connections): its own timeout applies per try (on RTU twice: the wait for a
        # late answer, _tries), plus margin.
        self._request_bound = cfg.timeout * (cfg.retries + 1) * 2 + 1.0
        # this device's exchanges, numbered as they go on the wire (the line runs one at a
        # time): a reading whose first exchange is numbered after a write's was taken after it
        self.sent = 0
        self.last_write = 0  # the number of the last coil write sent
        # how long the last coil write waited for its turn on the line before it was sent:
        # the arm was still locked meanwhile (GateController: a grant is watched from its send)
        self.last_write_wait = 0.0
        # counter readings that came back only after a try went unanswered (plan.PassageCounter:
        # a board silent for a while may have restarted, its counter's step then no count)
        self.silent_reads = 0

    @property
    def health(self) -> OutputHealth:
        return self._health

    @property
    def client(self) -> ModbusClient:
        if self._link is None:
            raise OutputFault("not connected: call connect() first")
        return self._link.client

    @property
    def line(self) -> ModbusLine | None:
        """The line this device shares (None before connect and after close)."""
        return self._link.line if self._link is not None else None

    async def connect(self) -> bool:
        """Open the line and probe the unit. False (and reconnecting) if it does not answer."""
        self._closed = False
        if self._link is None:
            self._link = acquire_link(self.cfg)
        try:
            await self._ensure_connected()
        except OutputFault as exc:
            self._mark_failed(exc)
            return False
        try:
            await self.probe()
        except OutputFault:
            return False  # the failed request already set health (offline or error)
        self._mark_online()
        return True

    async def close(self) -> None:
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            await asyncio.wait([self._reconnect_task])
            self._reconnect_task = None
        if self._link is not None:
            link, self._link = self._link, None
            link.line.forget(self)
            await release_link(self.cfg, link)
        self._set_health(OutputHealth.OFFLINE, "closed")

    async def probe(self) -> None:
        """A cheap request that proves the unit answers; subclasses re-assert state here."""
        await self.read_bits(0, 1, discrete=False)

    # -- requests -------------------------------------------------------------------------

    async def write_coil(self, address: int, value: bool) -> None:
        timing = self._timing()
        await self._request(
            lambda c: c.write_coil(address, value, device_id=self.cfg.unit),
            f"write coil {address}={int(value)}",
            Priority.WRITE,
            timing.write_coil_s() if timing is not None else 0.0,
            acts=True,
            expect=_Expect(5, address=address, value=value),
        )

    def _timing(self) -> LineTiming | None:
        return self._link.line.timing if self._link is not None else None

    async def read_bits(
        self,
        address: int,
        count: int,
        *,
        discrete: bool = True,
        priority: Priority = Priority.POLL,
    ) -> list[bool]:
        return (await self._read_bits(address, count, discrete=discrete, priority=priority))[0]

    async def _read_bits(
        self, address: int, count: int, *, discrete: bool = True, priority: Priority = Priority.POLL,
        optional: bool = False,
    ) -> tuple[list[bool], int]:
        """The bits, and the number of the exchange that read them (`sent`)."""
        timing = self._timing()
        wire = timing.read_bits_s(count) if timing is not None else 0.0
        if discrete:
            what = f"read discrete inputs {address}+{count}"
            resp, number = await self._exchange(
                lambda c: c.read_discrete_inputs(address, count=count, device_id=self.cfg.unit),
                what, priority, wire, expect=_Expect(2, count=count),
            )
        else:
            what = f"read coils {address}+{count}"
            resp, number = await self._exchange(
                lambda c: c.read_coils(address, count=count, device_id=self.cfg.unit),
                what, priority, wire, expect=_Expect(1, count=count), optional=optional,
            )
        return list(resp.bits)[:count], number

    async def read_input_register(self, address: int, priority: Priority = Priority.POLL) -> int:
        return (await self._read_input_register(address, priority))[0]

    async def _read_input_register(self, address: int, priority: Priority = Priority.POLL) -> tuple[int, int]:
        timing = self._timing()
        resp, number = await self._exchange(
            lambda c: c.read_input_registers(address, count=1, device_id=self.cfg.unit),
            f"read input register {address}",
            priority,
            timing.read_registers_s(1) if timing is not None else 0.0,
            expect=_Expect(4, count=1),
        )
        # a try unanswered (the answer late, or the request sent again): the board was
        # silent for a while, and may have restarted meanwhile
        if getattr(resp, "retries", 0):
            self.silent_reads += 1
        return int(resp.registers[0]), number

    async def _request(
        self,
        call: Callable[[ModbusClient], Awaitable[Any]],
        what: str,
        priority: Priority = Priority.POLL,
        wire_s: float = 0.0,
        *,
        acts: bool = False,
        expect: _Expect | None = None,
    ) -> Any:
        return (await self._exchange(call, what, priority, wire_s, acts=acts, expect=expect))[0]

    async def _exchange(
        self,
        call: Callable[[ModbusClient], Awaitable[Any]],
        what: str,
        priority: Priority = Priority.POLL,
        wire_s: float = 0.0,
        *,
        acts: bool = False,
        expect: _Expect | None = None,
        optional: bool = False,
    ) -> tuple[Any, int]:
        """One exchange: its answer, checked against the request (`expect`), and its number
        among this device's exchanges in the order they went on the wire (`sent`).
        `acts`: the request changes the board (a coil write), so an answer lost after it
        was handed to the line is OutputUncertain, not a plain OutputFault."""
        number = 0
        try:
            link = self._link
            if link is None:
                raise OutputFault("not connected: call connect() first")
            if not link.client.connected:
                await self._ensure_connected()
            client = link.client

            queued = time.monotonic()

            async def on_the_wire() -> Any:
                nonlocal number
                self.sent += 1
                number = self.sent
                if acts:
                    self.last_write = number
                    self.last_write_wait = time.monotonic() - queued
                return await self._tries(link, lambda: call(client))

            # this device takes its turns on the line with the others (bus.RequestQueue)
            resp = await link.line.submit(
                on_the_wire,
                priority=priority,
                wire_s=wire_s,
                bound=self._request_bound,
                station=self,
            )
        except OutputFault as exc:
            raise self._fail(exc) from None
        except (TimeoutError, ModbusException, OSError) as exc:
            # Only the exchange itself raises these (connecting raises OutputFault above):
            # the request was on its way, and a write may have been carried out.
            lost = OutputUncertain if acts else OutputFault
            raise self._fail(lost(f"{what}: {exc or type(exc).__name__}")) from exc
        mismatch = _mismatch(resp, expect) if expect is not None and resp is not None else None
        if mismatch is not None:
            # Not this request's answer (a late one to an earlier request, on RTU): the
            # board is out of step with us, and nothing it says now can be trusted until
            # a fresh exchange matches (the reconnect probe). A write may have landed.
            lost = OutputUncertain if acts else OutputFault
            raise self._fail(lost(f"{what}: {mismatch}"))
        if resp is None or resp.isError():
            fault = Refused(f"{what}: board refused ({_describe_refusal(resp)})")
            if optional:
                raise fault  # the board answers: its health stands
            raise self._fail(fault, OutputHealth.ERROR)
        return resp, number

    async def _tries(self, link: SharedLink, send: Callable[[], Awaitable[Any]]) -> Any:
        """The request's tries, on the line's turn. On TCP pymodbus retries (transaction ids
        tell a late answer from the next). On RTU it does not (links.make_client): after a
        try that timed out, the answer may still come, and a request sent before it came
        would take it for its own — so the line is held quiet for another `timeout`, and
        an answer heard then is this request's (checked by the caller like any other); if
        none is heard the request is sent again."""
        if self._timing() is None:
            return await send()
        last: Exception | None = None
        for attempt in range(self.cfg.retries + 1):
            heard = link.heard
            try:
                resp = await send()
            except (TimeoutError, ModbusException) as exc:
                if link.heard != heard:
                    raise  # an answer came and was refused (a wrong unit id): no late one to wait for
                last = exc
            else:
                resp.retries = attempt  # as pymodbus says on TCP: the board was silent for a while
                return resp
            late = await link.late_answer(heard, self.cfg.timeout)
            if late is not None:
                late.retries = attempt + 1
                return late
        assert last is not None
        raise last

    async def _ensure_connected(self) -> None:
        link = self._link
        if link is None:
            raise OutputFault("closed")
        async with link.connect_lock:
            if link.client.connected:
                return
            try:
                ok = await guarded(link.client.connect())  # our cancel kept (drivers/guard.py)
            except (ModbusException, OSError) as exc:
                raise OutputFault(f"cannot open {self._where()}: {exc}") from exc
            if not ok:
                raise OutputFault(f"cannot open {self._where()}")

    # -- health ---------------------------------------------------------------------------

    def _where(self) -> str:
        return where(self.cfg)

    def _fail(self, exc: OutputFault, health: OutputHealth = OutputHealth.OFFLINE) -> OutputFault:
        self._mark_failed(exc, health)
        return exc

    def _mark_failed(self, exc: Exception, health: OutputHealth = OutputHealth.OFFLINE) -> None:
        self._set_health(health, str(exc))
        if self._closed or self._link is None:
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect_loop(), name=f"modbus-reconnect-{self._where()}"
            )

    def _mark_online(self) -> None:
        self._set_health(OutputHealth.ONLINE, None)

    def _set_health(self, health: OutputHealth, error: str | None) -> None:
        changed = health is not self._health
        self._health = health
        if error is not None or health is OutputHealth.ONLINE:
            self.last_error = error
        if changed:
            if health is OutputHealth.ONLINE:  # news, not trouble
                log.info("modbus %s unit %s: online", self._where(), self.cfg.unit)
            else:
                log.warning("modbus %s unit %s: %s (%s)", self._where(), self.cfg.unit, health, error)
            if self.on_health is not None:
                try:
                    self.on_health(health, error)
                except Exception:  # a broken observer must not stop the relay logic
                    log.exception("health callback failed")

    async def _reconnect_loop(self) -> None:
        delay = RECONNECT_MIN
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                await self._ensure_connected()
                await self.probe()
            except OutputFault as exc:
                # Keeps last_error current for the console; health was set by _request.
                self.last_error = str(exc)
                delay = RECONNECT_MIN if self.urgent else min(delay * 2, self.cfg.reconnect_max)
                continue
            except Exception as exc:  # never let the reconnect task die silently
                log.exception("reconnect probe crashed")
                self._set_health(OutputHealth.ERROR, repr(exc))
                delay = self.cfg.reconnect_max
                continue
            self._mark_online()
            return

    def _spawn_reconnect_if_needed(self) -> None:
        if self._health is not OutputHealth.ONLINE and not self._closed:
            self._mark_failed(OutputFault(self.last_error or "offline"), self._health)


class ModbusGateOutput(ModbusDevice):
    """The release relay, passage input and door contact of one gate.

    The coil follows a RelayPlan (plan.py); this class only writes what the plan says, and
    runs one timer for the end of a pulse. The timer's write is shielded: once the plan
    says "relock", the write is finished even if the gate is being stopped.
    """

    def __init__(
        self,
        cfg: ModbusOutputConfig,
        *,
        on_health: HealthCallback | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(cfg, on_health=on_health)
        self.out_cfg = cfg
        self.plan = RelayPlan()
        self._clock = clock
        self._timer: asyncio.Task[None] | None = None
        self._relock: asyncio.Future[None] | None = None  # the end-of-pulse write, once started
        self._writing = 0  # coil writes asked for and not yet answered (queued or on the wire)
        self.coil_readable = True  # False once the board refused to read its coil back

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    @property
    def released(self) -> bool:
        """True while the output is (meant to be) releasing the gate."""
        return self.plan.desired

    @property
    def has_passage_sensor(self) -> bool:
        return self.out_cfg.passage_input is not None or self.out_cfg.passage_counter is not None

    @property
    def has_door_contact(self) -> bool:
        return self.out_cfg.door_contact is not None

    async def probe(self) -> None:
        # Writing the remembered level both proves the unit answers and repairs the relay
        # state after an outage (e.g. a pulse whose release write was lost). A write that
        # was in flight when the board fell silent can fail while this one waits its turn,
        # and so change the plan (a lost release falls back to locked): the level written
        # must be the plan's after the write, or the probe would re-release a gate that
        # nothing relocks (found with a lost answer: the gate stayed open).
        for _ in range(3):
            level = self.plan.desired
            await self._write_level(level)
            if self.plan.desired == level:
                return
        raise OutputFault("the relay plan kept changing while the board came back")

    async def close(self) -> None:
        self._cancel_timer()
        if self._relock is not None and not self._relock.done():
            # A relock already on its way is finished before the line goes: a gate must
            # not stay released because it was being closed.
            await asyncio.wait([self._relock], timeout=self._request_bound)
        await super().close()

    async def drive_safe_state(self, locked: bool = True) -> None:
        """Set the relay to its resting level (locked) or released, cancelling any pulse."""
        await self.hold(unlocked=not locked)

    def rest_at(self, unlocked: bool) -> list[bool]:
        """Plan the level to hold without writing it: the next write to the board applies
        it — connect()'s probe at start (a gate started during a fire alarm is never
        locked first), the reconnect probe when the board is back."""
        self._cancel_timer()
        return self.plan.hold(unlocked)

    async def hold(self, unlocked: bool) -> None:
        """Keep the gate released (fire alarm) or locked (lockdown) until told otherwise.

        Raises OutputFault at once on a board known to be down, as pulse() does: the
        level is planned (the reconnect probe writes it, released or locked, when the board
        answers), and a caller driving several gates must not wait out a dead one's timeout.
        """
        levels = self.rest_at(unlocked)
        if self._health is not OutputHealth.ONLINE:
            self._spawn_reconnect_if_needed()
            raise OutputFault(f"relay offline: {self.last_error}")
        await self._write(levels)

    async def pulse(self, seconds: float | None = None) -> None:
        """Release the gate for `seconds` (default: cfg.pulse); returns once the coil is set.

        The release back to locked runs in the background. A pulse during a running pulse
        extends it rather than cutting it short.
        """
        duration = self.out_cfg.pulse if seconds is None else seconds
        if self._health is not OutputHealth.ONLINE:
            # Fail fast: a tap must not wait for a timeout on a board known to be down.
            self._spawn_reconnect_if_needed()
            raise OutputFault(f"relay offline: {self.last_error}")
        self._cancel_timer()
        await self._write(self.plan.pulse(self._now(), duration))
        self._timer = asyncio.get_running_loop().create_task(
            self._end_of_pulse(), name="relay-pulse-end"
        )

    async def end_pulse(self) -> None:
        """Relock now instead of at the end of the pulse (the person has passed)."""
        self._cancel_timer()
        await self._write(self.plan.end_pulse())

    async def _end_of_pulse(self) -> None:
        deadline = self.plan.pulse_until
        if deadline is None:
            return
        await asyncio.sleep(max(0.0, deadline - self._now()))
        levels = self.plan.due(max(self._now(), deadline))
        self._timer = None  # no longer cancellable: the relock below must finish
        self._relock = asyncio.ensure_future(self._write(levels))
        try:
            await asyncio.shield(self._relock)
        except OutputFault:
            pass  # the device is offline; the reconnect probe writes the planned level

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _write(self, levels: list[bool]) -> None:
        try:
            for released in levels:
                await self._write_level(released)
        except OutputFault:
            self.plan.write_failed()
            raise

    async def _write_level(self, released: bool) -> None:
        self._writing += 1
        try:
            await self.write_coil(self.out_cfg.coil, released != self.out_cfg.active_low)
        finally:
            self._writing -= 1

    async def verify_coil(self) -> bool | None:
        """Read the coil back and compare it with the plan: True when it holds the planned
        level; False when it does not — a board that restarted between two polls comes
        back with its coils at their power-on level, and no request failed, so no
        reconnect probe wrote the plan again — and then the plan is written again; None
        when the reading proves nothing (a pulse running, a write asked for meanwhile: the
        coil may be on its way to the new level). Raises OutputFault as any request."""
        if self.plan.pulsing or self._writing or not self.coil_readable:
            return None
        writes, desired = self.last_write, self.plan.desired
        try:
            bits, _ = await self._read_bits(self.out_cfg.coil, 1, discrete=False, optional=True)
        except Refused as exc:
            # a board that cannot read its coils (no function 1): it is not checked, and
            # that is no fault of the gate's
            self.coil_readable = False
            log.warning("modbus %s unit %s: the coil cannot be read back, not checked (%s)",
                        self._where(), self.cfg.unit, exc)
            return None
        if self.plan.pulsing or self._writing or self.last_write != writes or self.plan.desired != desired:
            return None
        if (bits[0] != self.out_cfg.active_low) == desired:
            return True
        await self._write([desired])
        return False

    async def read_inputs(self, priority: Priority = Priority.POLL) -> InputsSnapshot:
        """Read the passage input and door contact (both in one request when they are close),
        and the passage counter where configured; `first` numbers the snapshot by its first
        exchange.

        `priority` WRITE puts the read in line with this device's own coil writes (first
        come, first served) instead of after them; other devices' requests take turns."""
        cfg = self.out_cfg
        if self._health is not OutputHealth.ONLINE:
            self._spawn_reconnect_if_needed()
            raise OutputFault(f"relay offline: {self.last_error}")
        count = None
        numbers: list[int] = []
        silent = self.silent_reads
        if cfg.passage_counter is not None:
            count, number = await self._read_input_register(cfg.passage_counter, priority)
            numbers.append(number)
        silent_counter = self.silent_reads != silent
        wanted = [a for a in (cfg.passage_input, cfg.door_contact) if a is not None]
        if not wanted:
            return InputsSnapshot(passage=None, door_open=None, passage_count=count, first=min(numbers, default=self.sent),
                                  counter_after_silence=silent_counter)
        values: dict[int, bool] = {}
        lo, hi = min(wanted), max(wanted)
        if hi - lo < 16:
            bits, number = await self._read_bits(lo, hi - lo + 1, priority=priority)
            numbers.append(number)
            for offset, bit in enumerate(bits):
                values[lo + offset] = bit
        else:
            for addr in wanted:
                bits, number = await self._read_bits(addr, 1, priority=priority)
                numbers.append(number)
                values[addr] = bits[0]
        passage = None
        if cfg.passage_input is not None:
            passage = values[cfg.passage_input] != cfg.passage_active_low
        door_open = None
        if cfg.door_contact is not None:
            door_open = values[cfg.door_contact] != cfg.door_contact_active_low
        # Several exchanges, and another request of this device (a tap's release) may go
        # between them: the snapshot is as old as its first one.
        return InputsSnapshot(passage=passage, door_open=door_open, passage_count=count,
                              first=min(numbers, default=self.sent), counter_after_silence=silent_counter)
