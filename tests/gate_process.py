"""A `gated run` process on a simulated site, for tests that kill, restart and break it:
two gates (in and out) with pty serial readers and simulated Modbus TCP turnstiles, the
daemon's JSON log read line by line (each tap's decision is a `tap` line), its status
through the control socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gated.control import request
from rules.credential import mask
from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import Person, SimTurnstile
from sync.store.db import uri
from tests.test_daemon import GATED, SEED, wait_for

IN_CARD, OUT_CARD = "04A1B2C3D4", "0499887766"  # m1 (p1, 9 visits), m2 (p2, 10 visits)


@dataclass
class Gate:
    proc: subprocess.Popen[bytes]
    config: Path
    db: Path
    socket: Path
    reader: VirtualSerialReader
    exit_reader: VirtualSerialReader
    turnstile: SimTurnstile
    exit_turnstile: SimTurnstile
    lines: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def taps(self) -> list[dict[str, Any]]:
        return [ln for ln in self.lines if ln.get("event") == "tap"]

    async def tap(self, card: str, *, exit_gate: bool = False) -> dict[str, Any]:
        """The card's own `tap` line: a tap made just before through the control socket
        (whose answer came back on the socket) may log its line after this one began."""
        before = len(self.taps())
        want = mask(card)
        (self.exit_reader if exit_gate else self.reader).tap(card)

        def mine() -> dict[str, Any] | None:
            return next((t for t in self.taps()[before:] if t.get("credential") == want), None)

        await wait_for(lambda: mine() is not None, 15, f"the tap of {card}")
        line = mine()
        assert line is not None
        return line

    async def status(self) -> dict[str, Any]:
        return await request(self.socket, {"cmd": "status"})

    def events(self) -> list[dict[str, Any]]:
        with contextlib.closing(sqlite3.connect(uri(self.db, "ro"), uri=True)) as c:
            return [json.loads(r[0]) for r in c.execute("SELECT body FROM events ORDER BY seq")]

    def alive(self) -> bool:
        return self.proc.poll() is None


def site_config(tmp: Path, state: Path, reader: str, exit_reader: str, sim: Any, exit_sim: Any,
                gate_extra: dict[str, Any] | None = None, **store: Any) -> dict[str, Any]:
    def output(s: SimTurnstile) -> dict[str, Any]:
        return {"transport": "tcp", "host": "127.0.0.1", "port": s.port, "unit": 1, "coil": 0, "pulse": 0.3,
                "passage_input": 0, "door_contact": 1, "passage_timeout": 3}

    return {
        "site": {"id": "storage-site", "timezone": "Europe/Madrid"},
        "daemon_id": "gate-s",
        "stale_cache": {"max_age": None, "policy": "keep"},
        "gates": [
            {"id": "in-1", "zone": "main", "readers": [{"type": "serial", "id": "r-in", "device": reader, "format": "hex", "debounce": 0}],
             "output": output(sim), **(gate_extra or {})},
            {"id": "out-1", "zone": "main", "direction": "out",
             "readers": [{"type": "serial", "id": "r-out", "device": exit_reader, "format": "hex", "debounce": 0}], "output": output(exit_sim)},
        ],
        "store": {"path": str(state / "gated.db"), "min_free_mb": 0.25, "backup_interval": None, **store},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
        "control": {"socket": str(tmp / "control.sock")},
        "logging": {"format": "json", "level": "info"},
    }


@contextlib.asynccontextmanager
async def gate_process(
    tmp: Path,
    state: Path,
    *,
    preexec: Callable[[], None] | None = None,
    before_start: Callable[[Path], None] | None = None,
    extra: dict[str, Any] | None = None,
    seed: bool = True,
    records: dict[str, Any] | None = None,
    gate_extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    **store: Any,
) -> AsyncIterator[Gate]:
    """`records`: what `gated seed` loads (default tests.test_daemon.SEED); `gate_extra`:
    keys of the entrance gate (anti_passback, ...); `env`: the daemon's environment (a
    faked clock)."""
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.1)) as sim, \
            SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.1)) as exit_sim:
        reader, exit_reader = VirtualSerialReader(tmp / "reader-in"), VirtualSerialReader(tmp / "reader-out")
        cfg = tmp / "gated.yaml"
        config = site_config(tmp, state, str(reader.path), str(exit_reader.path), sim, exit_sim, gate_extra, **store)
        cfg.write_text(yaml.safe_dump({**config, **(extra or {})}))
        if seed:
            seed_file = tmp / "seed.yaml"
            seed_file.write_text(yaml.safe_dump(records or SEED, allow_unicode=True))
            subprocess.run([*GATED, "seed", "-c", str(cfg), str(seed_file)], check=True, capture_output=True)
        if before_start is not None:
            before_start(state / "gated.db")
        proc = subprocess.Popen([*GATED, "run", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=preexec, env=env)
        gate = Gate(proc, cfg, state / "gated.db", tmp / "control.sock", reader, exit_reader, sim, exit_sim)

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                gate.text.append(line)
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict):
                        gate.lines.append(obj)

        threading.Thread(target=pump, daemon=True).start()
        try:
            await wait_for(lambda: any(ln.get("event") == "ready" for ln in gate.lines) or not gate.alive(), 30, "ready")
            assert gate.alive(), "\n".join(gate.text[-20:])
            yield gate
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            reader.close()
            exit_reader.close()
