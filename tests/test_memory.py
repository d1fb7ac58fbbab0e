"""Where a daemon's memory is (gated/memory.py), and the simulated day's resources check
that reads it (simulator/day/checks/invariants.py): soak 23 failed a gate whose RSS rose
4.1 MB through the day — SQLite's page caches filling as the ledger grew and freed memory
the allocator kept, both bounded — while a leak must still fail."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gated import memory
from simulator.day.checks.invariants import check_resources

MB = 1_048_576


def test_the_parts_are_measured_and_sqlite_s_cache_shows_in_its_part() -> None:
    before = memory.parts()
    assert before["rss"] is not None and before["rss"] > 10 * MB
    assert before["sqlite"] is not None and before["heap_free"] is not None and before["heap_in_use"] is not None
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 3000)  # ~3 MB of pages in its cache
    during = memory.parts()
    assert during["sqlite"] is not None and during["sqlite"] - before["sqlite"] > 2 * MB
    assert during["sqlite_peak"] is not None and during["sqlite_peak"] >= during["sqlite"]
    assert during["unexplained"] == during["rss"] - during["sqlite"] - during["heap_free"]  # type: ignore[operator]
    conn.close()
    after = memory.parts()
    assert after["sqlite"] is not None and after["sqlite"] < during["sqlite"]


def day(rss_mb: list[float], parts: list[dict[str, float]] | None, tmp: Path) -> Any:
    """What check_resources reads of a finished day: one gate daemon that lived 800 s,
    sampled every 20 s."""
    (tmp / "gates").mkdir(exist_ok=True)
    samples = [{"real": 20.0 * i, "rss_kb": int(mb * 1024), "fds": 20, "cpu_s": 1.0} for i, mb in enumerate(rss_mb)]
    harness: dict[str, Any] = {"samples": {"in-1#100": samples}}
    if parts is not None:
        harness["memory"] = {"in-1#100": [
            {"real": 20.0 * i, **{k: int(v * MB) for k, v in p.items()}} for i, p in enumerate(parts)]}
    return SimpleNamespace(harness=harness, daemons={"in-1": object()}, dir=tmp)


def rising(start: float, by: float, n: int = 41) -> list[float]:
    return [start + by * i / (n - 1) for i in range(n)]


def test_a_gate_whose_caches_fill_is_not_a_leak(tmp_path: Path) -> None:
    rss = rising(70, 5)  # 5 MB over the day, still rising at the end
    parts = [{"rss": r, "sqlite": s, "heap_free": f, "unexplained": r - s - f}
             for r, s, f in zip(rss, rising(0.7, 2.5), rising(1.7, 2.2), strict=True)]
    inv = check_resources(day(rss, parts, tmp_path))
    assert inv.checked == 1 and not inv.violations, inv.violations
    assert inv.figures["in-1#100"]["sqlite_mb_rise"] == 2.1  # after the warm-up


def test_a_leak_fails_with_or_without_the_parts(tmp_path: Path) -> None:
    rss = rising(70, 8)
    parts = [{"rss": r, "sqlite": 1.0, "heap_free": 2.0, "unexplained": r - 3.0} for r in rss]
    inv = check_resources(day(rss, parts, tmp_path))
    assert len(inv.violations) == 1 and "unexplained by its caches still rising" in inv.violations[0].what
    # a day from before the daemons said where their memory is: judged on RSS, as before
    old = check_resources(day(rss, None, tmp_path))
    assert len(old.violations) == 1 and "RSS still rising" in old.violations[0].what
