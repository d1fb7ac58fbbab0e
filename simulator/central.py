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
- answers live look-ups (MQTT v5 request/response).

`Central` runs inside a test's event loop; `serve_central()` is what `gated sim central`
runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import ssl
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
import sqlite_utils
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from rules.credential import card_from_text, card_key, lookup_keys
from rules.timeutil import iso_utc
from sync.protocol import (
    Ack,
    EventBatch,
    LookupRequest,
    LookupResponse,
    ResyncRequest,
    Status,
    central_status_topic,
)
from sync.records import BookingIn, MemberIn, PassIn

log = logging.getLogger("gated.central")


class CentralSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = 1883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    username: str | None = None
    password: SecretStr | None = None
    prefix: str = "gated"
    sites: list[str] | None = None  # None: every site under the prefix
    chunk_rows: int = Field(default=500, ge=1)  # records per snapshot chunk
    max_payload: int = 16_000_000
    identifier: str = "gated-central"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.ca_file:
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        if self.tls_insecure:
            ctx.check_hostname = False
        return ctx


def _dump(model: BaseModel) -> str:
    return model.model_dump_json(by_alias=True, exclude_none=True)


class Central:
    """The reference central system. `await run()` until cancelled (reconnects by itself);
    the other methods are its back office (tests and demos change data through them)."""

    def __init__(self, settings: CentralSettings, db_path: str | Path):
        self.settings = settings
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.db_path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(self.conn)
        self._schema()
        self.stats: Counter[str] = Counter()
        self.connected = False
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()
        self._snapshot_pending: dict[str, set[str]] = {}
        self._snapshot_running: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- storage ------------------------------------------------------------------------------

    def _schema(self) -> None:
        db = self.db
        db.table("sites").create({"site": str, "delta_seq": int}, pk="site", if_not_exists=True)
        db.table("members").create({"site": str, "id": str, "body": str}, pk=("site", "id"), if_not_exists=True)
        db.table("cards").create({"site": str, "card": str, "member": str}, pk=("site", "card"), if_not_exists=True)
        db.table("cards").create_index(["site", "member"], if_not_exists=True)
        db.table("passes").create(
            {"site": str, "id": str, "member": str, "balance": str, "body": str}, pk=("site", "id"), if_not_exists=True
        )
        db.table("passes").create_index(["site", "member"], if_not_exists=True)
        db.table("bookings").create(
            {"site": str, "id": str, "member": str, "body": str}, pk=("site", "id"), if_not_exists=True
        )
        db.table("bookings").create_index(["site", "member"], if_not_exists=True)
        db.table("applied").create({"site": str, "daemon": str, "applied_seq": int}, pk=("site", "daemon"), if_not_exists=True)
        db.table("events").create(
            {"id": str, "site": str, "daemon": str, "seq": int, "type": str, "body": str, "received_at": str},
            pk="id",
            if_not_exists=True,
        )
        db.table("events").create_index(["site", "daemon", "seq"], unique=True, if_not_exists=True)
        db.table("attendance").create({"site": str, "booking": str, "status": str, "by": str}, pk=("site", "booking"), if_not_exists=True)
        db.table("points").create({"site": str, "member": str, "points": int}, pk=("site", "member"), if_not_exists=True)
        db.table("deltas").create({"site": str, "delta_seq": int, "body": str}, pk=("site", "delta_seq"), if_not_exists=True)

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def _tx(self) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def _put_member(self, site: str, m: MemberIn) -> None:
        c = self.conn
        c.execute("INSERT OR REPLACE INTO members(site, id, body) VALUES (?,?,?)", (site, m.id, _dump(m)))
        c.execute("DELETE FROM cards WHERE site = ? AND member = ?", (site, m.id))
        c.executemany(
            "INSERT OR REPLACE INTO cards(site, card, member) VALUES (?,?,?)",
            # canonical keys; untyped strings by the default rule (rules.credential)
            ((site, card_key(card), m.id) for card in m.cards),
        )

    def _put_pass(self, site: str, p: PassIn) -> None:
        data = p.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"applied_seq"})
        for k in ("balance", "walk_in_cost"):  # amounts travel as JSON numbers
            if k in data:
                d = Decimal(str(data[k]))
                data[k] = int(d) if d == d.to_integral_value() else float(d)
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        self.conn.execute(
            "INSERT OR REPLACE INTO passes(site, id, member, balance, body) VALUES (?,?,?,?,?)",
            (site, p.id, p.member, str(p.balance) if p.balance is not None else None, body),
        )

    def _put_booking(self, site: str, b: BookingIn) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO bookings(site, id, member, body) VALUES (?,?,?,?)", (site, b.id, b.member, _dump(b))
        )

    def load(
        self,
        site: str,
        members: Iterable[MemberIn | Mapping[str, Any]] = (),
        passes: Iterable[PassIn | Mapping[str, Any]] = (),
        bookings: Iterable[BookingIn | Mapping[str, Any]] = (),
    ) -> None:
        """Bulk-load records without publishing (the initial state; gates get a snapshot)."""
        with self._tx():
            self.conn.execute("INSERT OR IGNORE INTO sites(site, delta_seq) VALUES (?, 0)", (site,))
            for m in members:
                self._put_member(site, m if isinstance(m, MemberIn) else MemberIn.model_validate(m))
            for p in passes:
                self._put_pass(site, p if isinstance(p, PassIn) else PassIn.model_validate(p))
            for b in bookings:
                self._put_booking(site, b if isinstance(b, BookingIn) else BookingIn.model_validate(b))

    def delta_seq(self, site: str) -> int:
        row = self.conn.execute("SELECT delta_seq FROM sites WHERE site = ?", (site,)).fetchone()
        return int(row[0]) if row else 0

    def applied_seq(self, site: str, daemon: str) -> int:
        row = self.conn.execute("SELECT applied_seq FROM applied WHERE site = ? AND daemon = ?", (site, daemon)).fetchone()
        return int(row[0]) if row else 0

    def applied_map(self, site: str) -> dict[str, int]:
        return {
            str(d): int(s) for d, s in self.conn.execute("SELECT daemon, applied_seq FROM applied WHERE site = ?", (site,))
        }

    def balance(self, site: str, pass_id: str) -> Decimal | None:
        row = self.conn.execute("SELECT balance FROM passes WHERE site = ? AND id = ?", (site, pass_id)).fetchone()
        return None if row is None or row[0] is None else Decimal(row[0])

    def events(self, site: str, daemon: str) -> list[dict[str, Any]]:
        """The daemon's events as applied here, in the order they were applied."""
        rows = self.conn.execute(
            "SELECT body FROM events WHERE site = ? AND daemon = ? ORDER BY rowid", (site, daemon)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def points(self, site: str, member: str) -> int:
        row = self.conn.execute("SELECT points FROM points WHERE site = ? AND member = ?", (site, member)).fetchone()
        return int(row[0]) if row else 0

    def attendance(self, site: str, booking: str) -> str | None:
        row = self.conn.execute("SELECT status FROM attendance WHERE site = ? AND booking = ?", (site, booking)).fetchone()
        return None if row is None else str(row[0])

    def _pass_out(self, site: str, body: str, applied: Mapping[str, int]) -> str:
        return body[:-1] + ',"applied":' + json.dumps(dict(applied), separators=(",", ":")) + "}"

    # -- applying a daemon's events -----------------------------------------------------------------

    def apply_events(self, site: str, batch: EventBatch) -> tuple[Ack, set[str]]:
        """Apply in seq order, each once; returns the ack and the passes whose balance moved."""
        daemon = batch.daemon
        changed: set[str] = set()
        gap = False
        now = iso_utc(datetime.now(UTC))
        with self._tx():
            c = self.conn
            c.execute("INSERT OR IGNORE INTO sites(site, delta_seq) VALUES (?, 0)", (site,))
            row = c.execute("SELECT applied_seq FROM applied WHERE site = ? AND daemon = ?", (site, daemon)).fetchone()
            applied = int(row[0]) if row else 0
            for ev in batch.events:
                if ev.seq <= applied:
                    self.stats["duplicates"] += 1
                    continue
                if ev.seq > applied + 1:
                    gap = True
                    self.stats["gaps"] += 1
                    break
                body = ev.model_dump(mode="json")
                inserted = c.execute(
                    "INSERT OR IGNORE INTO events(id, site, daemon, seq, type, body, received_at) VALUES (?,?,?,?,?,?,?)",
                    (ev.id, site, daemon, ev.seq, ev.type, json.dumps(body), now),
                ).rowcount
                applied = ev.seq
                if not inserted:  # the same id under another seq: never apply twice
                    self.stats["duplicate_ids"] += 1
                    continue
                self._effect(site, body, changed)
                self.stats["events_applied"] += 1
            c.execute(
                "INSERT INTO applied(site, daemon, applied_seq) VALUES (?,?,?) "
                "ON CONFLICT(site, daemon) DO UPDATE SET applied_seq = excluded.applied_seq",
                (site, daemon, applied),
            )
        return Ack(applied_seq=applied, gap=gap), changed

    def _effect(self, site: str, ev: Mapping[str, Any], changed: set[str]) -> None:
        c = self.conn
        kind = ev.get("type")
        if kind == "deduction" and ev.get("pass") is not None:
            row = c.execute("SELECT balance FROM passes WHERE site = ? AND id = ?", (site, ev["pass"])).fetchone()
            if row is not None and row[0] is not None:
                new = Decimal(row[0]) - Decimal(str(ev.get("amount", 0)))
                body = json.loads(
                    c.execute("SELECT body FROM passes WHERE site = ? AND id = ?", (site, ev["pass"])).fetchone()[0]
                )
                body["balance"] = int(new) if new == new.to_integral_value() else float(new)
                c.execute(
                    "UPDATE passes SET balance = ?, body = ? WHERE site = ? AND id = ?",
                    (str(new), json.dumps(body, separators=(",", ":")), site, ev["pass"]),
                )
                changed.add(str(ev["pass"]))
            else:
                self.stats["deduction_unknown_pass"] += 1
        elif kind == "attendance" and ev.get("booking"):
            c.execute(
                "INSERT OR REPLACE INTO attendance(site, booking, status, by) VALUES (?,?,?,?)",
                (site, ev["booking"], ev.get("status"), ev.get("by")),
            )
        elif kind == "loyalty" and ev.get("member"):
            c.execute(
                "INSERT INTO points(site, member, points) VALUES (?,?,?) "
                "ON CONFLICT(site, member) DO UPDATE SET points = points + excluded.points",
                (site, ev["member"], int(ev.get("points") or 0)),
            )

    # -- deltas and snapshots ---------------------------------------------------------------

    def _new_delta(
        self,
        site: str,
        members: Sequence[MemberIn] = (),
        passes: Sequence[PassIn] = (),
        bookings: Sequence[BookingIn] = (),
        remove: Mapping[str, Sequence[str]] | None = None,
        pass_ids: Iterable[str] = (),
    ) -> bytes:
        """Store the change and a numbered delta describing it, in one transaction."""
        remove = remove or {}
        with self._tx():
            c = self.conn
            c.execute("INSERT OR IGNORE INTO sites(site, delta_seq) VALUES (?, 0)", (site,))
            for m in members:
                self._put_member(site, m)
            for p in passes:
                self._put_pass(site, p)
            for b in bookings:
                self._put_booking(site, b)
            for mid in remove.get("members", ()):
                c.execute("DELETE FROM members WHERE site = ? AND id = ?", (site, mid))
                c.execute("DELETE FROM cards WHERE site = ? AND member = ?", (site, mid))
            for pid in remove.get("passes", ()):
                c.execute("DELETE FROM passes WHERE site = ? AND id = ?", (site, pid))
            for bid in remove.get("bookings", ()):
                c.execute("DELETE FROM bookings WHERE site = ? AND id = ?", (site, bid))
            seq = self.delta_seq(site) + 1
            applied = self.applied_map(site)
            ids = sorted({p.id for p in passes} | set(pass_ids))
            pass_bodies = []
            for pid in ids:
                row = c.execute("SELECT body FROM passes WHERE site = ? AND id = ?", (site, pid)).fetchone()
                if row is not None:
                    pass_bodies.append(self._pass_out(site, row[0], applied))
            payload = (
                f'{{"v":1,"delta_seq":{seq},"at":"{iso_utc(datetime.now(UTC))}",'
                f'"members":[{",".join(_dump(m) for m in members)}],'
                f'"passes":[{",".join(pass_bodies)}],'
                f'"bookings":[{",".join(_dump(b) for b in bookings)}],'
                f'"remove":{json.dumps({k: list(remove.get(k, ())) for k in ("members", "passes", "bookings")})}}}'
            )
            c.execute("INSERT INTO deltas(site, delta_seq, body) VALUES (?,?,?)", (site, seq, payload))
            c.execute("UPDATE sites SET delta_seq = ? WHERE site = ?", (seq, site))
        return payload.encode()

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
        await self._publish(f"{self.settings.prefix}/{site}/delta", payload, qos=1)
        self.stats["deltas_published"] += 1
        return self.delta_seq(site)

    def snapshot_payloads(self, site: str, requested_by: Sequence[str] = ()) -> list[bytes]:
        """The site's whole state as chunks, read in one transaction (consistent with its
        delta_seq)."""
        c = self.conn
        c.execute("BEGIN")
        try:
            base = self.delta_seq(site)
            applied = self.applied_map(site)
            rows: list[tuple[int, str]] = [(0, r[0]) for r in c.execute("SELECT body FROM members WHERE site = ? ORDER BY id", (site,))]
            rows += [(1, self._pass_out(site, r[0], applied)) for r in c.execute("SELECT body FROM passes WHERE site = ? ORDER BY id", (site,))]
            rows += [(2, r[0]) for r in c.execute("SELECT body FROM bookings WHERE site = ? ORDER BY id", (site,))]
        finally:
            c.execute("COMMIT")
        n = self.settings.chunk_rows
        chunks = max(1, (len(rows) + n - 1) // n)
        sid = uuid.uuid4().hex
        at = iso_utc(datetime.now(UTC))
        who = json.dumps(list(requested_by))
        out = []
        for i in range(chunks):
            part = rows[i * n : (i + 1) * n]
            lists = ([], [], [])  # type: tuple[list[str], list[str], list[str]]
            for k, body in part:
                lists[k].append(body)
            out.append(
                (
                    f'{{"v":1,"snapshot_id":"{sid}","chunk":{i},"chunks":{chunks},"delta_seq":{base},'
                    f'"requested_by":{who},"at":"{at}","members":[{",".join(lists[0])}],'
                    f'"passes":[{",".join(lists[1])}],"bookings":[{",".join(lists[2])}]}}'
                ).encode()
            )
        return out

    async def publish_snapshot(self, site: str, requested_by: Sequence[str] = ()) -> int:
        payloads = self.snapshot_payloads(site, requested_by)
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
        if req.reason == "reconnect" and req.since_delta_seq is not None:
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
                self.stats["deltas_replayed"] += len(rows)
                return
        self._schedule_snapshot(site, req.daemon)

    # -- look-ups --------------------------------------------------------------------------------

    def lookup(self, site: str, card: str) -> LookupResponse:
        """By the typed key the gate sends (a plain string is read by its shape): the card
        itself, or an enrolled card that knows less of it (rules/credential.py)."""
        c = self.conn
        try:
            key, coarser = lookup_keys(card_from_text(card))
        except ValueError:
            return LookupResponse(found=False)
        keys = (key, *coarser)
        marks = ",".join("?" * len(keys))
        rows = c.execute(f"SELECT DISTINCT member FROM cards WHERE site = ? AND card IN ({marks})", (site, *keys)).fetchall()
        if len(rows) != 1:  # unknown, or cards of several members: no answer to give
            return LookupResponse(found=False)
        mid = rows[0][0]
        applied = self.applied_map(site)
        m = c.execute("SELECT body FROM members WHERE site = ? AND id = ?", (site, mid)).fetchone()
        passes = [
            self._pass_out(site, r[0], applied)
            for r in c.execute("SELECT body FROM passes WHERE site = ? AND member = ?", (site, mid))
        ]
        bookings = [r[0] for r in c.execute("SELECT body FROM bookings WHERE site = ? AND member = ?", (site, mid))]
        text = (
            f'{{"v":1,"found":true,"members":[{m[0]}],"passes":[{",".join(passes)}],'
            f'"bookings":[{",".join(bookings)}]}}'
        )
        return LookupResponse.model_validate_json(text)

    # -- MQTT ------------------------------------------------------------------------------------

    async def _publish(self, topic: str, payload: bytes, qos: int = 1, properties: Properties | None = None) -> None:
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("central not connected")
        await client.publish(topic, payload, qos=qos, properties=properties)

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    def _client_for(self) -> aiomqtt.Client:
        s = self.settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 86_400  # the broker keeps our events while we are away
        offline = Status(daemon="central", state="offline").model_dump_json().encode()
        return aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            identifier=s.identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            will=aiomqtt.Will(central_status_topic(s.prefix), offline, qos=1, retain=True),
            tls_context=s.tls_context(),
            keepalive=30,
            max_inflight_messages=100,
        )

    async def run(self) -> None:
        backoff = 0.2
        while True:
            try:
                async with self._client_for() as client:
                    backoff = 0.2
                    await self._session(client)
            except aiomqtt.MqttError as e:
                log.info("central mqtt: %s", e)
            except Exception:
                self.stats["errors"] += 1
                log.exception("central failed; reconnecting")
            finally:
                self.connected = False
                self._client = None
                self._ready.clear()
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, 5.0)

    async def _session(self, client: aiomqtt.Client) -> None:
        p = self.settings.prefix
        sites = self.settings.sites or ["+"]
        for site in sites:
            await client.subscribe(f"{p}/{site}/+/events", qos=1)
            await client.subscribe(f"{p}/{site}/resync", qos=1)
            await client.subscribe(f"{p}/{site}/lookup/request", qos=0)
        self._client = client
        self.connected = True
        online = Status(daemon="central", state="online", at=iso_utc(datetime.now(UTC)))
        await client.publish(central_status_topic(p), online.model_dump_json().encode(), qos=1, retain=True)
        self._ready.set()
        try:
            async for message in client.messages:
                await self._handle(message)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                offline = Status(daemon="central", state="offline", at=iso_utc(datetime.now(UTC)))
                await asyncio.wait_for(
                    client.publish(central_status_topic(p), offline.model_dump_json().encode(), qos=1, retain=True), 1.0
                )
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
                if changed:
                    delta = self._new_delta(site, pass_ids=changed)
                    await self._publish(f"{self.settings.prefix}/{site}/delta", delta, qos=1)
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
        except ValidationError as e:
            self.stats["invalid"] += 1
            log.warning("central dropped a message on %s: %s", topic, e.errors()[:1])


