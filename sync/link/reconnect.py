"""Which broker to try next and how long to wait first, without I/O (the shell sleeps).

- The brokers are tried in the configured order; a failed attempt moves on to the next
  at once. Only after every broker failed in a round does the shell wait: `initial`
  seconds, doubling each round up to `maximum`, each wait shortened by a random share of
  up to a half (jitter: gates of a chain that lost the same broker do not come back in
  step). With the defaults (0.1 s, 1 s) a broker back from a restart is reconnected to
  within about a second.
- When every broker *refused* the connection (bad credentials, not authorised: trying
  again at once cannot help) the wait is `refused` seconds.
- A connection that worked and was lost starts a new round from the first broker (the
  primary) after `initial` — or after the wait the session asks for (a quarter of
  `twin_hold` while another daemon under our id takes the connection from us).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Attempt:
    """Wait `delay` seconds, then connect to `endpoint`."""

    endpoint: Endpoint
    delay: float


class Reconnect:
    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        initial: float,
        maximum: float,
        refused: float,
        rand: Callable[[], float],
    ):
        if not endpoints:
            raise ValueError("no broker to connect to")
        self.endpoints = list(endpoints)
        self.initial = initial
        self.maximum = max(maximum, initial)
        self.refused = refused
        self.rand = rand  # uniform in [0, 1)
        self._index = 0
        self._wait = initial
        self._refusals = 0  # in the current round

    def first(self) -> Attempt:
        return Attempt(self.endpoints[0], 0.0)

    def connected(self) -> None:
        self._wait = self.initial
        self._refusals = 0

    def lost(self, wait: float | None = None) -> Attempt:
        """A working connection dropped: the primary again, soon — or after `wait` (the
        session's, while another daemon under our id takes the connection from us)."""
        self._index = 0
        self._refusals = 0
        self._wait = self.initial
        return Attempt(self.endpoints[0], self._jitter(self.initial if wait is None else max(wait, self.initial)))

    def failed(self, *, refused: bool = False) -> Attempt:
        """The attempt at the current broker failed (`refused`: the broker said no)."""
        if refused:
            self._refusals += 1
        self._index += 1
        if self._index < len(self.endpoints):
            return Attempt(self.endpoints[self._index], 0.0)
        # a whole round failed
        self._index = 0
        if self._refusals == len(self.endpoints):
            delay = self._jitter(self.refused)
        else:
            delay = self._jitter(self._wait)
            self._wait = min(self._wait * 2, self.maximum)
        self._refusals = 0
        return Attempt(self.endpoints[0], delay)

    def _jitter(self, delay: float) -> float:
        return delay * (1.0 - 0.5 * self.rand())
