"""One Modbus line (an RS-485 bus, or one board's TCP connection): its request queue, its
timing and its load.

Rules of the line (issue: a cancelled request once left a poll and a coil write glued into
one frame with a bad CRC):
- one transaction at a time, and a transaction once started is never cut: the caller may
  give up (cancelled, timed out), the line finishes the exchange and keeps the silence
  before the next frame, so no frame is glued to another;
- the devices on the line take turns (issue 22: with coil writes always first, three gates
  tapped at once left the third one's passage input unread for 238-294 ms, and a 100 ms
  passage pulse went by unseen): the device whose last exchange is the oldest goes next,
  one exchange per turn, and within a device its coil writes go before its reads. So no
  request waits for more than one exchange of each other device, whatever they send: a
  gate's input is read again at most `read + its poll interval + (devices - 1) x the
  longest exchange` after the last reading (`LineTiming.shortest_pulse_seen_s`), and a
  tap at a gate waits at most for the exchange on the wire and one exchange of each other
  device (in practice for the exchange on the wire alone: a gate that was not expecting
  anyone is the one whose last turn is the oldest);
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
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Generic, TypeVar

from drivers.guard import guarded

log = logging.getLogger(__name__)

T = TypeVar("T")

LOAD_WINDOW_S = 10.0


class Priority(IntEnum):
    # Within one device: its coil writes (a member waiting at the gate, a relock, a hold)
    # before its reads (supervision, passage, the fire input). Across devices: turns.
    WRITE = 0
    POLL = 1


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

    def longest_exchange_s(self) -> float:
        """The longest exchange gated makes: a Write Single Coil (8 characters each way;
        a read of up to 16 inputs or of one register answers with 6 or 7)."""
        return self.write_coil_s()

    def shortest_pulse_seen_s(
        self, devices: int, poll_interval: float, reads: Sequence[float] | None = None
    ) -> float:
        """The shortest passage pulse a gate on this line is sure to read, with `devices`
        devices taking turns on the line (gates, a fire input) and the gate reading its
        inputs every `poll_interval` seconds while it expects a person; `reads`: the wire
        time of each exchange of one reading (default: one read of two neighbouring
        inputs, the passage input and the door contact).

        The board samples its input when a read's request is in. From one sample to the
        next: the rest of that read, the gate's pause, then before each of its reads at
        most one exchange of each other device (RequestQueue's turns), then the next
        request. Wire time only: the adapter's and the boards' own latency come on top,
        and so does the gate's own relay if its pulse ends while the passage output is on
        (one write).
        """
        own = [self.read_bits_s(2)] if reads is None else list(reads)
        others = max(0, devices - 1) * self.longest_exchange_s()
        return sum(own) + poll_interval + len(own) * others


@dataclass(slots=True)
class _Queued(Generic[T]):
    item: T
    seq: int  # order of arrival on the line
    turn: int  # the line's turn count when it was queued


@dataclass(slots=True)
class _Station(Generic[T]):
    """One device's requests: its coil writes, then its reads."""

    queues: tuple[deque[_Queued[T]], deque[_Queued[T]]] = field(
        default_factory=lambda: (deque(), deque())
    )
    last_turn: int = -1  # the turn of its last exchange; -1: none yet

    def head(self) -> _Queued[T] | None:
        for q in self.queues:
            if q:
                return q[0]
        return None


@dataclass(slots=True)
class RequestQueue(Generic[T]):
    """Whose turn it is on the line: the device (station) whose last exchange is the
    oldest, one exchange per turn; within a station writes before reads, first come first
    served within each. Stations never served yet go in order of arrival.

    A station's last turn is kept while it has nothing queued (a gate polling every
    quarter second is still the same gate): only `forget` (the device leaves the line)
    drops it. `max_waited[priority]` is the most exchanges of other stations one request
    waited behind since it was queued or since its own station's last exchange: never
    more than the other stations on the line (the fairness the tests hold it to).
    """

    _stations: dict[Hashable, _Station[T]] = field(default_factory=dict)
    _turns: int = 0  # exchanges handed out so far
    _seq: int = 0
    max_waited: list[int] = field(default_factory=lambda: [0, 0])

    def put(self, item: T, priority: Priority, station: Hashable = None) -> None:
        st = self._stations.get(station)
        if st is None:
            st = self._stations[station] = _Station()
        st.queues[priority].append(_Queued(item, self._seq, self._turns))
        self._seq += 1

    def take(self, live: Callable[[T], bool] | None = None) -> T | None:
        """The next request to send, or None. Requests `live` rejects (their caller gave
        up before their turn) are dropped without using a turn."""
        while True:
            best: _Station[T] | None = None
            best_rank = (0, 0)
            for st in self._stations.values():
                head = st.head()
                if head is None:
                    continue
                rank = (st.last_turn, head.seq)
                if best is None or rank < best_rank:
                    best, best_rank = st, rank
            if best is None:
                return None
            priority = Priority.WRITE if best.queues[Priority.WRITE] else Priority.POLL
            entry = best.queues[priority].popleft()
            if live is not None and not live(entry.item):
                continue
            waited = self._turns - max(entry.turn, best.last_turn + 1)
            self.max_waited[priority] = max(self.max_waited[priority], waited)
            best.last_turn = self._turns
            self._turns += 1
            return entry.item

    def forget(self, station: Hashable) -> list[T]:
        """The station leaves the line: its turn is forgotten; what it still had queued
        is handed back (for the caller to cancel)."""
        st = self._stations.pop(station, None)
        if st is None:
            return []
        return [entry.item for q in st.queues for entry in q]

    def clear(self) -> list[T]:
        """Everything queued, removed (the line is closing)."""
        items = [entry.item for st in self._stations.values() for q in st.queues for entry in q]
        self._stations.clear()
        return items

    @property
    def stations(self) -> int:
        return len(self._stations)

    def __len__(self) -> int:
        return sum(len(q) for st in self._stations.values() for q in st.queues)


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
            "max_poll_wait_ms": 0.0,
        }

    @property
    def queued(self) -> int:
        return len(self._queue)

    def load(self) -> float:
        return self.meter.load(self.clock())

    async def submit(
        self,
        call: Call,
        *,
        priority: Priority,
        wire_s: float = 0.0,
        bound: float = 5.0,
        station: Hashable = None,
    ) -> Any:
        """Send `call` when it is `station`'s turn (the device asking: each takes turns)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = _Pending(call, future, wire_s, priority, self.clock(), bound)
        self._queue.put(pending, priority, station)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name=f"modbus-line-{self.name}")
        return await future

    def forget(self, station: Hashable) -> None:
        """The device leaves the line (closed): its turn goes, its queued requests are
        cancelled."""
        for item in self._queue.forget(station):
            if not item.future.done():
                item.future.cancel()

    async def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.wait([worker])
        for item in self._queue.clear():
            if not item.future.done():
                item.future.cancel()

    async def _run(self) -> None:
        while True:
            # a caller that gave up before its turn is dropped: nothing was sent
            item = self._queue.take(live=lambda p: not p.future.done())
            if item is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._exchange(item)

    async def _exchange(self, item: _Pending) -> None:
        start = self.clock()
        wait_ms = round((start - item.queued_at) * 1000, 3)
        key = "max_write_wait_ms" if item.priority is Priority.WRITE else "max_poll_wait_ms"
        self.stats[key] = max(self.stats[key], wait_ms)
        try:
            # The worker is never cancelled by a caller: the bound is for a peer that never
            # answers (pymodbus's own timeout and retries come first). Guarded: the worker's
            # own cancellation (close) must not be lost inside pymodbus (drivers/guard.py).
            result = await guarded(item.call(), item.bound)
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
            "stations": self._queue.stations,
            # the most exchanges of other devices one request waited behind: at most
            # stations - 1 (RequestQueue's turns)
            "max_write_turns": self._queue.max_waited[Priority.WRITE],
            "max_poll_turns": self._queue.max_waited[Priority.POLL],
            **{k: (v if k.endswith("_ms") else int(v)) for k, v in self.stats.items()},
        }
