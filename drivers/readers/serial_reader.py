"""Serial line readers (EM4100/Mifare UID readers, Wiegand-to-serial converters, QR
scanners in serial mode) on a tty, with reconnect.

Async shell choice: `loop.add_reader` on the pyserial file descriptor rather than
pyserial-asyncio(-fast). We only need "bytes arrived" and "device gone", pyserial opens
the fd non-blocking already, and this avoids a dependency and a transport/protocol
layer whose error paths on hot-unplug we would have to learn anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import serial

from rules.credential import mask_bytes

from .base import OnCredential, ReaderBase, ReaderHealth
from .frames import FrameConfig, ParserOutput, SerialFrameParser
from .reads import FrameError

log = logging.getLogger(__name__)

# How often we look whether the device path still exists: a USB adapter that vanishes
# removes its /dev/serial/by-id link before any read fails on an idle line.
PRESENCE_CHECK_S = 1.0

SerialFactory = Callable[..., Any]


class SerialReader(ReaderBase):
    def __init__(
        self,
        id: str,
        device: str,
        *,
        frame: FrameConfig | None = None,
        baudrate: int = 9600,
        parity: str = serial.PARITY_NONE,
        stopbits: float = serial.STOPBITS_ONE,
        bytesize: int = serial.EIGHTBITS,
        open_serial: SerialFactory = serial.Serial,
        **kwargs: Any,
    ) -> None:
        super().__init__(id, **kwargs)
        self.device = device
        self.frame = frame or FrameConfig()
        self.baudrate, self.parity, self.stopbits, self.bytesize = (
            baudrate,
            parity,
            stopbits,
            bytesize,
        )
        self._open_serial = open_serial

    def _open(self) -> Any:
        # exclusive=True takes a flock: a second daemon (or a forgotten screen session)
        # fails loudly instead of stealing half the bytes.
        return self._open_serial(
            self.device,
            baudrate=self.baudrate,
            parity=self.parity,
            stopbits=self.stopbits,
            bytesize=self.bytesize,
            timeout=0,
            exclusive=True,
        )

    async def run(self, on_credential: OnCredential) -> None:
        while True:
            try:
                port = self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self._open_failed(exc)
                await self._wait_before_retry()
                continue
            self._mark_opened()
            try:
                await self._pump(port, on_credential)
            finally:
                port.close()
                self._set_health_offline()
            await self._wait_before_retry()

    def _set_health_offline(self) -> None:
        self._set_health(ReaderHealth.OFFLINE)

    async def _pump(self, port: Any, on_credential: OnCredential) -> None:
        """Reads until the device goes away; returns (never raises) on device errors."""
        loop = asyncio.get_running_loop()
        fd = port.fileno()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return
            except OSError as exc:  # EIO: pty master closed / USB adapter unplugged
                log.info("reader %s: %s gone (%s)", self.id, self.device, exc)
                data = b""
            if not data:
                loop.remove_reader(fd)
                chunks.put_nowait(None)
            else:
                chunks.put_nowait(data)

        parser = SerialFrameParser(self.frame)
        loop.add_reader(fd, readable)
        try:
            while True:
                # Wake up when a partial frame goes stale, so it is counted (and gone)
                # even if the reader stays silent afterwards.
                wait = PRESENCE_CHECK_S
                stale_at = parser.expires_at
                if stale_at is not None:
                    wait = min(wait, max(0.0, stale_at - self._clock()) + 0.001)
                try:
                    async with asyncio.timeout(wait):
                        data = await chunks.get()
                except TimeoutError:
                    await self._handle(parser.expire(self._clock()), on_credential)
                    if stale_at is None and not os.path.exists(self.device):
                        log.info("reader %s: %s disappeared", self.id, self.device)
                        self.stats.bump("device_errors")
                        return
                    continue
                if data is None:
                    self.stats.bump("device_errors")
                    return
                await self._handle(parser.feed(data, self._clock()), on_credential)
        finally:
            loop.remove_reader(fd)

    async def _handle(self, items: list[ParserOutput], on_credential: OnCredential) -> None:
        for item in items:
            self.stats.bump("frames")
            if isinstance(item, FrameError):
                self.stats.bump("rejected_frames")
                # what was read is masked: a rejected frame may be a card's whole number
                log.warning(
                    "reader %s: rejected frame (%s: %s) %s",
                    self.id,
                    item.reason,
                    item.detail,
                    mask_bytes(item.raw),
                )
            else:
                await self._emit(on_credential, item)
