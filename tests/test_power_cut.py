"""Power cuts, for real: the daemon's store on a file system that loses every write not yet
synced when the power goes (simulator/power_cut.py), not `kill -9`, which leaves the page
cache behind and so cannot tell a flushed commit from one that was not. Mid-tap (below),
and just after what the gate then acts on as if it were on disk: a snapshot's switch (the
old replica file deleted), a fire alarm (the evacuation), the desk's "open once" (its answer).

Mid-tap: `gated run` on a simulated site (tests/gate_process.py) taps a member in and out; then a
tap is cut — the daemon frozen, the file system killed with what it held, the daemon
killed — at one of three moments: just after the card is read, once the entrance's relay
is set (the member in the turnstile), or just after the tap's answer was logged. Then
again, on what survived. A last start on the surviving files turns any grant whose commit
was cut off into a `passage_unconfirmed` event, and what is on the disk must say:

- every tap the daemon answered is there (its commit was on disk before its answer);
- every time the entrance opened is there, as a tap or a `passage_unconfirmed` grant (the
  grant's intent was on disk before the relay: nothing opens that cannot be recorded);
- the events are numbered without a gap, and no intent is left open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from simulator.central import Central
from simulator.power_cut import PowerCutDisk
from simulator.turnstile import SimTurnstile
from tests.broker import Mosquitto
from tests.gate_process import IN_CARD, Gate, gate_process
from tests.test_daemon import SEED, wait_for

CYCLES = 9  # three of each moment
RECORDS = {**SEED, "passes": [{**p, "balance": 1000} for p in SEED["passes"]]}  # never runs out


def needs_power_cut() -> None:
    """Skipped only where the kernel has no FUSE; what `make test` installs must be there."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this kernel: no file system can be made to lose unsynced writes")
    why = PowerCutDisk.missing()
    if why is not None:
        pytest.fail(f"{why}: make system-deps installs Debian's fuse3, make install the test extras (mfusepy)")


def unlocks(t: SimTurnstile) -> int:
    """How many times the turnstile's relay went from locked to released."""
    n, locked = 0, True
    for _, raw in t.coil_history:
        released = raw != t.active_low
        n += released and locked
        locked = not released
    return n


def answered(g: Gate) -> list[dict[str, Any]]:
    return [t for t in g.taps() if t.get("decision") == "granted" and t.get("passed")]


async def power_cut(g: Gate, disk: PowerCutDisk) -> None:
    """The box loses power at one instant: nothing more of the daemon reaches the disk."""
    os.kill(g.proc.pid, signal.SIGSTOP)
    disk.cut()
    os.kill(g.proc.pid, signal.SIGKILL)
    await asyncio.to_thread(g.proc.wait)


