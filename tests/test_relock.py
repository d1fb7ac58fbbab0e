"""The relay is relocked on every way out of the daemon (issue 22): `gated relock` (the
unit's ExecStopPost) as a subprocess against real Modbus simulator boards, and the daemon's
own relock at start, before it opens the store — also when the store is damaged and the
daemon exits 3, which systemd does not restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import yaml

from gated.safety import EMERGENCY_KEY, FIRE_KEY
from simulator.turnstile import Person, SimTurnstile
from tests.test_daemon import GATED, running_daemon, wait_for

NOISE = ("Traceback", "pymodbus", "online (None)")


def relock(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATED, "relock", "-c", str(cfg)], capture_output=True, text=True, timeout=60)


async def arelock(cfg: Path) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(relock, cfg)


def output(sim: SimTurnstile, **over: Any) -> dict[str, Any]:
    return {"transport": "tcp", "host": sim.host, "port": sim.port, "unit": sim.unit, "coil": 0,
            "passage_input": 0, "door_contact": 1, "pulse": 0.3, "timeout": 0.3, "retries": 0, **over}


def write(tmp: Path, gates: list[dict[str, Any]], **extra: Any) -> Path:
    cfg = {"site": {"id": "s", "timezone": "Europe/Madrid"}, "gates": gates,
           "store": {"path": str(tmp / "g.db")}, "control": {"socket": str(tmp / "c.sock")},
           "console": {"enabled": False}, "metrics": {"enabled": False}, **extra}
    path = tmp / "gated.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def clean(out: subprocess.CompletedProcess[str]) -> None:
    text = out.stdout + out.stderr
    assert not [n for n in NOISE if n in text], text


async def test_relock_turns_off_a_coil_a_crash_left_on(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, initial_coil=True, person=Person(turns=False)) as sim, \
            SimTurnstile(port=0, active_low=True, initial_coil=False, person=Person(turns=False)) as inverted:
        assert sim.unlocked and inverted.unlocked
        cfg = write(tmp_path, [{"id": "g1", "zone": "z", "output": output(sim)},
                               {"id": "g2", "zone": "z", "output": output(inverted, active_low=True)}])
        out = await arelock(cfg)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not sim.unlocked and not sim.coil_state
        assert not inverted.unlocked and inverted.coil_state  # locked is coil ON for active_low
        assert "g1: locked (coil 0 off)" in out.stdout and "g2: locked (coil 0 on)" in out.stdout
        clean(out)


async def test_relock_keeps_fail_safe_doors_released_in_a_fire_alarm(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, initial_coil=True, person=Person(turns=False)) as safe, \
            SimTurnstile(port=0, initial_coil=True, person=Person(turns=False)) as secure:
        fire = {"transport": "tcp", "host": safe.host, "port": safe.port, "input": 2, "active_low": False,
                "timeout": 0.3, "retries": 0}
        gates = [{"id": "door-safe", "zone": "z", "output": output(safe, mode="fail_safe")},
                 {"id": "door-secure", "zone": "z", "output": output(secure, mode="fail_secure")}]
        cfg = write(tmp_path, gates, fire_alarm=fire)
        safe.set_fire_alarm(True)
        out = await arelock(cfg)
        assert out.returncode == 0 and "fire-alarm input: ACTIVE" in out.stdout, out.stdout + out.stderr
        assert safe.unlocked and not secure.unlocked
        safe.set_fire_alarm(False)
        out = await arelock(cfg)
        assert out.returncode == 0 and "fire-alarm input: clear" in out.stdout
        assert not safe.unlocked and not secure.unlocked
        clean(out)
    # the fire board silent: `release` acts as an alarm, `keep` locks (a fresh process has no last state)
    async with SimTurnstile(port=0, initial_coil=True, person=Person(turns=False)) as door:
        silent = {"transport": "tcp", "host": "127.0.0.1", "port": 9, "input": 2, "timeout": 0.3, "retries": 0}
        for policy, released in (("release", True), ("keep", False)):
            cfg = write(tmp_path, [{"id": "d", "zone": "z", "output": output(door)}],
                        fire_alarm={**silent, "on_unknown": policy})
            out = await arelock(cfg)
            assert out.returncode == 0 and "cannot be read" in out.stdout, out.stdout + out.stderr
            assert door.unlocked is released, (policy, out.stdout)


async def test_relock_keeps_a_stored_emergency_release(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, initial_coil=True, person=Person(turns=False)) as sim:
        cfg = write(tmp_path, [{"id": "g1", "zone": "z", "output": output(sim)}])
        with contextlib.closing(sqlite3.connect(tmp_path / "g.db")) as c:
            c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            c.execute("INSERT INTO meta VALUES (?, ?)",
                      (EMERGENCY_KEY, json.dumps({"active": True, "operator": "boss", "at": None})))
            c.commit()
        out = await arelock(cfg)
        assert out.returncode == 0 and "emergency release stored (by boss)" in out.stdout, out.stdout
        assert sim.unlocked
        # a store that cannot be read: doors at rest
        (tmp_path / "g.db").write_bytes(b"\0" * 4096)
        out = await arelock(cfg)
        assert out.returncode == 0 and "cannot read the safety state" in out.stdout, out.stdout
        assert not sim.unlocked
        clean(out)


async def test_relock_keeps_the_last_fire_reading_stored_while_the_fire_board_is_silent(tmp_path: Path) -> None:
    """A stop during a fire whose I/O board went silent (on_unknown keep): the daemon held
    the fail-safe door released on its last reading, and so does the relock — the reading
    as the daemon stored it — without writing it locked first. A last reading of clear
    locks."""
    async with SimTurnstile(port=0, initial_coil=True, person=Person(turns=False)) as door:
        silent = {"transport": "tcp", "host": "127.0.0.1", "port": 9, "input": 2, "timeout": 0.3, "retries": 0,
                  "on_unknown": "keep"}
        cfg = write(tmp_path, [{"id": "d", "zone": "z", "output": output(door)}], fire_alarm=silent)
        with contextlib.closing(sqlite3.connect(tmp_path / "g.db")) as c:
            c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
            c.execute("INSERT INTO meta VALUES (?, ?)", (FIRE_KEY, json.dumps({"active": True, "at": None})))
            c.commit()
        out = await arelock(cfg)
        assert out.returncode == 0 and "last reading stored: ACTIVE" in out.stdout, out.stdout + out.stderr
        assert door.unlocked and door.coil_history == [], door.coil_history
        with contextlib.closing(sqlite3.connect(tmp_path / "g.db")) as c:
            c.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps({"active": False, "at": None}), FIRE_KEY))
            c.commit()
        out = await arelock(cfg)
        assert out.returncode == 0 and "last reading stored: clear" in out.stdout, out.stdout + out.stderr
        assert not door.unlocked
        clean(out)


def test_relock_says_when_a_board_does_not_answer(tmp_path: Path) -> None:
    gone = {"transport": "tcp", "host": "127.0.0.1", "port": 9, "coil": 0, "timeout": 0.3, "retries": 0}
    out = relock(write(tmp_path, [{"id": "g1", "zone": "z", "output": gone}]))
    assert out.returncode == 1 and "g1: FAILED: the board does not answer" in out.stdout, out.stdout + out.stderr
    clean(out)
    out = relock(write(tmp_path, [{"id": "g1", "zone": "z"}]))
    assert out.returncode == 0 and "nothing to relock" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: {id: s\n")
    out = subprocess.run([*GATED, "relock", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "does not parse" in out.stderr and "Traceback" not in out.stderr


async def test_relock_locks_what_it_can_read_of_a_file_the_daemon_refused(tmp_path: Path) -> None:
    """The daemon exited 2 on this file (a broken mqtt section, a credential out of reach):
    its relays are still locked; an output that cannot be read is said, exit 1."""
    async with SimTurnstile(port=0, initial_coil=True, person=Person(turns=False)) as sim:
        cfg = write(tmp_path, [{"id": "g1", "zone": "z", "output": output(sim)},
                               {"id": "g2", "zone": "z", "output": {"transport": "tcp", "coil": "x"}}],
                    mqtt={"host": "127.0.0.1", "password": {"credential": "not-there"}, "qos": 7})
        daemon = await asyncio.to_thread(subprocess.run, [*GATED, "run", "-c", str(cfg)], capture_output=True,
                                         text=True, timeout=60)
        assert daemon.returncode == 2
        out = await arelock(cfg)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "g1: locked (coil 0 off)" in out.stdout and "g2: its output cannot be read" in out.stdout
        assert not sim.unlocked


async def test_kill_9_mid_pulse_then_relock_locks_the_gate(tmp_path: Path) -> None:
    """The unit's way out after a crash: the daemon killed while the relay is released,
    then ExecStopPost's `gated relock`. While the daemon runs, relock leaves its relays be."""
    async with running_daemon(tmp_path, person=Person(turns=False)) as d:
        busy = await arelock(d.config)
        assert busy.returncode == 1 and "the daemon is running" in busy.stdout, busy.stdout
        d.reader.tap("04A1B2C3D4")
        await wait_for(lambda: d.turnstile.unlocked, what="the release")
        d.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(d.proc.wait, 10)
        assert d.turnstile.unlocked  # the pulse's end died with the daemon
        out = await arelock(d.config)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not d.turnstile.unlocked


