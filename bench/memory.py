"""Benchmark 5: the daemon's resident memory with the full data set, and start-up to READY.

`gated run` starts as a subprocess on a copy of the large site's store, with a serial
reader on a pty and a turnstile on Modbus TCP (as in benchmark 2). Start-up time is from
spawning the process to the `READY=1` datagram on the NOTIFY_SOCKET the bench bound.
Memory is VmRSS from /proc/PID/status once ready, and again after taps (VmHWM: the peak).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.common import rss_kb, values_summary
from bench.daemon import base_store, daemon_process, grantable_cards
from bench.generate import SiteData
from drivers.readers.frames import FrameConfig
from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import SimTurnstile


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def _bench(data: SiteData, base: Path, runs: int, taps: int, log: Any) -> dict[str, Any]:
    cards = iter(grantable_cards(data))
    ready_s: list[float] = []
    rss_ready: list[float] = []
    rss_after: list[float] = []
    hwm: list[float] = []
    reader = VirtualSerialReader(None, FrameConfig())
    try:
        async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, unit=1) as turnstile:
            turnstile.set_person(turns=True, delay=0.02)
            turnstile.passage_pulse = 0.02
            for r in range(runs):
                async with daemon_process(base, "memory", reader_device=reader.slave_name, modbus_port=turnstile.port) as d:
                    ready_s.append(d.ready_seconds)
                    await asyncio.sleep(1.0)
                    rss_ready.append(rss_kb(d.pid) / 1024)
                    for _ in range(taps):
                        n = len(turnstile.coil_history)
                        reader.tap(next(cards))
                        deadline = time.monotonic() + 3
                        while len(turnstile.coil_history) <= n + 1 and time.monotonic() < deadline:
                            await asyncio.sleep(0.005)
                        await asyncio.sleep(0.03)
                    await asyncio.sleep(0.5)
                    rss_after.append(rss_kb(d.pid) / 1024)
                    hwm.append(_hwm_kb(d.pid) / 1024)
                log(
                    f"  daemon run {r + 1}/{runs}: READY after {ready_s[-1]:.2f} s, RSS {rss_ready[-1]:.1f} MB ready, "
                    f"{rss_after[-1]:.1f} MB after {taps} taps (peak {hwm[-1]:.1f} MB)"
                )
    finally:
        reader.close()
    return {
        "members": len(data.members),
        "store_mb": round(sum(p.stat().st_size for p in base.parent.glob(base.stem + ".*")) / 1e6, 1),
        "ready_seconds": values_summary(ready_s, "s"),
        "rss_ready_mb": values_summary(rss_ready, "MB"),
        "rss_after_taps_mb": values_summary(rss_after, "MB"),
        "rss_peak_mb": values_summary(hwm, "MB"),
        "taps_per_run": taps,
    }


def run(data: SiteData, *, runs: int = 5, taps: int = 50, log: Any = print) -> dict[str, Any]:
    return asyncio.run(_bench(data, base_store(data, log), runs, taps, log))
