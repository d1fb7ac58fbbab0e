"""The daemon's link to the central system over MQTT: a thin asyncio shell around the
sans-I/O protocol session (sync/link/session.py). aiomqtt — the maintained successor of
asyncio-mqtt, the same project renamed — over paho-mqtt 2 owns the socket; this module
owns the connection loop (brokers in turn, backoff: sync/link/reconnect.py), feeds the session
what happens and performs the actions it returns. docs/protocol.md is the contract.

The link never raises out of `run()` except on cancellation: a failed action is counted
in `stats["errors"]`, logged, and the link goes on.

It reaches the store and the snapshot import only through its port (sync/link/port.py,
`SyncLink.port`). The parts of the shell with state of their own are beside it:
answering the site's other daemons' catch-up requests (catch_up.py), a QR code's contest
across the site (qr_contest.py), live look-ups of unknown cards (lookups.py); the
aiomqtt client for one broker in client.py. What is left here (~630 lines) is the
connection loop and the performer of each of the session's actions, which share the
client and the connection's state (its tasks, the ready flag, the snapshot being built).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sqlite3
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from importlib import metadata
from typing import TYPE_CHECKING, Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from rules.model import Gate
from rules.timeutil import iso_utc
from sync.link.actions import SettleNumbering
from sync.link.catch_up import CatchUpServer
from sync.link.client import InboundDrops, TlsFilesUnusable, cancelling, client_for, mqtt_call
from sync.link.lookups import Lookups
from sync.link.port import SnapshotError, SnapshotRejected, StorePort
from sync.link.qr_contest import QrContest
from sync.link.reconnect import Attempt, Reconnect
from sync.link.session import (
    AbortSnapshot,
    Action,
    ApplyDelta,
    ApplyLookup,
    CheckOwnEvents,
    CommitSnapshot,
    PruneAcked,
    Publish,
    PublishHealth,
    RaiseAlarm,
    ReadReplay,
    RecordOwnHistory,
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
from sync.link.settings import MqttSettings
from sync.protocol import Ack, Health

if TYPE_CHECKING:
    from sync.store import Event, Store

__all__ = ["MqttSettings", "SyncLink", "mqtt_call", "software_version"]

log = logging.getLogger("gated.sync")


def software_version() -> str:
    try:
        return f"gated {metadata.version('gated')}"
    except metadata.PackageNotFoundError:
        return "gated"




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
        self.settings = settings
        self.now = now
        self.mono = monotonic
        self.rand = rand
        self.on_change = on_change
        self.health_provider = health
        # the link's only door into the store and the snapshot import
        self.port = StorePort(store, settings.daemon, settings.snapshot_batch_rows)
        if gates:  # what was decided while our lost events were missing is rechecked by their rules
            self.port.set_gates(gates)
        self._building: asyncio.Task[None] | None = None  # the snapshot worker, then the session's verdict
        # the central system's word on our numbering that the store could not write yet
        # (a full disk): tried again every second — while our events are held nothing of
        # ours leaves, so no new ack would bring the word again
        self._unsettled: tuple[int, Ack | None] | None = None
        zones = {g: gate.zone for g, gate in (gates or {}).items()}
        self.session = Session(SessionConfig.from_settings(settings, software_version()), self.port.state(), zones)
        self._catch_up = CatchUpServer(self.port, self.session, settings, self.session.stats)
        self._qr = QrContest(settings.daemon, settings.qr_claim_wait, self.port, now, self.session.stats)
        self._lookups = Lookups(self.port, now, self.session.stats, self._changed)
        self.topics = self.session.topics
        self.last_ack_at: datetime | None = None
        self.broker: str | None = None  # host:port of the connected broker
        self._client: aiomqtt.Client | None = None
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._drops = InboundDrops(self.session.stats)

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
        return self.port.last_sync_at()

    @property
    def delta_seq(self) -> int:
        return self.port.delta_seq

    @property
    def awaiting_snapshot(self) -> bool:
        return self.session.awaiting_snapshot

    @property
    def snapshot_in_progress(self) -> bool:
        return self.session.importing or self.port.importing

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
            outbox_depth=max(self.port.outbox_depth(), 0),
            last_seq=self.port.last_seq,
            acked_seq=self.port.acked_seq,
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

    async def run(self) -> None:
        self.port.listen(self._on_events)
        self.session.events_committed(self.port.last_seq)  # committed before we listened
        s = self.settings
        plan = Reconnect(
            s.endpoints(), initial=s.backoff_initial, maximum=s.backoff_max, refused=s.backoff_refused, rand=self.rand
        )
        attempt: Attempt = plan.first()
        try:
            try:
                await self.port.cleanup()
            except Exception:
                log.exception("sync link: dropping a previous run's snapshot files")
            while True:
                if attempt.delay > 0:
                    await asyncio.sleep(attempt.delay)
                host, port = attempt.endpoint
                worked = refused = False
                try:
                    at = iso_utc(self.now())  # this connection's: its statuses' and its last will's
                    will = self.session.will(at)
                    async with client_for(s, host, port, will, self.topics, self._drops) as client:
                        worked = True
                        plan.connected()
                        self.broker = f"{host}:{port}"
                        await self._connection(client, at)
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
                    if worked and _taken_over(e):  # another client with our client id
                        try:
                            await self._perform(None, self.session.taken_over(self.mono()))
                        except Exception:
                            log.exception("sync link: after a takeover of the connection")
                except Exception:  # a bug must not take the daemon's link down for good
                    self.stats["errors"] += 1
                    log.exception("sync link failed; reconnecting")
                finally:
                    await self._disconnected()
                if cancelling():  # an error while being cancelled must not swallow the cancel
                    raise asyncio.CancelledError
                # while a twin under our id holds, slower: the two take the connection from each other
                attempt = plan.lost(self.session.reconnect_wait(self.mono())) if worked else plan.failed(refused=refused)
        finally:
            self.port.stop_listening(self._on_events)
            self._stop_building()
            self.port.abort_now()

    def _stop_building(self) -> None:
        """A build whose import is being given up (or replaced) must not report back."""
        task = self._building
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            self._building = None

    async def _disconnected(self) -> None:
        self._ready.clear()
        self._client = None
        await self._catch_up.stop()  # their connection is gone; the peers ask again
        self.broker = None
        self._lookups.disconnected()
        try:
            await self._perform(None, self.session.disconnect(self.mono()))
        except Exception:
            self.stats["errors"] += 1
            log.exception("sync link: after the connection was lost")

    async def _connection(self, client: aiomqtt.Client, at: str) -> None:
        self._client = client
        await self._perform(client, self.session.connect(self.mono(), at))
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
                offline = self.session.status("offline", at)  # the connection's, as its will's
                async with asyncio.timeout(1.0):
                    await client.publish(offline.topic, offline.payload, qos=offline.qos, retain=offline.retain)
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
            self.session.events_committed(self.port.last_seq)
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
                self.port.ack(action.applied_seq)
                self.last_ack_at = self.now()
            case SettleNumbering():
                return self._settle_numbering(action.ack.applied_seq, action.ack)
            case ApplyDelta():
                try:
                    self.port.apply_delta(action.delta, self.now())
                except Exception as e:
                    log.exception("applying delta %d", action.delta.delta_seq)
                    return self.session.delta_failed(self.port.delta_seq, str(e), mono)
                self._changed("delta")
            case StageChunk():
                if action.first:
                    self._stop_building()
                try:
                    await self.port.stage(action.header, action.payload, action.first, self.now())
                except SnapshotError as e:
                    return self._snapshot_error(e)
                if action.last:
                    # built off the loop, for seconds: the link goes on with its messages
                    self._building = asyncio.create_task(self._built(client), name="snapshot-build")
            case CommitSnapshot():
                try:
                    await self.port.commit()
                except SnapshotError as e:
                    return self.session.snapshot_failed(str(e), self.mono())
                log.info("snapshot %s applied (delta_seq %d)", action.snapshot_id, action.delta_seq)
                self._changed("snapshot")
                follow = self.session.snapshot_committed(self.mono())
                if self.port.card_rule_changed:  # built under the rule before a reload
                    follow = [*follow, *self.session.want_snapshot("card_rule", self.mono())]
                return follow
            case AbortSnapshot():
                self._stop_building()
                await self.port.abort()
            case ApplyLookup():
                self._lookups.answered(action)
            case RecordPeerEvents():
                # in memory, recorded or not: a QR tap of ours waiting on one of these
                # tokens; before they are recorded: a code the ledger never saw needs no
                # look for a claim of ours there (sync/store/qr_claims.py)
                self._qr.rival_claims(action.sender, action.events)
                try:
                    seen = self.port.record_peer_events(
                        action.sender, list(action.events), action.zones, action.mark, self.now()
                    )
                except Exception as e:
                    # heard but not recorded (a full disk): not heard, then — the peer's
                    # charges and attendances would be missing while its heartbeats said
                    # everything up to now was here; asked for again by catch-up
                    self.stats["peer_events_not_recorded"] += 1
                    first = min((int(ev["seq"]) for ev in action.events), default=None)
                    self.session.peers.not_recorded(action.sender, first)
                    log.warning("events of %s not recorded (%r): asked for again", action.sender, e)
                    seen = {}
                for kind, n in seen.items():
                    self.session.stats[kind] += n
            case RecordOwnHistory():
                try:
                    seen = self.port.record_own_history(
                        list(action.events), action.zones, action.done, expired=action.expired, now=self.now())
                except Exception as e:
                    # still wanted, asked again from the start (recording is idempotent): a
                    # full disk, a store being rescued — whatever it was, the gap stays open
                    self.stats["history_not_recorded"] += 1
                    log.warning("our events back from the central system not recorded (%r): asked again", e)
                    self.session.want_history(action.wanted)
                    return ()
                for kind, n in seen.items():
                    self.session.stats[f"history_{kind}"] += n
                if action.done:
                    log.warning("the events this daemon's lost ledger held are back from the central system")
            case StorePeerMark():
                self.port.save_peer_mark(action.peer, action.heard_seq, action.heard_through)
            case ServeCatchUp():
                if client is not None:
                    self._catch_up.serve(functools.partial(self._publish, client), action.request)
            case RaiseAlarm():
                log.warning("alarm %s: %s", action.kind, action.detail)
                self.port.alarm(action.kind, action.detail, self.now())
            case CheckOwnEvents():
                differ = self.port.events_not_ours(list(action.events))
                if differ:
                    log.error("events under this daemon's id that are not ours: seq %s — another daemon runs "
                              "under this daemon_id (a cloned SD card?)", ", ".join(map(str, differ[:10])))
                    return self.session.twin_seen(
                        f"events under this id on the site's topic that this ledger numbered otherwise: "
                        f"seq {', '.join(map(str, differ[:10]))}", mono)
            case ReadReplay():
                return self.session.replay_ready(action.request, self.port.first_held_seq(), mono)
            case PublishHealth():
                if client is not None:
                    await self.publish_health()
            case PruneAcked():
                pruned = self.port.prune(self.now() - timedelta(seconds=action.older_than), action.keep_max)
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
                members = await self.port.built()
            except SnapshotError as e:
                follow = self._snapshot_error(e)
            else:
                follow = self.session.snapshot_staged(self.port.member_count(), members, self.mono())
            await self._perform(client, follow)
        finally:
            if self._building is asyncio.current_task():
                self._building = None

    def _snapshot_error(self, e: SnapshotError) -> Sequence[Action]:
        if isinstance(e, SnapshotRejected):
            return self.session.snapshot_rejected(str(e), self.mono())
        return self.session.snapshot_failed(str(e), self.mono())

    def _settle_numbering(self, central_seq: int, ack: Ack | None = None) -> Sequence[Action]:
        """The central system said how far it got with our events (an ack, or `applied` in
        its passes): the store's held events number on after that and may leave."""
        unheard, wait = self.session.settle_unheard(self.mono())
        if wait:  # their word on how far they heard the old box may come yet: tried every second
            if self._unsettled is None:
                log.info("the numbering waits for the site's daemons to say how far they heard this id: %s",
                         ", ".join(unheard))
            self._unsettled = (central_seq, ack)
            return []
        try:
            self.port.settle_numbering(central_seq, self.now(), self.session.site_heard_of_us)
        except (OSError, sqlite3.Error) as e:
            self.stats["numbering_not_settled"] += 1
            if self._unsettled is None:
                log.warning("the numbering is not settled yet (%s): our later events stay held, tried again", e)
            self._unsettled = (central_seq, ack)
            return []
        self._unsettled = None
        if unheard:
            detail = (f"this daemon's numbering was settled without hearing {', '.join(unheard)} say how far it "
                      f"heard this daemon id (offline: its last will says nothing of it): if it held events of the "
                      f"old box beyond {self.session.site_heard_of_us or central_seq}, ours under those numbers are "
                      f"taken there for repeats — it raises numbering_collision when it hears them")
            log.warning("alarm numbering_peers_unheard: %s", detail)
            self.port.alarm("numbering_peers_unheard", detail, self.now(), peers=unheard)
        self._wake.set()
        self.session.want_history(self.port.own_history_wanted())  # what the lost ledger knew
        return self.session.numbering_settled(self.port.last_seq, ack, self.mono())

    def _changed(self, kind: str) -> None:
        if self.port.numbering_unsure:  # a sync's passes say how far the central system got
            central = self.port.central_applied()
            if central is not None:
                self._settle_numbering(central)
        if self.on_change is not None:
            try:
                self.on_change(kind)
            except Exception:
                log.exception("on_change callback")

    # -- uplink: the outbox -------------------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        if self.session.events_committed(self.port.last_seq):
            self._wake.set()

    async def _publisher(self, client: aiomqtt.Client) -> None:
        idle = min(1.0, self.settings.ack_timeout / 2)
        while True:
            self._wake.clear()
            after = self.session.uplink_after(self.mono())
            if after is not None:
                try:
                    events = await self.port.durable_events_after(after, limit=self.settings.batch_events)
                except OSError as e:
                    # nothing is sent that a power cut could take back; tried again in `idle`
                    self.stats["uplink_not_durable"] += 1
                    log.warning("uplink waits: our log cannot be flushed (%s)", e)
                    events = []
                if events and self.session.uplink_after(self.mono()) != after:
                    continue  # an ack or a rewind while the disk was flushing moved the point to send from
                message = self.session.uplink(events, self.mono())  # None when there is nothing
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
                if self._unsettled is not None and self.port.numbering_unsure:
                    await self._perform(client, self._settle_numbering(*self._unsettled))
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

    # -- one QR code, one use across the site (sync/link/qr_contest.py) -------------------

    async def contest_qr(self, token: str, claimed_at: datetime) -> bool:
        """We have just used up QR `token` (its `qr_used` event is on its way to the site's
        other daemons). Wait up to `qr_claim_wait` for another daemon's claim on it and
        apply the rule every daemon applies: the earlier claim wins, then the lower daemon
        id. True when ours lost (the tap is refused `qr_replayed`). No wait when nobody
        could claim it (not connected, no other daemon online)."""
        return await self._qr.contest(token, claimed_at, lambda: self.connected and self.session.peers.any_online())

    # -- live look-ups (sync/link/lookups.py) ------------------------------------------------

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
        return await self._lookups.ask(
            corr, functools.partial(self._publish, client, request),
            timeout if timeout is not None else self.settings.lookup_timeout,
        )


def _taken_over(e: BaseException) -> bool:
    """The broker ended the connection with MQTT 5's reason 142, "Session taken over":
    another client connected with our client id (aiomqtt chains the disconnect's reason).
    Not every broker says so: mosquitto 2.0 closes the socket without a DISCONNECT (paho:
    "Unspecified error", 128) and publishes the old connection's last will — which the
    session recognises instead (Session.will)."""
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None:
            return False
        if getattr(seen, "rc", None) == 142 or "taken over" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False
