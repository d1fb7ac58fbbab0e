"""Rotations while the daemon is not running (docs/reliability.md, "What the gate knows it
is missing"): a `gated run` process against the simulator's turnstile on a real Modbus TCP
server whose board counts the passage pulses (an input register, `passage_counter`). The
daemon is killed (SIGKILL) or stopped; people go through while it is down; it starts again.

What must hold: the rotations the board counted meanwhile are recorded (one `alarm`
`rotations_while_down` with the gate, the direction, how many and the interval), at an exit
as exits that opened unrecorded in the zone, and reported once whatever the restarts; a
board whose counter went back (it restarted too) says the rotations are not known rather
than taking its count as a new baseline; a gate held released for a fire alarm when the
daemon went down says its rotations were evacuees'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from pymodbus.client import AsyncModbusTcpClient

from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import Person, SimTurnstile
from tests.test_daemon import GATED, wait_for

KEY = "counter.tcp:127.0.0.1:{port}/unit1/ir0"


def events(db: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return [json.loads(r[0]) for r in c.execute("SELECT body FROM events ORDER BY seq")]


def meta(db: Path, key: str) -> str | None:
    if not db.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def alarms(db: Path, *kinds: str) -> list[dict[str, Any]]:
    return [e for e in events(db) if e["type"] == "alarm" and e.get("kind") in kinds]


class Gate:
    """One gate's daemon, started and stopped as a test needs, on one ledger."""

    def __init__(self, tmp_path: Path, board: SimTurnstile, direction: str, *, fire: bool = False):
        self.db = tmp_path / "gated.db"
        self.reader = VirtualSerialReader(tmp_path / "reader")
        self.cfg = tmp_path / "gated.yaml"
        cfg: dict[str, Any] = {
            "site": {"id": "s1", "timezone": "Europe/Madrid"},
            "stale_cache": {"max_age": None, "policy": "keep"},
            "gates": [{"id": "g1", "zone": "main", "direction": direction,
                       "readers": [{"type": "serial", "id": "r1", "device": str(self.reader.path), "format": "hex",
                                    "debounce": 0}],
                       "output": {"transport": "tcp", "host": "127.0.0.1", "port": board.port, "unit": 1, "coil": 0,
                                  "pulse": 0.3, "passage_input": 0, "door_contact": 1, "passage_counter": 0,
                                  "passage_timeout": 3, "timeout": 0.3}}],
            "store": {"path": str(self.db)},
            "console": {"enabled": False}, "metrics": {"enabled": False},
            "control": {"socket": str(tmp_path / "control.sock")},
            "logging": {"format": "json", "level": "info"},
        }
        if fire:
            cfg["fire_alarm"] = {"transport": "tcp", "host": "127.0.0.1", "port": board.port, "unit": 1, "input": 2,
                                 "active_low": False, "poll_interval": 0.2, "timeout": 0.3}
        self.cfg.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, Any]] = []

    async def start(self) -> None:
        self.lines = []
        proc = self.proc = subprocess.Popen([*GATED, "run", "-c", str(self.cfg)], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                with contextlib.suppress(ValueError):
                    obj = json.loads(raw)
                    if isinstance(obj, dict):
                        self.lines.append(obj)

        threading.Thread(target=pump, daemon=True).start()
        await wait_for(lambda: any(ln.get("event") == "ready" for ln in self.lines), 30, "the daemon ready")

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is None:
            return
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(proc.wait, 15)
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)
        self.proc = None

    def close(self) -> None:
        self.reader.close()


@contextlib.asynccontextmanager
async def gate(tmp_path: Path, direction: str, **kw: Any) -> AsyncIterator[tuple[SimTurnstile, Gate]]:
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.05),
                            passage_counter=0) as board:
        g = Gate(tmp_path, board, direction, **kw)
        try:
            yield board, g
        finally:
            await g.stop()
            g.close()


async def people_through(board: SimTurnstile, n: int) -> None:
    """n people through while nobody runs the gate: its relay released by hand (a key
    switch, the installer) and relocked."""
    before = len(board.passages)
    client = AsyncModbusTcpClient("127.0.0.1", port=board.port)
    assert await client.connect()
    try:
        await client.write_coil(0, True, device_id=1)  # one person goes as it opens
        for _ in range(n - 1):
            assert board.push_through(Person(delay=0.05))
        await wait_for(lambda: len(board.passages) == before + n, 15, f"{n} rotations")
        await client.write_coil(0, False, device_id=1)
    finally:
        client.close()


