"""The daemon's link to the central system over MQTT (aiomqtt, the maintained successor of
asyncio-mqtt): the outbox publisher, the downlink (acks, snapshots, deltas), live
look-ups, site-wide access sharing, status and health. See docs/protocol.md.

Guarantees:
- No event is lost: the publisher sends `store.events_after(n)` in seq order at QoS 1 and
  the store prunes only what the central system acknowledged. After a reconnect, a
  restart, a `gap` ack or `ack_timeout` without progress, it starts again after
  `store.acked_seq`; repeats are harmless (the central system applies by `id`/`seq`).
- The replica changes only by whole deltas (in `delta_seq` order; a gap asks for a
  resync and waits for the snapshot) and whole snapshots (see sync/snapshot.py).
- Every inbound message is size-checked and validated; a bad one is counted in `stats`,
  logged and dropped. The link never raises out of `run()` except on cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from rules.model import Direction, Gate
from rules.timeutil import iso_utc, parse_instant
from sync.protocol import (
    Ack,
    Delta,
    EventBatch,
    Health,
    LookupRequest,
    LookupResponse,
    ResyncRequest,
    Status,
    Topics,
    valid_level,
)
from sync.snapshot import SnapshotError, SnapshotHeader, SnapshotImporter, SnapshotRejected
from sync.store import Event, Store, SyncBatch

log = logging.getLogger("gated.sync")
_UTC = ZoneInfo("UTC")

M = TypeVar("M", bound=BaseModel)


class MqttSettings(BaseModel):
    """How to reach the broker and who this daemon is. Durations in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    tls: bool = False  # implied by ca_file
    ca_file: Path | None = None
    cert_file: Path | None = None  # client certificate (mutual TLS)
    key_file: Path | None = None
    tls_insecure: bool = False  # do not check the server's host name (never in production)
    username: str | None = None
    password: SecretStr | None = None
    prefix: str = "gated"
    site: str
    daemon: str
    keepalive: int = Field(default=30, ge=5, le=3600)
    lookup_timeout: float = Field(default=0.3, gt=0)
    reconcile_interval: float = Field(default=1800.0, gt=0)
    ack_timeout: float = Field(default=10.0, gt=0)  # resend unacknowledged events after this
    resync_retry: float = Field(default=60.0, gt=0)  # ask again while waiting for a snapshot
    health_interval: float = Field(default=60.0, gt=0)
    max_payload: int = Field(default=4_000_000, ge=1024)  # inbound messages above are dropped
    batch_events: int = Field(default=200, ge=1, le=10_000)  # events per uplink message
    backoff_initial: float = Field(default=0.5, gt=0)
    backoff_max: float = Field(default=30.0, gt=0)
    snapshot_batch_rows: int = Field(default=500, ge=1)
    share_access: bool = True  # subscribe to the site's other daemons' access events

    @field_validator("site", "daemon")
    @classmethod
    def _level(cls, v: str) -> str:
        if not valid_level(v):
            raise ValueError("letters, digits and _.:@- only, up to 100, not 'central'")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v or any(c in v for c in "+#\0") or v.startswith("/") or v.endswith("/") or v.startswith("$"):
            raise ValueError("a topic prefix without wildcards, leading '$' or '/' at either end")
        return v

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls or self.ca_file):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx


def _now() -> datetime:
    return datetime.now(UTC)


