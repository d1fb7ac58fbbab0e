"""The whole daemon on a real broker with the reference central system: its taps reach
the central ledger, the central's changes reach its next decision, an unknown card is
looked up live, and the broker going away changes nothing for the member at the gate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt

from gated.config import Config
from gated.daemon import Daemon
from rules.credential import Credential
from simulator.central import Central
from tests.broker import (
    SITE,
    WAIT_S,
    Mosquitto,
    wait_until,
)


def config(tmp: Path, broker: Mosquitto) -> Config:
    return Config.model_validate(
        {
            "site": {"id": SITE, "timezone": "Europe/Madrid"},
            "daemon_id": "gate-a",
            "gates": [{"id": "in-1", "zone": "main"}, {"id": "out-1", "zone": "main", "direction": "out"}],
            "mqtt": {"host": "127.0.0.1", "port": broker.port, "ack_timeout": 1.0, "backoff_initial": 0.05,
                     "backoff_max": 0.5, "resync_retry": 2.0, "keepalive": 5, "lookup_timeout": 2.0},
            "store": {"path": str(tmp / "gate.db")},
            "console": {"enabled": False},
            "metrics": {"enabled": False},
            "control": {"socket": str(tmp / "c.sock")},
        }
    )


@asynccontextmanager
async def daemon(tmp: Path, broker: Mosquitto) -> AsyncIterator[Daemon]:
    d = Daemon(config(tmp, broker))
    await d.start()
    try:
        await d.link.wait_connected(WAIT_S)
        await wait_until(lambda: d.link.stats["snapshots_applied"] >= 1, what="first snapshot")
        yield d
    finally:
        await d.stop()


async def tap(d: Daemon, card: str, gate: str = "in-1") -> dict[str, Any]:
    return await d.handle_credential(gate, Credential.card(card, "test"))


async def test_daemon_round_trip_with_central(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    async with daemon(tmp_path, mosquitto) as d:
        assert d.store is not None
        r = await tap(d, "C1")
        assert r["decision"] == "granted" and r["reason"] == "walk_in"
        await wait_until(lambda: central.balance(SITE, "p1") == Decimal(999), what="the deduction at central")
        await wait_until(lambda: d.store is not None and d.store.outbox_depth() == 0, what="the ack")
        assert d.health()["broker"] == "connected"
        # the back office blocks Ben: the gate knows at the next tap
        await central.push(SITE, members=[{"id": "m2", "name": "Ben", "cards": ["C2"], "status": "blocked"}])
        await wait_until(lambda: d.link.delta_seq == central.delta_seq(SITE), what="the delta")
        assert (await tap(d, "C2"))["reason"] == "member_blocked"
        # a marketplace member who booked a minute ago: unknown here, looked up live
        central.load(SITE, members=[{"id": "m9", "name": "New", "cards": ["NEW9"]}],
                     passes=[{"id": "p9", "member": "m9", "kind": "time", "access_windows": {"mon-sun": "00:00-24:00"}}])
        r = await tap(d, "NEW9")
        assert r["decision"] == "granted" and r["member"] == "m9"
        assert (await tap(d, "NOBODY"))["reason"] == "unknown_card"


async def test_broker_down_taps_go_on_and_arrive_later(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    async with daemon(tmp_path, mosquitto) as d:
        assert d.store is not None
        mosquitto.stop()
        await wait_until(lambda: not d.link.connected, what="the link to notice")
        results = [await tap(d, "C1"), await tap(d, "C1", "out-1"), await tap(d, "C2")]
        assert [r["decision"] for r in results] == ["granted", "granted", "granted"]
        assert d.store.outbox_depth() == 5
        assert d.health()["broker"] == "disconnected"
        mosquitto.start()
        await wait_until(lambda: d.store is not None and d.store.outbox_depth() == 0, timeout=30, what="the drain")
        seqs = [e["seq"] for e in central.events(SITE, "gate-a")]
        assert seqs == list(range(1, d.store.last_seq + 1))
        assert central.balance(SITE, "p1") == Decimal(999) == d.store.balance("p1")
        assert central.balance(SITE, "p2") == Decimal(999) == d.store.balance("p2")


async def retained_status(broker: Mosquitto, topic: str) -> dict[str, Any]:
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.subscribe(topic, qos=1)
        async with asyncio.timeout(WAIT_S):
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                body: dict[str, Any] = json.loads(m.payload)
                return body
    raise AssertionError("no retained status")


async def test_the_status_left_at_a_clean_stop_keeps_the_connections_at(
        mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    """docs/protocol.md, "Status and health": `at` is when the gate connected, the same in every
    status of one connection. The `offline` status a clean stop leaves carried the stop's
    instant instead (the last will, after a kill, had it right) — found by a central system
    written from the docs."""
    async with daemon(tmp_path, mosquitto) as d:
        topic = d.link.topics.status
        online = await retained_status(mosquitto, topic)
        assert online["state"] == "online"
        await asyncio.sleep(1.2)  # a stop's instant differs from the connection's in its second
    offline = await retained_status(mosquitto, topic)
    assert offline["state"] == "offline" and offline["at"] == online["at"], (online, offline)
