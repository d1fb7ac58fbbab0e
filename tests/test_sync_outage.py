"""The broker goes away for a while; taps go on; it comes back: every event arrives at the
central system once, in order, and the balances agree."""

from __future__ import annotations

import asyncio
import contextlib
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
    SEED,
    SITE,
    WAIT_S,
    Mosquitto,
    central_settings,
    clock,
    make_store,
    running,
    settings_for,
    site,
    wait_until,
)


async def test_broker_outage_loses_nothing_and_repeats_nothing(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    now = clock()
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    cards = ["C1", "C2", "C3"]

    def taps(n: int) -> None:
        for i in range(n):
            card = cards[i % 3]
            engine.tap("in-1", Credential.card(card), now())
            engine.tap("out-1", Credential.card(card), now())

    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] == 1)
        taps(10)
        await wait_until(lambda: store.acked_seq == store.last_seq, what="first acks")

        for _ in range(2):
            mosquitto.stop()
            await wait_until(lambda: not link.connected, what="link notices the outage")
            taps(15)  # decided and committed locally while the broker is away
            assert store.outbox_depth() > 0
            mosquitto.start()
            await wait_until(lambda: store.acked_seq == store.last_seq, what="outbox drained")

        taps(5)
        await wait_until(lambda: store.acked_seq == store.last_seq, what="final acks")
        await wait_until(
            lambda: all(store.balance(p) == central.balance(SITE, p) for p in ("p1", "p2")),
            what="balances agree",
        )

    events = central.events(SITE, "gate-a")
    assert [e["seq"] for e in events] == list(range(1, store.last_seq + 1))
    assert len({e["id"] for e in events}) == len(events)
    deductions = [e for e in events if e["type"] == "deduction"]
    walk_ins = [e for e in events if e["type"] == "access" and e["reason"] == "walk_in" and e["pass"] in ("p1", "p2")]
    assert len(deductions) == len(walk_ins) > 0
    for p in ("p1", "p2"):
        taken = sum(e["amount"] for e in deductions if e["pass"] == p)
        assert central.balance(SITE, p) == 1000 - taken
        assert store.balance(p) == 1000 - taken


async def test_one_resync_per_reconnect(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    """Broker restarted with its state wiped, the gate or the central system back first:
    each time the gate asks for a resync exactly once (not once on connecting and again on
    seeing the central status), and the central system hears it."""
    store = make_store(tmp_path / "a.db", "gate-a")
    now = clock()
    # central_status_wait well above the central system's reconnect time: the timer must
    # not stand in for the status in this test
    link = SyncLink(store, settings_for(mosquitto, "gate-a", central_status_wait=30.0), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] == 1, what="the first snapshot")
        assert link.stats["resync_requests"] == 1
        for restart in range(4):
            mine, heard = link.stats["resync_requests"], central.stats["resync_reconnect"]
            before = central._client
            mosquitto.restart()
            await wait_until(
                lambda b=before, h=heard: central._client is not None and central._client is not b and link.connected
                and link.central_online is True and central.stats["resync_reconnect"] > h,
                what=f"both back after restart {restart}, the resync heard",
            )
            # a round trip after it: nothing else was on its way
            _, committed = engine.tap("in-1", Credential.card("C1"), now())
            await wait_until(lambda c=committed: store.acked_seq >= c.events[-1]["seq"], what="the ack")
            assert link.stats["resync_requests"] == mine + 1, dict(link.stats)
            assert central.stats["resync_reconnect"] == heard + 1


async def test_the_central_away_with_the_broker_up_gets_the_backlog_once_not_every_ack_timeout(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The central system offline (its last will), the broker up: the gate sent its whole
    unacknowledged backlog again every ack_timeout, all of it queued by the broker for the
    central's session (an outside tester: 20 GB a day for 7,500 events; 16 copies of each
    at its return, and a drain at a quarter of the budget). Now each new event goes once
    while it is away, none again, and on its return every event is applied once."""
    store = make_store(tmp_path / "a.db", "gate-a")
    now = clock()
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)  # ack_timeout 1 s
    engine = Engine(store, site(), GATES, POLICY)
    central = Central(central_settings(mosquitto), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    received = {"events": 0}
    apply = central.apply_events

    def counted(site_id, batch):  # type: ignore[no-untyped-def]
        received["events"] += len(batch.events)
        return apply(site_id, batch)

    central.apply_events = counted  # type: ignore[method-assign]
    on_wire = {"events": 0}

    async def listen() -> None:  # what the broker gets on the gate's events topic
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="wire-counter") as c:
            await c.subscribe(f"gated/{SITE}/gate-a/events", qos=1)
            async for m in c.messages:
                on_wire["events"] += len(json.loads(bytes(m.payload))["events"])  # type: ignore[arg-type]

    def taps(n: int) -> None:
        for _ in range(n):
            engine.tap("in-1", Credential.card("C1"), now())
            engine.tap("out-1", Credential.card("C1"), now())

    central_task = asyncio.create_task(central.run())
    try:
        async with running(link.run(), listen()):
            await link.wait_connected(WAIT_S)
            await wait_until(lambda: link.stats["snapshots_applied"] == 1, what="the first snapshot")
            taps(5)
            await wait_until(lambda: store.acked_seq == store.last_seq, what="first acks")
            acked = store.acked_seq

            central_task.cancel()  # away: its status says offline
            with contextlib.suppress(asyncio.CancelledError):
                await central_task
            await wait_until(lambda: link.central_online is False, what="the gate hearing it")
            taps(30)  # decided and committed while it is away
            backlog = store.last_seq - acked
            await wait_until(lambda: on_wire["events"] >= store.last_seq, what="the new events out once")
            sent, wire = link.stats["events_published"], on_wire["events"]
            await asyncio.sleep(5.0)  # five ack_timeouts
            assert link.stats["events_published"] == sent and on_wire["events"] == wire, (sent, wire, dict(link.stats))
            assert link.stats["rewind_timeout"] == 0 and link.stats["resend_held_central_offline"] >= 3
            assert store.acked_seq == acked and store.outbox_depth() >= backlog

            received["events"] = 0
            central_task = asyncio.create_task(central.run())  # back
            await wait_until(lambda: store.acked_seq == store.last_seq, what="the backlog drained")
            assert link.stats["rewind_central_online"] == 1
            # the broker's one queued copy for the central's session and the one resend
            # at its `online`: at most twice each, not once per ack_timeout away
            assert backlog <= received["events"] <= 2 * backlog + 10, (received, backlog)
    finally:
        central_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await central_task

    events = central.events(SITE, "gate-a")
    assert [e["seq"] for e in events] == list(range(1, store.last_seq + 1))
    assert len({e["id"] for e in events}) == len(events)
