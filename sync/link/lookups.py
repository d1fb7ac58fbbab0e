"""Live look-ups: a card the replica does not know is asked about at the central system
(MQTT v5 request/response), the tap waiting at most `lookup_timeout` (DESIGN.md: the only
network wait allowed before a decision). Part of the link's shell (SyncLink holds one):
the taps waiting for an answer, by correlation data. The session builds the request and
matches the answer; an answer is applied to the store whenever it comes, in time or not.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime

import aiomqtt

from sync.link.actions import ApplyLookup
from sync.link.port import StorePort


class Lookups:
    def __init__(self, port: StorePort, now: Callable[[], datetime], stats: Counter[str], changed: Callable[[str], None]):
        self.port = port
        self.now = now
        self.stats = stats
        self.changed = changed
        self._waiters: dict[bytes, asyncio.Future[bool]] = {}

    def answered(self, action: ApplyLookup) -> None:
        """The central system's answer (the session matched it to a request of ours)."""
        resp = action.response
        if resp.found:
            # applied even when it came too late for the tap that asked: the next one works
            self.port.apply_lookup(resp, self.now())
            self.changed("lookup")
        waiter = self._waiters.get(action.correlation)
        if waiter is not None and not waiter.done():
            waiter.set_result(resp.found)
        else:
            self.stats["lookup_late"] += 1

    async def ask(self, correlation: bytes, send: Callable[[], Awaitable[None]], timeout: float) -> bool:
        """`send` the request and wait for its answer: True when it came within `timeout`
        and the card is known now; False on timeout, on a lost connection, or when the
        card is unknown."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters[correlation] = waiter
        try:
            async with asyncio.timeout(timeout):
                await send()
                return await waiter
        except TimeoutError:
            self.stats["lookup_timeouts"] += 1
            return False
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self.stats["lookup_errors"] += 1  # the connection dropped meanwhile
            return False
        except aiomqtt.MqttError:
            self.stats["lookup_errors"] += 1
            return False
        finally:
            self._waiters.pop(correlation, None)

    def disconnected(self) -> None:
        """The connection is gone: no answer can come to the taps still waiting."""
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