async def test_rotations_at_an_exit_while_the_daemon_was_killed_are_recorded_once(tmp_path: Path) -> None:
    async with gate(tmp_path, "out") as (board, g):
        board.pulse_count = 65534  # a board that has counted for a while: the step wraps
        await g.start()
        # ready: the board's first reading compared with what the ledger kept (nothing yet)
        await g.stop(signal.SIGKILL)
        await people_through(board, 3)
        assert board.pulse_count == 1
        await g.start()
        await wait_for(lambda: alarms(g.db, "rotations_while_down"), 10, "the rotations recorded")
        [a] = alarms(g.db, "rotations_while_down")
        assert (a["gate"], a["direction"], a["count"]) == ("g1", "out", 3), a
        assert a["since"] <= a["until"], a
        # three people left unrecorded: nobody who came in before is sure to be inside
        [(first, last, n, daemon)] = json.loads(meta(g.db, "presence.exits_unrecorded.main") or "[]")
        assert n == 3 and first <= last
        # a restart right after, and a clean one: not reported again
        await g.stop(signal.SIGKILL)
        await g.start()
        await g.stop()
        await g.start()
        await asyncio.sleep(1.5)
        assert len(alarms(g.db, "rotations_while_down", "rotations_while_down_unknown")) == 1
        assert json.loads(meta(g.db, KEY.format(port=board.port)) or "[]")[0] == 1  # the count kept


async def test_a_board_that_restarted_while_the_daemon_was_down_says_it_does_not_know(tmp_path: Path) -> None:
    async with gate(tmp_path, "out") as (board, g):
        board.pulse_count = 40
        await g.start()
        # ready: the board's first reading compared with what the ledger kept (nothing yet)
        await g.stop()
        board.pulse_count = 0  # the board lost power: its counter began again
        await people_through(board, 1)
        await g.start()
        await wait_for(lambda: alarms(g.db, "rotations_while_down_unknown"), 10, "the unknown said")
        [a] = alarms(g.db, "rotations_while_down_unknown")
        assert a["gate"] == "g1" and "went back from 40 to 1" in a["detail"], a
        assert not alarms(g.db, "rotations_while_down")
        assert meta(g.db, "presence.exits_unrecorded.main") is None  # nothing counted


async def test_evacuees_through_an_entry_while_its_daemon_restarted_in_a_fire_drill(tmp_path: Path) -> None:
    """`gated sim day --short --seed 34`'s case, on a counting board: the entry turnstile
    released for a fire drill, its daemon killed, two evacuees through it meanwhile."""
    async with gate(tmp_path, "in", fire=True) as (board, g):
        await g.start()
        # ready: the board's first reading compared with what the ledger kept (nothing yet)
        board.set_person(turns=False)  # nobody goes as it opens: only the two pushed below
        board.set_fire_alarm(True)
        await wait_for(lambda: board.unlocked, 10, "the turnstile released for the fire alarm")
        await wait_for(lambda: any(e["type"] == "fire_alarm" and e.get("active") for e in events(g.db)), 10,
                       "the fire alarm stored")
        await g.stop(signal.SIGKILL)
        for _ in range(2):
            assert board.push_through(Person(delay=0.05))
        await wait_for(lambda: len(board.passages) == 2, 15, "two evacuees")
        await g.start()
        await wait_for(lambda: alarms(g.db, "rotations_while_down"), 10, "the evacuees recorded")
        [a] = alarms(g.db, "rotations_while_down")
        assert (a["direction"], a["count"]) == ("in", 2), a
        assert "released for a fire alarm" in a["detail"], a


async def test_a_board_offline_at_start_is_compared_at_its_first_reading(tmp_path: Path) -> None:
    """Killed; two people out; the board's network gone as the daemon starts again (the
    board still counts): nothing is said until the board answers, then the two, once — and
    `gated status` says the gate can tell."""
    async with gate(tmp_path, "out") as (board, g):
        await g.start()
        await g.stop(signal.SIGKILL)
        await people_through(board, 2)
        await board.stop_server()
        await g.start()
        await asyncio.sleep(1.5)
        assert not alarms(g.db, "rotations_while_down", "rotations_while_down_unknown")
        await board.start_server()
        await wait_for(lambda: alarms(g.db, "rotations_while_down"), 20, "the rotations recorded")
        [a] = alarms(g.db, "rotations_while_down")
        assert (a["direction"], a["count"]) == ("out", 2), a
        out = await asyncio.to_thread(subprocess.run, [*GATED, "status", "-c", str(g.cfg)], capture_output=True,
                                      check=True)
        seen = json.loads(out.stdout)["gates"]["g1"]["while_down"]
        assert seen["counted"] is True and seen["last"]["count"] == 2, seen
