"""The aiomqtt client for one broker, and awaiting it safely: what the link's connection
loop (sync/link/link.py) connects with — MQTT v5, a fresh session, the gate's `offline`
status as its will, TLS from the configured files, the inbound queue bounded per class of
topic (sync/link/inbound.py) — and `mqtt_call`, which keeps a cancellation that aiomqtt
would drop."""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections import Counter
from collections.abc import Awaitable
from typing import TypeVar, cast

import aiomqtt

from sync.link.actions import Publish
from sync.link.inbound import InboundQueue
from sync.link.settings import MqttSettings
from sync.topics import Topics

T = TypeVar("T")

log = logging.getLogger("gated.sync")


class TlsFilesUnusable(Exception):
    """The TLS context cannot be built from the configured files (missing, unreadable)."""


def client_for(settings: MqttSettings, host: str, port: int, will: Publish, topics: Topics, drops: InboundDrops) -> aiomqtt.Client:
    """A client for the broker at host:port (connected by `async with`). Raises
    TlsFilesUnusable when the TLS files cannot be read."""
    s = settings
    try:
        tls = s.tls_context()
    except (OSError, ssl.SSLError, ValueError) as e:
        # a CA or key file gone or unreadable: no attempt can work until it is back
        raise TlsFilesUnusable(str(e)) from None
    return aiomqtt.Client(
        host,
        port,
        username=s.username,
        password=s.password.get_secret_value() if s.password else None,
        identifier=s.client_id(),
        protocol=aiomqtt.ProtocolVersion.V5,
        # a fresh session each time: unacknowledged events are resent from the outbox
        # and missed deltas are asked for, so nothing depends on the broker's memory
        clean_start=True,
        will=aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain),
        keepalive=s.keepalive,
        tls_context=tls,
        timeout=s.connect_timeout,
        max_inflight_messages=100,
        # bounded per class of topic: a flood is dropped and counted, not held (sync/link/inbound.py)
        queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", functools.partial(
            InboundQueue, functools.partial(topic_class, topics), _payload_size, drops)),
    )


def topic_class(topics: Topics, message: aiomqtt.Message) -> str:
    """The inbound budget a message counts against."""
    topic, t = str(message.topic), topics
    if topic == t.delta:
        return "delta"
    if topic == t.snapshot:
        return "snapshot"
    if topic in (t.ack, t.delta_head, t.central_status, t.lookup_response, t.replay):
        return "control"  # only the central system publishes these (the example ACL)
    return "peers" if topic.startswith(t.base + "/") else "other"


def _payload_size(message: aiomqtt.Message) -> int:
    p = message.payload
    return len(p) if isinstance(p, bytes | bytearray | str) else 16


class InboundDrops:
    """Told of each message the inbound queue drops: counted by class, a flood logged
    once every 10 s."""

    def __init__(self, stats: Counter[str]):
        self.stats = stats
        self._logged_at = -10.0

    def __call__(self, cls: str) -> None:
        stats = self.stats
        stats["inbound_dropped"] += 1
        stats[f"inbound_dropped_{cls}"] += 1
        now = time.monotonic()
        if now - self._logged_at >= 10.0:  # a flood is one line every 10 s
            self._logged_at = now
            log.warning("mqtt inbound over budget: dropping (%s so far; %s on %s)",
                        stats["inbound_dropped"], stats[f"inbound_dropped_{cls}"], cls)


def cancelling() -> bool:
    """The current task is being cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def mqtt_call(call: Awaitable[T]) -> T:
    """Await an aiomqtt publish or subscribe without losing a cancellation: aiomqtt waits
    for the broker's answer with asyncio.wait_for, which in Python 3.11 returns the result
    and drops a cancellation that arrives as the answer does — the cancelled task then
    went on as if nothing happened (a central system or a link that never stopped)."""
    result = await call
    if cancelling():
        raise asyncio.CancelledError
    return result
