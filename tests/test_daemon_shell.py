"""The daemon's own checks around the rules, in process with a simulated turnstile and an
injected clock: stale cache policies, capacity, lockdown, relay faults, metrics, health."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from gated.config import Config
from gated.daemon import Daemon
from gated.reload import reload_config
from gated.seed import batch_from
from rules.credential import Credential
from simulator.turnstile import Person, SimTurnstile
from sync.records import PassIn
from sync.store import Store, SyncBatch
from tests.outputs_fixtures import wait_until

NOW = datetime(2026, 11, 18, 11, 50, tzinfo=UTC)  # 12:50 in Madrid, a Wednesday
SEED = {
    "members": [
        {"id": "m1", "name": "Ana", "cards": ["AA01"]},
        {"id": "m2", "name": "Bruno", "cards": ["AA02"]},
        {"id": "m3", "name": "Carla", "cards": ["AA03"]},
    ],
    "passes": [
        {"id": "p1", "member": "m1", "name": "10 visits", "kind": "visits", "balance": 5,
         "access_windows": {"mon-sun": "00:00-24:00"}},
        {"id": "p2", "member": "m2", "name": "Monthly", "kind": "time", "access_windows": {"mon-sun": "00:00-24:00"}},
        {"id": "p3", "member": "m3", "name": "10 visits", "kind": "visits", "balance": 5,
         "access_windows": {"mon-sun": "00:00-24:00"}},
    ],
    "bookings": [
        {"id": "b3", "member": "m3", "pass": "p3", "class": "Spinning", "zone": "main",
         "starts_at": "2026-11-18T13:00", "ends_at": "2026-11-18T13:45", "deducted": True},
    ],
}


# a central system configured and never reached: the cache can only grow old
UNREACHABLE_CENTRAL = {"host": "127.0.0.1", "port": 9, "site": "s", "daemon": "d1", "backoff_initial": 0.5, "backoff_max": 5}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def config(tmp: Path, port: int, **extra: Any) -> Config:
    raw: dict[str, Any] = {
        "site": {"id": "s", "timezone": "Europe/Madrid"},
        "daemon_id": "d1",
        "gates": [
            {"id": "in", "zone": "main", "output": {"transport": "tcp", "host": "127.0.0.1", "port": port, "coil": 0,
                                                     "passage_input": 0, "pulse": 0.3, "passage_timeout": 3}},
            {"id": "out", "zone": "main", "direction": "out"},
        ],
        "store": {"path": str(tmp / "g.db")},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
        "control": {"socket": str(tmp / "c.sock")},
    }
    raw.update(extra)
    return Config.model_validate(raw)


@asynccontextmanager
async def daemon(tmp: Path, *, synced_at: datetime = NOW, **extra: Any) -> AsyncIterator[tuple[Daemon, SimTurnstile, Clock]]:
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.05)) as sim:
        cfg = config(tmp, sim.port, **extra)
        store = Store(cfg.store.path, cfg.site_domain())
        store.apply_sync(batch_from(SEED, cfg), synced_at)
        store.close()
        clock = Clock(NOW)
        d = Daemon(cfg, clock=clock)
        await d.start()
        try:
            yield d, sim, clock
        finally:
            await d.stop()


async def tap(d: Daemon, card: str, gate: str = "in") -> dict[str, Any]:
    return await d.handle_credential(gate, Credential.card(card, "test"))


async def test_grant_commits_and_counts(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (d, sim, _):
        r = await tap(d, "AA01")
        assert r["decision"] == "granted" and r["passed"] is True and sim.unlocks == 1
        metrics = generate_latest(d.metrics.registry).decode()
        assert 'gated_taps_total{decision="granted",gate="in",reason="walk_in"} 1.0' in metrics
        assert "gated_decision_seconds_count 1.0" in metrics
        h = d.health()
        assert h["gates"]["in"]["relay"] == "online" and h["gates"]["in"]["last_tap"]["member"] == "m1"
        assert h["outbox_depth"] == 2


async def test_the_readers_light_does_not_hold_the_relay_back(tmp_path: Path) -> None:
    """An OSDP reader's green light is a command handed to a thread: the relay used to wait
    for it. A reader whose feedback finishes only once the turnstile is released would
    have held the grant for good; now the light goes with the release."""

    async with daemon(tmp_path) as (d, sim, _):

        class SlowLight:
            id = "r1"

            def __init__(self) -> None:
                self.order: list[str] = []

            async def feedback(self, granted: bool, message: str) -> None:
                await wait_until(lambda: sim.unlocks == 1, what="the release, before the light is done")
                self.order.append("green" if granted else "red")

        reader = SlowLight()
        r = await asyncio.wait_for(d.handle_credential("in", Credential.card("AA01", "test"), reader), 10)
        assert r["decision"] == "granted" and r["passed"] is True and reader.order == ["green"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("keep", {"AA01": "walk_in", "AA02": "walk_in", "AA03": "booking"}),
        ("bookings_and_time_passes", {"AA01": "cache_stale", "AA02": "walk_in", "AA03": "booking"}),
        ("deny", {"AA01": "cache_stale", "AA02": "cache_stale", "AA03": "cache_stale"}),
    ],
)
async def test_stale_cache_policy(tmp_path: Path, policy: str, expected: dict[str, str]) -> None:
    old = NOW - timedelta(days=2)
    async with daemon(tmp_path, synced_at=old, stale_cache={"max_age": "24h", "policy": policy},
                      mqtt=UNREACHABLE_CENTRAL) as (d, sim, _):
        for card, reason in expected.items():
            assert (await tap(d, card))["reason"] == reason, card
        assert (await tap(d, "AA01", "out"))["reason"] == "exit"  # never locked in
        assert d.health()["cache_stale"] is True


async def test_fresh_cache_is_not_stale(tmp_path: Path) -> None:
    async with daemon(tmp_path, stale_cache={"max_age": "24h", "policy": "deny"}, mqtt=UNREACHABLE_CENTRAL) as (d, _, clock):
        assert (await tap(d, "AA01"))["decision"] == "granted"
        clock.now = NOW + timedelta(hours=25)
        assert (await tap(d, "AA02"))["reason"] == "cache_stale"


async def test_a_site_without_a_central_system_never_goes_stale(tmp_path: Path) -> None:
    """No `mqtt:`: the members are what `gated seed` loaded, and nothing newer exists. An
    installer who kept the example's `stale_cache` (24h) must not find walk-ins refused a day
    after seeding (an outside installer's finding: they were)."""
    old = NOW - timedelta(days=9)
    async with daemon(tmp_path, synced_at=old, stale_cache={"max_age": "24h", "policy": "bookings_and_time_passes"}) as (
            d, _, clock):
        assert (await tap(d, "AA01"))["reason"] == "walk_in"
        clock.now = NOW + timedelta(days=30)
        assert (await tap(d, "AA01", "out"))["reason"] == "exit"
        assert (await tap(d, "AA01"))["reason"] == "walk_in"
        assert d.health()["cache_stale"] is False


async def test_capacity_full_denies_site_full(tmp_path: Path) -> None:
    async with daemon(tmp_path, zones={"main": {"capacity": 1}}) as (d, _, _clock):
        assert (await tap(d, "AA01"))["decision"] == "granted"
        assert (await tap(d, "AA02"))["reason"] == "site_full"
        assert (await tap(d, "AA01", "out"))["reason"] == "exit"
        assert (await tap(d, "AA02"))["decision"] == "granted"
        # at capacity again, but AA02 is the one inside: a tap of theirs needs no new place
        assert (await tap(d, "AA02"))["decision"] == "granted"
        assert (await tap(d, "AA01"))["reason"] == "site_full"


async def test_lockdown_and_relay_fault(tmp_path: Path) -> None:
    async with daemon(tmp_path) as (d, sim, _):
        await d.operator.set_lockdown(True, "boss", "drill")
        assert (await tap(d, "AA01"))["reason"] == "lockdown"
        assert (await tap(d, "AA01", "out"))["reason"] == "exit"
        await d.operator.set_lockdown(False, "boss", None)
        await sim.stop_server()
        store = d.store
        assert store is not None
        # the board is known to be gone (its connection closed): nothing is sent, the entry
        # is refused. (A release sent to a board that then never answers — it might have
        # carried it out — is reported as passage_unconfirmed: tests/test_outputs_gate.py and
        # tests/test_board_stall.py.)
        ctl = d.controllers["in"]
        await wait_until(lambda: ctl.state["relay"] == "offline", what="the relay seen offline")
        r = await tap(d, "AA01")
        assert r["reason"] == "hardware_fault" and r["passed"] is False
        assert store.balance("p1") == 5  # nothing taken
        types = [e["type"] for e in store.recent_events(50)]
        assert "lockdown" in types



async def test_in_a_lockdown_the_desk_lets_someone_out_but_nobody_in(tmp_path: Path) -> None:
    """A lockdown stops people getting in, not out. A visitor whose card nobody has is
    refused at the exit; the desk's "open once" at that exit lets them out (before: refused
    `lockdown`, nobody could be let out by hand); at the entrance it stays refused."""
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.05)) as sim, \
            SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.05)) as sim_out:
        def output(port: int) -> dict[str, Any]:
            return {"transport": "tcp", "host": "127.0.0.1", "port": port, "coil": 0, "passage_input": 0,
                    "pulse": 0.3, "passage_timeout": 3}

        cfg = config(tmp_path, sim.port, gates=[
            {"id": "in", "zone": "main", "output": output(sim.port)},
            {"id": "out", "zone": "main", "direction": "out", "output": output(sim_out.port)},
        ])
        store = Store(cfg.store.path, cfg.site_domain())
        store.apply_sync(batch_from(SEED, cfg), NOW)
        store.close()
        d = Daemon(cfg, clock=Clock(NOW))
        await d.start()
        try:
            await d.operator.set_lockdown(True, "boss", "intruder")
            assert (await tap(d, "ZZ99", "out"))["reason"] == "unknown_card"
            opened = await d.operator.open_once("out", "desk", "visitor without a card")
            assert opened["decision"] == "granted" and opened["passed"] is True, opened
            assert sim_out.unlocks == 1
            refused = await d.operator.open_once("in", "desk", "let me in")
            assert refused["error"] == "lockdown" and sim.unlocks == 0, refused
            assert d.store is not None
            overrides = d.store.recent_events(10, types=["override"])
            assert [(e["gate"], e["operator"]) for e in overrides] == [("out", "desk")], overrides
        finally:
            await d.stop()


