"""Benchmark: tap → coil set over Modbus RTU, three gates on one 9,600-baud line.

`gated run` as a subprocess, three gates, each with a serial reader on a pty and its
turnstile controller on one RS-485 line: one Modbus RTU server answering units 1-3
behind an EmulatedLine (simulator/rs485_line.py) that carries the bytes at 9,600 baud
8N2 (11 bits a character, as 8E1; a pty takes neither a baud rate nor a parity bit,
so the line time is emulated) — and
checks that the daemon never starts a frame while the line is busy.

A tap is a card line written on one gate's reader pty; the latency is from that write
to the coil-set time the turnstile model records when the server applies the request
(time.monotonic() in this process). Taps go round the gates one at a time while the
other gates keep polling their inputs (the load the daemon puts on the line by itself),
then three at once (one per gate) to see the queue. Figures are compared with the wire
time of one Write Single Coil exchange (request + answer, 26.4 ms at 11 bits a character): the
target is a median within wire + 5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import fresh_dir, runs_summary
from bench.daemon import daemon_config, gated_run
from drivers.outputs.bus import LineTiming
from drivers.readers.frames import FrameConfig
from gated.control import request
from rules.model import Site
from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import Person, SimRtuLine, SimTurnstile
from sync.batch import SyncBatch
from sync.records import MemberIn, PassIn
from sync.store import Store

GATES = 3
CARDS_PER_GATE = 40
TIMING = LineTiming(9600, "N", 2)  # 11 bits a character, as 8E1 (a pty takes no parity)
TARGET_MARGIN_MS = 5.0


def _store(path: Path) -> None:
    from zoneinfo import ZoneInfo

    members = [MemberIn(id=f"m{i}", name=f"Member {i}", cards=[f"uid:04{i:08X}"]) for i in range(GATES * CARDS_PER_GATE)]
    passes = [
        PassIn(id=f"p{i}", member=f"m{i}", kind="time", access_windows={"mon-sun": "00:00-24:00"})
        for i in range(GATES * CARDS_PER_GATE)
    ]
    store = Store(path, Site(ZoneInfo("Europe/Madrid"), id="bench-rtu"), daemon_id="bench-rtu")
    store.apply_sync(SyncBatch(members=members, passes=passes), datetime.now(UTC))
    store.close()


def _config(work: Path, line_device: str, readers: list[VirtualSerialReader]) -> Path:
    gates = []
    for n, reader in enumerate(readers, start=1):
        gates.append({
            "id": f"gate-{n}", "zone": "main",
            "readers": [{"type": "serial", "id": f"reader-{n}", "device": reader.path, "format": "uid"}],
            "output": {
                "transport": "rtu", "device": line_device, "baudrate": TIMING.baudrate, "parity": TIMING.parity,
                "stopbits": TIMING.stopbits, "unit": n, "coil": 0, "pulse": 0.3, "passage_input": 0,
                "door_contact": 1, "passage_timeout": 2, "timeout": 0.5,
            },
        })
    site = {"id": "bench-rtu", "timezone": "Europe/Madrid"}
    return daemon_config(work, site, "bench-rtu", gates, work / "gated.db")


@contextlib.asynccontextmanager
async def _daemon(work: Path, config: Path, timeout: float = 60) -> AsyncIterator[asyncio.subprocess.Process]:
    async with gated_run(work, config, timeout) as (proc, _):
        yield proc


async def _coil_set(t: SimTurnstile, count: int, timeout: float = 3.0) -> float | None:
    """Monotonic time of coil history entry `count`, if it is a release."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(t.coil_history) > count:
            at, raw = t.coil_history[count]
            return at if raw != t.active_low else None
        await asyncio.sleep(0.0005)
    return None


