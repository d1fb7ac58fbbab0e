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

Then the busy minute of issue 22: three taps at once, round after round, the turnstiles
reporting each rotation with a 100 ms passage pulse and each person starting to turn
0-300 ms after the release (seeded), so the pulses fall at every phase of the polling.
Figures: passages the daemon did not see (granted, `passed: false`), and how long each
gate went unread while it expected its person — the gaps between two of its reads as
they reached the board (the emulated line logs every request), compared with the
shortest pulse the line promises to see (`LineTiming.shortest_pulse_seen_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
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
from sync.records import MemberIn, PassIn
from sync.store import Store
from sync.store.batch import SyncBatch

GATES = 3
CARDS_PER_GATE = 40
TIMING = LineTiming(9600, "N", 2)  # 11 bits a character, as 8E1 (a pty takes no parity)
TARGET_MARGIN_MS = 5.0
BUSY_PULSE = 0.1  # issue 22: the shortest passage pulse the docs promise to see
BUSY_SPREAD = 0.3  # people start turning 0-300 ms after the release
FAST_POLL = 0.02  # the daemon's read interval while a person is expected (the default)
_READ_DISCRETE = 2


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
                "stopbits": TIMING.stopbits, "unit": n, "coil": 0, "pulse": 1.0, "passage_input": 0,
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


def _unread_gaps(t: SimTurnstile, requests: list[tuple[float, int, int]], since: float) -> list[float]:
    """Milliseconds between two reads of `t`'s inputs (as they reached the board) while
    its gate expected a person: from each release after `since` to the relock."""
    reads = [at for at, unit, function in requests if unit == t.unit and function == _READ_DISCRETE]
    gaps: list[float] = []
    history = [(at, raw != t.active_low) for at, raw in t.coil_history if at >= since]
    for (on, released), (off, _) in zip(history, history[1:], strict=False):
        if not released:
            continue
        inside = [at for at in reads if on <= at <= off]
        gaps += [(b - a) * 1000 for a, b in zip(inside, inside[1:], strict=False)]
    return gaps


async def _busy_minute(
    readers: list[VirtualSerialReader],
    turnstiles: list[SimTurnstile],
    cards: list[list[str]],
    used: list[int],
    rounds: int,
    rng: random.Random,
) -> int:
    """Rounds of three taps at once; the taps whose coil did not move."""
    misses = 0
    for t in turnstiles:
        t.passage_pulse = BUSY_PULSE
        t.queue_people(*[Person(delay=rng.uniform(0.0, BUSY_SPREAD)) for _ in range(rounds)])
    for _ in range(rounds):
        taps = []
        for g in range(GATES):
            taps.append(_tap(readers[g], turnstiles[g], cards[g][used[g] % CARDS_PER_GATE]))
            used[g] += 1
        misses += sum(1 for ms in await asyncio.gather(*taps) if ms is None)
        for t in turnstiles:
            await _settled(t)
        await asyncio.sleep(0.1)
    return misses


async def _bench(runs: int, taps: int, log: Any, busy_rounds: int = 10) -> dict[str, Any]:
    work = fresh_dir("rtu")
    _store(work / "gated.db")
    turnstiles = [SimTurnstile(transport="rtu", unit=n, person=Person(delay=0.05)) for n in range(1, GATES + 1)]
    for t in turnstiles:
        # a rotation reports for a quarter second while tap → coil is measured
        # (controllers give 100-500 ms); the busy minute below uses 100 ms
        t.passage_pulse = 0.25
    readers = [VirtualSerialReader(work / f"reader-{n}", FrameConfig()) for n in range(1, GATES + 1)]
    cards = [[f"04{(g * CARDS_PER_GATE + i):08X}" for i in range(CARDS_PER_GATE)] for g in range(GATES)]
    one: list[list[float]] = []
    together: list[float] = []
    busy_unseen: list[int] = []
    busy_gaps: list[list[float]] = []
    misses = 0
    rng = random.Random(22)
    try:
        async with SimRtuLine(turnstiles, baudrate=TIMING.baudrate, parity=TIMING.parity, stopbits=TIMING.stopbits,
                              record=True) as line:
            assert line.line is not None and line.line.requests is not None
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
                # every grant so far settled (seen, or lapsed after passage_timeout)
                await asyncio.sleep(2.5)
                unconfirmed = before = _unconfirmed(work / "gated.db")
                for _ in range(runs):
                    since = time.monotonic()
                    misses += await _busy_minute(readers, turnstiles, cards, used, busy_rounds, rng)
                    await asyncio.sleep(2.5)
                    after = _unconfirmed(work / "gated.db")
                    busy_unseen.append(after - before)
                    before = after
                    busy_gaps.append([gap for t in turnstiles for gap in _unread_gaps(t, line.line.requests, since)])
                status = await request(work / "control.sock", {"cmd": "status"})
            line_figures = line.line.snapshot()
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
        busy=dict(
            passage_pulse_ms=BUSY_PULSE * 1000,
            passages=GATES * busy_rounds * runs,
            unseen=sum(busy_unseen),
            unseen_per_run=busy_unseen,
            # the longest a gate went unread while it expected its person, and the line's promise
            unread_ms=runs_summary(busy_gaps),
            promise_ms=round(TIMING.shortest_pulse_seen_s(GATES, FAST_POLL) * 1000, 1),
        ),
        line=line_figures,
        daemon_line=next(iter((status.get("modbus_lines") or {}).values()), {}),
    )
    return res


def run(*, runs: int = 3, taps: int = 30, busy_rounds: int = 10, log: Any = print) -> dict[str, Any]:
    res = asyncio.run(_bench(runs, taps, log, busy_rounds))
    log(
        f"  tap → coil over RTU, {res['gates']} gates on one 9,600-baud line (11-bit characters): median {res['median']:.1f} ms, "
        f"p99 {res['p99']:.1f} ms (wire {res['wire_ms']:.1f} ms: ratio {res['ratio_median']}, "
        f"target ≤ {res['target_ms']:.1f} ms); three at once: median {res['together']['median']:.1f} ms, "
        f"p99 {res['together']['p99']:.1f} ms; line load {res['line']['load']:.0%}, "
        f"frames glued {res['line']['violations']}, misses {res['misses']}, passages unseen {res['unconfirmed']}"
    )
    busy, unread = res["busy"], res["busy"]["unread_ms"]
    log(
        f"  busy minute, three taps at once, {busy['passage_pulse_ms']:.0f} ms passage pulses: "
        f"{busy['unseen']} of {busy['passages']} passages unseen (per run {busy['unseen_per_run']}); a gate "
        f"expecting its person unread for median {unread['median']:.1f} ms, p99 {unread['p99']:.1f} ms, "
        f"max {unread['max']:.1f} ms (run p99s {unread['run_p99s']}; the line promises "
        f"≤ {busy['promise_ms']:.1f} ms of wire); reads waited for at most "
        f"{res['daemon_line'].get('max_poll_turns', '?')} exchanges of other gates"
    )
    return res


if __name__ == "__main__":
    out = run(runs=2, taps=15)
    print(json.dumps(out, indent=1, default=str))
    shutil.rmtree(fresh_dir("rtu"), ignore_errors=True)
