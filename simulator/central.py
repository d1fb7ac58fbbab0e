"""A reference central system over MQTT: what a booking system has to do to talk to gates.

Integrators: read this with docs/protocol.md. It keeps its own SQLite database
(sqlite-utils) of members, passes (with the central balance), bookings, attendance and
loyalty points, per site, and:

- applies each daemon's events **in seq order, exactly once**: an event with a seq at or
  below the daemon's `applied_seq` is a repeat and ignored; the next one (`applied_seq +
  1`) is applied and the event row, its effect (a deduction changes the balance once) and
  the new `applied_seq` are committed in one transaction; one further ahead means
  something was lost in between: it is not applied, and the ack says `gap: true` so the
  daemon resends;
- acknowledges with `{applied_seq}` on `{prefix}/{site}/{daemon}/ack` after the commit;
- publishes, for every pass whose balance a daemon's deduction changed, a delta carrying
  the new balance and `applied` = each daemon's `applied_seq`, so every gate of the site
  keeps "central balance minus my later deductions" right;
- numbers its deltas per site (`delta_seq`, gap-free), keeps them, replays them to a
  daemon that reconnects, and publishes chunked snapshots on request;
- answers live look-ups (MQTT v5 request/response), and sends a found member to every
  gate of the site in the next delta;
- after a restore from a backup, renumbers its deltas after the gates' and asks for
  replays (docs/protocol.md, "Recovery after the central system restores a backup").

Its database is simulator/central_db.py, its generated data simulator/central_seed.py; a
seed file is sync/records.py's CentralSeedFile, the file `gated seed` reads.
`Central` runs inside a test's event loop; `serve_central()` is what `gated sim central`
runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import Field, ValidationError

from rules.timeutil import iso_utc
from simulator.central_db import CentralDB
from simulator.central_seed import generate
from sync.link import mqtt_call, software_version
from sync.link.reconnect import Reconnect
from sync.link.settings import BrokerSettings
from sync.protocol import (
    PROTOCOL,
    DeltaHead,
    EventBatch,
    HistoryRequest,
    LookupRequest,
    ReplayAnswer,
    ReplayRequest,
    ResyncRequest,
    Status,
    central_status_topic,
)
from sync.records import BookingIn, CentralSeedFile, MemberIn, PassIn

__all__ = ["Central", "CentralSettings", "generate", "serve_central"]

HISTORY_CHUNK = 500  # events a history answer carries at most
HISTORY_PAYLOAD = 256_000  # bytes a history answer stays under (the gates' max_payload is larger)

log = logging.getLogger("gated.central")


class CentralSettings(BrokerSettings):
    """The reference central system's connection (the broker part is a gate's: sync/link/settings.py)."""

    sites: list[str] | None = None  # None: every site under the prefix
    chunk_rows: int = Field(default=500, ge=1)  # records per snapshot chunk
    max_payload: int = 16_000_000
    identifier: str = "gated-central"
    session_expiry: int = Field(default=86_400, ge=0)  # the broker keeps our subscriptions and queued events
    # several instances behind one MQTT shared subscription ($share/GROUP/...): each gets
    # part of the requests; the database (applied_seq per daemon) keeps events in order
    shared_group: str | None = None
    publish_status: bool = True  # one instance of several owns `central/status`
    head_interval: float = Field(default=30.0, gt=0)  # each site's delta head again this often


class Central(CentralDB):
    """The reference central system. `await run()` until cancelled (reconnects by itself);
    the other methods are its back office (tests and demos change data through them)."""

    def __init__(
        self,
        settings: CentralSettings,
        db_path: str | Path,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        super().__init__(db_path, chunk_rows=settings.chunk_rows, clock=clock)
        self.settings = settings
        self.connected = False
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._snapshot_pending: dict[str, set[str]] = {}
        self._snapshot_running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._gap_seen: dict[tuple[str, str], float] = {}
        self._replay_asked: dict[tuple[str, str], float] = {}
        self._replays_asked: dict[str, tuple[str, str]] = {}  # request id -> (site, daemon) not yet answered

    async def push(
        self,
        site: str,
        *,
        members: Sequence[MemberIn | Mapping[str, Any]] = (),
        passes: Sequence[PassIn | Mapping[str, Any]] = (),
        bookings: Sequence[BookingIn | Mapping[str, Any]] = (),
        remove: Mapping[str, Sequence[str]] | None = None,
    ) -> int:
        """A change in the back office: stored, then published as the site's next delta."""
        payload = self._new_delta(
            site,
            [m if isinstance(m, MemberIn) else MemberIn.model_validate(m) for m in members],
            [p if isinstance(p, PassIn) else PassIn.model_validate(p) for p in passes],
            [b if isinstance(b, BookingIn) else BookingIn.model_validate(b) for b in bookings],
            remove,
        )
        await self.publish_delta(site, payload)
        self.stats["deltas_published"] += 1
        return self.delta_seq(site)

    async def publish_delta(self, site: str, payload: bytes) -> None:
        """A delta, then the site's head: a gate that missed the delta learns it did."""
        await self._publish(f"{self.settings.prefix}/{site}/delta", payload, qos=1)
        await self.publish_head(site)

    async def publish_head(self, site: str) -> None:
        """The site's latest delta_seq, retained (docs/protocol.md, "Deltas")."""
        head = DeltaHead(delta_seq=self.delta_seq(site), at=iso_utc(self.clock()))
        await self._publish(f"{self.settings.prefix}/{site}/delta/head", head.model_dump_json().encode(), qos=1,
                            retain=True)

    async def _heads(self) -> None:
        """Every site's head again every `head_interval`: a gate behind a bridge that lost
        the retained copy (or every delta of a WAN cut) still learns within that time."""
        while True:
            for (site,) in self.conn.execute("SELECT site FROM sites").fetchall():
                await self.publish_head(str(site))
            await asyncio.sleep(self.settings.head_interval)

    async def publish_snapshot(
        self, site: str, requested_by: Sequence[str] = (), *, full_replacement: bool = False
    ) -> int:
        payloads = self.snapshot_payloads(site, requested_by, full_replacement=full_replacement)
        topic = f"{self.settings.prefix}/{site}/snapshot"
        for p in payloads:
            await self._publish(topic, p, qos=1)
        self.stats["snapshots_published"] += 1
        return len(payloads)

    def _schedule_snapshot(self, site: str, daemon: str) -> None:
        self._snapshot_pending.setdefault(site, set()).add(daemon)
        if site in self._snapshot_running:
            return
        self._snapshot_running.add(site)

        async def worker() -> None:
            try:
                while self._snapshot_pending.get(site):
                    who = sorted(self._snapshot_pending[site])
                    self._snapshot_pending[site] = set()
                    await self.publish_snapshot(site, who)
            except aiomqtt.MqttError as e:
                log.info("snapshot for %s interrupted: %s", site, e)
            finally:
                self._snapshot_running.discard(site)

        self._spawn(worker())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_resync(self, site: str, req: ResyncRequest) -> None:
        self.stats[f"resync_{req.reason}"] += 1
        current = self.delta_seq(site)
        if req.since_delta_seq is not None and req.since_delta_seq > current:
            # the gate has deltas this database never numbered: it was restored from a
            # backup. Never reuse a delta_seq: go on from the gate's, with a snapshot.
            self.stats["delta_seq_behind"] += 1
            log.warning("%s: %s is at delta %d, this database at %d: renumbering", site, req.daemon,
                        req.since_delta_seq, current)
            self.renumber_after(site, req.since_delta_seq)
            self._schedule_snapshot(site, req.daemon)
            return
        if req.reason in ("reconnect", "behind") and req.since_delta_seq is not None:
            since = req.since_delta_seq
            if since == current:
                return
            rows = self.conn.execute(
                "SELECT delta_seq, body FROM deltas WHERE site = ? AND delta_seq > ? ORDER BY delta_seq",
                (site, since),
            ).fetchall()
            if since < current and len(rows) == current - since:
                for _, body in rows:
                    await self._publish(f"{self.settings.prefix}/{site}/delta", body.encode(), qos=1)
                await self.publish_head(site)
                self.stats["deltas_replayed"] += len(rows)
                return
        self._schedule_snapshot(site, req.daemon)

    # -- MQTT ------------------------------------------------------------------------------------

    async def _publish(
        self, topic: str, payload: bytes, qos: int = 1, properties: Properties | None = None, *, retain: bool = False
    ) -> None:
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("central not connected")
        await mqtt_call(client.publish(topic, payload, qos=qos, properties=properties, retain=retain))

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    def _status(self, state: str) -> bytes:
        at = iso_utc(self.clock()) if state == "online" else None
        body = Status(daemon="central", state="online" if state == "online" else "offline", at=at,
                      version=software_version(), protocol=PROTOCOL)
        return body.model_dump_json(exclude_none=True).encode()

    def _client_for(self, host: str, port: int) -> aiomqtt.Client:
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry  # the broker keeps our events while we are away
        will = None
        if s.publish_status:
            will = aiomqtt.Will(central_status_topic(s.prefix), self._status("offline"), qos=1, retain=True)
        return aiomqtt.Client(
            host,
            port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            identifier=s.identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            will=will,
            tls_context=s.tls_context(),
            timeout=s.connect_timeout,
            keepalive=s.keepalive,
            max_inflight_messages=100,
        )

    async def run(self) -> None:
        s = self.settings
        plan = Reconnect(
            s.endpoints(), initial=s.backoff_initial, maximum=s.backoff_max, refused=s.backoff_refused,
            rand=random.random,
        )
        attempt = plan.first()
        while True:
            if attempt.delay > 0:
                await asyncio.sleep(attempt.delay)
            worked = refused = False
            try:
                async with self._client_for(*attempt.endpoint) as client:
                    worked = True
                    plan.connected()
                    await self._session(client)
            except MqttConnectError as e:
                refused = True
                log.warning("central mqtt refused: %s", e)
            except aiomqtt.MqttError as e:
                log.info("central mqtt: %s", e)
            except Exception:
                self.stats["errors"] += 1
                log.exception("central failed; reconnecting")
            finally:
                self.connected = False
                self._client = None
                self._ready.clear()
            attempt = plan.lost() if worked else plan.failed(refused=refused)

    def _topic(self, tail: str) -> str:
        """A subscription for every site served; shared between instances when configured."""
        topic = f"{self.settings.prefix}/{tail}"
        group = self.settings.shared_group
        return f"$share/{group}/{topic}" if group else topic

    async def _session(self, client: aiomqtt.Client) -> None:
        p = self.settings.prefix
        for site in self.settings.sites or ["+"]:
            await mqtt_call(client.subscribe(self._topic(f"{site}/+/events"), qos=1))
            await mqtt_call(client.subscribe(self._topic(f"{site}/+/replay/answer"), qos=1))
            await mqtt_call(client.subscribe(self._topic(f"{site}/resync"), qos=1))
            await mqtt_call(client.subscribe(self._topic(f"{site}/lookup/request"), qos=0))
            await mqtt_call(client.subscribe(self._topic(f"{site}/+/history/request"), qos=1))
        self._client = client
        self.connected = True
        self.stats["connects"] += 1
        if self.settings.publish_status:
            await mqtt_call(client.publish(central_status_topic(p), self._status("online"), qos=1, retain=True))
        self._ready.set()
        heads = asyncio.get_running_loop().create_task(self._heads())
        self._tasks.add(heads)
        heads.add_done_callback(self._tasks.discard)
        try:
            async for message in client.messages:
                await self._handle(message)
        except asyncio.CancelledError:
            if self.settings.publish_status:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await client.publish(central_status_topic(p), self._status("offline"), qos=1, retain=True)
            raise
        finally:
            for task in list(self._tasks):
                task.cancel()

    async def _handle(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
        levels = topic.split("/")
        prefix_levels = len(self.settings.prefix.split("/"))
        rest = levels[prefix_levels:]
        if len(payload) > self.settings.max_payload:
            self.stats["oversized"] += 1
            return
        try:
            if len(rest) == 3 and rest[2] == "events":
                site, daemon = rest[0], rest[1]
                batch = EventBatch.model_validate_json(payload)
                if batch.daemon != daemon:
                    self.stats["invalid"] += 1
                    return
                ack, changed = self.apply_events(site, batch)
                await self._publish(f"{self.settings.prefix}/{site}/{daemon}/ack", ack.model_dump_json().encode(), qos=1)
                if ack.gap:
                    await self._after_gap(site, daemon, batch.events[0].seq, ack.applied_seq)
                if changed:
                    delta = self._new_delta(site, members=self.members(site, changed.members), pass_ids=changed.passes)
                    await self.publish_delta(site, delta)
            elif len(rest) == 4 and rest[2:] == ["replay", "answer"]:
                answer = ReplayAnswer.model_validate_json(payload)
                # only an answer to a request of ours, from the daemon asked: anyone else's
                # "first_seq" would have this database skip events it never received
                if self._replays_asked.pop(answer.request_id, None) != (rest[0], rest[1]) or answer.daemon != rest[1]:
                    self.stats["replay_answers_unasked"] += 1
                    return
                self._on_replay_answer(rest[0], rest[1], answer)
            elif len(rest) == 4 and rest[2:] == ["history", "request"]:
                ask = HistoryRequest.model_validate_json(payload)
                if ask.daemon != rest[1]:
                    self.stats["invalid"] += 1
                    return
                await self._answer_history(rest[0], ask)
            elif len(rest) == 2 and rest[1] == "resync":
                await self._on_resync(rest[0], ResyncRequest.model_validate_json(payload))
            elif len(rest) == 3 and rest[1:] == ["lookup", "request"]:
                req = LookupRequest.model_validate_json(payload)
                props = message.properties
                response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
                if not response_topic:
                    self.stats["lookup_no_response_topic"] += 1
                    return
                out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                corr = getattr(props, "CorrelationData", None)
                if corr is not None:
                    out.CorrelationData = corr
                resp = self.lookup(rest[0], req.card)
                self.stats["lookups"] += 1
                await self._publish(response_topic, resp.model_dump_json(by_alias=True).encode(), qos=0, properties=out)
                if resp.found:
                    # the site's other gates learn the member too, by the numbered path
                    delta = self._new_delta(rest[0], members=resp.members, bookings=resp.bookings,
                                            pass_ids=[p.id for p in resp.passes])
                    await self.publish_delta(rest[0], delta)
        except ValidationError as e:
            self.stats["invalid"] += 1
            log.warning("central dropped a message on %s: %s", topic, e.errors()[:1])

    async def _answer_history(self, site: str, ask: HistoryRequest) -> None:
        """A daemon whose ledger was lost asks for its own events back: those held here
        in its range, since its instant, in chunks of at most HISTORY_CHUNK events."""
        try:
            since = datetime.fromisoformat(ask.since.replace("Z", "+00:00"))
        except ValueError:
            self.stats["invalid"] += 1
            return
        if since.tzinfo is None:
            self.stats["invalid"] += 1
            return
        events = self.history(site, ask.daemon, ask.from_seq, ask.to_seq, since)
        topic = f"{self.settings.prefix}/{site}/{ask.daemon}/history"
        self.stats["history_requests"] += 1
        start = 0
        while True:
            n = HISTORY_CHUNK
            while True:
                chunk = events[start : start + n]
                more = start + len(chunk) < len(events)
                body = {"v": 1, "daemon": ask.daemon, "request_id": ask.request_id, "events": chunk, "more": more}
                payload = json.dumps(body, separators=(",", ":")).encode()
                if len(payload) <= HISTORY_PAYLOAD or n == 1:
                    break
                n //= 2
            await self._publish(topic, payload, qos=1)
            self.stats["history_events_sent"] += len(chunk)
            start += len(chunk)
            if not more:
                return

    async def _after_gap(self, site: str, daemon: str, first: int, applied: int) -> None:
        """A gap answered once is normal (a batch lost on the way: the gate resends from
        its last acknowledged event). The resends still starting above applied_seq + 1
        mean the gate believes we acknowledged more than this database holds — it was
        restored from a backup: ask for a replay (at most once per few seconds)."""
        if first <= applied + 1:
            return
        key = (site, daemon)
        now = asyncio.get_running_loop().time()
        seen = self._gap_seen.get(key)
        self._gap_seen[key] = now
        if seen is None or now - seen > 60:
            return
        if now - self._replay_asked.get(key, float("-inf")) < 5:
            return
        self._replay_asked[key] = now
        await self.request_replay(site, daemon, applied + 1)

    # -- after restoring a backup --------------------------------------------------------------

    async def request_replay(self, site: str, daemon: str, from_seq: int | None = None) -> str:
        """Ask a daemon to send its events again from `from_seq` (default: the first this
        database has not applied). Returns the request id."""
        since = from_seq if from_seq is not None else self.applied_seq(site, daemon) + 1
        req = ReplayRequest(request_id=uuid.uuid4().hex, from_seq=since)
        self._replays_asked[req.request_id] = (site, daemon)
        while len(self._replays_asked) > 1000:  # never answered (the daemon gone): the oldest go
            del self._replays_asked[next(iter(self._replays_asked))]
        await self._publish(f"{self.settings.prefix}/{site}/{daemon}/replay", req.model_dump_json().encode(), qos=1)
        self.stats["replays_requested"] += 1
        return req.request_id

async def serve_central(
    settings: CentralSettings,
    db_path: str | Path,
    seed: CentralSeedFile | None = None,
    *,
    site: str = "site",
) -> None:
    """`gated sim central`: run the reference central system until cancelled. `seed` (the
    file `gated seed` reads, loaded once, into an empty database) gives `site` its members,
    passes and bookings, and each daemon's applied seq the balances reflect."""
    central = Central(settings, db_path)
    if seed is not None and not central.conn.execute("SELECT 1 FROM members LIMIT 1").fetchone():
        central.load(site, seed.members, [p.record() for p in seed.passes], seed.bookings, applied=seed.site_applied())
    await central.run()