async def test_a_frozen_daemon_is_aborted_with_its_stacks_then_relocked(tmp_path: Path) -> None:
    """The watchdog's way out (the unit's WatchdogSec, TimeoutAbortSec, ExecStopPost): a
    daemon frozen with the relay released holds it released; systemd's SIGABRT waits until
    the process runs again — the stack dump's handler makes it wait (without one, the
    default abort killed even a stopped process at once) — so systemd kills it after
    TimeoutAbortSec; here it is continued instead, and the abort writes every thread's
    stack, where it hung. Then `gated relock` locks the gate."""
    async with running_daemon(tmp_path, person=Person(turns=False)) as d:
        d.reader.tap("04A1B2C3D4")
        await wait_for(lambda: d.turnstile.unlocked, what="the release")
        d.proc.send_signal(signal.SIGSTOP)
        d.proc.send_signal(signal.SIGABRT)
        await asyncio.sleep(1.0)  # longer than the 0.3 s pulse: nobody ends it
        assert d.proc.poll() is None and d.turnstile.unlocked
        d.proc.send_signal(signal.SIGCONT)
        assert await asyncio.to_thread(d.proc.wait, 10) == -signal.SIGABRT
        assert d.proc.stdout is not None
        dump = (await asyncio.to_thread(d.proc.stdout.read)).decode(errors="replace")
        assert "Fatal Python error: Aborted" in dump and "most recent call first" in dump, dump[-3000:]
        out = await arelock(d.config)
        assert out.returncode == 0, out.stdout + out.stderr
        assert not d.turnstile.unlocked


