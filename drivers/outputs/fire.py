"""The fire panel's contact, read through a Modbus I/O board, and the poller that tells
the daemon when it changes (gated/safety.py decides what a fire alarm does to the gates).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from .config import FireAlarmInputConfig
from .modbus import HealthCallback, ModbusDevice, OutputFault, OutputHealth

log = logging.getLogger(__name__)


class FireAlarmInput(ModbusDevice):
    """The fire panel contact, read through a Modbus I/O board."""

    def __init__(
        self, cfg: FireAlarmInputConfig, *, on_health: HealthCallback | None = None
    ) -> None:
        super().__init__(cfg, on_health=on_health)
        self.fire_cfg = cfg

    async def probe(self) -> None:
        await self.read_active()

    async def read_active(self) -> bool:
        bit = (await self.read_bits(self.fire_cfg.input, 1))[0]
        return bit != self.fire_cfg.active_low


class FireAlarmMonitor:
    """Polls the fire input and calls on_change(active) on every change (and the first read).

    While the input cannot be read the last known state stands: the fire panel's own wiring
    (power to fail-safe locks through the panel relay) is the primary release, this input
    only makes the software follow it.
    """

    def __init__(
        self,
        cfg: FireAlarmInputConfig,
        on_change: Callable[[bool], Awaitable[None] | None],
        *,
        on_health: HealthCallback | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_change = on_change
        self.on_health = on_health
        self.device = FireAlarmInput(cfg, on_health=self._health_changed)
        self.active: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def _health_changed(self, health: OutputHealth, error: str | None) -> None:
        if self._stopping:
            # the board closed on purpose (a reload, the shutdown): the input was not lost,
            # and the owner must not act as if it were (a reload would relock the doors)
            return
        if health is not OutputHealth.ONLINE:
            # the state is unknown until read again: the next successful read is reported
            # even if it equals the last one (the owner must learn the input is back)
            self.active = None
        if self.on_health is not None:
            self.on_health(health, error)

    @property
    def health(self) -> OutputHealth:
        return self.device.health

    async def start(self) -> None:
        await self.device.connect()
        await self._poll_once()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fire-alarm-monitor")

    async def stop(self) -> None:
        """Stop polling and close the board, silently (no health change is reported)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
            self._task = None
        await self.device.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval)
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fire alarm poll failed")

    @property
    def known(self) -> bool:
        """The input was read and the board answers now: `active` is the fire panel's state."""
        return self.active is not None and self.device.health is OutputHealth.ONLINE

    async def _poll_once(self) -> None:
        if self.device.health is not OutputHealth.ONLINE:
            return  # the reconnect loop probes; the owner sees `known` turn False via on_health
        try:
            active = await self.device.read_active()
        except OutputFault:
            return
        if active != self.active:
            self.active = active
            log.warning("fire alarm input: %s", "ACTIVE" if active else "clear")
            result = self.on_change(active)
            if inspect.isawaitable(result):
                await result
