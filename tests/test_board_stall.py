"""Every rotation is recorded, whatever the board did (issue: "a board that stalls mid-tap
lets a person through unrecorded"). The I/O board is the simulator's turnstile on a real
Modbus TCP server (latched, as turnstile controllers are: a release pulse lets one person
through even if the relay drops before they push), reached through a TCP link the test
can freeze: 50 ms before a tap nothing more goes either way, and 3 s later everything held
is delivered in order — the board carries out the queued requests, the release among
them, and the person turns the arm then (what a board that stalls and resumes does). A
`gated run` process reads the card through a pty.

What must hold: that passage is charged to the grant it belongs to (one `access` event
`passed: true`, one deduction), nothing else is said of that grant (no
`passage_unconfirmed`, no `not_opened`); and a rotation no grant claims is reported, not
lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import Person, SimTurnstile
from tests.test_daemon import GATED, SEED, wait_for

CARD = "04A1B2C3D4"  # m1, a visits pass


class FreezableLink:
    """A TCP link to the board that can be frozen: while frozen, bytes are held (both
    ways); thawed, they go on in order. A connection the gate closed meanwhile still
    delivers what it had sent (the board reads its socket's buffer before it sees the
    end)."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.frozen = asyncio.Event()
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> FreezableLink:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = int(self.server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(4096):
                    await self.thawed.wait()
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                await self.thawed.wait()
                with contextlib.suppress(Exception):
                    await asyncio.sleep(0.2)  # the board answers what it was sent
                    w.close()

        await asyncio.gather(pump(cr, uw), pump(ur, cw))


@dataclass
class Rig:
    board: SimTurnstile
    link: FreezableLink
    daemon: subprocess.Popen[bytes]
    db: Path
    reader: VirtualSerialReader
    lines: list[dict[str, Any]] = field(default_factory=list)

    def rotations(self) -> int:
        return len(self.board.passages)

    def events(self) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
            return [json.loads(r[0]) for r in c.execute("SELECT body FROM events ORDER BY seq")]

    def taps(self) -> list[dict[str, Any]]:
        return [ln for ln in self.lines if ln.get("event") == "tap"]


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, *, delay: float = 0.3, poll_interval: float | None = None) -> AsyncIterator[Rig]:
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=delay),
                            latch=True) as board, FreezableLink(board.port) as link:
        reader = VirtualSerialReader(tmp_path / "reader")
        cfg = tmp_path / "gated.yaml"
        cfg.write_text(yaml.safe_dump({
            "site": {"id": "s1", "timezone": "Europe/Madrid"},
            "stale_cache": {"max_age": None, "policy": "keep"},
            "gates": [{"id": "in-1", "zone": "main",
                       "readers": [{"type": "serial", "id": "r1", "device": str(reader.path), "format": "hex",
                                    "debounce": 0}],
                       "output": {"transport": "tcp", "host": "127.0.0.1", "port": link.port, "unit": 1, "coil": 0,
                                  "pulse": 0.3, "passage_input": 0, "door_contact": 1, "passage_timeout": 3,
                                  "timeout": 0.3, "poll_interval": poll_interval}}],
            "store": {"path": str(tmp_path / "gated.db")},
            "console": {"enabled": False}, "metrics": {"enabled": False},
            "control": {"socket": str(tmp_path / "control.sock")},
            "logging": {"format": "json", "level": "info"},
        }))
        seed = tmp_path / "seed.yaml"
        seed.write_text(yaml.safe_dump(SEED, allow_unicode=True))
        subprocess.run([*GATED, "seed", "-c", str(cfg), str(seed)], check=True, capture_output=True)
        daemon = subprocess.Popen([*GATED, "run", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        r = Rig(board, link, daemon, tmp_path / "gated.db", reader)

        def pump() -> None:
            assert daemon.stderr is not None
            for raw in daemon.stderr:
                with contextlib.suppress(ValueError):
                    obj = json.loads(raw)
                    if isinstance(obj, dict):
                        r.lines.append(obj)

        threading.Thread(target=pump, daemon=True).start()
        try:
            await wait_for(lambda: any(ln.get("event") == "ready" for ln in r.lines), 30, "the daemon")
            yield r
        finally:
            link.thaw()
            daemon.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(daemon.wait, 15)
            if daemon.poll() is None:
                daemon.kill()
            reader.close()


async def test_a_board_frozen_before_a_tap_and_back_3_s_later_charges_the_passage(tmp_path: Path) -> None:
    # idle reads every 5 s: the freeze lands between two of them, so the release is written
    # to the frozen board (a read timing out first would have it refused: hardware_fault)
    # the person pushes the arm a second after the click: the board is answering by then
    async with rig(tmp_path, poll_interval=5.0, delay=1.0) as r:
        r.reader.tap(CARD)  # a first member, the board healthy
        await wait_for(lambda: len(r.taps()) == 1 and r.rotations() == 1, 15, "the first passage")
        assert r.taps()[0]["passed"] is True
        await asyncio.sleep(1.0)  # the grant's fast reads are over
        r.link.freeze()
        await asyncio.sleep(0.05)
        r.reader.tap(CARD)  # the grant is decided; the release waits on a frozen board
        await asyncio.sleep(3.0)
        r.link.thaw()
        await wait_for(lambda: r.rotations() == 2, 15, "the arm turned after the board came back")
        await wait_for(lambda: len(r.taps()) == 2, 20, "the second tap's outcome")
        second = r.taps()[1]
        assert (second["decision"], second["passed"]) == ("granted", True), second
        await asyncio.sleep(1.0)
        events = r.events()
        passed = [e for e in events if e["type"] == "access" and e.get("passed")]
        charges = [e for e in events if e["type"] == "deduction"]
        assert len(passed) == 2 == len(charges) == r.rotations()  # each rotation charged, once
        assert not [e for e in events if e["type"] == "passage_unconfirmed"]
        assert not [e for e in events if e["type"] == "alarm" and e["kind"] in ("not_opened", "passage_without_grant")]


async def test_a_rotation_no_grant_claims_is_reported(tmp_path: Path) -> None:
    """The person at the turnstile took longer than the gate waits (passage_timeout 3 s):
    the grant ends `not_opened`, nothing charged — and the rotation that comes after is an
    alarm naming it, for the desk to settle, never a free entry nobody recorded."""
    async with rig(tmp_path, delay=3.8) as r:
        r.reader.tap(CARD)
        await wait_for(lambda: r.rotations() == 1, 15, "the slow person through")
        await wait_for(lambda: any(e["type"] == "alarm" and e["kind"] == "passage_without_grant" for e in r.events()),
                       10, "the rotation reported")
        events = r.events()
        [access] = [e for e in events if e["type"] == "access"]
        assert access["passed"] is False and not [e for e in events if e["type"] == "deduction"]
        alarms = [e for e in events if e["type"] == "alarm"]
        assert [a["kind"] for a in alarms if a["kind"] in ("not_opened", "passage_without_grant")] == [
            "not_opened", "passage_without_grant"]
        assert "after a grant that saw no passage" in [a for a in alarms if a["kind"] == "passage_without_grant"][0]["detail"]
