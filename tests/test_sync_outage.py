"""The broker goes away for a while; taps go on; it comes back: every event arrives at the
central system once, in order, and the balances agree."""

from __future__ import annotations

from pathlib import Path

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