# -- seed data ---------------------------------------------------------------------------------


def generate(
    n_members: int,
    *,
    passes_per_member: float = 1.5,
    bookings_per_member: float = 3.0,
    seed: int = 1,
    day: str = "2026-11-18",
    prefix: str = "",
) -> dict[str, list[dict[str, Any]]]:
    """A deterministic chain-sized data set (bench: 100,000 members, 150,000 passes,
    300,000 bookings)."""
    rnd = random.Random(seed)
    members = [
        {"id": f"{prefix}m{i}", "name": f"Member {i}", "cards": [f"{prefix.upper()}{i:010X}"]} for i in range(n_members)
    ]
    passes = []
    for i in range(int(n_members * passes_per_member)):
        kind = rnd.choice(["visits", "visits", "credits", "time"])
        p: dict[str, Any] = {
            "id": f"{prefix}p{i}",
            "member": f"{prefix}m{i % n_members}",
            "name": kind,
            "kind": kind,
            "deduct_on": "access",
            "access_windows": {"mon-fri": "06:00-22:00", "sat-sun": "08:00-20:00"},
        }
        if kind == "visits":
            p["balance"] = rnd.randint(0, 20)
        elif kind == "credits":
            p["balance"] = rnd.randint(0, 100)
            p["walk_in_cost"] = 5
        passes.append(p)
    base = datetime.fromisoformat(day + "T06:00")
    bookings = []
    for i in range(int(n_members * bookings_per_member)):
        start = base + timedelta(minutes=30 * rnd.randint(0, 30))
        bookings.append(
            {
                "id": f"{prefix}b{i}",
                "member": f"{prefix}m{i % n_members}",
                "pass": f"{prefix}p{i % max(1, len(passes))}",
                "class": rnd.choice(["Spinning", "Yoga", "Pilates", "HIIT"]),
                "zone": "main",
                "starts_at": start.strftime("%Y-%m-%dT%H:%M"),
                "ends_at": (start + timedelta(minutes=45)).strftime("%Y-%m-%dT%H:%M"),
            }
        )
    return {"members": members, "passes": passes, "bookings": bookings}


