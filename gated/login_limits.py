"""Limits on password guesses, shared by the console's login and the control socket.

Attempts count from the moment they start, so guesses sent in parallel cannot run more
password checks than the limit; the caller chooses the keys (docs/console.md, "Security":
login limits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Counter:
    failures: list[float] = field(default_factory=list)
    in_flight: int = 0
    locked_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """A login check that has started: ended with `LoginLimiter.end`, whatever happens."""

    keys: tuple[str, ...]


class LoginLimiter:
    """At most `max_failures` guesses per key within `window` seconds, then `lockout` s.

    An attempt counts from the moment it *starts*: `begin()` reserves a place on every key
    and refuses when the failures so far plus the checks still running reach the limit.
    Sixty guesses sent at once therefore run at most `max_failures` password checks, not
    sixty. `end()` turns the reservation into a failure (or clears the keys on success).

    The caller chooses the keys; the console and the control socket each use a key per
    user *and* per client, so one client's guessing does not lock out another's login
    (docs/console.md, "Security": login limits).
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        lockout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self._keys: dict[str, _Counter] = {}

    def retry_after(self, keys: list[str] | tuple[str, ...]) -> float:
        """Seconds until these keys may try again; 0 when none is locked."""
        now = self.clock()
        wait = 0.0
        for k in keys:
            c = self._keys.get(k)
            if c is not None and c.locked_until > now:
                wait = max(wait, c.locked_until - now)
        return wait

    def begin(self, keys: list[str] | tuple[str, ...]) -> Attempt | float:
        """An attempt on these keys, or the seconds to wait before one is allowed."""
        now = self.clock()
        if len(self._keys) > 10_000:
            self._prune(now)
        wait = self.retry_after(keys)
        if wait > 0:
            return wait
        for k in keys:
            c = self._keys.get(k)
            if c is None:
                continue
            c.failures = [t for t in c.failures if now - t < self.window]
            if len(c.failures) + c.in_flight >= self.max_failures:
                # the limit is reached by checks still running: their outcome decides
                return 1.0
        for k in keys:
            self._keys.setdefault(k, _Counter()).in_flight += 1
        return Attempt(tuple(keys))

    def end(self, attempt: Attempt, *, ok: bool) -> None:
        now = self.clock()
        for k in attempt.keys:
            c = self._keys.setdefault(k, _Counter())
            c.in_flight = max(0, c.in_flight - 1)
            if ok:
                c.failures.clear()
                continue
            c.failures = [t for t in c.failures if now - t < self.window]
            c.failures.append(now)
            if len(c.failures) >= self.max_failures:
                c.locked_until = now + self.lockout
                c.failures.clear()

    def failure(self, keys: list[str]) -> None:
        """A failed attempt that was not begun (tests, callers without a check)."""
        attempt = self.begin(keys)
        if isinstance(attempt, Attempt):
            self.end(attempt, ok=False)

    def _prune(self, now: float) -> None:
        for k in [
            k for k, c in self._keys.items()
            if c.in_flight == 0 and c.locked_until <= now and all(now - t >= self.window for t in c.failures)
        ]:
            del self._keys[k]


__all__ = ["Attempt", "LoginLimiter"]
