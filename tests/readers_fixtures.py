"""Shared helpers for the reader tests (imported explicitly; conftest.py is not ours)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from drivers.readers.base import Reader, ReaderHealth
from rules.credential import Credential
from simulator.serial_reader import VirtualSerialReader

# Generous: these bound how long a broken test hangs, they are not performance claims.
WAIT_S = 15.0


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class Collector:
    """An on_credential callback that remembers what it got and wakes waiters."""

    def __init__(self) -> None:
        self.items: list[Credential] = []
        self._event = asyncio.Event()

    async def __call__(self, credential: Credential) -> None:
        self.items.append(credential)
        self._event.set()

    async def next(self, timeout: float = WAIT_S) -> Credential:
        seen = len(self.items)
        await wait_until(lambda: len(self.items) > seen, timeout)
        return self.items[seen]

    async def wait_count(self, n: int, timeout: float = WAIT_S) -> list[Credential]:
        await wait_until(lambda: len(self.items) >= n, timeout)
        return self.items[:n]


class HealthLog:
    def __init__(self) -> None:
        self.changes: list[ReaderHealth] = []

    def __call__(self, reader_id: str, health: ReaderHealth) -> None:
        self.changes.append(health)


@contextlib.asynccontextmanager
async def running(reader: Reader, collector: Collector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(reader.run(collector))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def virtual_reader(tmp_path: Path) -> Iterator[VirtualSerialReader]:
    reader = VirtualSerialReader(tmp_path / "by-id" / "usb-Sim_Reader-if00-port0")
    yield reader
    reader.close()


__all__ = [
    "WAIT_S",
    "Collector",
    "HealthLog",
    "free_udp_port",
    "running",
    "virtual_reader",
    "wait_until",
]


def key_events(text: str, enter: bool = True) -> list[tuple[int, int]]:
    """(code, value) pairs a US-layout wedge sends when it "types" text."""
    from drivers.readers.keyboard import KEY_ENTER, KEY_LEFTSHIFT, US_KEYMAP

    reverse: dict[str, tuple[int, bool]] = {}
    for code, (plain, shifted) in sorted(US_KEYMAP.items(), reverse=True):
        if code < 55 or code == 57:  # main block only, not the keypad
            reverse[plain] = (code, False)
            reverse.setdefault(shifted, (code, True))
    events: list[tuple[int, int]] = []
    for char in text:
        code, shift = reverse[char]
        if shift:
            events.append((KEY_LEFTSHIFT, 1))
        events += [(code, 1), (code, 0)]
        if shift:
            events.append((KEY_LEFTSHIFT, 0))
    if enter:
        events += [(KEY_ENTER, 1), (KEY_ENTER, 0)]
    return events
