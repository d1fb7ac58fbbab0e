"""One Modbus line (an RS-485 bus, or one board's TCP connection): its request queue, its
timing and its load.

Rules of the line (issue: a cancelled request once left a poll and a coil write glued into
one frame with a bad CRC):
- one transaction at a time, and a transaction once started is never cut: the caller may
  give up (cancelled, timed out), the line finishes the exchange and keeps the silence
  before the next frame, so no frame is glued to another;
- coil writes go before input polls: a tap waits at most for the exchange in flight;
- the line's load (wire time over elapsed time, from the frame sizes and the line
  settings: a pty has no baud rate, so time on the wire is computed) is measured over a
  sliding window, and a load above the warning threshold is logged once per crossing.

`LineTiming`, `RequestQueue` and `LoadMeter` are pure; `ModbusLine` is the async shell
that owns the pymodbus client and the worker task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

LOAD_WINDOW_S = 10.0


class Priority(IntEnum):
    WRITE = 0  # coil writes: a member is waiting at the gate
    POLL = 1  # input polls: supervision, passage, the fire input


@dataclass(frozen=True, slots=True)
class LineTiming:
    """Time on the wire of RTU frames at given line settings (8 data bits)."""

    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1

    @property
    def char_s(self) -> float:
        # start + 8 data + parity + stop(s)
        bits = 1 + 8 + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def silence_s(self) -> float:
        """The 3.5-character silence that ends an RTU frame (fixed 1.75 ms above 19,200
        baud, as the Modbus serial line specification says)."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_s

    def frame_s(self, nbytes: int) -> float:
        return nbytes * self.char_s + self.silence_s

    def exchange_s(self, request_bytes: int, response_bytes: int) -> float:
        """A request and its answer, each with its silence."""
        return self.frame_s(request_bytes) + self.frame_s(response_bytes)

    def write_coil_s(self) -> float:
        return self.exchange_s(8, 8)

    def read_bits_s(self, count: int) -> float:
        return self.exchange_s(8, 5 + (count + 7) // 8)

    def read_registers_s(self, count: int) -> float:
        return self.exchange_s(8, 5 + 2 * count)


@dataclass(slots=True)
class RequestQueue(Generic[T]):
    """Writes before polls, first come first served within each."""

    _queues: tuple[deque[T], deque[T]] = field(default_factory=lambda: (deque(), deque()))

    def put(self, item: T, priority: Priority) -> None:
        self._queues[priority].append(item)

    def take(self) -> T | None:
        for q in self._queues:
            if q:
                return q.popleft()
        return None

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues)


@dataclass(slots=True)
class LoadMeter:
    """Share of the last `window` seconds the line was busy (wire time)."""

    window: float = LOAD_WINDOW_S
    threshold: float = 0.7
    _busy: deque[tuple[float, float]] = field(default_factory=deque)  # (end, seconds)
    _since: float | None = None
    warned: bool = False

    def record(self, end: float, busy_s: float) -> None:
        if self._since is None:
            self._since = end - busy_s
        self._busy.append((end, busy_s))
        self._prune(end)

    def _prune(self, now: float) -> None:
        while self._busy and self._busy[0][0] < now - self.window:
            self._busy.popleft()

    def load(self, now: float) -> float:
        # Reads only (a metrics scrape may call it from another thread); record() prunes.
        if self._since is None:
            return 0.0
        span = min(self.window, max(now - self._since, 1e-9))
        busy = sum(s for end, s in list(self._busy) if end >= now - self.window)
        return min(1.0, busy / span)

    def crossing(self, now: float) -> bool | None:
        """True when the load just went above the threshold, False when it just came
        back under (with 10 % hysteresis), None otherwise."""
        load = self.load(now)
        if not self.warned and load > self.threshold and now - (self._since or now) >= 1.0:
            self.warned = True
            return True
        if self.warned and load < self.threshold * 0.9:
            self.warned = False
            return False
        return None