async def test_power_cuts_mid_tap_lose_no_answered_tap_and_no_opening(tmp_path: Path) -> None:
    needs_power_cut()
    rng = random.Random(20261205)
    state = tmp_path / "state"  # the daemon's files, behind the power-cut file system
    disk = PowerCutDisk(state)
    opened = 0  # times the entrance's relay released, over every run
    answers = 0  # entries answered (granted, passed), over every run
    moments = ["read", "relay", "answer"] * (CYCLES // 3)
    rng.shuffle(moments)
    for cycle, moment in enumerate(moments):
        run = tmp_path / f"run-{cycle}"
        run.mkdir()
        disk.mount()
        try:
            async with gate_process(run, state, seed=cycle == 0, records=RECORDS) as g:
                await g.tap(IN_CARD, exit_gate=True)  # out first: the last cut may have left m1 inside
                for _ in range(rng.randint(0, 2)):
                    assert (await g.tap(IN_CARD))["decision"] == "granted"
                    await g.tap(IN_CARD, exit_gate=True)
                before_taps, before = len(g.taps()), unlocks(g.turnstile)
                g.reader.tap(IN_CARD)
                if moment == "read":
                    await asyncio.sleep(rng.uniform(0, 0.03))
                elif moment == "relay":
                    await wait_for(lambda n=before: unlocks(g.turnstile) > n, 10, "the entrance released")
                    await asyncio.sleep(rng.uniform(0, 0.3))
                else:
                    await wait_for(lambda n=before_taps: len(g.taps()) > n, 10, "the tap's answer")
                    await asyncio.sleep(rng.uniform(0, 0.2))
                await power_cut(g, disk)
                opened += unlocks(g.turnstile)
                answers += sum(t["gate"] == "in-1" for t in answered(g))
        finally:
            disk.cut()

    # the last start, on what survived: open intents become passage_unconfirmed events
    final = tmp_path / "final"
    final.mkdir()
    async with gate_process(final, state, seed=False, records=RECORDS) as g:
        await g.tap(IN_CARD, exit_gate=True)
    with contextlib.closing(sqlite3.connect(state / "gated.db")) as c:
        seqs = [r[0] for r in c.execute("SELECT seq FROM events ORDER BY seq")]
        events = [json.loads(r[0]) for r in c.execute("SELECT body FROM events ORDER BY seq")]
        open_intents = c.execute("SELECT COUNT(*) FROM grant_intents").fetchone()[0]
    assert seqs == list(range(1, len(seqs) + 1)), "the events have a gap"
    assert open_intents == 0
    entries = [e for e in events if e["type"] == "access" and e.get("gate") == "in-1" and e["decision"] == "granted"]
    unconfirmed = [e for e in events if e["type"] == "passage_unconfirmed" and e.get("gate") == "in-1"]
    passed = [e for e in entries if e.get("passed")]
    assert len(passed) >= answers, f"{answers} entries answered, {len(passed)} on disk"
    assert len(entries) + len(unconfirmed) >= opened, (
        f"the entrance opened {opened} times; on disk {len(entries)} grants and {len(unconfirmed)} unconfirmed"
    )
    assert opened >= CYCLES  # the test cut where it meant to: every run opened the entrance


async def test_a_power_cut_just_after_a_snapshot_switch_leaves_a_replica(
    tmp_path: Path, mosquitto: Mosquitto, central: Central
) -> None:
    """A snapshot is switched in by one ledger transaction that moves the pointer to the new
    replica file; the old file is deleted after it. Deleted before that transaction was on
    disk, a power cut left the ledger naming a file that was gone: the daemon started on an
    empty replica (and deleted the new one as an orphan), and with the central system out
    of reach — the site's router on the same power — refused every member. The old file
    now goes only once the switch is on disk."""
    needs_power_cut()
    central.load("storage-site", RECORDS["members"], RECORDS["passes"], [])
    mqtt = {"host": "127.0.0.1", "port": mosquitto.port, "ack_timeout": 1.0, "backoff_initial": 0.05,
            "backoff_max": 0.5, "resync_retry": 2.0, "keepalive": 5}
    state = tmp_path / "state"
    disk = PowerCutDisk(state)
    disk.mount()
    try:
        (tmp_path / "run").mkdir()
        async with gate_process(tmp_path / "run", state, extra={"mqtt": mqtt}, records=RECORDS) as g:
            def applied() -> int:
                return sum(str(ln.get("event", "")).startswith("snapshot ") and " applied " in str(ln.get("event"))
                           for ln in g.lines)

            await wait_for(lambda: applied() >= 1, 30, "the first snapshot applied")
            assert (await g.tap(IN_CARD))["decision"] == "granted"
            await central.publish_snapshot("storage-site", full_replacement=True)
            await wait_for(lambda: applied() >= 2, 30, "the second snapshot applied")
            await power_cut(g, disk)  # within milliseconds of the switch
    finally:
        disk.cut()
    mosquitto.stop()  # the central out of reach: the gate decides on what its disk kept
    disk.mount()
    try:
        (tmp_path / "again").mkdir()
        async with gate_process(tmp_path / "again", state, seed=False, extra={"mqtt": mqtt}, records=RECORDS) as g:
            await g.tap(IN_CARD, exit_gate=True)
            t = await g.tap(IN_CARD)
            assert t["decision"] == "granted", t  # Ana is known: a replica survived
    finally:
        disk.unmount()


async def test_a_power_cut_just_after_a_fire_alarm_keeps_the_evacuation(tmp_path: Path) -> None:
    """A fire cuts the power soon after the panel's contact closes. The evacuation (from
    then on nobody's earlier entry counts as inside) was written with the alarm's event but
    left for the next idle flush: lost, Ana — who had left by a fire exit — was still inside
    after the restart, and hard anti-passback refused her. The alarm is now on disk before
    anything else is done about it."""
    needs_power_cut()
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0) as panel:
        fire = {"fire_alarm": {"transport": "tcp", "host": "127.0.0.1", "port": panel.port, "unit": 1,
                               "input": panel.fire_alarm_input, "active_low": False, "poll_interval": 0.05,
                               "timeout": 0.2}}
        state = tmp_path / "state"
        disk = PowerCutDisk(state)
        disk.mount()
        try:
            (tmp_path / "run").mkdir()
            async with gate_process(tmp_path / "run", state, records=RECORDS, extra=fire,
                                    gate_extra={"anti_passback": "hard"}) as g:
                assert (await g.tap(IN_CARD))["decision"] == "granted"  # Ana is inside
                panel.set_fire_alarm(True)
                for _ in range(400):
                    if (await g.status())["safety"]["fire_alarm"]:
                        break
                    await asyncio.sleep(0.005)
                assert (await g.status())["safety"]["fire_alarm"]
                # the status shows the alarm as soon as it is read; the poller reads the
                # panel again only once the alarm is on disk: the promise under test
                reads = panel.input_reads
                for _ in range(400):
                    if panel.input_reads >= reads + 2:
                        break
                    await asyncio.sleep(0.005)
                assert panel.input_reads >= reads + 2
                await power_cut(g, disk)  # Ana leaves by a fire exit, no turnstile
        finally:
            disk.cut()
        panel.set_fire_alarm(False)  # the all-clear while the box is down
        disk.mount()
        try:
            (tmp_path / "again").mkdir()
            async with gate_process(tmp_path / "again", state, seed=False, records=RECORDS, extra=fire,
                                    gate_extra={"anti_passback": "hard"}) as g:
                t = await g.tap(IN_CARD)
                assert t["decision"] == "granted", t  # evacuated: not inside any more
        finally:
            disk.unmount()