def load_seed(
    seed: str | Path | Mapping[str, Any], *, site: str = "site"
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """A seed: `{site: {members, passes, bookings}}`, or a scenario-like file with
    top-level members/passes/bookings (then under the site given), as a mapping or a
    JSON/YAML file."""
    if isinstance(seed, str | Path):
        text = Path(seed).read_text(encoding="utf-8")
        if str(seed).endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader: strings only
    else:
        data = dict(seed)
    if any(k in data for k in ("members", "passes", "bookings")):
        data = {site: data}
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for site_id, body in data.items():
        out[str(site_id)] = {k: list(body.get(k) or []) for k in ("members", "passes", "bookings")}
    return out


async def serve_central(
    settings: CentralSettings,
    db_path: str | Path,
    seed: str | Path | Mapping[str, Any] | None = None,
    *,
    site: str = "site",
) -> None:
    """`gated sim central`: run the reference central system until cancelled. `seed`
    (loaded once, into an empty database) gives it members, passes and bookings; a seed
    without sites names is loaded under `site`."""
    central = Central(settings, db_path)
    if seed is not None and not central.conn.execute("SELECT 1 FROM members LIMIT 1").fetchone():
        for site_id, records in load_seed(seed, site=site).items():
            central.load(site_id, records["members"], records["passes"], records["bookings"])
    await central.run()
