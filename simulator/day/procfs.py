"""Resident memory, open file descriptors and CPU time of a process, from /proc, and what
a series of samples says about growth; and the processes under one (what a day left)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    real: float  # seconds since the run's start
    rss_kb: int
    fds: int
    cpu_s: float


def sample(pid: int, real: float) -> Sample | None:
    try:
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    except (OSError, ValueError, IndexError):
        return None  # the process just went away
    return Sample(real, rss, fds, cpu)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (per unit of x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def growth(samples: list[Sample], warmup: float) -> dict[str, float | int]:
    """RSS and descriptors after `warmup` seconds of a process's life: first, last, peak,
    and the trend of RSS in each half of the rest (a leak keeps rising in both halves; a
    cache that fills levels off in the second)."""
    if not samples:
        return {}
    born = samples[0].real
    after = [s for s in samples if s.real - born >= warmup]
    if len(after) < 4:
        return {"samples": len(samples), "lived_s": round(samples[-1].real - born, 1),
                "rss_mb_last": round(samples[-1].rss_kb / 1024, 1)}
    half = len(after) // 2
    first, second = after[:half], after[half:]

    def per_hour(part: list[Sample]) -> float:
        return round(slope([(s.real, s.rss_kb / 1024) for s in part]) * 3600, 2)

    return {
        "samples": len(samples),
        "lived_s": round(samples[-1].real - born, 1),
        "rss_mb_start": round(samples[0].rss_kb / 1024, 1),
        "rss_mb_after_warmup": round(after[0].rss_kb / 1024, 1),
        "rss_mb_last": round(after[-1].rss_kb / 1024, 1),
        "rss_mb_peak": round(max(s.rss_kb for s in samples) / 1024, 1),
        "rss_mb_per_hour_first_half": per_hour(first),
        "rss_mb_per_hour_second_half": per_hour(second),
        "fds_after_warmup": after[0].fds,
        "fds_last": after[-1].fds,
        "fds_max": max(s.fds for s in after),
        "cpu_s": round(samples[-1].cpu_s, 1),
    }


def memory_growth(rows: list[dict[str, Any]], born: float, warmup: float) -> dict[str, float | int]:
    """A gate daemon's memory parts (gated/memory.py, in bytes, each row with `real`)
    after `warmup` seconds of its life: how much each part rose, and the trend of the
    `unexplained` part (resident memory that neither SQLite's bounded caches nor the
    allocator's free memory explain) in each half of the rest."""
    after = [r for r in rows if r["real"] - born >= warmup and r.get("unexplained") is not None]
    if len(after) < 8:
        return {}
    half = len(after) // 2

    def mb(r: dict[str, Any], part: str) -> float:
        return float(r.get(part) or 0) / 1_048_576

    def per_hour(part: list[dict[str, Any]]) -> float:
        return round(slope([(r["real"], mb(r, "unexplained")) for r in part]) * 3600, 2)

    first, last = after[0], after[-1]
    return {
        "memory_samples": len(after),
        "unexplained_mb_after_warmup": round(mb(first, "unexplained"), 1),
        "unexplained_mb_last": round(mb(last, "unexplained"), 1),
        "unexplained_mb_per_hour_first_half": per_hour(after[:half]),
        "unexplained_mb_per_hour_second_half": per_hour(after[half:]),
        "sqlite_mb_rise": round(mb(last, "sqlite") - mb(first, "sqlite"), 1),
        "sqlite_mb_peak": round(max(mb(r, "sqlite_peak") for r in after), 1),
        "heap_free_mb_rise": round(mb(last, "heap_free") - mb(first, "heap_free"), 1),
        "python_blocks_rise": int(last.get("python_blocks") or 0) - int(first.get("python_blocks") or 0),
    }


def descendants(pid: int) -> set[int]:
    """Every process under `pid` that is still running (a zombie is gone: only its exit
    status waits to be read)."""
    parent: dict[int, int] = {}
    state: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
        state[int(stat.parent.name)] = fields[0]
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in out]
        out.update(kids)
        todo.extend(kids)
    return {k for k in out if state.get(k) != "Z"}


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "?"


__all__ = ["Sample", "command_of", "descendants", "growth", "sample", "slope"]