async def test_a_desk_opening_answered_done_survives_a_power_cut(tmp_path: Path) -> None:
    """The desk opens the gate once (`gated open`, the console's button): told done, the
    opening is on disk — who opened it, and why. It was committed but left for the next idle
    flush, against the operator API's promise; a power cut then took the override back."""
    needs_power_cut()
    from argon2 import PasswordHasher

    from gated.control import request

    password = "desk-" + os.urandom(6).hex()  # made here: no secret in the repository
    users = {"console": {"enabled": False, "users": [
        {"name": "desk", "role": "staff", "password_hash": PasswordHasher().hash(password)}]}}
    state = tmp_path / "state"
    disk = PowerCutDisk(state)
    disk.mount()
    try:
        (tmp_path / "run").mkdir()
        async with gate_process(tmp_path / "run", state, records=RECORDS, extra=users) as g:
            r = await request(g.socket, {"cmd": "open", "gate": "in-1", "reason": "pram through the side",
                                         "user": "desk", "password": password})
            assert r.get("decision") == "granted", r
            await power_cut(g, disk)
    finally:
        disk.cut()
    with contextlib.closing(sqlite3.connect(state / "gated.db")) as c:
        overrides = [json.loads(b) for (b,) in c.execute("SELECT body FROM events WHERE type = 'override'")]
    assert [(o["gate"], o["operator"]) for o in overrides] == [("in-1", "desk")], overrides
