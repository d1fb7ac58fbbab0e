"""A chain on real brokers (docs/chain.md):

- a site broker bridged to the central broker with config/mosquitto-bridge.conf.example
  (MQTT v5 bridge), two gates on the site broker, the central system on the central
  broker, the WAN between the brokers cut and restored (through tests/mqtt_proxy.py):
  events reach the central system once, deltas and live look-ups cross the bridge;
- a gate given two brokers (`mqtt.hosts`, a two-node "cluster") failing over from one to
  the other and back while taps flow: no event lost or applied twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest

from gated.engine import Engine
from rules.credential import Credential
from simulator.central import Central
from sync.link import SyncLink
from sync.store import Store
from tests.broker import (
    GATES,
    POLICY,
    SEED,
    SITE,
    WAIT_S,
    Mosquitto,
    bridge_config,
    central_settings,
    clock,
    cluster_link,
    make_store,
    running,
    settings_for,
    site,
    wait_until,
)
from tests.mqtt_proxy import MqttProxy

DRAIN_S = 60.0  # bounds a hang: the bridge's restart_timeout and the gates' ack_timeout


class Gate:
    """One gate daemon's sync side: its store, engine and link."""

    def __init__(self, tmp: Path, daemon: str, settings_kw: dict[str, object], broker: Mosquitto):
        self.daemon = daemon
        self.store: Store = make_store(tmp / f"{daemon}.db", daemon)
        self.now = clock()
        self.link = SyncLink(self.store, settings_for(broker, daemon, **settings_kw), now=self.now, gates=GATES)
        self.engine = Engine(self.store, site(), GATES, POLICY)
        self.n = 0

    def tap(self, k: int = 1) -> None:
        for _ in range(k):
            card = ("C1", "C2", "C3")[self.n % 3]
            gate = "in-1" if (self.n // 3) % 2 == 0 else "out-1"
            self.engine.tap(gate, Credential.card(card), self.now())
            self.n += 1

    def drained(self, central: Central) -> bool:
        s = self.store
        return s.acked_seq == s.last_seq and central.applied_seq(SITE, self.daemon) == s.last_seq


def check_ledger(central: Central, gates: list[Gate], topups: dict[str, int] | None = None) -> None:
    """Every event at the central system exactly once; balances the same everywhere."""
    taken: dict[str, Decimal] = {"p1": Decimal(0), "p2": Decimal(0)}
    for g in gates:
        events = central.events(SITE, g.daemon)
        assert [e["seq"] for e in events] == list(range(1, g.store.last_seq + 1)), g.daemon
        assert len({e["id"] for e in events}) == len(events)
        for e in events:
            if e["type"] == "deduction" and e["pass"] in taken:
                taken[e["pass"]] += Decimal(str(e["amount"]))
    for p, t in taken.items():
        expected = Decimal(1000) + (topups or {}).get(p, 0) - t
        assert central.balance(SITE, p) == expected, p
        for g in gates:
            assert g.store.balance(p) == expected, (g.daemon, p, g.store.balance(p))


async def settle(central: Central, gates: list[Gate], what: str) -> None:
    def done() -> bool:
        return all(
            g.drained(central)
            and g.link.delta_seq == central.delta_seq(SITE)
            and not g.link.awaiting_snapshot
            and g.store.balance("p1") == central.balance(SITE, "p1")
            and g.store.balance("p2") == central.balance(SITE, "p2")
            for g in gates
        )

    try:
        await wait_until(done, timeout=DRAIN_S, what=what)
    except AssertionError as e:
        state = {g.daemon: (g.store.last_seq, g.store.acked_seq, central.applied_seq(SITE, g.daemon),
                            g.link.delta_seq, dict(g.link.stats)) for g in gates}
        raise AssertionError(f"{e}: central {central.delta_seq(SITE)} {dict(central.stats)}; {state}") from None


async def test_site_broker_bridged_to_the_central_broker(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    central_broker = mosquitto_factory()
    async with MqttProxy(central_broker.port, seed=3) as wan:
        site_broker = mosquitto_factory(extra=bridge_config(wan.port, SITE))
        central = Central(central_settings(central_broker), tmp_path / "central.db")
        central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
        gates = [Gate(tmp_path, d, {"ack_timeout": 2.0}, site_broker) for d in ("gate-a", "gate-b")]
        topups: dict[str, int] = {}
        async with running(central.run(), *(g.link.run() for g in gates)):
            await central.wait_connected(WAIT_S)
            for g in gates:
                await g.link.wait_connected(WAIT_S)
            # the start-up resyncs crossed the bridge, the snapshots came back
            await wait_until(lambda: all(g.link.stats["snapshots_applied"] >= 1 for g in gates),
                             timeout=DRAIN_S, what="the snapshots across the bridge")
            for g in gates:
                g.tap(12)
            await settle(central, gates, "events up, acks and balance deltas down")

            # a back-office change and a live look-up, across the bridge
            await central.push(SITE, members=[{"id": "m2", "name": "Ben", "cards": ["C2"], "status": "blocked"}])
            central.load(SITE, members=[{"id": "m9", "name": "New", "cards": ["NEW9"]}],
                         passes=[{"id": "p9", "member": "m9", "kind": "time", "access_windows": {"mon-sun": "00:00-24:00"}}])
            assert await gates[0].link.lookup("NEW9", timeout=WAIT_S)
            assert gates[0].store.member_for_card("NEW9") == "m9"
            await settle(central, gates, "the delta to both gates")
            assert all(g.store.member("m2").status.value == "blocked" for g in gates)  # type: ignore[union-attr]

            # the WAN goes: the bridge drops and cannot come back for a while
            wan.refuse = True
            wan.cut()
            seen = gates[1].link.stats["remote_passages"]
            for g in gates:
                g.tap(15)  # decided and committed at the site meanwhile
            # the site's gates still see each other's passages (site-wide anti-passback)
            await wait_until(lambda: gates[1].link.stats["remote_passages"] > seen, what="passages on the LAN")
            topups["p1"] = 5
            base = next(p for p in SEED["passes"] if p["id"] == "p1")
            bal = central.balance(SITE, "p1")
            assert bal is not None
            await central.push(SITE, passes=[{**base, "balance": int(bal) + 5}])  # queued for the bridge
            assert not await gates[1].link.lookup("C9", timeout=0.2)  # nobody answers: the cached "no" stands
            await wait_until(lambda: wan.stats["refused"] >= 1, what="the bridge trying the WAN")
            assert all(g.store.outbox_depth() > 0 for g in gates)
            wan.refuse = False  # the WAN is back
            await settle(central, gates, "the drain after the WAN cut")

        check_ledger(central, gates, topups)
        for g in gates:
            assert g.link.stats["errors"] == 0
        assert central.stats["lookups"] >= 1


async def test_failover_between_two_brokers_and_back(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    n1 = mosquitto_factory()
    n2 = mosquitto_factory()
    n2.extra = cluster_link(n1.port)
    n2.restart()
    hosts = [f"127.0.0.1:{n1.port}", f"127.0.0.1:{n2.port}"]
    central = Central(central_settings(n1, hosts=hosts), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    gate = Gate(tmp_path, "gate-a", {"hosts": hosts, "ack_timeout": 2.0}, n1)
    stop = asyncio.Event()

    async def tapping() -> None:
        while not stop.is_set():
            gate.tap()
            await asyncio.sleep(0.01)

    async with running(central.run(), gate.link.run()):
        await central.wait_connected(WAIT_S)
        await gate.link.wait_connected(WAIT_S)
        assert gate.link.broker == f"127.0.0.1:{n1.port}"
        await wait_until(lambda: gate.link.stats["snapshots_applied"] >= 1, what="the first snapshot")
        tapper = asyncio.create_task(tapping())
        try:
            await wait_until(lambda: gate.store.acked_seq > 20, what="taps acknowledged")
            n1.stop()  # the primary dies: gate and central go to the other node
            await wait_until(lambda: gate.link.broker == f"127.0.0.1:{n2.port}" and central.connected,
                             timeout=DRAIN_S, what="failover to n2")
            acked = gate.store.acked_seq
            await wait_until(lambda: gate.store.acked_seq > acked + 20, timeout=DRAIN_S, what="taps acked via n2")
            n1.start()  # back, empty; the gate stays where it works
            n2.stop()  # and now the other one dies: back to the first
            await wait_until(lambda: gate.link.broker == f"127.0.0.1:{n1.port}" and central.connected,
                             timeout=DRAIN_S, what="failover back to n1")
            acked = gate.store.acked_seq
            await wait_until(lambda: gate.store.acked_seq > acked + 20, timeout=DRAIN_S, what="taps acked via n1")
        finally:
            stop.set()
            await tapper
        await settle(central, [gate], "the drain")
        assert gate.link.health().broker == f"127.0.0.1:{n1.port}"

    check_ledger(central, [gate])
    assert gate.link.stats["connects"] >= 3 and gate.link.stats["errors"] == 0


async def test_a_central_system_scaled_out_behind_a_shared_subscription(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Two instances of the central system on one database, sharing the gates' requests
    through `$share/central/...` (each message to one of them): every event is applied
    once and in order — the per-daemon applied_seq in the database decides, whichever
    instance a batch reaches — and the balances agree."""
    db = tmp_path / "central.db"
    # clean sessions for instances behind a shared subscription (docs/chain.md)
    first = Central(central_settings(mosquitto, shared_group="central", identifier="central-1", session_expiry=0), db)
    first.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    second = Central(central_settings(mosquitto, shared_group="central", identifier="central-2", session_expiry=0,
                                      publish_status=False), db)
    gate = Gate(tmp_path, "gate-a", {"batch_events": 5}, mosquitto)
    async with running(first.run(), second.run(), gate.link.run()):
        await first.wait_connected(WAIT_S)
        await second.wait_connected(WAIT_S)
        await gate.link.wait_connected(WAIT_S)
        await wait_until(lambda: gate.link.stats["snapshots_applied"] >= 1, what="the first snapshot")
        for _ in range(20):
            gate.tap(6)
            await asyncio.sleep(0.01)
        await settle(first, [gate], "every event applied")
    check_ledger(first, [gate])
    # both instances did part of the work
    assert first.stats["events_applied"] > 0 and second.stats["events_applied"] > 0
    assert first.stats["events_applied"] + second.stats["events_applied"] == gate.store.last_seq


# The bridge a site ran before: one MQTT v5 connection, `cleansession false`. mosquitto
# 2.0's bridge sends no Session Expiry Interval, so the central broker ends its session at
# every cut and drops what is published meanwhile (docs/chain.md).
V5_ONLY_BRIDGE = """connection gated-central
address 127.0.0.1:{port}
bridge_protocol_version mqttv50
remote_clientid gated-bridge-{site}
cleansession false
restart_timeout 1 2
notifications false
try_private true
topic gated/{site}/# both 1
topic gated/central/status in 1
"""


@pytest.mark.parametrize("bridge", ["example", "v5-only"])
async def test_a_top_up_during_a_wan_only_cut_reaches_the_gate(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path, bridge: str
) -> None:
    """The WAN between a site broker and the central broker goes, the gate stays connected
    to its site broker and the central to its own: nobody disconnects, nobody resyncs. A
    top-up published during the cut reaches the gate within 60 s of the WAN's return —
    through the bridge's kept session (the example bridge), or, with a bridge that keeps
    none, through the site's delta head (the gate sees it is behind and asks)."""
    central_broker = mosquitto_factory()
    async with MqttProxy(central_broker.port, seed=7) as wan:
        extra = bridge_config(wan.port, SITE) if bridge == "example" else V5_ONLY_BRIDGE.format(port=wan.port, site=SITE)
        site_broker = mosquitto_factory(extra=extra)
        # no periodic head within the test's 60 s: what is measured is the bridge's session
        # (example) or the retained head coming back with the bridge (v5-only)
        central = Central(central_settings(central_broker, head_interval=3600), tmp_path / "central.db")
        central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
        gate = Gate(tmp_path, "gate-a", {"reconcile_interval": 1800.0, "resync_retry": 60.0}, site_broker)
        async with running(central.run(), gate.link.run()):
            await central.wait_connected(WAIT_S)
            await gate.link.wait_connected(WAIT_S)
            await wait_until(lambda: gate.link.stats["snapshots_applied"] >= 1, timeout=DRAIN_S,
                             what="the first snapshot across the bridge")
            connects = gate.link.stats["connects"]
            wan.refuse = True
            wan.cut()
            await asyncio.sleep(1.0)  # the bridge notices
            base = next(p for p in SEED["passes"] if p["id"] == "p1")
            await central.push(SITE, passes=[{**base, "balance": 1005}])  # the top-up, during the cut
            await wait_until(lambda: wan.stats["refused"] >= 1, what="the bridge trying the WAN")
            assert gate.store.balance("p1") == Decimal(1000)
            wan.refuse = False
            await wait_until(lambda: gate.store.balance("p1") == Decimal(1005), timeout=60.0,
                             what="the top-up at the gate within 60 s of the WAN's return")
            assert gate.link.stats["connects"] == connects  # the gate never disconnected
            if bridge == "v5-only":
                assert gate.link.stats["resync_behind"] >= 1  # it noticed, and asked


async def test_the_sites_gates_hear_each_other_on_either_side_of_the_bridge(
    mosquitto_factory: Callable[..., Mosquitto], tmp_path: Path
) -> None:
    """Found by `gated sim day --seed 7`: the site broker restarted, every gate of the site
    failed over to the central broker (`mqtt.hosts`); the one doing the site's no-shows
    was then restarted and came back on the site broker, the others stayed where they
    worked. The bridge carried events up only, so it never heard them again: 48 bookings
    attended at another turnstile became no-shows, with fees. Now the bridge carries the
    gates' events, heartbeats and catch-ups both ways."""
    central_broker = mosquitto_factory()
    site_broker = mosquitto_factory(extra=bridge_config(central_broker.port, SITE))
    central = Central(central_settings(central_broker), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    on_site = Gate(tmp_path, "gate-a", {}, site_broker)
    failed_over = Gate(tmp_path, "gate-b", {}, central_broker)
    async with running(central.run(), on_site.link.run(), failed_over.link.run()):
        await central.wait_connected(WAIT_S)
        for g in (on_site, failed_over):
            await g.link.wait_connected(WAIT_S)
        await wait_until(lambda: all(g.link.stats["snapshots_applied"] >= 1 for g in (on_site, failed_over)),
                         timeout=DRAIN_S, what="the snapshots")
        failed_over.tap(3)
        on_site.tap(3)
        await wait_until(lambda: on_site.link.stats["remote_passages"] >= 1, what="b's passages at a, across the bridge")
        await wait_until(lambda: failed_over.link.stats["remote_passages"] >= 1, what="a's passages at b")
        # and each knows how far it has heard the other (the heartbeats crossed too)
        await wait_until(lambda: on_site.store.peer_marks().get("gate-b", (None, None))[0] == failed_over.store.last_seq,
                         what="a's mark of b")
        assert not on_site.link.session.peers.marks["gate-b"].missing