async def test_the_ledger_retention_sweeps_what_the_central_system_has(tmp_path: Path) -> None:
    """`store.retention` (90 days by default): the daemon's sweep deletes a walk-in's
    passage and deduction of 100 days ago once the central system has applied it, keeps
    today's, says so in `gated status` and the metrics, and does not run during a storage
    fault."""
    async with daemon(tmp_path) as (d, _, clock):
        assert d.store is not None and d.retention is not None and d.storage is not None
        clock.now = NOW - timedelta(days=100)
        assert (await tap(d, "AA01"))["passed"] is True  # a walk-in on p1
        clock.now = NOW
        assert (await tap(d, "AA02"))["passed"] is True  # today's, on a time pass
        d.store.ack(d.store.last_seq)
        p1: dict[str, Any] = SEED["passes"][0]  # type: ignore[index]
        applied = PassIn.model_validate({**p1, "balance": 4, "applied_seq": d.store.last_seq})
        d.store.apply_sync(SyncBatch(passes=[applied]), NOW)
        balance = d.store.balance("p1")
        # the no-show work has moved past the day of the old walk-in (it bounds the cutoff)
        store = d.store
        await wait_until(lambda: float(store.meta("due.no_show_through") or 0) > (NOW - timedelta(days=1)).timestamp(),
                         what="the no-show cursor at today")
        pruned = await d.retention.sweep(pause=0)
        assert pruned is not None and (pruned["passages"], pruned["deductions"]) == (1, 1)
        assert d.store.conn.execute("SELECT member_id FROM passages").fetchall() == [("m2",)]
        assert d.store.balance("p1") == balance == 4
        last = d.health()["retention"]["last"]
        assert last["pruned"] == {"passages": 1, "deductions": 1}, last
        metrics = generate_latest(d.metrics.registry).decode()
        assert 'gated_ledger_pruned_total{table="deductions"} 1.0' in metrics
        # a reload (SIGHUP) with other periods: the next sweep keeps what the file says
        raw = d.config.model_dump(mode="json", exclude_none=True)
        raw["store"] = {**raw["store"], "retention": "30d", "audit_retention": None}
        path = tmp_path / "gated.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        assert await reload_config(d, path)
        assert (d.retention.keep, d.retention.keep_audit) == (timedelta(days=30), None)
        assert d.health()["retention"]["keep_days"] == 30
        d.storage.failed(sqlite3.OperationalError("database or disk is full"), "test")
        assert await d.retention.sweep(pause=0) is None
