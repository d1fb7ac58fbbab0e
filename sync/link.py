"""The daemon's link to the central system over MQTT: a thin asyncio shell around the
sans-I/O protocol session (sync/session.py). aiomqtt — the maintained successor of
asyncio-mqtt, the same project renamed — over paho-mqtt 2 owns the socket; this module
owns the connection loop (brokers in turn, backoff: sync/reconnect.py), feeds the session
what happens and performs the actions it returns. docs/protocol.md is the contract.

The link never raises out of `run()` except on cancellation: a failed action is counted
in `stats["errors"]`, logged, and the link goes on.

Why one module of ~600 lines: it is the only code that touches aiomqtt and paho, so each
of the session's actions has its performer here (publish with properties, subscriptions,
snapshot hand-over to the importer, look-ups, catch-ups, health); split, each part would
need the client and the connection state the others hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from importlib import metadata
from typing import Any, TypeVar, cast
from zoneinfo import ZoneInfo

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from rules.model import Gate
from rules.timeutil import iso_utc, parse_instant_once
from sync.inbound import InboundQueue
from sync.link_store import LinkStore
from sync.outbox import Event
from sync.protocol import CatchUpRequest, Health
from sync.reconnect import Attempt, Reconnect
from sync.session import (
    AbortSnapshot,
    Action,
    ApplyDelta,
    ApplyLookup,
    CommitSnapshot,
    PruneAcked,
    Publish,
    PublishHealth,
    RaiseAlarm,
    ReadReplay,
    RecordPeerEvents,
    ServeCatchUp,
    Session,
    SessionConfig,
    StageChunk,
    StoreAck,
    StorePeerMark,
    Subscribe,
    WakeUplink,
)
from sync.settings import MqttSettings
from sync.snapshot import SnapshotError, SnapshotRejected
from sync.store import Store

__all__ = ["MqttSettings", "SyncLink", "mqtt_call"]

CATCH_UP_MAX = 20_000  # events sent again to one of the site's other daemons per request
MAX_SERVING = 8  # catch-up answers in progress at once (one per asking daemon)

T = TypeVar("T")
UTC_ZONE = ZoneInfo("UTC")

log = logging.getLogger("gated.sync")


def _payload_size(message: aiomqtt.Message) -> int:
    p = message.payload
    return len(p) if isinstance(p, bytes | bytearray | str) else 16


def software_version() -> str:
    try:
        return f"gated {metadata.version('gated')}"
    except metadata.PackageNotFoundError:
        return "gated"



class TlsFilesUnusable(Exception):
    """The TLS context cannot be built from the configured files (missing, unreadable)."""

class SyncLink:
    """One daemon's MQTT client. `await run()` until cancelled; see the module doc."""

    def __init__(
        self,
        store: Store,
        settings: MqttSettings,
        *,
        now: Callable[[], datetime],  # the daemon's clock (gated/clock.py): real, or simulated
        on_change: Callable[[str], None] | None = None,
        gates: Mapping[str, Gate] | None = None,
        health: Callable[[], Mapping[str, Any]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ):
        self.store = store
        self.settings = settings
        self.now = now
        self.mono = monotonic
        self.rand = rand
        self.on_change = on_change
        self.health_provider = health
        self.replica = LinkStore(store, settings.daemon, settings.snapshot_batch_rows)
        self._building: asyncio.Task[None] | None = None  # the snapshot worker, then the session's verdict
        zones = {g: gate.zone for g, gate in (gates or {}).items()}
        self.session = Session(SessionConfig.from_settings(settings, software_version()), self.replica.state(), zones)
        self._serving: dict[str, asyncio.Task[None]] = {}  # catch-up answers, one per asking daemon
        # QR codes used here lately (token -> our claim) and the taps waiting for a rival claim
        self._qr_mine: dict[str, tuple[datetime, str]] = {}
        self._qr_waiting: dict[str, asyncio.Future[tuple[datetime, str]]] = {}
        self.topics = self.session.topics
        self.last_ack_at: datetime | None = None
        self.broker: str | None = None  # host:port of the connected broker
        self._client: aiomqtt.Client | None = None
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._waiters: dict[bytes, asyncio.Future[bool]] = {}
        self._dropped_logged_at = -10.0

    # -- state for health and tests ---------------------------------------------------------

    @property
    def stats(self) -> Counter[str]:
        return self.session.stats

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    @property
    def central_online(self) -> bool | None:
        return self.session.central_online

    @property
    def last_sync_at(self) -> datetime | None:
        return self.store.last_sync_at()

    @property
    def delta_seq(self) -> int:
        return self.store.delta_seq

    @property
    def awaiting_snapshot(self) -> bool:
        return self.session.awaiting_snapshot

    @property
    def snapshot_in_progress(self) -> bool:
        return self.session.importing or self.replica.importing

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
            broker=self.broker,
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

    def _client_for(self, host: str, port: int) -> aiomqtt.Client:
        s = self.settings
        try:
            tls = s.tls_context()
        except (OSError, ssl.SSLError, ValueError) as e:
            # a CA or key file gone or unreadable: no attempt can work until it is back
            raise TlsFilesUnusable(str(e)) from None
        will = self.session.status("offline")
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
            # bounded per class of topic: a flood is dropped and counted, not held (sync/inbound.py)
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", functools.partial(
                InboundQueue, self._topic_class, _payload_size, self._inbound_dropped)),
        )

    def _topic_class(self, message: aiomqtt.Message) -> str:
        topic, t = str(message.topic), self.topics
        if topic == t.delta:
            return "delta"
        if topic == t.snapshot:
            return "snapshot"
        if topic in (t.ack, t.delta_head, t.central_status, t.lookup_response, t.replay):
            return "control"  # only the central system publishes these (the example ACL)
        return "peers" if topic.startswith(t.base + "/") else "other"

    def _inbound_dropped(self, cls: str) -> None:
        stats = self.session.stats
        stats["inbound_dropped"] += 1
        stats[f"inbound_dropped_{cls}"] += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= 10.0:  # a flood is one line every 10 s
            self._dropped_logged_at = now
            log.warning("mqtt inbound over budget: dropping (%s so far; %s on %s)",
                        stats["inbound_dropped"], stats[f"inbound_dropped_{cls}"], cls)

    async def run(self) -> None:
        self.store.listeners.append(self._on_events)
        self.session.events_committed(self.store.last_seq)  # committed before we listened
        s = self.settings
        plan = Reconnect(
            s.endpoints(), initial=s.backoff_initial, maximum=s.backoff_max, refused=s.backoff_refused, rand=self.rand
        )
        attempt: Attempt = plan.first()
        try:
            try:
                await self.replica.cleanup()
            except Exception:
                log.exception("sync link: dropping a previous run's snapshot files")
            while True:
                if attempt.delay > 0:
                    await asyncio.sleep(attempt.delay)
                host, port = attempt.endpoint
                worked = refused = False
                try:
                    async with self._client_for(host, port) as client:
                        worked = True
                        plan.connected()
                        self.broker = f"{host}:{port}"
                        await self._connection(client)
                except TlsFilesUnusable as e:
                    refused = True  # the long pause: a file an installer must put back
                    self.stats["tls_unusable"] += 1
                    log.error("mqtt: the TLS files cannot be used (%s): ca_file, cert_file, key_file", e)
                except MqttConnectError as e:
                    refused = True
                    self.stats["connect_refused"] += 1
                    log.warning("mqtt %s:%d refused the connection: %s", host, port, e)
                except aiomqtt.MqttError as e:
                    self.stats["connect_failed" if not worked else "connection_lost"] += 1
                    log.info("mqtt %s:%d: %s", host, port, e)
                except Exception:  # a bug must not take the daemon's link down for good
                    self.stats["errors"] += 1
                    log.exception("sync link failed; reconnecting")
                finally:
                    await self._disconnected()
                if _cancelling():  # an error while being cancelled must not swallow the cancel
                    raise asyncio.CancelledError
                attempt = plan.lost() if worked else plan.failed(refused=refused)
        finally:
            with contextlib.suppress(ValueError):
                self.store.listeners.remove(self._on_events)
            self._stop_building()
            self.replica.importer.abort_now()

    def _stop_building(self) -> None:
        """A build whose import is being given up (or replaced) must not report back."""
        task = self._building
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            self._building = None

    async def _disconnected(self) -> None:
        self._ready.clear()
        self._client = None
        serving, self._serving = list(self._serving.values()), {}
        for task in serving:
            task.cancel()  # its connection is gone; the peer asks again
        if serving:
            await asyncio.wait(serving)
        self.broker = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.cancel()
        try:
            await self._perform(None, self.session.disconnect(self.mono()))
        except Exception:
            self.stats["errors"] += 1
            log.exception("sync link: after the connection was lost")

    async def _connection(self, client: aiomqtt.Client) -> None:
        self._client = client
        await self._perform(client, self.session.connect(self.mono(), iso_utc(self.now())))
        self._ready.set()
        # plain tasks and asyncio.wait, not a TaskGroup: in Python 3.11 a TaskGroup whose
        # child fails after its body has ended leaves the parent task marked as being
        # cancelled, and the link then took a lost connection for its own cancellation
        tasks = [
            asyncio.create_task(self._receiver(client), name="sync-receiver"),
            asyncio.create_task(self._publisher(client), name="sync-publisher"),
            asyncio.create_task(self._timers(client), name="sync-timers"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # the error that ended the connection
            raise aiomqtt.MqttError("the connection ended")
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                offline = self.session.status("offline", iso_utc(self.now()))
                await asyncio.wait_for(
                    client.publish(offline.topic, offline.payload, qos=offline.qos, retain=offline.retain), 1.0
                )
            raise
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)

    async def _receiver(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._handle(client, message)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            payload = str(payload).encode() if payload is not None else b""
        props = message.properties
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        try:
            # the session judges acks against the last seq: make sure it has the latest
            self.session.events_committed(self.store.last_seq)
            actions = self.session.receive(
                topic, bytes(payload), self.mono(), retained=bool(message.retain), correlation=bytes(corr) if corr else None
            )
            await self._perform(client, actions)
        except aiomqtt.MqttError:
            raise
        except Exception:
            self.stats["errors"] += 1
            self.stats["dropped"] += 1
            log.exception("failed to handle a message on %s", topic)

    async def feed(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """Hand the session a message as if it came from the broker (benchmarks, tests);
        what it would publish in answer is dropped."""
        await self._perform(self._client, self.session.receive(topic, payload, self.mono(), retained=retained))

    # -- catching the site's other daemons up ------------------------------------------------

    def _serve(self, client: aiomqtt.Client | None, request: CatchUpRequest) -> None:
        """Answer a peer's catch-up request in a task of its own (reading and publishing
        thousands of events must not hold the receiver); a newer request from the same
        daemon replaces one still being answered."""
        if client is None:
            return
        old = self._serving.pop(request.daemon, None)
        if old is None and len(self._serving) >= MAX_SERVING:
            self.stats["catch_up_requests_dropped"] += 1  # a flood of made-up daemons: asked again
            return
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._answer(client, request), name="catch-up")
        self._serving[request.daemon] = task
        task.add_done_callback(lambda t: self._serving.pop(request.daemon, None) if self._serving.get(request.daemon) is t else None)

    async def _answer(self, client: aiomqtt.Client, request: CatchUpRequest) -> None:
        """Our events from what the peer asked (from_seq, or since an instant), in chunks
        of `batch_events`, at most CATCH_UP_MAX (the peer asks again for the rest)."""
        store = self.store
        if request.from_seq is not None:
            start = max(request.from_seq, store.first_seq)
        else:
            try:
                since = parse_instant_once(str(request.since), UTC_ZONE)
            except ValueError:
                self.stats["invalid"] += 1
                return
            first = store.first_seq_since(since)
            start = first if first is not None else store.last_seq + 1
        sent = 0
        try:
            while True:
                events = store.events_after(start - 1, limit=min(self.settings.batch_events, CATCH_UP_MAX - sent))
                more = bool(events) and sent + len(events) < CATCH_UP_MAX and events[-1]["seq"] < store.last_seq
                answer = self.session.catch_up_answer(request, events, start, more=more)
                while len(answer.payload) > self.settings.max_payload and len(events) > 1:
                    events = events[: len(events) // 2]
                    more = True
                    answer = self.session.catch_up_answer(request, events, start, more=more)
                await self._publish(client, answer)
                if not more:
                    return
                sent += len(events)
                start = int(events[-1]["seq"]) + 1
        except aiomqtt.MqttError:
            return  # the connection went: the peer asks again

    # -- performing the session's actions -----------------------------------------------------

    async def _perform(self, client: aiomqtt.Client | None, actions: Sequence[Action]) -> None:
        todo = deque(actions)
        try:
            while todo:
                follow = await self._do(client, todo.popleft())
                todo.extendleft(reversed(follow))
        finally:
            for note in self.session.take_notes():
                log.warning("sync: %s", note)

    async def _do(self, client: aiomqtt.Client | None, action: Action) -> Sequence[Action]:
        mono = self.mono()
        match action:
            case Publish():
                if client is not None:
                    await self._publish(client, action)
            case Subscribe():
                if client is not None:
                    opts = SubscribeOptions(qos=action.qos, noLocal=action.no_local)
                    await mqtt_call(client.subscribe(action.topic, options=opts))
            case WakeUplink():
                self._wake.set()
            case StoreAck():
                self.replica.ack(action.applied_seq)
                self.last_ack_at = self.now()
            case ApplyDelta():
                try:
                    self.replica.apply_delta(action.delta, self.now())
                except Exception as e:
                    log.exception("applying delta %d", action.delta.delta_seq)
                    return self.session.delta_failed(self.store.delta_seq, str(e), mono)
                self._changed("delta")
            case StageChunk():
                if action.first:
                    self._stop_building()
                try:
                    await self.replica.stage(action.header, action.payload, action.first, self.now())
                except SnapshotError as e:
                    return self._snapshot_error(e)
                if action.last:
                    # built off the loop, for seconds: the link goes on with its messages
                    self._building = asyncio.create_task(self._built(client), name="snapshot-build")
            case CommitSnapshot():
                try:
                    await self.replica.commit()
                except SnapshotError as e:
                    return self.session.snapshot_failed(str(e), self.mono())
                log.info("snapshot %s applied (delta_seq %d)", action.snapshot_id, action.delta_seq)
                self._changed("snapshot")
                follow = self.session.snapshot_committed(self.mono())
                if self.store.card_rule_changed:  # built under the rule before a reload
                    follow = [*follow, *self.session.want_snapshot("card_rule", self.mono())]
                return follow
            case AbortSnapshot():
                self._stop_building()
                await self.replica.abort()
            case ApplyLookup():
                self._on_lookup_answer(action)
            case RecordPeerEvents():
                seen = self.store.record_peer_events(
                    action.sender, list(action.events), action.zones, action.mark, self.now()
                )
                for kind, n in seen.items():
                    self.session.stats[kind] += n
                self._rival_claims(action.sender, action.events)
            case StorePeerMark():
                self.store.save_peer_mark(action.peer, action.heard_seq, action.heard_through)
            case ServeCatchUp():
                self._serve(client, action.request)
            case RaiseAlarm():
                log.warning("alarm %s: %s", action.kind, action.detail)
                self.store.emit("alarm", self.now(), gate=None, kind=action.kind, detail=action.detail)
            case ReadReplay():
                return self.session.replay_ready(action.request, self.replica.first_held_seq(), mono)
            case PublishHealth():
                if client is not None:
                    await self.publish_health()
            case PruneAcked():
                pruned = self.replica.prune(self.now() - timedelta(seconds=action.older_than), action.keep_max)
                self.stats["events_pruned"] += pruned
        return ()

    async def _publish(self, client: aiomqtt.Client, p: Publish) -> None:
        props = None
        if p.response_topic is not None or p.correlation is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if p.response_topic is not None:
                props.ResponseTopic = p.response_topic
            if p.correlation is not None:
                props.CorrelationData = p.correlation
        await mqtt_call(client.publish(p.topic, p.payload, qos=p.qos, retain=p.retain, properties=props))

    async def _built(self, client: aiomqtt.Client | None) -> None:
        """Wait for the snapshot worker, then let the session decide (commit, or hold)."""
        try:
            try:
                members = await self.replica.built()
            except SnapshotError as e:
                follow = self._snapshot_error(e)
            else:
                follow = self.session.snapshot_staged(self.replica.member_count(), members, self.mono())
            await self._perform(client, follow)
        finally:
            if self._building is asyncio.current_task():
                self._building = None

    def _snapshot_error(self, e: SnapshotError) -> Sequence[Action]:
        if isinstance(e, SnapshotRejected):
            return self.session.snapshot_rejected(str(e), self.mono())
        return self.session.snapshot_failed(str(e), self.mono())

    def _changed(self, kind: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(kind)
            except Exception:
                log.exception("on_change callback")

    # -- uplink: the outbox -------------------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        if self.session.events_committed(self.store.last_seq):
            self._wake.set()

    async def _publisher(self, client: aiomqtt.Client) -> None:
        idle = min(1.0, self.settings.ack_timeout / 2)
        while True:
            self._wake.clear()
            after = self.session.uplink_after(self.mono())
            if after is not None:
                events = self.store.events_after(after, limit=self.settings.batch_events)
                message = self.session.uplink(events, self.mono())
                if message is not None:
                    await self._publish(client, message)
                    continue
            # asyncio.timeout, not wait_for: in 3.11 wait_for loses a cancellation that
            # arrives as the event is set, and this loop then outlived its connection
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._wake.wait()

    async def _timers(self, client: aiomqtt.Client) -> None:
        """The session's clock: resyncs due, ack timeouts, health, forgotten look-ups."""
        period = min(1.0, self.settings.ack_timeout / 2)
        while True:
            try:
                await self._perform(client, self.session.tick(self.mono(), iso_utc(self.now())))
            except aiomqtt.MqttError:
                raise
            except Exception:
                self.stats["errors"] += 1
                log.exception("sync timers")
            await asyncio.sleep(period)

    async def request_resync(self, reason: str = "manual") -> bool:
        """Ask the central system for a snapshot now (console "resync" button)."""
        client = self._client
        if client is None or not self.connected:
            return False
        await self._perform(client, self.session.request_resync(reason, self.mono()))
        return True

    async def card_rule_changed(self) -> None:
        """The store's rule for 10-digit card numbers changed (a reload with other readers):
        its cards are re-typed from a fresh snapshot, asked for now or at the connection."""
        await self._perform(self._client if self.connected else None, self.session.want_snapshot("card_rule", self.mono()))

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
        await mqtt_call(client.publish(self.topics.health, self.health(info).model_dump_json().encode(), qos=0))

    # -- one QR code, one use across the site -----------------------------------------------

    async def contest_qr(self, token: str, claimed_at: datetime) -> bool:
        """We have just used up QR `token` (its `qr_used` event is on its way to the site's
        other daemons). Wait up to `qr_claim_wait` for another daemon's claim on it and
        apply the rule every daemon applies: the earlier claim wins, then the lower daemon
        id. True when ours lost (the tap is refused `qr_replayed`). No wait when nobody
        could claim it (not connected, no other daemon online)."""
        ours = (claimed_at, self.settings.daemon)
        self._remember_claim(token, ours)
        wait = self.settings.qr_claim_wait
        if wait <= 0 or not self.connected or not self.session.peers.any_online():
            return False
        fut: asyncio.Future[tuple[datetime, str]] = asyncio.get_running_loop().create_future()
        self._qr_waiting[token] = fut
        try:
            async with asyncio.timeout(wait):
                theirs = await fut
        except TimeoutError:
            return False
        finally:
            if self._qr_waiting.get(token) is fut:
                del self._qr_waiting[token]
        lost = theirs < ours
        self.stats["qr_contests_lost" if lost else "qr_contests_won"] += 1
        return lost

    def _remember_claim(self, token: str, claim: tuple[datetime, str]) -> None:
        if len(self._qr_mine) >= 1000:  # a minute of QR codes is plenty: the race is milliseconds
            self._qr_mine.pop(next(iter(self._qr_mine)))
        self._qr_mine[token] = claim

    def _rival_claims(self, sender: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Another daemon's `qr_used`: a tap of ours waiting on that token learns of it; a
        token we already let through that the rule gives to the other daemon (its claim
        came after our wait) is a double use, and an alarm — never silent."""
        for ev in events:
            token = ev.get("token")
            if ev.get("type") != "qr_used" or not isinstance(token, str):
                continue
            try:
                theirs = (parse_instant_once(str(ev.get("at")), UTC_ZONE), sender)
            except ValueError:
                continue
            fut = self._qr_waiting.get(token)
            if fut is not None and not fut.done():
                fut.set_result(theirs)
                continue
            ours = self._qr_mine.get(token)
            if ours is not None and theirs < ours:
                self.stats["qr_double_use"] += 1
                detail = f"a QR code was let in here and at {sender} (its claim came too late to stop ours)"
                log.warning("alarm qr_double_use: %s", detail)
                self.store.emit("alarm", self.now(), gate=None, kind="qr_double_use", detail=detail,
                                token=token, other=sender)

    # -- live look-ups ---------------------------------------------------------------------------

    def _on_lookup_answer(self, action: ApplyLookup) -> None:
        resp = action.response
        if resp.found:
            # applied even when it came too late for the tap that asked: the next one works
            self.replica.apply_lookup(resp, self.now())
            self._changed("lookup")
        waiter = self._waiters.get(action.correlation)
        if waiter is not None and not waiter.done():
            waiter.set_result(resp.found)
        else:
            self.stats["lookup_late"] += 1

    async def lookup(self, card: str, timeout: float | None = None) -> bool:
        """Ask the central system about an unknown card (MQTT v5 request/response). True
        when the answer came within `timeout` (default `lookup_timeout`) and the card is
        known now; False on timeout, when not connected, or when the card is unknown. A
        late answer is applied when it comes."""
        client = self._client
        if client is None or not self.connected:
            self.stats["lookup_offline"] += 1
            return False
        corr = uuid.uuid4().bytes
        request = self.session.lookup(card, corr, self.mono())
        if request is None:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters[corr] = waiter
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.settings.lookup_timeout):
                await self._publish(client, request)
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
            self._waiters.pop(corr, None)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def mqtt_call(call: Awaitable[T]) -> T:
    """Await an aiomqtt publish or subscribe without losing a cancellation: aiomqtt waits
    for the broker's answer with asyncio.wait_for, which in Python 3.11 returns the result
    and drops a cancellation that arrives as the answer does — the cancelled task then
    went on as if nothing happened (a central system or a link that never stopped)."""
    result = await call
    if _cancelling():
        raise asyncio.CancelledError
    return result


