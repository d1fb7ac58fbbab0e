"""The live feed: committed events in (synchronously, from the tap path), SSE streams out.

The tap path only queues; a task of the console's own turns each event into a feed line
(names, pass, balance) and fans it out, so a slow browser never slows a tap.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("gated.console")

QUEUE_MAX = 1000

Item = dict[str, Any]


class FeedHub:
    """`shape(event)` turns a committed event into what subscribers get (None: skip).
    Each subscriber has its own filter, so a gate display sees only its own gate."""

    def __init__(self, shape: Callable[[dict[str, Any]], Item | None]):
        self.shape = shape
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self.subscribers: dict[asyncio.Queue[Item | None], Callable[[Item], bool]] = {}
        self.closed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def listener(self, event: dict[str, Any]) -> None:
        try:
            self.inbox.put_nowait(event)
        except asyncio.QueueFull:
            # the hub is that far behind: this event reaches no stream. Every stream ends
            # now, so each browser reconnects and catches up from the store (never a hole
            # shown as a continuous feed)
            for q in list(self.subscribers):
                self._end(q)

    def _end(self, q: asyncio.Queue[Item | None]) -> None:
        self.subscribers.pop(q, None)
        with contextlib.suppress(asyncio.QueueEmpty):
            q.get_nowait()
        with contextlib.suppress(asyncio.QueueFull):
            q.put_nowait(None)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="console-feed")

    async def _run(self) -> None:
        while True:
            ev = await self.inbox.get()
            try:
                item = self.shape(ev)
            except Exception:
                log.exception("feed_item_failed", seq=ev.get("seq"))
                continue
            if item is None:
                continue
            for q, wants in list(self.subscribers.items()):
                if not wants(item):
                    continue
                try:
                    q.put_nowait(item)
                except asyncio.QueueFull:
                    # a stuck browser: end its stream; EventSource reconnects with
                    # Last-Event-ID and catches up from the store (api.replay)
                    self._end(q)

    def subscribe(self, wants: Callable[[Item], bool] = lambda item: True) -> asyncio.Queue[Item | None]:
        q: asyncio.Queue[Item | None] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.subscribers[q] = wants
        return q

    def unsubscribe(self, q: asyncio.Queue[Item | None]) -> None:
        self.subscribers.pop(q, None)

    async def close(self) -> None:
        self.closed.set()
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])


__all__ = ["FeedHub", "Item"]
