"""What every reader shares: health, counters, debounce, backoff and the Reader protocol.

Debounce and backoff are pure (clocks are passed in) and tested without devices;
ReaderBase is the async plumbing the concrete readers share (health changes, the
debounced hand-over of a read to the daemon, the wait before a retry).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Protocol, runtime_checkable

from rules.credential import Credential, CredentialKind

from .reads import CredentialRead

log = logging.getLogger(__name__)

OnCredential = Callable[[Credential], Awaitable[None]]
OnHealth = Callable[[str, "ReaderHealth"], None]


class ReaderHealth(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    ERROR = "error"


@runtime_checkable
class Reader(Protocol):
    """A credential source at a gate. The daemon runs `run` as a task for the reader's
    whole life; `run` never returns or raises for device trouble, it reconnects."""

    id: str

    @property
    def health(self) -> ReaderHealth: ...

    @property
    def stats(self) -> ReaderStats: ...

    async def run(self, on_credential: OnCredential) -> None: ...

    async def feedback(self, granted: bool, message: str) -> None: ...


class ReaderStats(dict[str, int]):
    """Counters exported as metrics. A plain dict so it serialises as is."""

    KEYS = (
        "frames",  # frames/lines/events received from the device, good or bad
        "rejected_frames",  # frames that did not decode (garbage, checksum, parity...)
        "credentials",  # credentials handed to the daemon
        "debounced",  # repeats dropped by the debouncer
        "rate_limited",  # reads dropped over the reader's max_reads_per_second
        "reconnects",  # successful (re)opens after the first one
        "device_errors",  # failed opens and I/O errors
        "callback_errors",  # the daemon's on_credential raised
    )

    def __init__(self) -> None:
        super().__init__(dict.fromkeys(self.KEYS, 0))

    def bump(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


class Debouncer:
    """Drops a credential seen again on the same reader within `debounce` seconds.

    The window slides: it counts from the *last sighting*, not the last accepted read,
    so a card left lying on a reader that re-reports it every second never re-triggers
    the turnstile. Memory is bounded by pruning entries older than the window.
    """

    def __init__(self, debounce: float = 2.0) -> None:
        if debounce < 0:
            raise ValueError("debounce must be >= 0")
        self.debounce = debounce
        self._last_seen: dict[tuple[str, CredentialKind, str], float] = {}

    def accept(self, reader_id: str, kind: CredentialKind, value: str, now: float) -> bool:
        key = (reader_id, kind, value)
        if len(self._last_seen) > 64:
            self._prune(now)
        last = self._last_seen.get(key)
        self._last_seen[key] = now
        return last is None or now - last >= self.debounce or now < last

    def _prune(self, now: float) -> None:
        self._last_seen = {k: t for k, t in self._last_seen.items() if 0 <= now - t < self.debounce}


class RateLimit:
    """A token bucket: `rate` reads a second on average, `burst` at once.

    A reader that sends far more than people can tap (a flood of made-up cards at full
    baud, a faulty reader repeating itself) must not turn each read into a decision, a
    log line and an fsynced denial (issue 22): reads over the rate are dropped and counted.
    A person taps about once a second; the default allows ten times that."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else 2 * rate)
        self._tokens = self.burst
        self._at: float | None = None

    def allow(self, now: float) -> bool:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now if self._at is None or now > self._at else self._at
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Backoff:
    """Exponential reconnect delays: initial, x2, ... capped. No jitter: one daemon per
    box, nothing to de-synchronise, and deterministic delays keep tests simple."""

    def __init__(self, initial: float = 0.1, cap: float = 5.0, factor: float = 2.0) -> None:
        self.initial, self.cap, self.factor = initial, cap, factor
        self._next = initial

    def next(self) -> float:
        delay = min(self._next, self.cap)
        self._next = min(self._next * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.initial


class ReaderBase:
    """Shared plumbing for the concrete readers (not part of the public protocol)."""

    def __init__(
        self,
        id: str,
        *,
        debounce: float = 2.0,
        reconnect_max: float = 5.0,
        max_reads_per_second: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] | None = None,
        on_health: OnHealth | None = None,
    ) -> None:
        self.id = id
        self._stats = ReaderStats()
        self._health = ReaderHealth.OFFLINE
        self._debouncer = Debouncer(debounce)
        self._rate = RateLimit(max_reads_per_second) if max_reads_per_second else None
        self._backoff = Backoff(cap=reconnect_max)
        self._clock = clock
        self._now = now or partial(datetime.now, UTC)  # the daemon passes its own clock
        self.on_health = on_health
        self._opened_once = False

    @property
    def health(self) -> ReaderHealth:
        return self._health

    @property
    def stats(self) -> ReaderStats:
        return self._stats

    def _set_health(self, health: ReaderHealth) -> None:
        if health is self._health:
            return
        self._health = health
        log.info("reader %s is %s", self.id, health)
        if self.on_health is not None:
            try:
                self.on_health(self.id, health)
            except Exception:  # a metrics hook must not take the reader down
                log.exception("on_health hook failed for reader %s", self.id)

    def _mark_opened(self) -> None:
        if self._opened_once:
            self._stats.bump("reconnects")
        self._opened_once = True
        self._backoff.reset()
        self._set_health(ReaderHealth.ONLINE)

    def _open_failed(self, exc: BaseException) -> None:
        """A device that is there but refuses us (permissions, another process holds it)
        is an installer's problem: ERROR. A device that is not there: OFFLINE."""
        self._stats.bump("device_errors")
        text = str(exc).lower()
        refused = getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM, errno.EBUSY)
        if refused or "permission denied" in text or "exclusively lock" in text:
            if self._health is not ReaderHealth.ERROR:
                log.warning("reader %s: device refused: %s", self.id, exc)
            self._set_health(ReaderHealth.ERROR)
        else:
            log.debug("reader %s: cannot open device: %s", self.id, exc)
            self._set_health(ReaderHealth.OFFLINE)

    async def _wait_before_retry(self) -> None:
        await asyncio.sleep(self._backoff.next())

    async def _emit(self, on_credential: OnCredential, read: CredentialRead) -> None:
        if self._rate is not None and not self._rate.allow(self._clock()):
            self._stats.bump("rate_limited")
            return
        if not self._debouncer.accept(self.id, read.kind, read.debounce_key, self._clock()):
            self._stats.bump("debounced")
            return
        credential = read.to_credential(self.id, self._now())
        self._stats.bump("credentials")
        try:
            await on_credential(credential)
        except asyncio.CancelledError:
            raise
        except Exception:  # the daemon's bug must not kill the reader loop
            self._stats.bump("callback_errors")
            log.exception("on_credential failed for reader %s", self.id)

    async def feedback(self, granted: bool, message: str) -> None:
        """Most readers have no LED/buzzer we can drive: nothing to do."""
        return None
