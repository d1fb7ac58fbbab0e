"""A simulated OSDP reader (libosdp PeripheralDevice) and an in-memory RS-485 bus.

bus = MemoryBus()
pd = SimulatedOsdpReader(bus.pd_channel(), address=0, scbk=key).start()
reader = OsdpReader("r1", bus.cp_channel, address=0, scbk=key)   # the driver
pd.present_card("04A1B2C3")
pd.wait_command(lambda c: c["command"] == osdp.Command.LED)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import osdp


class _Pipe:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.lock = threading.Lock()


class MemoryChannel(osdp.Channel):  # type: ignore[misc]  # libosdp ships no types
    def __init__(self, rx: _Pipe, tx: _Pipe) -> None:
        super().__init__()
        self._rx, self._tx = rx, tx

    def read(self, max_bytes: int) -> bytes:
        with self._rx.lock:
            data = bytes(self._rx.buf[:max_bytes])
            del self._rx.buf[:max_bytes]
            return data

    def write(self, buf: bytes) -> int:
        with self._tx.lock:
            self._tx.buf += buf
        return len(buf)

    def flush(self) -> None:
        with self._rx.lock:
            self._rx.buf.clear()


class MemoryBus:
    """A point-to-point RS-485 line in memory: what the CP writes the PD reads."""

    def __init__(self) -> None:
        self._to_pd, self._to_cp = _Pipe(), _Pipe()

    def cp_channel(self) -> MemoryChannel:
        return MemoryChannel(self._to_cp, self._to_pd)

    def pd_channel(self) -> MemoryChannel:
        return MemoryChannel(self._to_pd, self._to_cp)


DEFAULT_CAPABILITIES = [
    (osdp.Capability.LEDControl, 1, 1),
    (osdp.Capability.AudibleControl, 1, 1),
    (osdp.Capability.TextOutput, 1, 1),
    (osdp.Capability.CommunicationSecurity, 1, 1),
]


class SimulatedOsdpReader:
    def __init__(
        self,
        channel: osdp.Channel,
        *,
        address: int = 0,
        scbk: bytes | None = None,
        capabilities: list[tuple[int, int, int]] | None = None,
        log_level: int = osdp.LogLevel.Emergency,
        install_mode: bool = False,
    ) -> None:
        # install_mode: a reader fresh from the box (no key: it accepts the default key
        # and takes the one a control panel sends with osdp_KEYSET).
        flags = [osdp.LibFlag.EnforceSecure] if scbk is not None else []
        if install_mode:
            flags = [osdp.LibFlag.InstallMode]
        info = osdp.PDInfo(address, channel, scbk=scbk, flags=flags)
        caps = osdp.PDCapabilities(capabilities or DEFAULT_CAPABILITIES)
        self.address = address
        self._pd = osdp.PeripheralDevice(info, caps, log_level=log_level)
        self.commands: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._pd.set_command_handler(self._on_command)
        self.running = False

    def _on_command(self, command: dict[str, Any]) -> tuple[int, None]:
        with self._cond:
            self.commands.append(command)
            self._cond.notify_all()
        return 0, None

    def start(self) -> SimulatedOsdpReader:
        self._pd.start()
        self.running = True
        return self

    def stop(self) -> None:
        """Power the reader off (it stops answering; the CP sees it go offline)."""
        if self.running:
            self._pd.stop()
            self.running = False

    def __enter__(self) -> SimulatedOsdpReader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def secure(self) -> bool:
        return bool(self._pd.is_sc_active())

    def present_card(self, card: bytes | str, bits: int | None = None) -> None:
        """A card read as raw bits (hex string or bytes), as most OSDP readers report."""
        data = bytes.fromhex(card) if isinstance(card, str) else bytes(card)
        self._pd.submit_event(
            {
                "event": osdp.Event.CardRead,
                "reader_no": 0,
                "direction": 0,
                "length": bits if bits is not None else len(data) * 8,
                "format": osdp.CardFormat.Unspecified,
                "data": data,
            }
        )

    def wait_command(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for command in self.commands:
                    if predicate(command):
                        return command
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the PD got no matching command")
                self._cond.wait(left)
