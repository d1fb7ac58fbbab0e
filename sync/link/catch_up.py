"""Catching the site's other daemons up: another daemon that missed some of our events (it
was offline, a message was lost) asks for them (`catchup` request, docs/protocol.md), and
this answers with our events from what it asked, read from the store's outbox in chunks.
Part of the link's shell (SyncLink holds one): the answers in progress, one task per
asking daemon, so that reading and publishing thousands of events never holds the
receiver.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

import aiomqtt

from rules.timeutil import parse_instant_once
from sync.link.actions import Publish
from sync.link.port import StorePort
from sync.link.session import Session
from sync.link.settings import MqttSettings
from sync.protocol import CatchUpRequest

CATCH_UP_MAX = 20_000  # events sent again to one of the site's other daemons per request
MAX_SERVING = 8  # catch-up answers in progress at once (one per asking daemon)

UTC_ZONE = ZoneInfo("UTC")

log = logging.getLogger(__name__)

Send = Callable[[Publish], Awaitable[None]]


class CatchUpServer:
    def __init__(self, port: StorePort, session: Session, settings: MqttSettings, stats: Counter[str]):
        self.port = port
        self.session = session
        self.settings = settings
        self.stats = stats
        self._serving: dict[str, asyncio.Task[None]] = {}  # by asking daemon

    def serve(self, send: Send, request: CatchUpRequest) -> None:
        """Answer a peer's catch-up request in a task of its own; a newer request from the
        same daemon replaces one still being answered."""
        old = self._serving.pop(request.daemon, None)
        if old is None and len(self._serving) >= MAX_SERVING:
            self.stats["catch_up_requests_dropped"] += 1  # a flood of made-up daemons: asked again
            return
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._answer(send, request), name="catch-up")
        self._serving[request.daemon] = task
        task.add_done_callback(lambda t: self._serving.pop(request.daemon, None) if self._serving.get(request.daemon) is t else None)

    async def stop(self) -> None:
        """The connection is gone: the answers in progress end (the peers ask again)."""
        serving, self._serving = list(self._serving.values()), {}
        for task in serving:
            task.cancel()
        if serving:
            await asyncio.wait(serving)

    async def _answer(self, send: Send, request: CatchUpRequest) -> None:
        """Our events from what the peer asked (from_seq, or since an instant), in chunks
        of `batch_events`, at most CATCH_UP_MAX (the peer asks again for the rest)."""
        port = self.port
        if request.from_seq is not None:
            start = max(request.from_seq, port.first_held_seq())
        else:
            try:
                since = parse_instant_once(str(request.since), UTC_ZONE)
            except ValueError:
                self.stats["invalid"] += 1
                return
            first = port.first_seq_since(since)
            start = first if first is not None else port.last_seq + 1
        sent = 0
        try:
            while True:
                events = await port.durable_events_after(
                    start - 1, limit=min(self.settings.batch_events, CATCH_UP_MAX - sent))
                more = bool(events) and sent + len(events) < CATCH_UP_MAX and events[-1]["seq"] < port.last_seq
                answer = self.session.catch_up_answer(request, events, start, more=more)
                while len(answer.payload) > self.settings.max_payload and len(events) > 1:
                    events = events[: len(events) // 2]
                    more = True
                    answer = self.session.catch_up_answer(request, events, start, more=more)
                await send(answer)
                if not more:
                    return
                sent += len(events)
                start = int(events[-1]["seq"]) + 1
        except aiomqtt.MqttError:
            return  # the connection went: the peer asks again
        except OSError as e:
            self.stats["catch_up_not_durable"] += 1
            log.warning("catch-up for %s not answered: our log cannot be flushed (%s)", request.daemon, e)
