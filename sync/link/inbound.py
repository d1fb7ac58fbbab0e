"""The MQTT inbound queue, bounded per class of topic (issue 22).

aiomqtt puts every message the broker sends into one queue that the link's receiver
empties; unbounded, a flood faster than the receiver (8k messages/s on the delta topic, or
on a peer's events topic: each is a transaction) grew it until the kernel killed the gate.
Here each class of topic has a budget of messages and bytes; a message over its class's
budget is dropped and counted. What is dropped is repaired by the protocol: a missing delta
is a gap (resync), a missing peer event a gap in that peer's seq (catch-up), a missing
snapshot chunk a failed import (asked again). The central system's own answers (acks, the
delta head, its status, look-up answers, replay requests) have a class of their own, so a
flood on another topic cannot crowd them out. Order stays first in, first out.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Budget:
    messages: int
    bytes: int


MB = 1024 * 1024
# The daemon runs in about 65 MB and may use 80: every class full at once must fit in what
# is left. A queued message costs about 6 KB beyond its payload (measured: aiomqtt's
# Message with its MQTT 5 properties), which the byte budgets count. A burst the receiver
# keeps up with (a snapshot's chunks are spooled as they come) fits.
OVERHEAD = 6000
BUDGETS: dict[str, Budget] = {
    "control": Budget(256, 1 * MB),  # the central's acks, delta head, status, answers
    "delta": Budget(256, 2 * MB),
    "snapshot": Budget(64, 6 * MB),
    "peers": Budget(256, 2 * MB),  # the site's other daemons: events, statuses, catch-ups
    "other": Budget(32, MB // 4),
}


class InboundQueue(asyncio.Queue[T], Generic[T]):
    """An asyncio.Queue (as aiomqtt's `queue_type`) that drops what is over budget.

    `classify(item)` names its class, `size(item)` its payload bytes; `dropped(cls)` is
    called for each message dropped (the link counts it in the session's stats)."""

    def __init__(
        self,
        classify: Callable[[T], str],
        size: Callable[[T], int],
        dropped: Callable[[str], None],
        budgets: dict[str, Budget] | None = None,
        maxsize: int = 0,
    ) -> None:
        super().__init__(maxsize=0)  # bounded by the budgets, never by one count
        self.classify = classify
        self.size = size
        self.dropped = dropped
        self.budgets = budgets or BUDGETS
        self.held: Counter[str] = Counter()
        self.held_bytes: Counter[str] = Counter()

    def _cost(self, item: T) -> tuple[str, int]:
        cls = self.classify(item)
        if cls not in self.budgets:
            cls = "other"
        return cls, self.size(item) + OVERHEAD

    def put_nowait(self, item: T) -> None:
        cls, cost = self._cost(item)
        budget = self.budgets[cls]
        # A class holding nothing takes any one message: one larger than the class's bytes
        # (a delta of 3 MB, within `max_payload`) was dropped every time it was sent again,
        # and the session, not the queue, is where an oversized one is refused and counted
        if self.held[cls] and (self.held[cls] + 1 > budget.messages or self.held_bytes[cls] + cost > budget.bytes):
            self.dropped(cls)  # not QueueFull: aiomqtt would log a line per message
            return
        self.held[cls] += 1
        self.held_bytes[cls] += cost
        super().put_nowait(item)

    def _get(self) -> T:
        item: T = super()._get()
        cls, cost = self._cost(item)
        self.held[cls] -= 1
        self.held_bytes[cls] -= cost
        return item


__all__ = ["BUDGETS", "Budget", "InboundQueue"]
