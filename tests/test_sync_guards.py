"""What the central system must not be able to do to a gate by mistake, on a real broker:
acknowledge events that were never sent (they would be pruned unsent), or empty the site
with a snapshot nobody meant. Each is refused, counted and raised as an `alarm` event; a
snapshot marked `full_replacement` is applied."""

from __future__ import annotations

import json
from pathlib import Path

import aiomqtt

from gated.engine import Engine
from rules.credential import Credential
from simulator.central import Central
from sync.link import SyncLink
from tests.broker import (
    GATES,
    POLICY,
    SITE,
    WAIT_S,
    Mosquitto,
    clock,
    make_store,
    running,
    settings_for,
    site,
    wait_until,
)


def alarms(store: object, kind: str) -> list[dict[str, object]]:
    return [e for e in store.recent_events(100, types=["alarm"]) if e["kind"] == kind]  # type: ignore[attr-defined]


async def test_an_ack_beyond_the_last_event_is_refused_and_alarmed(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    now = clock()
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] == 1)
        engine.tap("in-1", Credential.card("C1"), now())
        await wait_until(lambda: store.acked_seq == store.last_seq, what="the real ack")
        acked = store.acked_seq
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.publish(f"gated/{SITE}/gate-a/ack", json.dumps({"v": 1, "applied_seq": acked + 500}), qos=1)
        await wait_until(lambda: link.stats["ack_beyond_last_seq"] == 1, what="the bad ack")
        await wait_until(lambda: bool(alarms(store, "ack_beyond_last_seq")), what="the alarm event")
        assert store.acked_seq == acked
        # the alarm is an event like any other: it reaches the central system
        await wait_until(lambda: store.acked_seq == store.last_seq and any(
            e["type"] == "alarm" for e in central.events(SITE, "gate-a")), what="the alarm at the central system")


async def test_a_snapshot_emptying_the_site_is_held_unless_meant(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=clock(), gates=GATES)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] == 1)
        assert store.counts()["members"] == 3
        empty = {"v": 1, "snapshot_id": "oops", "chunk": 0, "chunks": 1, "delta_seq": central.delta_seq(SITE)}
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.publish(f"gated/{SITE}/snapshot", json.dumps(empty), qos=1)  # pushed to every gate
            await wait_until(lambda: bool(alarms(store, "snapshot_held")) and not link.snapshot_in_progress,
                             what="the snapshot held, the alarm raised")
            assert link.stats["snapshots_held"] == 1
            assert store.counts()["members"] == 3 and store.member_for_card("C1") == "m1"
            await c.publish(f"gated/{SITE}/snapshot", json.dumps({**empty, "snapshot_id": "meant",
                                                                  "full_replacement": True}), qos=1)
            await wait_until(lambda: link.stats["snapshots_applied"] == 2, what="the full replacement")
        assert store.counts()["members"] == 0 and store.snapshot_id == "meant"