async def _settled(t: SimTurnstile, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not t.unlocked and not t.passage_active and not t.door_open:
            return
        await asyncio.sleep(0.01)


async def _tap(reader: VirtualSerialReader, t: SimTurnstile, card: str) -> float | None:
    n = len(t.coil_history)
    t0 = time.monotonic()
    reader.tap(card)
    at = await _coil_set(t, n)
    return None if at is None else (at - t0) * 1000


def _unconfirmed(db: Path) -> int:
    """Grants whose passage the daemon did not see (every simulated person turns)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        rows = c.execute("SELECT body FROM events WHERE type = 'access'").fetchall()
    return sum(1 for (body,) in rows if json.loads(body).get("decision") == "granted" and not json.loads(body).get("passed"))


async def _bench(runs: int, taps: int, log: Any) -> dict[str, Any]:
    work = fresh_dir("rtu")
    _store(work / "gated.db")
    turnstiles = [SimTurnstile(transport="rtu", unit=n, person=Person(delay=0.05)) for n in range(1, GATES + 1)]
    for t in turnstiles:
        # a rotation reports for a quarter second (controllers give 100-500 ms): seen by a
        # gate polling every 50 ms while it waits, on a line it shares with two others
        t.passage_pulse = 0.25
    readers = [VirtualSerialReader(work / f"reader-{n}", FrameConfig()) for n in range(1, GATES + 1)]
    cards = [[f"04{(g * CARDS_PER_GATE + i):08X}" for i in range(CARDS_PER_GATE)] for g in range(GATES)]
    one: list[list[float]] = []
    together: list[float] = []
    misses = 0
    try:
        async with SimRtuLine(turnstiles, baudrate=TIMING.baudrate, parity=TIMING.parity) as line:
            assert line.line is not None
            config = _config(work, line.device, readers)
            async with _daemon(work, config):
                await asyncio.sleep(1.0)  # readers opened, gates polling
                used = [0] * GATES
                for _ in range(runs):
                    samples: list[float] = []
                    for k in range(taps):
                        g = k % GATES
                        card = cards[g][used[g] % CARDS_PER_GATE]
                        used[g] += 1
                        ms = await _tap(readers[g], turnstiles[g], card)
                        if ms is None:
                            misses += 1
                        else:
                            samples.append(ms)
                        await _settled(turnstiles[g])
                        await asyncio.sleep(0.05)
                    one.append(samples)
                for _ in range(max(3, taps // 3)):
                    results = await asyncio.gather(*[
                        _tap(readers[g], turnstiles[g], cards[g][(used[g] + 1) % CARDS_PER_GATE]) for g in range(GATES)
                    ])
                    for g in range(GATES):
                        used[g] += 1
                    together.extend(r for r in results if r is not None)
                    misses += sum(1 for r in results if r is None)
                    for t in turnstiles:
                        await _settled(t)
                    await asyncio.sleep(0.1)
                status = await request(work / "control.sock", {"cmd": "status"})
            line_figures = line.line.snapshot()
        unconfirmed = _unconfirmed(work / "gated.db")
    finally:
        for r in readers:
            r.close()
    wire = TIMING.write_coil_s() * 1000
    res = runs_summary(one)
    res.update(
        gates=GATES,
        misses=misses,
        wire_ms=round(wire, 2),
        # the server applies a write when its last character is in: 8 characters
        request_wire_ms=round(8 * TIMING.char_s * 1000, 2),
        ratio_median=round(res["median"] / wire, 3) if res.get("n") else None,
        ratio_p99=round(res["p99"] / wire, 3) if res.get("n") else None,
        excess_median_ms=round(res["median"] - wire, 2) if res.get("n") else None,
        target_ms=round(wire + TARGET_MARGIN_MS, 2),
        together=runs_summary([together]),
        unconfirmed=unconfirmed,
        line=line_figures,
        daemon_line=next(iter((status.get("modbus_lines") or {}).values()), {}),
    )
    return res


def run(*, runs: int = 3, taps: int = 30, log: Any = print) -> dict[str, Any]:
    res = asyncio.run(_bench(runs, taps, log))
    log(
        f"  tap → coil over RTU, {res['gates']} gates on one 9,600-baud line (11-bit characters): median {res['median']:.1f} ms, "
        f"p99 {res['p99']:.1f} ms (wire {res['wire_ms']:.1f} ms: ratio {res['ratio_median']}, "
        f"target ≤ {res['target_ms']:.1f} ms); three at once: median {res['together']['median']:.1f} ms, "
        f"p99 {res['together']['p99']:.1f} ms; line load {res['line']['load']:.0%}, "
        f"frames glued {res['line']['violations']}, misses {res['misses']}, passages unseen {res['unconfirmed']}"
    )
    return res


if __name__ == "__main__":
    out = run(runs=2, taps=15)
    print(json.dumps(out, indent=1, default=str))
    shutil.rmtree(fresh_dir("rtu"), ignore_errors=True)
