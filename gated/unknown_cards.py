"""Unknown cards in a flood: the first few recorded one by one, the rest in aggregate.

Each denial is an fsynced `access` event; a reader sending made-up cards at full baud made
960 of them a second (a core, +16.6 MB of ledger in 30 s, issue 22). The desk enrols cards
from the unknown-card denials, so the first `individual` of them per gate in any `window`
seconds are still recorded one by one; past that, a gate's unknown cards are counted and
recorded as one `unknown_cards` event per burst (when `quiet` seconds pass without one, or
every `window` seconds while it lasts) with the count, the span and a few of the cards.

Only the daemon's tap path does this: the scenario runner and the engine record every tap
(SCENARIOS.md: "Every tap emits one access event"). Pure: instants are passed in.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rules.timeutil import iso_utc

SAMPLE = 5  # cards named in a summary


@dataclass(slots=True)
class _Burst:
    opened: float  # monotonic
    first_at: datetime
    last_at: datetime
    last: float  # monotonic
    count: int = 0
    readers: set[str] = field(default_factory=set)
    cards: list[str] = field(default_factory=list)


class UnknownCards:
    def __init__(self, individual: int = 10, window: float = 60.0, quiet: float = 5.0):
        self.individual = individual
        self.window = window
        self.quiet = quiet
        self._recorded: dict[str, deque[float]] = {}
        self._bursts: dict[str, _Burst] = {}

    def flooding(self, gate: str, now: float) -> bool:
        """The gate's quota of individually recorded unknown cards is used up."""
        times = self._recorded.get(gate)
        if times is None:
            return False
        while times and now - times[0] >= self.window:
            times.popleft()
        return len(times) >= self.individual

    def admit(self, gate: str, now: float) -> bool:
        """An unknown card at `gate`: True to record it individually (counted against the
        quota), False when it goes into the gate's burst (call `count`)."""
        if self.flooding(gate, now):
            return False
        self._recorded.setdefault(gate, deque()).append(now)
        return True

    def count(self, gate: str, now: float, at: datetime, reader: str | None, card: str) -> None:
        b = self._bursts.get(gate)
        if b is None:
            b = self._bursts[gate] = _Burst(opened=now, first_at=at, last_at=at, last=now)
        b.count += 1
        b.last, b.last_at = now, at
        if reader:
            b.readers.add(reader)
        if len(b.cards) < SAMPLE and card not in b.cards:
            b.cards.append(card)

    def due(self, now: float, *, all_: bool = False) -> list[dict[str, Any]]:
        """The `unknown_cards` events owed now (their fields): bursts that went quiet or
        lasted a window; every burst with `all_` (stopping)."""
        out = []
        for gate, b in list(self._bursts.items()):
            if all_ or now - b.last >= self.quiet or now - b.opened >= self.window:
                del self._bursts[gate]
                out.append({
                    "gate": gate, "count": b.count, "first_at": iso_utc(b.first_at), "last_at": iso_utc(b.last_at),
                    "readers": sorted(b.readers), "cards": list(b.cards),
                })
        return out


__all__ = ["UnknownCards"]
