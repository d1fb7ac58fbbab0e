"""Shared pieces of the benchmarks: statistics, the hardware links' wire times, stores."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.generate import SiteData, chunk_payloads, site
from sync.snapshot import SnapshotHeader, SnapshotImporter
from sync.store import Store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "work"


def summary(samples: Sequence[float], unit: str = "ms") -> dict[str, Any]:
    """median, p99 and max of samples (already in `unit`)."""
    if not samples:
        return {"n": 0, "unit": unit}
    s = sorted(samples)
    p99 = s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)]
    return {
        "n": len(s),
        "unit": unit,
        "median": round(statistics.median(s), 4),
        "p99": round(p99, 4),
        "max": round(s[-1], 4),
        "min": round(s[0], 4),
    }


def runs_summary(per_run: Sequence[Sequence[float]], unit: str = "ms") -> dict[str, Any]:
    """Pooled median/p99/max over every sample, plus each run's own median and p99."""
    pooled = [x for run in per_run for x in run]
    out = summary(pooled, unit)
    out["runs"] = len(per_run)
    out["run_medians"] = [summary(r, unit).get("median") for r in per_run]
    out["run_p99s"] = [summary(r, unit).get("p99") for r in per_run]
    return out


def values_summary(values: Sequence[float], unit: str) -> dict[str, Any]:
    """For one figure measured once per run (an import time, a rate): median/max/min."""
    out = summary(values, unit)
    out["runs"] = len(values)
    out["values"] = [round(v, 4) for v in values]
    return out


# -- the hardware links a member's tap crosses --------------------------------------------


def modbus_rtu_write_coil_ms(baud: int = 9600) -> float:
    """Write Single Coil (FC 05) request + echoed response, RTU framing: each frame is
    unit(1) + function(1) + address(2) + value(2) + CRC(2) = 8 bytes; a character is 11 bits
    on the line (start, 8 data, parity or second stop, stop); each frame is followed by
    the 3.5-character silent interval that ends it."""
    char = 11 / baud * 1000
    return 8 * char + 3.5 * char + 8 * char + 3.5 * char


def osdp_poll_ms(baud: int = 9600) -> float:
    """One OSDP poll that returns a card: osdp_POLL (SOM, addr, len×2, ctrl, cmd, CRC×2 =
    8 bytes) and the osdp_RAW reply with a 26-bit read (SOM, addr, len×2, ctrl, reply,
    reader, format, bit count×2, 4 data bytes, CRC×2 = 16 bytes), each frame preceded by
    the 0xFF mark byte; 8N1 = 10 bits a character."""
    char = 10 / baud * 1000
    return (1 + 8 + 1 + 16) * char


def wiegand26_ms() -> float:
    """26 pulses at the customary 2 ms bit interval (50 µs pulse + ~2 ms gap)."""
    return 26 * 2.0


def serial_line_ms(payload: str = "04A1B2C3", baud: int = 9600) -> float:
    """An ASCII serial reader's line: the UID plus CR LF, 8N1."""
    return (len(payload) + 2) * 10 / baud * 1000


def wire_times() -> dict[str, float]:
    return {
        "modbus_rtu_write_coil_9600": round(modbus_rtu_write_coil_ms(), 3),
        "osdp_poll_9600": round(osdp_poll_ms(), 3),
        "wiegand_26": round(wiegand26_ms(), 3),
        "serial_ascii_line_9600": round(serial_line_ms(), 3),
    }


def share_ours(ours_ms: float, wire_ms: float) -> float:
    """How much of the delay a member feels is ours: ours / (ours + wire)."""
    return ours_ms / (ours_ms + wire_ms) if ours_ms + wire_ms > 0 else 0.0


# -- stores ---------------------------------------------------------------------------------


def fresh_dir(name: str) -> Path:
    d = WORK / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, exist_ok=True)
    return d


def loaded_store(path: Path, data: SiteData, *, durable: bool = True, daemon_id: str = "bench-gate") -> tuple[Store, float]:
    """A store at `path` holding the whole data set, imported as the daemon imports a
    snapshot (the worker process); returns it and the import seconds."""
    for p in path.parent.glob(path.stem + ".*"):
        p.unlink()
    store = Store(path, site(), daemon_id=daemon_id, durable=durable)
    t0 = time.perf_counter()
    asyncio.run(_import(store, data, daemon_id))
    return store, time.perf_counter() - t0


async def _import(store: Store, data: SiteData, daemon_id: str) -> None:
    importer = SnapshotImporter(store, daemon_id)
    for p in chunk_payloads(data, daemon=daemon_id, records_per_chunk=1000):
        header = SnapshotHeader.model_validate_json(p)
        if header.chunk == 0:
            await importer.begin(header, data.now)
        await importer.add(header, p)
    await importer.finish()


def rss_kb(pid: int | None = None) -> int:
    """VmRSS of a process, in kB (this one by default)."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
