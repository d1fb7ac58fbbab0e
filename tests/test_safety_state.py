"""Safety state is durable, and a fire-alarm input that cannot be read is never silent.

- A lockdown or an emergency release survives kill -9 and a clean restart (a watchdog
  restart or a reboot is one of those): the site is still locked down afterwards, and only
  an admin lifts it.
- The fire-alarm board down or at a wrong address: an `alarm` event, `gated status`, the
  `gated_fire_input_up` metric; `on_unknown` decides what entries do meanwhile. During a
  fire alarm entries are refused with `fire_alarm`, not `lockdown`.
- The fire input's last reading survives a restart too: a fire whose I/O board went silent
  keeps the fail-safe doors released through the stop, the relock and the start, until the
  input reads clear; a reload of the fire section keeps them released as well. A restart
  never writes a released door locked first.
- A switch set while the store cannot write is in force, said not durable, and written
  once the store works again: a restart after that keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gated.auth import hash_password
from gated.config import Config
from gated.control import request
from gated.daemon import Daemon
from gated.reload import reload_config
from gated.seed import batch_from
from gated.status import status_line
from rules.credential import Credential
from simulator.turnstile import Person, SimTurnstile
from sync.store import Store
from tests.gate_process import IN_CARD, OUT_CARD, gate_process
from tests.test_daemon import wait_for
from tests.test_faults_devices import CARDS, make_config, output, running_site, seed
from tests.test_relock import arelock

PASSWORDS = {"desk": "desk-pass-1", "boss": "boss-pass-1"}


def users() -> dict[str, Any]:
    return {"console": {"enabled": False, "users": [
        {"name": "desk", "role": "staff", "password_hash": hash_password(PASSWORDS["desk"])},
        {"name": "boss", "role": "admin", "password_hash": hash_password(PASSWORDS["boss"])},
    ]}}


async def test_lockdown_survives_kill_9_and_restart_and_only_an_admin_lifts_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    extra = users()
    async with gate_process(tmp_path, state, extra=extra) as gate:
        r = await request(gate.socket, {"cmd": "lockdown", "on": True, "reason": "armed robbery next door",
                                        "user": "boss", "password": PASSWORDS["boss"]})
        assert r == {"lockdown": True}
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"]) == ("denied", "lockdown")
        os.kill(gate.proc.pid, signal.SIGKILL)
        await asyncio.to_thread(gate.proc.wait, 10)
    # kill -9: back up, still locked down, before a single reader was read
    async with gate_process(tmp_path, state, extra=extra, seed=False) as gate:
        st = await gate.status()
        assert st["lockdown"] is True and st["safety"]["lockdown"]["operator"] == "boss", st["safety"]
        assert st["safety"]["lockdown"]["reason"] == "armed robbery next door"  # who and why survive too
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"]) == ("denied", "lockdown")
        assert gate.turnstile.unlocks == 0
        t = await gate.tap(OUT_CARD, exit_gate=True)  # nobody is locked in
        assert (t["decision"], t["reason"]) == ("granted", "exit")
    # a clean stop and start (SIGTERM at the end of the block above): still locked down
    async with gate_process(tmp_path, state, extra=extra, seed=False) as gate:
        assert (await gate.status())["lockdown"] is True
        r = await request(gate.socket, {"cmd": "lockdown", "on": False, "user": "desk", "password": PASSWORDS["desk"]})
        assert "admin" in r["error"]
        assert (await gate.status())["lockdown"] is True
        r = await request(gate.socket, {"cmd": "lockdown", "on": False, "user": "boss", "password": PASSWORDS["boss"]})
        assert r == {"lockdown": False}
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"], t["passed"]) == ("granted", "walk_in", True)
    async with gate_process(tmp_path, state, extra=extra, seed=False) as gate:
        assert (await gate.status())["lockdown"] is False  # the lift is durable too
        kinds = [e["type"] for e in gate.events() if e["type"] == "lockdown"]
        assert kinds == ["lockdown", "lockdown"]


def gates(sims: dict[str, SimTurnstile], _: Any) -> list[dict[str, Any]]:
    return [{"id": "in-1", "zone": "main", "output": output(sims["in"])}]


async def test_emergency_release_survives_a_restart(tmp_path: Path) -> None:
    async with running_site(tmp_path, gates) as site:
        await site.daemon.operator.set_emergency(True, "boss", "drill")
        await wait_for(lambda: site.sims["in"].unlocked, 10, "the door released")
    # a new daemon on the same store (and a new relay board): the doors are released at
    # start, entries refused as an emergency release, until an admin restores
    async with running_site(tmp_path, gates) as site:
        d = site.daemon
        assert d.health()["safety"]["emergency_release"]["operator"] == "boss"
        await wait_for(lambda: site.sims["in"].unlocked, 10, "the door released again at start")
        r = await site.tap("in-1", next(iter(CARDS)))
        assert (r["decision"], r["reason"]) == ("denied", "emergency_release"), r
        await d.operator.set_emergency(False, "boss", None)
        await wait_for(lambda: not site.sims["in"].unlocked, 10, "the door locked")
        r = await site.tap("in-1", next(iter(CARDS)))
        assert (r["decision"], r["reason"]) == ("granted", "walk_in"), r


def fire_board(policy: str) -> Any:
    def extra(sims: dict[str, SimTurnstile]) -> dict[str, Any]:
        sim = sims["fire"]
        return {"fire_alarm": {"transport": "tcp", "host": sim.host, "port": sim.port, "unit": sim.unit,
                               "input": sim.fire_alarm_input, "active_low": False, "poll_interval": 0.05,
                               "timeout": 0.2, "retries": 0, "reconnect_max": 0.3, "on_unknown": policy}}
    return extra


@pytest.mark.parametrize("policy, entry_while_unknown", [("keep", "walk_in"), ("deny_entries", "hardware_fault")])
async def test_fire_input_unreachable_is_an_alarm_with_a_policy(tmp_path: Path, policy: str, entry_while_unknown: str) -> None:
    async with running_site(tmp_path, gates, sims=("in", "fire"), extra=fire_board(policy)) as site:
        d = site.daemon
        card = next(iter(CARDS))
        assert d.health()["safety"]["fire_input"]["known"] is True
        await site.sims["fire"].stop_server()  # the I/O board loses power
        await wait_for(lambda: bool(site.alarms("fire_input_unreachable")), 10, "the unreachable alarm")
        st = d.health()["safety"]["fire_input"]
        assert st["known"] is False and st["policy"] == policy and st["error"]
        assert d.metrics.fire_input_up._value.get() == 0
        r = await site.tap("in-1", card)
        assert r["reason"] == entry_while_unknown, r
        await site.sims["fire"].start_server()
        await wait_for(lambda: bool(site.alarms("fire_input_online")), 15, "the input back")
        assert d.health()["safety"]["fire_input"]["known"] is True
        await site.tap("in-1", card)  # whatever it was, the next one after it is normal
        r = await site.tap("in-1", list(CARDS)[1])
        assert r["reason"] == "walk_in", r


async def test_fire_input_at_a_wrong_address_is_an_alarm_from_the_start(tmp_path: Path) -> None:
    def wrong(sims: dict[str, SimTurnstile]) -> dict[str, Any]:
        return {"fire_alarm": {"transport": "tcp", "host": "127.0.0.1", "port": 1, "unit": 1, "input": 2,
                               "timeout": 0.2, "retries": 0, "on_unknown": "release"}}

    async with running_site(tmp_path, gates, sims=("in",), extra=wrong) as site:
        await wait_for(lambda: bool(site.alarms("fire_input_unreachable")), 10, "the alarm")
        d = site.daemon
        assert d.health()["safety"]["fire_input"]["known"] is False
        # policy release: act as in a fire alarm — doors released, entries refused as fire_alarm
        await wait_for(lambda: site.sims["in"].unlocked, 10, "the fail-safe door released")
        r = await site.tap("in-1", next(iter(CARDS)))
        assert (r["decision"], r["reason"]) == ("denied", "fire_alarm"), r


# -- one door and the fire panel's board, the same boards across restarts ----------------------


def door_site(tmp: Path, door: SimTurnstile, fire: SimTurnstile | None = None, policy: str = "keep") -> Config:
    extra: dict[str, Any] = users()
    if fire is not None:
        extra["fire_alarm"] = {"transport": "tcp", "host": fire.host, "port": fire.port, "unit": fire.unit,
                               "input": fire.fire_alarm_input, "active_low": False, "poll_interval": 0.05,
                               "timeout": 0.2, "retries": 0, "reconnect_max": 0.3, "on_unknown": policy}
    cfg = make_config(tmp, [{"id": "in-1", "zone": "main", "output": output(door)}], **extra)
    store = Store(cfg.store.path, cfg.site_domain(), daemon_id=cfg.daemon_id, ten_digits=cfg.ten_digits())
    store.apply_sync(batch_from(seed(), cfg), datetime.now(UTC))
    store.close()
    return cfg


@contextlib.asynccontextmanager
async def started(cfg: Config) -> AsyncIterator[Daemon]:
    d = Daemon(cfg)
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


async def entry(d: Daemon) -> dict[str, Any]:
    return await d.handle_credential("in-1", Credential.card(next(iter(CARDS)), "test"))


def safety(d: Daemon) -> dict[str, Any]:
    st: dict[str, Any] = d.health()["safety"]
    return st


async def test_a_restart_in_a_fire_whose_input_went_silent_keeps_the_fail_safe_door_released(tmp_path: Path) -> None:
    """on_unknown keep: the fire input reads active, the doors are released; then its I/O
    board stops answering (the last state stands). The daemon stops, the unit's relock
    runs, the daemon starts again with the board still silent: the door stays released
    throughout — never written locked — and entries are refused as a fire alarm, until the
    input reads clear again."""
    async with SimTurnstile(port=0, person=Person(delay=0.1)) as door, SimTurnstile(port=0) as fire:
        cfg = door_site(tmp_path, door, fire)
        async with started(cfg) as d:
            fire.set_fire_alarm(True)
            await wait_for(lambda: d.fire_alarm and door.unlocked, 10, "the fire release")
            await fire.stop_server()
            await wait_for(lambda: not safety(d)["fire_input"]["known"], 10, "the input unreachable")
            assert door.unlocked
        released_at = len(door.coil_history)
        path = tmp_path / "gated.yaml"  # the unit's ExecStopPost: gated relock, a process of its own
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
        out = await arelock(path)
        assert out.returncode == 0 and "last reading stored: ACTIVE" in out.stdout, out.stdout + out.stderr
        assert door.unlocked
        async with started(cfg) as d:
            assert door.coil_history[released_at:] == [], "the door was written locked"
            st = safety(d)
            assert st["fire_input"]["known"] is False and st["fire_input"]["active"] is True, st
            assert st["fire_alarm"] is True and st["doors_released"] is True
            r = await entry(d)
            assert (r["decision"], r["reason"]) == ("denied", "fire_alarm"), r
            # the panel reset while its board was down; the board back: the input reads clear
            fire.set_fire_alarm(False)
            await fire.start_server()
            await wait_for(lambda: not door.unlocked, 15, "the door locked once the input reads clear")
            await wait_for(lambda: door.people_moving == 0, 10, "the evacuees through")
            r = await entry(d)
            assert (r["decision"], r["reason"]) == ("granted", "walk_in"), r


async def test_a_restart_with_an_emergency_release_stored_never_locks_the_door_first(tmp_path: Path) -> None:
    """The relays are driven before the store is opened (a crash's pulse is relocked even
    when the store is unusable), but to the safety state stored: a restart during an
    emergency release leaves the door released, with no lock-then-release."""
    async with SimTurnstile(port=0, person=Person(delay=0.1)) as door:
        cfg = door_site(tmp_path, door)
        async with started(cfg) as d:
            await d.operator.set_emergency(True, "boss", "gas leak")
            await wait_for(lambda: door.unlocked, 10, "the door released")
        released_at = len(door.coil_history)
        async with started(cfg) as d:
            assert safety(d)["emergency_release"]["active"] is True
            assert door.coil_history[released_at:] == [], "the door was written locked"
            r = await entry(d)
            assert (r["decision"], r["reason"]) == ("denied", "emergency_release"), r


async def test_a_reload_of_the_fire_section_during_a_fire_keeps_the_doors_released(tmp_path: Path) -> None:
    """A SIGHUP that changes the fire_alarm section (its poll interval) while the input
    reads active: the old monitor's board closing is no lost input, and the state holds
    until the new monitor reads — the door is not relocked, no false alarm is raised."""
    async with SimTurnstile(port=0, person=Person(delay=0.1)) as door, SimTurnstile(port=0) as fire:
        cfg = door_site(tmp_path, door, fire)
        async with started(cfg) as d:
            fire.set_fire_alarm(True)
            await wait_for(lambda: d.fire_alarm and door.unlocked, 10, "the fire release")
            released_at = len(door.coil_history)
            raw = cfg.model_dump(mode="json", exclude_none=True)
            raw["fire_alarm"]["poll_interval"] = 0.1
            path = tmp_path / "gated.yaml"
            path.write_text(yaml.safe_dump(raw), encoding="utf-8")
            assert await reload_config(d, path)
            assert d.fire_monitor is not None and d.fire_monitor.cfg.poll_interval == 0.1
            await asyncio.sleep(0.5)  # the new monitor polls a few times; the old one's close settles
            assert door.coil_history[released_at:] == [], "the door was relocked during the fire"
            assert safety(d)["fire_input"]["known"] is True and d.fire_alarm
            assert d.store is not None
            kinds = [e.get("kind") for e in d.store.events_after(0, 10_000) if e["type"] == "alarm"]
            assert "fire_input_unreachable" not in kinds, kinds


async def test_a_switch_set_during_a_storage_fault_is_written_when_the_store_recovers(tmp_path: Path) -> None:
    """An emergency release and a lockdown set while the store cannot write (disk full):
    in force at once, said not durable (the answer, the status), a storage fault like any
    other; once the store works they are written — a restart then keeps both."""
    async with SimTurnstile(port=0, person=Person(delay=0.1)) as door:
        cfg = door_site(tmp_path, door)
        async with started(cfg) as d:
            assert d.store is not None
            real = d.store.set_meta

            def full(key: str, value: str) -> None:
                raise sqlite3.OperationalError("database or disk is full")

            d.store.set_meta = full  # type: ignore[method-assign]
            await d.operator.set_emergency(True, "boss", "gas leak")
            r = await request(cfg.control.socket, {"cmd": "lockdown", "on": True, "reason": "intruder",
                                                   "user": "boss", "password": PASSWORDS["boss"]})
            assert r == {"lockdown": True, "not_durable": ["emergency_release", "lockdown"]}, r
            assert door.unlocked  # in force
            assert d.operator.not_durable == ["emergency_release", "lockdown"]
            assert safety(d)["not_durable"] == ["emergency_release", "lockdown"]
            assert d.health()["storage"]["ok"] is False
            assert "SAFETY STATE NOT STORED" in status_line(d)
            d.store.set_meta = real  # type: ignore[method-assign]  # space freed
            await wait_for(lambda: not safety(d)["not_durable"], 10, "the switches written")
        async with started(cfg) as d:
            st = safety(d)
            assert st["emergency_release"]["active"] is True and st["lockdown"]["active"] is True, st
            assert st["emergency_release"]["reason"] == "gas leak"
            assert door.unlocked