def test_the_unit_bounds_a_frozen_daemons_release() -> None:
    """operations.md promises a frozen daemon's released relay is relocked about 13 s past
    its last ping: WatchdogSec, then TimeoutAbortSec (without it, the stop timeout: 30 s)."""
    unit = dict(line.split("=", 1) for line in (Path(__file__).parent.parent / "systemd" / "gated.service")
                .read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert float(unit["WatchdogSec"]) + float(unit["TimeoutAbortSec"]) <= 13
    assert "relock" in unit["ExecStopPost"]


async def test_a_daemon_exiting_3_on_a_damaged_store_leaves_the_coil_off(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, initial_coil=True, person=Person(turns=False)) as sim:
        cfg = write(tmp_path, [{"id": "g1", "zone": "z", "output": output(sim)}])
        (tmp_path / "g.db").write_bytes(b"\0" * 8192)  # a zeroed file: not a database
        out = await asyncio.to_thread(
            subprocess.run, [*GATED, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60,
            env={**os.environ, "NOTIFY_SOCKET": ""},
        )
        assert out.returncode == 3, out.stdout + out.stderr
        assert "Traceback" not in out.stdout + out.stderr
        assert not sim.unlocked and not sim.coil_state
        assert [raw for _, raw in sim.coil_history][-1] is False
