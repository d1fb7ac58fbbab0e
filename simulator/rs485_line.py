"""An RS-485 line at a real baud rate, between two socat pty pairs.

A pty has no baud rate: bytes written on one end are readable on the other at once. To
rehearse (and benchmark) Modbus RTU as it behaves on a 9,600-baud bus, this relays the
bytes between the master's pty pair and the slaves' pty pair the way a half-duplex line
carries them: one frame at a time, each delivered complete when its last character would
have arrived (characters × bits per character / baud), and the line busy until the
3.5-character silence after it has passed.

It also checks the master against the one rule of a shared RTU line: a frame must not
start while the line is still busy (another frame on the wire, or its closing silence not
yet over). Real devices would receive such a frame glued to the previous one and reject
both (bad CRC). Those are counted in `violations`, with the gap that was missing. A slave
answering early (a Modbus server on a pty sees the end of a request by its length, a
real one only by the silence after it) is simply held until the line is silent.

    async with EmulatedLine(LineTiming(9600)) as line:
        # the master (gated) opens line.master_device, the slaves' server line.slave_device
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
import tty
from dataclasses import dataclass, field
from typing import Any

from drivers.outputs.bus import LineTiming

from .socat_pair import socat_pty_pair

# Bytes of one write may reach us in several reads; a read this soon after the previous
# one from the same side continues the same frame.
_SAME_FRAME_S = 0.0005


@dataclass
class LineStats:
    frames: int = 0
    bytes: int = 0
    busy_s: float = 0.0  # wire time of every frame and its silence
    violations: int = 0  # frames that started while the line was busy
    worst_overlap_ms: float = 0.0
    started_at: float | None = None
    notes: list[str] = field(default_factory=list)

    def load(self, now: float) -> float:
        if self.started_at is None or now <= self.started_at:
            return 0.0
        return self.busy_s / (now - self.started_at)


class EmulatedLine:
    def __init__(
        self,
        timing: LineTiming | None = None,
        *,
        tolerance_chars: float = 0.5,
        units: set[int] | None = None,
        record: bool = False,
    ) -> None:
        self.timing = timing or LineTiming()
        # With `record`: (time the request is in at the slaves, unit, function code) of
        # every master frame — when a board samples its inputs, for the benchmarks.
        self.requests: list[tuple[float, int, int]] | None = [] if record else None
        # Unit ids on the slave side: a request to any other is carried (the line is busy)
        # but reaches nobody. None: every request is passed on.
        self.units = units
        self._deaf = False  # the frame now on the wire is for nobody here
        self.tolerance_s = tolerance_chars * self.timing.char_s
        self.stats = LineStats()
        self.master_device = ""  # what the master (gated's Modbus client) opens
        self.slave_device = ""  # what the slaves (a Modbus server) open
        self._stack = contextlib.AsyncExitStack()
        self._fds: dict[str, int] = {}
        self._free_at = 0.0  # when the line is silent again
        self._last_read: dict[str, float] = {"master": -1.0, "slave": -1.0}
        self._tx_side: str | None = None  # side of the frame now on the wire
        # A device at another baud rate or parity hears noise: every byte it sends is
        # mangled (rehearses the installer's "garbled answer" diagnosis).
        self.mismatched_slave = False

    async def __aenter__(self) -> EmulatedLine:
        try:
            master = await self._stack.enter_async_context(socat_pty_pair())
            slave = await self._stack.enter_async_context(socat_pty_pair())
            self.master_device, self.slave_device = master.client_end, slave.server_end
            loop = asyncio.get_running_loop()
            for side, path in (("master", master.server_end), ("slave", slave.client_end)):
                fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                tty.setraw(fd, termios.TCSANOW)
                self._fds[side] = fd
                loop.add_reader(fd, self._readable, side)
            self._stack.callback(self._close_fds)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _close_fds(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self._fds.values():
            loop.remove_reader(fd)
            os.close(fd)
        self._fds.clear()

    def _readable(self, side: str) -> None:
        fd = self._fds[side]
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:  # the other end closed: stop relaying this side
            self.stats.notes.append(f"{side}: {exc}")
            asyncio.get_running_loop().remove_reader(fd)
            return
        if data:
            self._carry(side, data, asyncio.get_running_loop().time())

    def _carry(self, side: str, data: bytes, now: float) -> None:
        t = self.timing
        continuing = self._tx_side == side and now - self._last_read[side] <= _SAME_FRAME_S
        self._last_read[side] = now
        if continuing:
            # More bytes of the frame on the wire: they follow its last character.
            start = self._free_at - t.silence_s
            if side == "master" and self.requests:
                when, unit, function = self.requests[-1]
                self.requests[-1] = (start + len(data) * t.char_s, unit, function)
        else:
            if self.stats.started_at is None:
                self.stats.started_at = now
            self.stats.frames += 1
            overlap = self._free_at - now
            if side == "master" and overlap > self.tolerance_s:
                self.stats.violations += 1
                self.stats.worst_overlap_ms = max(self.stats.worst_overlap_ms, overlap * 1000)
            start = max(now, self._free_at)
            self.stats.busy_s += t.silence_s
            self._deaf = side == "master" and self.units is not None and data[0] not in self.units
            if side == "master" and self.requests is not None:
                self.requests.append((start + len(data) * t.char_s, data[0], data[1] if len(data) > 1 else -1))
        self._tx_side = side
        end = start + len(data) * t.char_s
        self._free_at = end + t.silence_s
        self.stats.bytes += len(data)
        self.stats.busy_s += len(data) * t.char_s
        if side == "slave" and self.mismatched_slave:
            data = bytes(b ^ 0x5A for b in data)
        if self._deaf:
            return
        other = self._fds["slave" if side == "master" else "master"]
        asyncio.get_running_loop().call_at(end, self._deliver, other, data)

    @staticmethod
    def _deliver(fd: int, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, data)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = asyncio.get_running_loop().time() if now is None else now
        s = self.stats
        return {
            "frames": s.frames,
            "bytes": s.bytes,
            "load": round(s.load(now), 3),
            "violations": s.violations,
            "worst_overlap_ms": round(s.worst_overlap_ms, 3),
        }
