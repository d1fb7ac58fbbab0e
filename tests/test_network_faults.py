"""Network faults between the daemon, the broker and the central system, with the whole
daemon (in process, no relay: commit on grant) and the reference central system on a real
mosquitto:

- the broker down for long stretches: taps go on, the outbox grows, it drains after;
- the broker killed and restarted with its state wiped (persistence off: sessions,
  queued messages and retained statuses gone) while taps flow: nothing lost;
- every packet between the daemon and the broker delayed, held back and reordered by a
  proxy (tests/mqtt_proxy.py), connections cut, while the back office tops passes up;
- the central system (or anyone on its topics) resending old snapshots and old deltas,
  duplicated and out of order, after newer ones.

In every case, at the end: every event at the central system exactly once (seq 1..N,
unique ids), the central balance = its start + top-ups − the deductions it received, and
the gate's balance = the central balance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from gated.config import Config
from gated.daemon import Daemon
from rules.credential import Credential
from simulator.central import Central
from tests.broker import (
    SEED,
    SITE,
    WAIT_S,
    Mosquitto,
    wait_until,
)
from tests.mqtt_proxy import MqttProxy

CARDS = ("C1", "C2", "C3")  # p1 and p2: visits (1 per entry); p3: a time pass
DRAIN_S = 60.0  # bounds a hang (the central's reconnect backoff reaches 5 s)


def config(tmp: Path, port: int, **mqtt: Any) -> Config:
    settings = {"host": "127.0.0.1", "port": port, "ack_timeout": 1.0, "backoff_initial": 0.05, "backoff_max": 0.5,
                "resync_retry": 2.0, "keepalive": 5}
    settings.update(mqtt)
    return Config.model_validate(
        {
            "site": {"id": SITE, "timezone": "Europe/Madrid"},
            "daemon_id": "gate-a",
            "gates": [{"id": "in-1", "zone": "main"}, {"id": "out-1", "zone": "main", "direction": "out"}],
            "mqtt": settings,
            "lookup_unknown_cards": False,
            "store": {"path": str(tmp / "gate.db")},
            "console": {"enabled": False},
            "metrics": {"enabled": False},
            "control": {"socket": str(tmp / "c.sock")},
        }
    )


@contextlib.asynccontextmanager
async def daemon(tmp: Path, port: int, **mqtt: Any) -> AsyncIterator[Daemon]:
    d = Daemon(config(tmp, port, **mqtt))
    await d.start()
    try:
        await d.link.wait_connected(WAIT_S)
        await wait_until(lambda: d.link.stats["snapshots_applied"] >= 1, what="first snapshot")
        yield d
    finally:
        await d.stop()


class Taps:
    """Taps at the gate, in turn C1, C2, C3; counts what it was told."""

    def __init__(self, d: Daemon):
        self.d = d
        self.n = 0
        self.results: Counter[str] = Counter()

    async def tap(self, k: int = 1) -> None:
        for _ in range(k):
            r = await self.d.handle_credential("in-1", Credential.card(CARDS[self.n % len(CARDS)], "test"))
            self.n += 1
            self.results[f"{r.get('decision')}:{r.get('reason')}"] += 1


class Topups:
    """The back office adds credit to p1/p2 (a delta each); remembers how much."""

    def __init__(self, central: Central):
        self.central = central
        self.added: Counter[str] = Counter()

    async def add(self, pass_id: str, amount: int) -> None:
        base = next(p for p in SEED["passes"] if p["id"] == pass_id)
        current = self.central.balance(SITE, pass_id)
        assert current is not None
        # read and written without an await in between: nothing of the gate's is lost
        try:
            await self.central.push(SITE, passes=[{**base, "balance": int(current) + amount}])
        except aiomqtt.MqttError:
            # stored, not published (the broker went away): the gate finds out from the
            # next delta's gap, or from the replay when it reconnects
            self.added["unpublished"] += 1
        self.added[pass_id] += amount


def settled(d: Daemon, central: Central) -> bool:
    s, link = d.store, d.link
    return (
        s is not None
        and s.acked_seq == s.last_seq
        and central.applied_seq(SITE, "gate-a") == s.last_seq
        and link.delta_seq == central.delta_seq(SITE)
        and not link.awaiting_snapshot
        and not link.snapshot_in_progress
    )


async def settle(d: Daemon, central: Central, what: str) -> None:
    try:
        await wait_until(lambda: settled(d, central), timeout=DRAIN_S, what=what)
    except AssertionError as e:
        s = d.store
        state = {
            "last_seq": s.last_seq if s else None, "acked": s.acked_seq if s else None,
            "central_applied": central.applied_seq(SITE, "gate-a"), "delta_seq": d.link.delta_seq,
            "central_delta_seq": central.delta_seq(SITE), "awaiting": d.link.awaiting_snapshot,
            "importing": d.link.snapshot_in_progress, "link": dict(d.link.stats), "central": dict(central.stats),
        }
        raise AssertionError(f"{e}: {state}") from None


def check_ledger(d: Daemon, central: Central, topups: Topups | None = None) -> dict[str, int]:
    """Exactly once at the central system, and the same balances on both sides."""
    store = d.store
    assert store is not None
    events = central.events(SITE, "gate-a")
    assert [e["seq"] for e in events] == list(range(1, store.last_seq + 1))
    assert len({e["id"] for e in events}) == len(events)
    deductions = [e for e in events if e["type"] == "deduction"]
    local = store.conn.execute("SELECT seq, pass_id, amount FROM deductions ORDER BY seq").fetchall()
    assert [(e["seq"], e["pass"], Decimal(str(e["amount"]))) for e in deductions] == [
        (s, p, Decimal(a)) for s, p, a in local
    ]
    added = topups.added if topups else Counter()
    for p in ("p1", "p2"):
        taken = sum(Decimal(str(e["amount"])) for e in deductions if e["pass"] == p)
        assert central.balance(SITE, p) == Decimal(1000) + added[p] - taken, p
        assert store.balance(p) == central.balance(SITE, p), (p, store.balance(p), central.balance(SITE, p))
    return {"events": len(events), "deductions": len(deductions)}


# -- the broker goes away --------------------------------------------------------------------------


async def test_broker_down_for_long_stretches(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    async with daemon(tmp_path, mosquitto.port) as d:
        assert d.store is not None
        taps = Taps(d)
        await taps.tap(30)
        for outage in range(3):
            mosquitto.stop()
            await wait_until(lambda: not d.link.connected, what="the link to notice")
            depth = d.store.outbox_depth()
            # a long stretch: the link keeps retrying (backoff at its cap), members keep coming
            for _ in range(6):
                await taps.tap(40)
                await asyncio.sleep(0.5)
            assert d.store.outbox_depth() > depth  # grows, nothing pruned unacknowledged
            assert not d.link.connected
            assert d.health()["broker"] == "disconnected"
            mosquitto.start()  # persistence off: an empty broker
            if outage == 1:
                await taps.tap(20)  # while the link and the central system come back
            await settle(d, central, f"the drain after outage {outage}")
        assert taps.results["denied:" + "cache_stale"] == 0
        assert sum(v for k, v in taps.results.items() if k.startswith("granted")) == taps.n
        figures = check_ledger(d, central)
        assert figures["events"] > 700


async def test_broker_restarted_with_state_wiped_while_taps_flow(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    async with daemon(tmp_path, mosquitto.port) as d:
        assert d.store is not None
        taps = Taps(d)
        topups = Topups(central)
        stop = asyncio.Event()

        async def tapping() -> None:
            while not stop.is_set():
                await taps.tap()
                await asyncio.sleep(0.005)

        tapper = asyncio.create_task(tapping())
        rnd = random.Random(3)
        try:
            for i in range(6):
                await asyncio.sleep(rnd.uniform(0.2, 1.0))
                before = central._client
                mosquitto.restart()  # sessions, in-flight messages and retained statuses: gone
                await wait_until(lambda b=before: central._client is not None and central._client is not b,
                                 timeout=DRAIN_S, what="the central system back")
                if i % 2 == 0:
                    await topups.add("p1", 10)  # a delta that races the gate's own deductions
        finally:
            stop.set()
            await tapper
        await settle(d, central, "the drain")
        figures = check_ledger(d, central, topups)
        assert figures["deductions"] > 50
        assert d.link.stats["connects"] >= 7


async def test_broker_frozen_then_thawed(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    """The broker stops answering without going away (SIGSTOP: a hung process, a VM paused):
    its sockets stay open and take bytes, so no error says it is gone. The link finds out
    from the keep-alive, says so, keeps tapping into the outbox; thawed, everything arrives
    exactly once."""
    async with daemon(tmp_path, mosquitto.port) as d:
        assert d.store is not None and mosquitto.proc is not None
        taps = Taps(d)
        await taps.tap(20)
        await settle(d, central, "before the freeze")
        for freeze in range(2):
            os.kill(mosquitto.proc.pid, signal.SIGSTOP)
            try:
                depth = d.store.outbox_depth()
                for _ in range(8):  # members keep coming while nothing answers
                    await taps.tap(10)
                    await asyncio.sleep(0.5)
                # keep-alive 5 s: a silent broker is known within about one and a half of it
                await wait_until(lambda: not d.link.connected, timeout=15, what="the link to notice the silence")
                assert d.health()["broker"] == "disconnected"
                assert d.store.outbox_depth() > depth
            finally:
                os.kill(mosquitto.proc.pid, signal.SIGCONT)
            await taps.tap(10)
            await settle(d, central, f"the drain after freeze {freeze}")
        assert sum(v for k, v in taps.results.items() if k.startswith("granted")) == taps.n
        figures = check_ledger(d, central)
        assert figures["events"] > 200


# -- delayed, held back and reordered packets ----------------------------------------------------


async def test_delayed_held_and_reordered_packets(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    rnd = random.Random(17)
    async with MqttProxy(mosquitto.port, seed=5) as proxy, daemon(tmp_path, proxy.port) as d:
        assert d.store is not None
        taps = Taps(d)
        topups = Topups(central)
        proxy.delay = (0.0, 0.03)
        for rnd_i in range(12):
            direction = ("down", "up", "both")[rnd_i % 3]
            dirs = ["up", "down"] if direction == "both" else [direction]
            for x in dirs:
                proxy.hold(x)  # type: ignore[arg-type]
            # while held: taps (events up), the central's acks and balance deltas (down),
            # back-office top-ups (deltas down)
            for k in range(rnd.randint(4, 10)):
                await taps.tap(rnd.randint(1, 4))
                if k % 3 == 0:
                    await topups.add(rnd.choice(["p1", "p2"]), rnd.randint(1, 5))
                await asyncio.sleep(rnd.uniform(0.0, 0.08))
            await asyncio.sleep(0.3)
            for x in dirs:
                proxy.release(x, reorder=True)  # type: ignore[arg-type]
            if rnd_i % 4 == 3:
                await asyncio.sleep(0.2)
                proxy.cut()  # and the connection drops with what was still queued
            await asyncio.sleep(rnd.uniform(0.1, 0.6))
        proxy.delay = (0.0, 0.0)
        await settle(d, central, "the drain")
        figures = check_ledger(d, central, topups)
        assert proxy.stats["reordered"] > 20, proxy.stats
        # the downlink reorders were seen for what they are: a delta gap at the gate (held
        # deltas, a resync, a snapshot), acks out of order (the lower one ignored). The
        # uplink publisher waits for each PUBACK before the next batch: held back, its
        # batches reach the central system late, not out of order.
        assert d.link.stats["delta_gaps"] >= 1, d.link.stats
        assert figures["deductions"] > 30


# -- the central system sends old things again -----------------------------------------------------


class Recorder:
    """Anyone on the site's downlink topics: records every delta and snapshot chunk, and
    can publish them again later (as a confused or restored central system would)."""

    def __init__(self, port: int):
        self.port = port
        self.deltas: dict[int, bytes] = {}
        self.snapshots: dict[str, list[bytes]] = {}
        self.snapshot_seq: dict[str, int] = {}
        self._client: aiomqtt.Client | None = None
        self._ready = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="recorder",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            # no local: what it publishes again does not come back to be recorded twice
            await client.subscribe(f"gated/{SITE}/delta", options=SubscribeOptions(qos=1, noLocal=True))
            await client.subscribe(f"gated/{SITE}/snapshot", options=SubscribeOptions(qos=1, noLocal=True))
            self._client = client
            self._ready.set()
            async for m in client.messages:
                payload = bytes(m.payload) if isinstance(m.payload, bytes | bytearray) else b""
                body = json.loads(payload)
                if str(m.topic).endswith("/delta"):
                    self.deltas[int(body["delta_seq"])] = payload
                else:
                    self.snapshots.setdefault(body["snapshot_id"], []).append(payload)
                    self.snapshot_seq[body["snapshot_id"]] = int(body["delta_seq"])

    async def wait_ready(self) -> None:
        await asyncio.wait_for(self._ready.wait(), WAIT_S)

    async def publish(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        await self._client.publish(f"gated/{SITE}/{topic}", payload, qos=1)


async def test_central_resends_old_snapshots_and_deltas(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    rec = Recorder(mosquitto.port)
    rec_task = asyncio.create_task(rec.run())
    await rec.wait_ready()
    rnd = random.Random(29)
    try:
        async with daemon(tmp_path, mosquitto.port) as d:
            assert d.store is not None
            taps = Taps(d)
            topups = Topups(central)
            await wait_until(lambda: len(rec.snapshots) >= 1, what="the start-up snapshot recorded")
            first = next(iter(rec.snapshots))
            for _ in range(5):
                await taps.tap(6)
                await topups.add("p2", 7)
                await settle(d, central, "settled")
            # a snapshot of the newer state, requested by this gate: also recorded
            await central.publish_snapshot(SITE, ["gate-a"])
            await wait_until(lambda: len(rec.snapshots) >= 2 and settled(d, central), timeout=DRAIN_S,
                             what="the second snapshot")
            # the back office blocks m3 after that snapshot
            await central.push(SITE, members=[{"id": "m3", "name": "Cris", "cards": ["C3"], "status": "blocked"}])
            await taps.tap(6)
            await topups.add("p1", 3)
            await settle(d, central, "settled")
            assert (await d.handle_credential("in-1", Credential.card("C3", "test")))["reason"] == "member_blocked"
            newest = central.delta_seq(SITE)
            await wait_until(lambda: len(rec.deltas) == newest, what="every delta recorded")
            replays = 0
            chunks_sent = 0
            ignored0 = d.link.stats["snapshot_chunks_ignored"]
            for round_ in range(4):
                # life goes on between the replays
                await taps.tap(3)
                await topups.add("p2", 1)
                await settle(d, central, "settled before the replays")
                # old deltas again: all of them, duplicated, shuffled
                old = list(rec.deltas.values()) * 2
                rnd.shuffle(old)
                for payload in old:
                    await rec.publish("delta", payload)
                    replays += 1
                # an old snapshot after newer deltas: the start-up one (taken before any tap,
                # requested by this gate), or the later one, from before m3 was blocked,
                # pushed to everyone; the last thing the gate hears
                sid = first if round_ % 2 == 0 else list(rec.snapshots)[1]
                for chunk in list(rec.snapshots[sid]):
                    body = json.loads(chunk)
                    if round_ >= 2:
                        body["requested_by"] = []
                    await rec.publish("snapshot", json.dumps(body).encode())
                    chunks_sent += 1
                await asyncio.sleep(0.3)
            # every replayed message has landed: each old delta counted old, each old
            # snapshot's first chunk stale and its other chunks ignored
            await wait_until(
                lambda: d.link.stats["deltas_old"] >= replays and d.link.stats["snapshots_stale"] == 4
                and d.link.stats["snapshot_chunks_ignored"] - ignored0 >= chunks_sent - 4,
                what="the replayed messages handled",
            )
            await settle(d, central, "settled after the replays")
            check_ledger(d, central, topups)
            assert d.link.delta_seq == central.delta_seq(SITE)  # never back to an older replica
            # the newer state stands: m3 is still blocked
            assert (await d.handle_credential("in-1", Credential.card("C3", "test")))["reason"] == "member_blocked"
            assert d.link.stats["snapshots_stale"] == 4
            assert d.link.stats["deltas_old"] >= replays
            await settle(d, central, "settled")
            check_ledger(d, central, topups)
    finally:
        rec_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await rec_task
