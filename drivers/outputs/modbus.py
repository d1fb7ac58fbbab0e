"""Modbus relay output for one gate: pulse the release relay, read the passage and door inputs.

Health is tracked per output: any failed request marks it offline and starts a background
reconnect with backoff. The desired coil level is remembered, and re-written as soon as the
board answers again, so a pulse that ended or a fire-alarm release issued while the board was
unreachable is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException

from .config import ModbusLinkConfig, ModbusOutputConfig, OutputTransport

log = logging.getLogger(__name__)

ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient
HealthCallback = Callable[["OutputHealth", str | None], None]

# First pause before reconnecting; it doubles up to cfg.reconnect_max. Short, because a board
# that blinks (a switch port flap) should be back before the next member taps.
RECONNECT_MIN = 0.1
PASSAGE_POLL = 0.02


class OutputHealth(StrEnum):
    online = "online"
    offline = "offline"  # not answering: the daemon denies taps with reason hardware_fault
    error = "error"  # answering with Modbus exceptions: wrong address or unit id, usually


class OutputFault(Exception):
    """The relay board did not do what was asked (no answer, or an exception response)."""


@dataclass(frozen=True, slots=True)
class InputsSnapshot:
    """Logical input states; None where the input is not configured (or unknown)."""

    passage: bool | None
    door_open: bool | None


class _SharedLink:
    """One pymodbus client per physical line: an RS-485 port can be opened only once."""

    def __init__(self, cfg: ModbusLinkConfig) -> None:
        self.client: ModbusClient = _make_client(cfg)
        self.users = 0
        # Serialises connects so two outputs on one bus do not open the port twice.
        self.connect_lock = asyncio.Lock()


# Per event loop: a pymodbus client is bound to the loop it was created in.
_links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _SharedLink]] = (
    weakref.WeakKeyDictionary()
)


def _make_client(cfg: ModbusLinkConfig) -> ModbusClient:
    # reconnect_delay=0 turns pymodbus's own reconnect off: ours re-asserts the coil and
    # tracks health, which pymodbus's cannot.
    if cfg.transport is OutputTransport.tcp:
        assert cfg.host is not None
        return AsyncModbusTcpClient(
            cfg.host,
            port=cfg.port,
            timeout=cfg.timeout,
            retries=cfg.retries,
            reconnect_delay=0,
            name=f"gated-{cfg.host}:{cfg.port}",
        )
    assert cfg.device is not None
    return AsyncModbusSerialClient(
        cfg.device,
        baudrate=cfg.baudrate,
        parity=cfg.parity,
        stopbits=cfg.stopbits,
        timeout=cfg.timeout,
        retries=cfg.retries,
        reconnect_delay=0,
        name=f"gated-{cfg.device}",
    )


def _describe_refusal(resp: Any) -> str:
    code = getattr(resp, "exception_code", None)
    if not isinstance(code, int):
        return repr(resp)
    try:
        # The usual causes, in installer terms: wrong coil/input address, wrong unit id.
        return {
            ExcCodes.ILLEGAL_ADDRESS: "illegal address: check coil/input numbers",
            ExcCodes.ILLEGAL_FUNCTION: "function not supported by this board",
            ExcCodes.DEVICE_FAILURE: "device failure: check the unit id",
            ExcCodes.GATEWAY_NO_RESPONSE: "gateway: no answer from this unit id",
        }.get(ExcCodes(code), f"exception code {code}")
    except ValueError:
        return repr(resp)


def _loop_links() -> dict[tuple[str, str], _SharedLink]:
    loop = asyncio.get_running_loop()
    links = _links.get(loop)
    if links is None:
        links = _links[loop] = {}
    return links


def _acquire_link(cfg: ModbusLinkConfig) -> _SharedLink:
    links = _loop_links()
    key = cfg.link_key()
    link = links.get(key)
    if link is None:
        link = links[key] = _SharedLink(cfg)
    link.users += 1
    return link


def _release_link(cfg: ModbusLinkConfig, link: _SharedLink) -> None:
    link.users -= 1
    if link.users <= 0:
        link.client.close()
        links = _loop_links()
        if links.get(cfg.link_key()) is link:
            del links[cfg.link_key()]


class ModbusDevice:
    """Requests to one unit on one line, with health tracking and background reconnect."""

    def __init__(self, cfg: ModbusLinkConfig, *, on_health: HealthCallback | None = None) -> None:
        self.cfg = cfg
        self._link: _SharedLink | None = None
        self._health = OutputHealth.offline
        self.last_error: str | None = "not connected yet"
        self.on_health = on_health
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        # Hard bound around pymodbus, in case a request never resolves (seen with half-open
        # TCP connections): its own timeout applies per try, plus margin.
        self._request_bound = cfg.timeout * (cfg.retries + 1) + 1.0

    @property
    def health(self) -> OutputHealth:
        return self._health

    @property
    def client(self) -> ModbusClient:
        if self._link is None:
            raise OutputFault("not connected: call connect() first")
        return self._link.client

    async def connect(self) -> bool:
        """Open the line and probe the unit. False (and reconnecting) if it does not answer."""
        self._closed = False
        if self._link is None:
            self._link = _acquire_link(self.cfg)
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
            _release_link(self.cfg, self._link)
            self._link = None
        self._set_health(OutputHealth.offline, "closed")

    async def probe(self) -> None:
        """A cheap request that proves the unit answers; subclasses re-assert state here."""
        await self.read_bits(0, 1, discrete=False)

    # -- requests -------------------------------------------------------------------------

    async def write_coil(self, address: int, value: bool) -> None:
        await self._request(
            lambda c: c.write_coil(address, value, device_id=self.cfg.unit),
            f"write coil {address}={int(value)}",
        )

    async def read_bits(self, address: int, count: int, *, discrete: bool = True) -> list[bool]:
        if discrete:
            what = f"read discrete inputs {address}+{count}"
            resp = await self._request(
                lambda c: c.read_discrete_inputs(address, count=count, device_id=self.cfg.unit),
                what,
            )
        else:
            what = f"read coils {address}+{count}"
            resp = await self._request(
                lambda c: c.read_coils(address, count=count, device_id=self.cfg.unit), what
            )
        bits = list(getattr(resp, "bits", []) or [])
        if len(bits) < count:
            # A stale answer to an earlier, timed-out request can surface here.
            raise self._fail(OutputFault(f"{what}: malformed answer {resp!r}"))
        return bits[:count]

    async def _request(self, call: Callable[[ModbusClient], Awaitable[Any]], what: str) -> Any:
        try:
            client = self.client
            if not client.connected:
                await self._ensure_connected()
            resp = await asyncio.wait_for(call(client), self._request_bound)
        except OutputFault as exc:
            raise self._fail(exc) from None
        except (TimeoutError, ModbusException, OSError) as exc:
            raise self._fail(OutputFault(f"{what}: {exc or type(exc).__name__}")) from exc
        if resp is None or resp.isError():
            fault = OutputFault(f"{what}: board refused ({_describe_refusal(resp)})")
            raise self._fail(fault, OutputHealth.error)
        return resp

    async def _ensure_connected(self) -> None:
        link = self._link
        if link is None:
            raise OutputFault("closed")
        async with link.connect_lock:
            if link.client.connected:
                return
            try:
                ok = await link.client.connect()
            except (ModbusException, OSError) as exc:
                raise OutputFault(f"cannot open {self._where()}: {exc}") from exc
            if not ok:
                raise OutputFault(f"cannot open {self._where()}")

    # -- health ---------------------------------------------------------------------------

    def _where(self) -> str:
        if self.cfg.transport is OutputTransport.tcp:
            return f"{self.cfg.host}:{self.cfg.port}"
        return str(self.cfg.device)

    def _fail(self, exc: OutputFault, health: OutputHealth = OutputHealth.offline) -> OutputFault:
        self._mark_failed(exc, health)
        return exc

    def _mark_failed(self, exc: Exception, health: OutputHealth = OutputHealth.offline) -> None:
        self._set_health(health, str(exc))
        if self._closed or self._link is None:
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(
                self._reconnect_loop(), name=f"modbus-reconnect-{self._where()}"
            )

    def _mark_online(self) -> None:
        self._set_health(OutputHealth.online, None)

    def _set_health(self, health: OutputHealth, error: str | None) -> None:
        changed = health is not self._health
        self._health = health
        if error is not None or health is OutputHealth.online:
            self.last_error = error
        if changed:
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
                delay = min(delay * 2, self.cfg.reconnect_max)
                continue
            except Exception as exc:  # never let the reconnect task die silently
                log.exception("reconnect probe crashed")
                self._set_health(OutputHealth.error, repr(exc))
                delay = self.cfg.reconnect_max
                continue
            self._mark_online()
            return

    def _spawn_reconnect_if_needed(self) -> None:
        if self._health is not OutputHealth.online and not self._closed:
            self._mark_failed(OutputFault(self.last_error or "offline"), self._health)


class ModbusGateOutput(ModbusDevice):
    """The release relay, passage input and door contact of one gate."""

    def __init__(self, cfg: ModbusOutputConfig, *, on_health: HealthCallback | None = None) -> None:
        super().__init__(cfg, on_health=on_health)
        self.out_cfg = cfg
        # Logical level the coil should have (True = gate released). Re-written on reconnect.
        self._desired_released = False
        # The level a pulse returns to: locked, or released while held (fire alarm). A pulse
        # that was in flight when the fire release came must not relock the door after it.
        self._rest_released = False
        self._pulse_task: asyncio.Task[None] | None = None
        self._pulse_until = 0.0

    @property
    def released(self) -> bool:
        """True while the output is (meant to be) releasing the gate."""
        return self._desired_released

    @property
    def has_passage_sensor(self) -> bool:
        return self.out_cfg.passage_input is not None

    @property
    def has_door_contact(self) -> bool:
        return self.out_cfg.door_contact is not None

    async def probe(self) -> None:
        # Writing the remembered level both proves the unit answers and repairs the relay
        # state after an outage (e.g. a pulse whose release write was lost).
        await self._write_level(self._desired_released)

    async def close(self) -> None:
        self._cancel_pulse()
        await super().close()

    async def drive_safe_state(self, locked: bool = True) -> None:
        """Set the relay to its resting level (locked) or released, cancelling any pulse."""
        await self._hold_level(not locked)

    async def hold(self, unlocked: bool) -> None:
        """Keep the gate released (fire alarm) or locked (lockdown) until told otherwise."""
        await self._hold_level(unlocked)

    async def pulse(self, seconds: float | None = None) -> None:
        """Release the gate for `seconds` (default: cfg.pulse); returns once the coil is set.

        The release back to locked runs in the background. A pulse during a running pulse
        extends it rather than cutting it short.
        """
        duration = self.out_cfg.pulse if seconds is None else seconds
        if self._health is not OutputHealth.online:
            # Fail fast: a tap must not wait for a timeout on a board known to be down.
            self._spawn_reconnect_if_needed()
            raise OutputFault(f"relay offline: {self.last_error}")
        loop = asyncio.get_running_loop()
        retrigger = self._pulse_task is not None
        self._cancel_pulse()
        self._desired_released = True
        try:
            if retrigger:
                # Turnstile controllers count release edges, one rotation each: a relay
                # that is still on from the previous pulse would not let a second person in.
                await self._write_level(False)
            await self._write_level(True)
        except OutputFault:
            # We cannot know whether the write landed; the reconnect probe re-writes
            # the resting level, so the gate does not stay released.
            self._desired_released = self._rest_released
            raise
        self._pulse_until = loop.time() + duration
        self._pulse_task = loop.create_task(self._end_pulse(duration), name="relay-pulse-end")

    async def _end_pulse(self, duration: float) -> None:
        await asyncio.sleep(duration)
        self._desired_released = self._rest_released
        self._pulse_task = None  # no longer cancellable: the write below must finish
        with contextlib.suppress(OutputFault):
            # On failure the device is offline and the reconnect probe writes the level.
            await self._write_level(self._rest_released)

    async def end_pulse(self) -> None:
        """Relock now instead of at the end of the pulse (the person has passed)."""
        if self._pulse_task is None:
            return
        self._cancel_pulse()
        self._desired_released = self._rest_released
        await self._write_level(self._rest_released)

    def _cancel_pulse(self) -> None:
        if self._pulse_task is not None:
            self._pulse_task.cancel()
            self._pulse_task = None

    async def _hold_level(self, released: bool) -> None:
        self._cancel_pulse()
        # Remember first: if the board is down the reconnect probe applies this level.
        self._desired_released = self._rest_released = released
        await self._write_level(released)

    async def _write_level(self, released: bool) -> None:
        await self.write_coil(self.out_cfg.coil, released != self.out_cfg.active_low)

    async def read_inputs(self) -> InputsSnapshot:
        """Read the passage input and door contact (both in one request when they are close)."""
        cfg = self.out_cfg
        if self._health is not OutputHealth.online:
            self._spawn_reconnect_if_needed()
            raise OutputFault(f"relay offline: {self.last_error}")
        wanted = [a for a in (cfg.passage_input, cfg.door_contact) if a is not None]
        if not wanted:
            return InputsSnapshot(passage=None, door_open=None)
        values: dict[int, bool] = {}
        lo, hi = min(wanted), max(wanted)
        if hi - lo < 16:
            for offset, bit in enumerate(await self.read_bits(lo, hi - lo + 1)):
                values[lo + offset] = bit
        else:
            for addr in wanted:
                values[addr] = (await self.read_bits(addr, 1))[0]
        passage = None
        if cfg.passage_input is not None:
            passage = values[cfg.passage_input] != cfg.passage_active_low
        door_open = None
        if cfg.door_contact is not None:
            door_open = values[cfg.door_contact] != cfg.door_contact_active_low
        return InputsSnapshot(passage=passage, door_open=door_open)

    async def wait_passage(self, timeout: float, *, baseline: bool | None = None) -> bool:
        """Wait for the passage input (or, without one, the door contact) to become active.

        Polls every ~20 ms. `baseline` is the input's level just before the release (the
        caller's last poll). If it was active, that is the previous person's rotation still
        in progress, and a fresh rising edge is needed. Without a baseline, the first read
        stands in for it, which is right only if nobody can turn the turnstile before that
        read lands (true on a fast link; pass a baseline on slow RS-485 lines).
        Without either sensor, returns True at once (commit on grant).
        Raises OutputFault if the board stops answering meanwhile.
        """
        cfg = self.out_cfg
        if cfg.passage_input is None and cfg.door_contact is None:
            return True
        use_passage = cfg.passage_input is not None
        deadline = time.monotonic() + timeout
        # None until a reading gives the baseline; True once the input was seen inactive.
        armed: bool | None = None if baseline is None else not baseline
        while True:
            snap = await self.read_inputs()
            active = bool(snap.passage if use_passage else snap.door_open)
            if armed is None:
                armed = not active
            elif not active:
                armed = True
            elif armed:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(PASSAGE_POLL, remaining))
