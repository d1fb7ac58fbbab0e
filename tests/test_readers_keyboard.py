"""Keyboard-wedge scanners: the sans-I/O key decoder, the evdev shell against a fake
input device, and end to end through a uinput virtual keyboard where the kernel has one."""

from __future__ import annotations

import errno
import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.readers.base import ReaderHealth
from drivers.readers.keyboard import (
    EV_KEY,
    KEY_CAPSLOCK,
    KEY_ENTER,
    KEY_KPENTER,
    KEY_RIGHTSHIFT,
    KeyboardReader,
    KeyEventDecoder,
)
from rules.credential import CredentialKind
from tests.readers_fixtures import Collector, HealthLog, key_events, running, wait_until


def decode(events: list[tuple[int, int]], decoder: KeyEventDecoder | None = None) -> list[str]:
    decoder = decoder or KeyEventDecoder()
    return [line for code, value in events for line in decoder.feed(code, value)]


def test_decoder_types_every_printable_ascii_character() -> None:
    text = "".join(chr(c) for c in range(32, 127))
    assert decode(key_events(text)) == [text]


def test_decoder_right_shift_caps_lock_and_keypad() -> None:
    decoder = KeyEventDecoder()
    events = [(KEY_RIGHTSHIFT, 1), (30, 1), (30, 0), (KEY_RIGHTSHIFT, 0), (30, 1), (30, 0)]
    events += [(KEY_CAPSLOCK, 1), (KEY_CAPSLOCK, 0), (31, 1), (31, 0), (2, 1), (2, 0)]
    events += [(KEY_CAPSLOCK, 1), (KEY_CAPSLOCK, 0), (79, 1), (79, 0), (KEY_KPENTER, 1)]
    assert decode(events, decoder) == ["AaS11"]


def test_decoder_ignores_releases_and_unknown_keys_and_splits_lines() -> None:
    events = key_events("04A1", enter=True) + [(15, 1), (15, 0)] + key_events("qr:x")
    assert decode(events) == ["04A1", "qr:x"]


def test_decoder_drops_overlong_line_and_recovers() -> None:
    decoder = KeyEventDecoder(max_line=8)
    assert decode(key_events("0123456789ABCDEF"), decoder) == []
    assert decoder.overflows == 1
    assert decode(key_events("CAFE"), decoder) == ["CAFE"]


# --- the shell, against a fake evdev device ---------------------------------------------


@dataclass
class FakeEvent:
    type: int
    code: int
    value: int


class FakeInputDevice:
    """Quacks like evdev.InputDevice: a real fd (a pipe) that the loop can watch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.fd = self._r
        self.grabbed = False
        self.closed = False
        self._pending: deque[list[FakeEvent] | OSError] = deque()

    def grab(self) -> None:
        self.grabbed = True

    def close(self) -> None:
        self.closed = True
        os.close(self._r)
        os.close(self._w)

    def type_line(self, text: str) -> None:
        self._pending.append([FakeEvent(EV_KEY, c, v) for c, v in key_events(text)])
        os.write(self._w, b"x")

    def unplug(self) -> None:
        self._pending.append(OSError(errno.ENODEV, "No such device"))
        os.write(self._w, b"x")

    def read(self) -> list[FakeEvent]:
        os.read(self._r, 1)
        item = self._pending.popleft()
        if isinstance(item, OSError):
            raise item
        return item


async def test_wedge_lines_become_cards_or_qr_and_unplug_reconnects(tmp_path: Path) -> None:
    path = tmp_path / "usb-Scanner-event-kbd"
    path.touch()
    opened: list[FakeInputDevice] = []

    def open_device(p: str) -> FakeInputDevice:
        if not Path(p).exists():
            raise FileNotFoundError(p)
        opened.append(FakeInputDevice(p))
        return opened[-1]

    health = HealthLog()
    reader = KeyboardReader(
        "kb1", str(path), open_device=open_device, on_health=health, reconnect_max=0.1
    )
    got = Collector()
    async with running(reader, got):
        await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
        assert opened[0].grabbed
        opened[0].type_line("0012345678")
        opened[0].type_line("v1.eyJ9.SIG-_x")
        card, qr = await got.wait_count(2)
        opened[0].unplug()
        await wait_until(lambda: reader.health is ReaderHealth.OFFLINE)
        await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
        opened[-1].type_line("04a1b2c3")
        again = await got.next()
    assert (card.kind, card.value) == (CredentialKind.CARD, "0012345678")
    assert (qr.kind, qr.value) == (CredentialKind.QR, "v1.eyJ9.SIG-_x")
    assert (again.kind, again.value) == (CredentialKind.CARD, "04A1B2C3")
    assert opened[0].closed
    assert health.changes[:3] == [ReaderHealth.ONLINE, ReaderHealth.OFFLINE, ReaderHealth.ONLINE]
    assert reader.stats["reconnects"] == 1


# --- end to end through uinput ----------------------------------------------------------


def _uinput_unavailable() -> str | None:
    if not os.path.exists("/dev/uinput"):
        return "no /dev/uinput: the kernel of this machine has no uinput module loaded"
    try:
        import evdev

        evdev.UInput().close()
    except Exception as exc:
        return f"evdev.UInput does not work here: {exc}"
    return None


@pytest.mark.skipif(_uinput_unavailable() is not None, reason=str(_uinput_unavailable()))
async def test_uinput_virtual_keyboard_end_to_end() -> None:
    import evdev
    from evdev import ecodes

    keys = [c for c in range(1, 100)]
    with evdev.UInput({ecodes.EV_KEY: keys}, name="gated-test-wedge") as ui:
        await wait_until(lambda: ui.device is not None and os.path.exists(ui.device.path))
        reader = KeyboardReader("kb1", ui.device.path)
        got = Collector()
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            for code, value in key_events("04A1B2C3"):
                ui.write(ecodes.EV_KEY, code, value)
                ui.syn()
            credential = await got.next()
    assert credential.value == "04A1B2C3"
    assert KEY_ENTER in keys