Call = Callable[[], Awaitable[Any]]


@dataclass(slots=True)
class _Pending:
    call: Call
    future: asyncio.Future[Any]
    wire_s: float
    priority: Priority
    queued_at: float
    bound: float


class ModbusLine:
    """The async shell: one worker sends the queued requests one at a time.

    `submit` returns the answer, or raises what the request raised. Cancelling the caller
    before its request went out removes it from the line; after, the line completes the
    exchange anyway (the answer is dropped).
    """

    def __init__(
        self,
        name: str,
        timing: LineTiming | None,
        *,
        load_warning: float = 0.7,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.timing = timing  # None on TCP: no shared wire to account for
        self.clock = clock
        self.meter = LoadMeter(threshold=load_warning)
        self._queue: RequestQueue[_Pending] = RequestQueue()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.stats: dict[str, float] = {
            "transactions": 0,
            "writes": 0,
            "polls": 0,
            "failed": 0,
            "abandoned": 0,  # callers that gave up while their exchange was on the wire
            "max_write_wait_ms": 0.0,
        }

    @property
    def queued(self) -> int:
        return len(self._queue)

    def load(self) -> float:
        return self.meter.load(self.clock())

    async def submit(
        self, call: Call, *, priority: Priority, wire_s: float = 0.0, bound: float = 5.0
    ) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Pending(call, future, wire_s, priority, self.clock(), bound), priority)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name=f"modbus-line-{self.name}")
        return await future

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.wait([worker])
        while (item := self._queue.take()) is not None:
            if not item.future.done():
                item.future.cancel()

    async def _run(self) -> None:
        while True:
            item = self._queue.take()
            if item is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if item.future.done():  # the caller gave up before its turn: nothing was sent
                continue
            await self._exchange(item)

    async def _exchange(self, item: _Pending) -> None:
        start = self.clock()
        if item.priority is Priority.WRITE:
            wait_ms = (start - item.queued_at) * 1000
            self.stats["max_write_wait_ms"] = max(self.stats["max_write_wait_ms"], round(wait_ms, 3))
        try:
            # The worker is never cancelled by a caller: wait_for bounds a peer that never
            # answers (pymodbus's own timeout and retries come first).
            result = await asyncio.wait_for(item.call(), item.bound)
        except asyncio.CancelledError:
            if not item.future.done():
                item.future.cancel()
            raise
        except Exception as exc:  # handed to the caller, who decides what it means
            self.stats["failed"] += 1
            if not item.future.done():
                item.future.set_exception(exc)
            else:
                self.stats["abandoned"] += 1
        else:
            if not item.future.done():
                item.future.set_result(result)
            else:
                self.stats["abandoned"] += 1
        end = self.clock()
        self.stats["transactions"] += 1
        self.stats["writes" if item.priority is Priority.WRITE else "polls"] += 1
        if self.timing is None:
            return  # TCP: no shared wire, no load to speak of
        self.meter.record(end, item.wire_s)
        crossing = self.meter.crossing(end)
        if crossing is True:
            log.warning(
                "modbus line %s: %.0f %% busy (above %.0f %%): polls will lag and taps wait "
                "longer; poll less often or split the gates over two lines",
                self.name,
                100 * self.meter.load(end),
                100 * self.meter.threshold,
            )
        elif crossing is False:
            log.info("modbus line %s: load back to %.0f %%", self.name, 100 * self.meter.load(end))
        # On a pty (or a fast adapter) the answer can come before its frame would have
        # ended on a real line; keep the silence every device on the bus needs.
        await asyncio.sleep(self.timing.silence_s)

    def snapshot(self) -> dict[str, Any]:
        return {
            "transport": "rtu" if self.timing is not None else "tcp",
            "load": round(self.load(), 3) if self.timing is not None else None,
            "load_warning": self.meter.threshold,
            "queued": self.queued,
            **{k: (int(v) if k != "max_write_wait_ms" else v) for k, v in self.stats.items()},
        }