class SyncLink:
    """One daemon's MQTT client. `await run()` until cancelled; see the module doc."""

    def __init__(
        self,
        store: Store,
        settings: MqttSettings,
        *,
        now: Callable[[], datetime] = _now,
        on_change: Callable[[str], None] | None = None,
        gates: Mapping[str, Gate] | None = None,
        health: Callable[[], Mapping[str, Any]] | None = None,
    ):
        self.store = store
        self.settings = settings
        self.now = now
        self.on_change = on_change
        self.gates = dict(gates or {})
        self.health_provider = health
        self.topics = Topics(settings.prefix, settings.site, settings.daemon)
        self.stats: Counter[str] = Counter()
        self.connected = False
        self.central_online: bool | None = None
        self.last_ack_at: datetime | None = None
        self._client: aiomqtt.Client | None = None
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._last_published = store.acked_seq
        self._last_ack_progress = time.monotonic()
        self._gap_rewind_at = 0.0
        self._importer = SnapshotImporter(store, settings.daemon, batch_rows=settings.snapshot_batch_rows)
        self._finishing: asyncio.Task[None] | None = None  # the worker building, then the switch
        self._awaiting_snapshot = store.snapshot_id is None
        self._last_resync_request = 0.0
        self._delta_buffer: dict[int, Delta] = {}
        self._lookups: dict[bytes, asyncio.Future[LookupResponse]] = {}
        self._remote_seen: dict[str, int] = {}
        self._last_reconcile = time.monotonic()

    # -- state for health and tests ---------------------------------------------------------

    @property
    def last_sync_at(self) -> datetime | None:
        return self.store.last_sync_at()

    @property
    def delta_seq(self) -> int:
        return self.store.delta_seq

    @property
    def awaiting_snapshot(self) -> bool:
        return self._awaiting_snapshot

    @property
    def snapshot_in_progress(self) -> bool:
        return self._importer.active

    def health(self, info: Mapping[str, Any] | None = None) -> Health:
        """The health payload: the link's own state plus what the daemon passes (`readers`,
        `outputs`; any other key goes to `extra`)."""
        data = dict(info or {})
        readers = data.pop("readers", {})
        outputs = data.pop("outputs", {})
        last = self.last_sync_at
        return Health(
            daemon=self.settings.daemon,
            at=iso_utc(self.now()),
            connected=self.connected,
            outbox_depth=max(self.store.outbox_depth(), 0),
            last_seq=self.store.last_seq,
            acked_seq=self.store.acked_seq,
            delta_seq=self.delta_seq,
            last_sync_at=iso_utc(last) if last else None,
            readers=dict(readers),
            outputs=dict(outputs),
            stats=dict(self.stats),
            extra=data,
        )

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until the link is connected and subscribed (tests, start-up ordering)."""
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    # -- the connection loop ------------------------------------------------------------------

    def _client_for(self) -> aiomqtt.Client:
        s = self.settings
        status = Status(daemon=s.daemon, state="offline").model_dump_json().encode()
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            identifier=f"gated-{s.site}-{s.daemon}",
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.topics.status, status, qos=1, retain=True),
            keepalive=s.keepalive,
            tls_context=s.tls_context(),
            timeout=10,
            max_inflight_messages=100,
        )

    async def run(self) -> None:
        self.store.listeners.append(self._on_events)
        backoff = self.settings.backoff_initial
        try:
            with contextlib.suppress(Exception):
                await self._importer.cleanup()
            while True:
                try:
                    client = self._client_for()
                    async with client:
                        backoff = self.settings.backoff_initial
                        await self._session(client)
                except aiomqtt.MqttError as e:
                    self.stats["disconnects"] += 1
                    log.info("mqtt: %s", e)
                except Exception:  # a bug must not take the daemon's link down for good
                    self.stats["errors"] += 1
                    log.exception("sync link failed; reconnecting")
                finally:
                    self._disconnected()
                await asyncio.sleep(backoff * (0.5 + random.random() / 2))
                backoff = min(backoff * 2, self.settings.backoff_max)
        finally:
            with contextlib.suppress(ValueError):
                self.store.listeners.remove(self._on_events)
            if self._finishing is not None:
                self._finishing.cancel()
            self._importer.abort_now()

    def _disconnected(self) -> None:
        self.connected = False
        self._ready.clear()
        self._client = None
        for fut in self._lookups.values():
            if not fut.done():
                fut.cancel()

    async def _session(self, client: aiomqtt.Client) -> None:
        t = self.topics
        await client.subscribe(t.ack, qos=1)
        await client.subscribe(t.lookup_response, qos=0)
        await client.subscribe(t.snapshot, qos=1)
        await client.subscribe(t.delta, qos=1)
        await client.subscribe(t.central_status, qos=1)
        if self.settings.share_access:
            await client.subscribe(t.site_events, options=SubscribeOptions(qos=1, noLocal=True))
        status = Status(daemon=self.settings.daemon, state="online", at=iso_utc(self.now()))
        await client.publish(t.status, status.model_dump_json().encode(), qos=1, retain=True)
        self._client = client
        self.connected = True
        self.stats["connects"] += 1
        self._rewind("connect")
        if self._importer.receiving:  # its remaining chunks were lost with the connection
            await self._importer.abort()
            self._awaiting_snapshot = True
        await self._request_resync(client, self._resync_reason())
        self._ready.set()
        tasks = [
            asyncio.create_task(self._publisher(client), name="sync-publisher"),
            asyncio.create_task(self._timers(client), name="sync-timers"),
        ]
        try:
            async for message in client.messages:
                await self._handle(message)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                offline = Status(daemon=self.settings.daemon, state="offline", at=iso_utc(self.now()))
                await asyncio.wait_for(
                    client.publish(t.status, offline.model_dump_json().encode(), qos=1, retain=True), 1.0
                )
            raise
        finally:
            for task in tasks:
                task.cancel()
            # asyncio.wait, not `await task` under suppress(CancelledError): that swallowed
            # the cancellation of run() itself, which then reconnected forever
            await asyncio.wait(tasks)

    def _resync_reason(self) -> str:
        if self.store.snapshot_id is None:
            return "startup"
        return "gap" if self._awaiting_snapshot else "reconnect"

    async def _request_resync(self, client: aiomqtt.Client, reason: str) -> None:
        req = ResyncRequest(
            daemon=self.settings.daemon,
            request_id=uuid.uuid4().hex,
            reason=reason,
            since_delta_seq=self.delta_seq if reason in ("reconnect", "reconcile") else None,
        )
        self._last_resync_request = time.monotonic()
        self.stats[f"resync_{reason}"] += 1
        await client.publish(self.topics.resync, req.model_dump_json().encode(), qos=1)

    async def request_resync(self, reason: str = "manual") -> bool:
        """Ask the central system for a snapshot now (console "resync" button)."""
        client = self._client
        if client is None:
            return False
        if reason in ("manual", "gap", "snapshot_failed"):
            self._awaiting_snapshot = True
        await self._request_resync(client, reason)
        return True

    async def _timers(self, client: aiomqtt.Client) -> None:
        """Reconciliation, snapshot re-requests and health, on one loop."""
        s = self.settings
        next_health = 0.0
        while True:
            mono = time.monotonic()
            try:
                if self._awaiting_snapshot and not self._importer.active and mono - self._last_resync_request > s.resync_retry:
                    await self._request_resync(client, self._resync_reason())
                elif mono - self._last_reconcile >= s.reconcile_interval:
                    self._last_reconcile = mono
                    await self._request_resync(client, "reconcile")
                if mono >= next_health:
                    next_health = mono + s.health_interval
                    await self.publish_health()
            except aiomqtt.MqttError:
                return
            except Exception:
                self.stats["errors"] += 1
                log.exception("sync timers")
            await asyncio.sleep(min(1.0, s.ack_timeout / 2))

    async def publish_health(self, info: Mapping[str, Any] | None = None) -> None:
        client = self._client
        if client is None:
            return
        if info is None and self.health_provider is not None:
            try:
                info = self.health_provider()
            except Exception:
                log.exception("health provider")
                info = None
        await client.publish(self.topics.health, self.health(info).model_dump_json().encode(), qos=0)

    # -- uplink: the outbox -------------------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        self._wake.set()

    def _rewind(self, why: str) -> None:
        acked = self.store.acked_seq
        if self._last_published != acked:
            self.stats[f"rewind_{why}"] += 1
        self._last_published = acked
        self._last_ack_progress = time.monotonic()
        self._wake.set()

    def _encode(self, events: list[Event]) -> bytes:
        zones = {e["gate"]: self.gates[e["gate"]].zone for e in events if e.get("gate") in self.gates}
        return json.dumps(
            {"v": 1, "daemon": self.settings.daemon, "events": events, "zones": zones}, separators=(",", ":")
        ).encode()

    async def _publisher(self, client: aiomqtt.Client) -> None:
        s = self.settings
        limit = s.batch_events
        while True:
            self._wake.clear()
            acked = self.store.acked_seq
            if self._last_published < acked:
                self._last_published = acked
            elif self._last_published > acked and time.monotonic() - self._last_ack_progress > s.ack_timeout:
                self._rewind("timeout")
            events = self.store.events_after(self._last_published, limit=limit)
            if not events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, s.ack_timeout / 2))
                continue
            payload = self._encode(events)
            while len(payload) > s.max_payload and len(events) > 1:
                events = events[: len(events) // 2]
                payload = self._encode(events)
            if self._last_published == acked:
                self._last_ack_progress = time.monotonic()
            await client.publish(self.topics.events, payload, qos=1)
            self._last_published = int(events[-1]["seq"])
            self.stats["events_published"] += len(events)
            self.stats["messages_published"] += 1

    # -- downlink --------------------------------------------------------------------------------

    def _parse(self, model: type[M], payload: bytes, topic: str) -> M | None:
        try:
            return model.model_validate_json(payload)
        except ValidationError as e:
            kind = "malformed" if any(err["type"] == "json_invalid" for err in e.errors()) else "invalid"
            self.stats[kind] += 1
            self.stats["dropped"] += 1
            log.warning("dropped %s message on %s: %s", kind, topic, e.errors()[0].get("msg") if e.errors() else e)
            return None

    async def _handle(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload
        self.stats["received"] += 1
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode() if payload is not None else b""
        if len(payload) > self.settings.max_payload:
            self.stats["oversized"] += 1
            self.stats["dropped"] += 1
            log.warning("dropped oversized message on %s (%d bytes)", topic, len(payload))
            return
        t = self.topics
        try:
            if topic == t.ack:
                if (ack := self._parse(Ack, payload, topic)) is not None:
                    self._on_ack(ack)
            elif topic == t.delta:
                if (delta := self._parse(Delta, payload, topic)) is not None:
                    await self._on_delta(delta)
            elif topic == t.snapshot:
                # the header only: the records are validated by the snapshot worker, off the loop
                if (header := self._parse(SnapshotHeader, payload, topic)) is not None:
                    await self._on_chunk(header, bytes(payload))
            elif topic == t.lookup_response:
                self._on_lookup_response(message, payload)
            elif topic == t.central_status:
                if (status := self._parse(Status, payload, topic)) is not None:
                    await self._on_central_status(status, bool(message.retain))
            elif topic.startswith(t.base + "/") and topic.endswith("/events"):
                self._on_site_events(topic, payload)
            else:
                self.stats["unexpected_topic"] += 1
        except aiomqtt.MqttError:
            raise
        except Exception:
            self.stats["errors"] += 1
            self.stats["dropped"] += 1
            log.exception("failed to handle a message on %s", topic)

    def _on_ack(self, ack: Ack) -> None:
        self.stats["acks"] += 1
        before = self.store.acked_seq
        self.store.ack(ack.applied_seq)
        self.last_ack_at = self.now()
        if self.store.acked_seq > before:
            self._last_ack_progress = time.monotonic()
        if ack.gap and ack.applied_seq < self._last_published and time.monotonic() - self._gap_rewind_at > 1.0:
            self._gap_rewind_at = time.monotonic()
            self._rewind("gap")
        self._wake.set()

    async def _on_central_status(self, status: Status, retained: bool) -> None:
        was = self.central_online
        self.central_online = status.state == "online"
        # a live (not retained) "online", or one after "offline": the central system has
        # just (re)connected and may have missed what we sent meanwhile
        if self.central_online and (not retained or was is False) and self._client is not None:
            # the central system is back: whatever it missed meanwhile, send it again
            self._rewind("central_online")
            await self._request_resync(self._client, self._resync_reason())

    def _batch(self, members: list[Any], passes: list[Any], bookings: list[Any], remove: Any = None) -> SyncBatch:
        d = self.settings.daemon
        return SyncBatch(
            members=members,
            passes=[p.for_daemon(d) for p in passes],
            bookings=bookings,
            remove_members=list(remove.members) if remove else [],
            remove_passes=list(remove.passes) if remove else [],
            remove_bookings=list(remove.bookings) if remove else [],
        )

    def _changed(self, kind: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(kind)
            except Exception:
                log.exception("on_change callback")

    async def _on_delta(self, delta: Delta) -> None:
        current = self.delta_seq
        if delta.delta_seq <= current:
            self.stats["deltas_old"] += 1
            return
        if self._importer.active or self._awaiting_snapshot:
            if len(self._delta_buffer) < 10_000:
                self._delta_buffer[delta.delta_seq] = delta
            self.stats["deltas_buffered"] += 1
            return
        if delta.delta_seq > current + 1:
            self.stats["delta_gaps"] += 1
            log.warning("delta gap: have %d, got %d; asking for a snapshot", current, delta.delta_seq)
            self._awaiting_snapshot = True
            self._delta_buffer[delta.delta_seq] = delta
            if self._client is not None:
                await self._request_resync(self._client, "gap")
            return
        self._apply_delta(delta)

    def _apply_delta(self, delta: Delta) -> None:
        batch = self._batch(delta.members, delta.passes, delta.bookings, delta.remove)
        self.store.apply_delta(batch, delta.delta_seq, self.now())
        self.stats["deltas_applied"] += 1
        self._changed("delta")

    async def _on_chunk(self, chunk: SnapshotHeader, payload: bytes) -> None:
        imp = self._importer
        mine = not chunk.requested_by or self.settings.daemon in chunk.requested_by or self._awaiting_snapshot
        if chunk.chunk == 0 and mine:
            if chunk.delta_seq < self.delta_seq:
                # older than the replica (resent, or a late answer): importing it would undo
                # the newer deltas (back-office changes), and nothing would ask again
                self.stats["snapshots_stale"] += 1
                log.info("stale snapshot %s ignored (delta_seq %d < %d)", chunk.snapshot_id, chunk.delta_seq,
                         self.delta_seq)
                return
            if imp.active:
                self.stats["snapshots_abandoned"] += 1
                if self._finishing is not None:
                    self._finishing.cancel()
                    await asyncio.wait([self._finishing])
            await imp.begin(chunk, self.now())
        elif not imp.receiving or chunk.snapshot_id != imp.snapshot_id:
            self.stats["snapshot_chunks_ignored"] += 1
            return
        try:
            last = await imp.add(chunk, payload)
            self.stats["snapshot_chunks"] += 1
        except SnapshotError as e:
            await self._snapshot_failed(e)
            return
        if last:
            # built off the loop: the link goes on handling messages meanwhile
            self._finishing = asyncio.create_task(self._finish_snapshot(chunk), name="snapshot-finish")

    async def _snapshot_failed(self, e: SnapshotError) -> None:
        await self._importer.abort()
        if isinstance(e, SnapshotRejected):
            # invalid content, found by the worker: counted and dropped like any invalid
            # message; the replica stays as it was (a forged chunk must not hold deltas)
            log.warning("dropped invalid snapshot: %s", e)
            self.stats["invalid"] += 1
            self.stats["dropped"] += 1
            return
        log.warning("snapshot abandoned: %s", e)
        self.stats["snapshots_failed"] += 1
        self._awaiting_snapshot = True
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._request_resync(self._client, "snapshot_failed")

    async def _finish_snapshot(self, chunk: SnapshotHeader) -> None:
        try:
            report = await self._importer.finish()
        except SnapshotError as e:
            await self._snapshot_failed(e)
            return
        except asyncio.CancelledError:
            self._importer.abort_now()
            raise
        finally:
            if self._finishing is asyncio.current_task():
                self._finishing = None
        self.stats["snapshots_applied"] += 1
        self._awaiting_snapshot = False
        self._last_reconcile = time.monotonic()
        log.info("snapshot %s applied (delta_seq %d): %s", chunk.snapshot_id, chunk.delta_seq, report)
        self._changed("snapshot")
        # deltas that came while the snapshot was on its way
        # (only those that follow on from the snapshot: a stray one from beyond a gap is
        # dropped, not asked about again; a real gap shows again at the next delta)
        buffered, self._delta_buffer = self._delta_buffer, {}
        for seq in sorted(buffered):
            if seq == self.delta_seq + 1:
                self._apply_delta(buffered[seq])
            elif seq > self.delta_seq:
                self.stats["deltas_discarded"] += 1

    def _on_site_events(self, topic: str, payload: bytes) -> None:
        levels = topic.split("/")
        sender = levels[-2]
        if sender == self.settings.daemon:
            self.stats["own_events_echo"] += 1
            return
        batch = self._parse(EventBatch, payload, topic)
        if batch is None:
            return
        if batch.daemon != sender:
            self.stats["invalid"] += 1
            self.stats["dropped"] += 1
            return
        seen = self._remote_seen.get(sender, 0)
        for ev in batch.events:
            if ev.seq <= seen:
                continue
            seen = ev.seq
            extra = ev.model_extra or {}
            if ev.type != "access" or extra.get("decision") != "granted" or not extra.get("passed"):
                continue
            if not ev.member or not ev.gate or ev.gate not in batch.zones:
                continue
            try:
                at = parse_instant(ev.at, _UTC)
            except ValueError:
                self.stats["invalid"] += 1
                continue
            direction = Direction.OUT if extra.get("reason") == "exit" else Direction.IN
            self.store.record_remote_passage(ev.member, batch.zones[ev.gate], direction, at, ev.gate, sender)
            self.stats["remote_passages"] += 1
        self._remote_seen[sender] = seen

    # -- live look-ups ---------------------------------------------------------------------------

    def _on_lookup_response(self, message: aiomqtt.Message, payload: bytes) -> None:
        props = message.properties
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        fut = self._lookups.get(bytes(corr)) if corr else None
        if fut is None or fut.done():
            self.stats["lookup_unmatched"] += 1
            return
        resp = self._parse(LookupResponse, payload, str(message.topic))
        if resp is not None:
            fut.set_result(resp)

    async def lookup(self, card: str, timeout: float | None = None) -> bool:
        """Ask the central system about an unknown card (MQTT v5 request/response). On an
        answer, its records are applied to the store and True is returned when the card is
        now known. False on timeout, when not connected, or when the card is unknown."""
        client = self._client
        if client is None or not self.connected:
            self.stats["lookup_offline"] += 1
            return False
        corr = uuid.uuid4().bytes
        fut: asyncio.Future[LookupResponse] = asyncio.get_running_loop().create_future()
        self._lookups[corr] = fut
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.topics.lookup_response
        props.CorrelationData = corr
        req = LookupRequest(daemon=self.settings.daemon, card=card)
        self.stats["lookups"] += 1
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.settings.lookup_timeout):
                await client.publish(self.topics.lookup_request, req.model_dump_json().encode(), qos=0, properties=props)
                resp = await fut
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
            self._lookups.pop(corr, None)
        if not resp.found:
            self.stats["lookup_unknown"] += 1
            return False
        self.store.apply_sync(self._batch(resp.members, resp.passes, resp.bookings), self.now())
        self.stats["lookup_found"] += 1
        self._changed("lookup")
        return True
