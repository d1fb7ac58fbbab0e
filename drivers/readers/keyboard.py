"""USB HID keyboard-wedge scanners (RFID readers and QR scanners that "type") via evdev.

The device is grabbed exclusively so scans don't also land in whatever has keyboard
focus on the box (a login prompt, the console's browser). Key events are turned into
text by the sans-I/O KeyEventDecoder; a line per Enter.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from .base import OnCredential, ReaderBase, ReaderHealth
from .payloads import ByteOrder, PayloadFormat, decode_payload
from .reads import FrameError

log = logging.getLogger(__name__)

# Linux input event codes (linux/input-event-codes.h), written out so the decoder needs
# no evdev import and runs anywhere.
EV_KEY = 0x01
KEY_ENTER, KEY_KPENTER = 28, 96
KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_CAPSLOCK = 42, 54, 58
KEY_UP, KEY_DOWN, KEY_REPEAT = 0, 1, 2

# US layout: code -> (plain, shifted).
_ROWS: list[tuple[int, str, str]] = [
    (2, "1234567890-=", "!@#$%^&*()_+"),
    (16, "qwertyuiop[]", "QWERTYUIOP{}"),
    (30, "asdfghjkl;'`", 'ASDFGHJKL:"~'),
    (43, "\\zxcvbnm,./", "|ZXCVBNM<>?"),
]
US_KEYMAP: dict[int, tuple[str, str]] = {
    start + i: (plain, shifted)
    for start, plains, shifteds in _ROWS
    for i, (plain, shifted) in enumerate(zip(plains, shifteds, strict=True))
}
US_KEYMAP[57] = (" ", " ")
# Keypad: some wedges type digits on it. NumLock state is not tracked: scanners that use
# the keypad send digits.
_KEYPAD = {71: "7", 72: "8", 73: "9", 74: "-", 75: "4", 76: "5", 77: "6", 78: "+",
           79: "1", 80: "2", 81: "3", 82: "0", 83: ".", 55: "*", 98: "/"}  # fmt: skip
US_KEYMAP.update({code: (ch, ch) for code, ch in _KEYPAD.items()})


class KeyEventDecoder:
    """Sans-I/O: feed (code, value) of EV_KEY events, get completed lines."""

    def __init__(self, max_line: int = 1024, keymap: dict[int, tuple[str, str]] | None = None):
        self.keymap = keymap or US_KEYMAP
        self.max_line = max_line
        self._chars: list[str] = []
        self._shift: set[int] = set()
        self._caps = False
        self._overflow = False
        self.overflows = 0  # lines dropped for being longer than max_line

    def feed(self, code: int, value: int) -> list[str]:
        if code in (KEY_LEFTSHIFT, KEY_RIGHTSHIFT):
            if value == KEY_UP:
                self._shift.discard(code)
            else:
                self._shift.add(code)
            return []
        if value == KEY_UP:
            return []
        if code == KEY_CAPSLOCK:
            if value == KEY_DOWN:
                self._caps = not self._caps
            return []
        if code in (KEY_ENTER, KEY_KPENTER):
            line, overflowed = "".join(self._chars), self._overflow
            self._chars.clear()
            self._overflow = False
            return [] if overflowed else [line]
        pair = self.keymap.get(code)
        if pair is None:
            return []  # Tab, F-keys, Alt codes...: nothing a credential is made of
        shifted = bool(self._shift)
        char = pair[1] if shifted else pair[0]
        if self._caps and char.isalpha():
            char = char.swapcase()
        if len(self._chars) >= self.max_line:
            if not self._overflow:
                self.overflows += 1
            self._overflow = True
            return []
        self._chars.append(char)
        return []


DeviceOpener = Callable[[str], Any]


def _open_evdev(path: str) -> Any:
    import evdev  # lazy: Linux only

    return evdev.InputDevice(path)


class KeyboardReader(ReaderBase):
    """One line per scan, decoded as `format` (by default: card-looking lines are cards
    in `card_format`, anything else QR text)."""

    PRESENCE_CHECK_S = 1.0

    def __init__(
        self,
        id: str,
        device: str,
        *,
        grab: bool = True,
        format: PayloadFormat = PayloadFormat.AUTO,
        card_format: PayloadFormat = PayloadFormat.HEX,
        byte_order: ByteOrder = ByteOrder.FORWARD,
        open_device: DeviceOpener = _open_evdev,
        **kwargs: Any,
    ) -> None:
        super().__init__(id, **kwargs)
        self.device = device
        self.grab = grab
        self.format, self.card_format, self.byte_order = format, card_format, byte_order
        self._open_device = open_device

    async def run(self, on_credential: OnCredential) -> None:
        while True:
            try:
                dev = self._open_device(self.device)
            except OSError as exc:
                self._open_failed(exc)
                await self._wait_before_retry()
                continue
            try:
                if self.grab:
                    dev.grab()  # EBUSY when another program holds the scanner
            except OSError as exc:
                dev.close()
                self._open_failed(exc)
                await self._wait_before_retry()
                continue
            self._mark_opened()
            try:
                await self._pump(dev, on_credential)
            finally:
                try:
                    dev.close()  # closing the fd releases the grab
                except OSError:
                    log.debug("reader %s: close failed", self.id, exc_info=True)
                self._set_health(ReaderHealth.OFFLINE)
            await self._wait_before_retry()

    async def _pump(self, dev: Any, on_credential: OnCredential) -> None:
        loop = asyncio.get_running_loop()
        batches: asyncio.Queue[list[Any] | None] = asyncio.Queue()
        fd = dev.fd

        def readable() -> None:
            try:
                events = list(dev.read())
            except BlockingIOError:
                return
            except OSError as exc:  # ENODEV: unplugged
                log.info("reader %s: %s gone (%s)", self.id, self.device, exc)
                loop.remove_reader(fd)
                batches.put_nowait(None)
                return
            batches.put_nowait(events)

        decoder = KeyEventDecoder()
        loop.add_reader(fd, readable)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.PRESENCE_CHECK_S):
                        events = await batches.get()
                except TimeoutError:
                    if not os.path.exists(self.device):
                        self.stats.bump("device_errors")
                        return
                    continue
                if events is None:
                    self.stats.bump("device_errors")
                    return
                for event in events:
                    if event.type != EV_KEY:
                        continue
                    for line in decoder.feed(event.code, event.value):
                        await self._line(line, on_credential)
        finally:
            loop.remove_reader(fd)

    async def _line(self, line: str, on_credential: OnCredential) -> None:
        if not line.strip():
            return
        self.stats.bump("frames")
        read = decode_payload(
            self.format, line, order=self.byte_order, card_format=self.card_format
        )
        if isinstance(read, FrameError):
            self.stats.bump("rejected_frames")
            return
        await self._emit(on_credential, read)
