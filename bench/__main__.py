"""`make bench` (`.venv/bin/python -m bench`): gated's benchmarks at the scale of a large chain.

    python -m bench             # everything at 100,000 members, ~10 minutes on the 2-core box
    python -m bench --quick     # reduced sizes and runs, ~2 minutes
    python -m bench --only decision,drain
    python -m bench --scale 1m  # a chain-sized site: 1M members, 1.5M passes, 3M bookings
                                # (decision, snapshot import, memory; ~30 minutes)

Results: a table on stdout (each figure beside its DESIGN.md budget and the wire time of
the hardware link it sits behind) and bench/results/latest.json (latest-1m.json for the
chain scale). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULTS, ROOT, share_ours, wire_times

ALL = ("decision", "endtoend", "snapshot", "drain", "memory", "rtu", "console")
CHAIN = ("decision", "snapshot", "memory")

# DESIGN.md "Budgets", by the size of the site
BUDGETS: dict[str, dict[str, str]] = {
    "100k": {
        "decision": "p99 ≤ 1 ms",
        "endtoend": "p99 ≤ 3 ms",
        "busy_disk": "p99 ≤ 3 ms",
        "import": "≤ 5 s",
        "import_cpu": "≤ 6 CPU-s",
        "stall": "≤ 20 ms (p99 and max)",
        "drain": "≥ 10,000 events/s, none lost/duplicated",
        "rss": "≤ 80 MB",
        "ready": "≤ 1 s",
        "console": "tap → row < 1 s (issue 24)",
    },
    "1m": {
        "decision": "p99 ≤ 1 ms",
        "endtoend": "—",
        "busy_disk": "—",
        "import": "≤ 60 s",
        "import_cpu": "≤ 60 CPU-s",
        "stall": "≤ 20 ms (p99 and max)",
        "drain": "—",
        "rss": "≤ 150 MB",
        "ready": "—",
        "console": "—",
    },
}


def _log(msg: str) -> None:
    print(msg, flush=True)


def _git_head() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _pressure() -> dict[str, str]:
    """Linux pressure stall information (share of time tasks waited for the CPU or the
    disk): how busy the shared machine was, beside the load average."""
    out = {}
    for what in ("cpu", "io"):
        try:
            with open(f"/proc/pressure/{what}") as f:
                out[what] = f.readline().strip()
        except OSError:
            pass
    return out


def _freeze() -> None:
    """The generated data set (half a million objects) lives in this process for the whole
    run; a daemon does not hold it. Move it out of the cyclic GC's sight so collections
    during a measurement cost what they would in the daemon."""
    gc.collect()
    gc.freeze()


def table(results: dict[str, Any], scale: str = "100k") -> list[tuple[str, str, str, str, str]]:
    """(figure, measured median / p99 (max), budget, link wire time, our share)."""
    budget = BUDGETS[scale]
    w = wire_times()
    rtu = w["modbus_rtu_write_coil_9600"]
    behind = w["wiegand_26"] + rtu  # the slowest common reader link, then the relay link
    rows: list[tuple[str, str, str, str, str]] = []

    def share(ours: float, wire: float) -> str:
        return f"{share_ours(ours, wire) * 100:.0f} %"

    dec = results.get("decision", {})
    for n, r in dec.items():
        d, t = r["decide"], r["tap"]
        rows.append((
            f"decision, {int(n):,} members",
            f"{d['median']:.2f} / {d['p99']:.2f} ms (max {d['max']:.2f}); run p99s "
            + ", ".join(f"{x:.2f}" for x in d["run_p99s"]),
            budget["decision"],
            f"Wiegand 26 {w['wiegand_26']:.0f} ms + RTU coil {rtu:.1f} ms",
            share(d["p99"], behind),
        ))
        rows.append((
            f"tap (decide + commit, FULL sync), {int(n):,}",
            f"{t['median']:.2f} / {t['p99']:.2f} ms (max {t['max']:.2f})",
            "—",
            "after the relay command",
            "—",
        ))
    e = results.get("endtoend")
    if e:
        rows.append((
            f"tap → coil set, end to end, {e['members']:,} members",
            f"{e['median']:.2f} / {e['p99']:.2f} ms (max {e['max']:.2f}); run p99s "
            + ", ".join(f"{x:.2f}" for x in e.get("run_p99s", [])),
            budget["endtoend"],
            f"serial line {w['serial_ascii_line_9600']:.1f} ms + RTU coil {rtu:.1f} ms",
            share(e["p99"], w["serial_ascii_line_9600"] + rtu),
        ))
        b = e.get("busy_disk")
        if b:
            rows.append((
                "the same, another process writing to the same disk",
                f"{b['median']:.2f} / {b['p99']:.2f} ms (max {b['max']:.2f}); run p99s "
                + ", ".join(f"{x:.2f}" for x in b.get("run_p99s", [])),
                budget["busy_disk"],
                "+ one flush of the intent, off the event loop",
                "—",
            ))
        for key, label in (("disk_floor", "the disk's floor: one 4 KiB durable write"),
                           ("busy_disk_floor", "the disk's floor beside the same writer")):
            f = e.get(key)
            if f:
                rows.append((
                    label,
                    f"{f['median']:.2f} / {f['p99']:.2f} ms (max {f['max']:.2f})",
                    "—",
                    "O_DIRECT | O_DSYNC into an allocated file: any intent made durable waits this long",
                    "—",
                ))
    s = results.get("snapshot")
    if s:
        imp = s["import_seconds"]
        rows.append((
            f"snapshot import (worker process, switched in), {s['members']:,} members",
            f"{imp['median']:.2f} s (max {imp['max']:.2f}; runs " + ", ".join(f"{x:.2f}" for x in imp["values"])
            + f"); switch {s['switch_ms']['median']:.1f} ms (max {s['switch_ms']['max']:.1f})",
            budget["import"],
            "—",
            "—",
        ))
        cpu = s.get("worker_cpu_seconds")
        if cpu:
            rows.append((
                "snapshot import: the worker's CPU (builder + parsers)",
                f"{cpu['median']:.2f} CPU-s (max {cpu['max']:.2f}; runs " + ", ".join(f"{x:.2f}" for x in cpu["values"])
                + f"); builder {s['builder_cpu_seconds']['median']:.2f}, parsers {s['parsers_cpu_seconds']['median']:.2f}",
                budget["import_cpu"],
                "—",
                "—",
            ))
        st, lag = s["stall_ms"], s["loop_lag_ms"]
        rows.append((
            "tap stall during the import (lateness + decision)",
            f"{st['median']:.2f} / {st['p99']:.2f} ms (max {st['max']:.1f}; per run "
            + ", ".join(f"{x:.1f}" for x in s["max_stall_ms"]["values"]) + f"), {s['taps_during_import']} taps",
            budget["stall"],
            f"OSDP poll {w['osdp_poll_9600']:.0f} ms",
            share(st["max"], w["osdp_poll_9600"] + rtu),
        ))
        rows.append((
            "event-loop lag during the import (1 ms probe)",
            f"{lag['median']:.2f} / {lag['p99']:.2f} ms (max {lag['max']:.1f}; per run "
            + ", ".join(f"{x:.1f}" for x in s["max_lag_ms"]["values"])
            + f"); {s['long_lags']} over 20 ms: {s['long_lags_during_a_commit']} in a tap's commit, "
            + f"{s['long_lags_loop_busy_over_half']} with the loop's thread busy",
            budget["stall"],
            "—",
            "—",
        ))
        rows.append((
            "database on disk after the import",
            f"ledger {s['disk']['ledger_mb']:.1f} MB + replica {s['disk']['replica_mb']:.1f} MB",
            "—",
            "—",
            "—",
        ))
    dr = results.get("drain")
    if dr:
        rows.append((
            f"outbox drain, {dr['events']:,} events, QoS 1",
            f"{dr['rate_events_per_s']['median']:.0f} events/s (min {dr['rate_events_per_s']['min']:.0f}); "
            f"missing {dr['missing']}, duplicates {dr['duplicates']}",
            budget["drain"],
            "—",
            "—",
        ))
    r = results.get("rtu")
    if r:
        rows.append((
            f"tap → coil set over RTU, {r['gates']} gates on one 9,600-baud line",
            f"{r['median']:.1f} / {r['p99']:.1f} ms (max {r['max']:.1f}); 3 at once {r['together']['median']:.1f} / "
            f"{r['together']['p99']:.1f} ms; line {r['line']['load']:.0%} busy, {r['line']['violations']} glued",
            f"≤ wire + 5 ms ({r['target_ms']:.1f} ms)",
            f"RTU coil {r['wire_ms']:.1f} ms (request {r['request_wire_ms']:.1f} ms)",
            f"ratio {r['ratio_median']}",
        ))
    for i, c in enumerate((results.get("console") or {}).get("runs", [])):
        t, a, k = c["tap_to_row"], c["answer_to_row"], c["by_kind"]
        fast = [x for name, x in k.items() if name != "turnstile"]
        rows.append((
            f"console burst {i + 1}: {c['taps']} taps in {c['seconds']:.0f} s, tap → row drawn in Chromium",
            f"{t['median']:.0f} / {t['p99']:.0f} ms (max {t['max']:.0f}); without a turnstile to walk through max "
            f"{max((x['max'] for x in fast), default=0):.0f}; answer → row {a['median']:.0f} / {a['p99']:.0f} ms "
            f"(max {a['max']:.0f}); missing {c['missing']}",
            budget["console"],
            "the turnstile's rotation (entries)",
            "—",
        ))
    m = results.get("memory")
    if m:
        rows.append((
            f"daemon RSS, {m['members']:,} members",
            f"{m['rss_after_taps_mb']['median']:.1f} MB (peak VmHWM {m['rss_peak_mb']['median']:.1f} MB)",
            budget["rss"],
            "—",
            "—",
        ))
        rows.append((
            "start → READY=1",
            f"{m['ready_seconds']['median']:.2f} s (max {m['ready_seconds']['max']:.2f})",
            budget["ready"],
            "—",
            "—",
        ))
    return rows


def print_table(rows: list[tuple[str, str, str, str, str]]) -> None:
    head = ("figure", "median / p99 (max)", "budget", "hardware link it sits behind", "ours / (ours + wire)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    line = " | ".join(h.ljust(widths[i]) for i, h in enumerate(head))
    print("\n" + line)
    print("-+-".join("-" * wd for wd in widths))
    for r in rows:
        print(" | ".join(c.ljust(widths[i]) for i, c in enumerate(r)))
    print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced sizes and runs (~2 minutes)")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--members", type=int, default=None, help="size of the large site (default 100,000; quick 20,000)")
    p.add_argument("--scale", choices=sorted(BUDGETS), default="100k",
                   help="100k: the default run; 1m: the chain-sized site (1M members), decision, snapshot, memory")
    p.add_argument("--out", default=None, help="results file (default bench/results/latest[-1m].json)")
    p.add_argument("--work", default=None, help="scratch directory for stores (default bench/results/work)")
    args = p.parse_args(argv)
    if args.work:
        from bench import common

        common.WORK = Path(args.work)
    chain = args.scale == "1m"
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if chain and args.only == ",".join(ALL):
        only = list(CHAIN)
    unknown = set(only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    quick = args.quick
    big = args.members or (1_000_000 if chain else 20_000 if quick else 100_000)
    runs = 3 if quick or chain else 5
    out_path = args.out or str(RESULTS / ("latest-1m.json" if chain else "latest.json"))

    from bench.generate import generate

    started = time.perf_counter()
    results: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": _git_head(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "quick": quick,
        "scale": args.scale,
        "members": big,
        "load_average": os.getloadavg(),
        "pressure": _pressure(),
        "wire_times_ms": wire_times(),
    }
    data = None
    if {"decision", "snapshot", "drain"} & set(only):
        t0 = time.perf_counter()
        data = generate(big)
        meta["generate_seconds"] = round(time.perf_counter() - t0, 2)
        meta["data"] = data.counts()
        _log(f"generated {data.counts()} in {meta['generate_seconds']} s")
        _freeze()

    if "decision" in only:
        from bench import decision

        _log("1. decision latency (in process, Engine.decide / Engine.tap)")
        scales = [big] if chain else sorted({min(1_000, big), min(10_000, big), big})
        results["decision"] = decision.run(scales, runs=runs, taps=500 if quick else 1000, full=data, log=_log)

    if "snapshot" in only:
        from bench import snapshot

        assert data is not None
        _log(f"3. full snapshot import while taps are decided ({big:,} members)")
        results["snapshot"] = snapshot.run(data, runs=1 if chain else 2 if quick else 5, records_per_chunk=1000, log=_log)

    if "drain" in only:
        from bench import drain

        assert data is not None
        _log("4. outbox drain to mosquitto after an outage (QoS 1)")
        results["drain"] = drain.run(data, runs=runs, events=20_000 if quick else 50_000, log=_log)

    if {"endtoend", "memory"} & set(only):
        from bench.daemon import live_site

        data = None
        gc.unfreeze()
        gc.collect()
        live = live_site(big)
        _freeze()
        if "endtoend" in only:
            from bench import endtoend

            _log(f"2. tap → coil set, end to end (gated run subprocess, {big:,} members)")
            results["endtoend"] = endtoend.run(
                live, runs=runs, taps=15 if quick else 30, floor_writes=60 if quick else 300, log=_log
            )
        if "memory" in only:
            from bench import memory

            _log(f"5. daemon memory and start-up to READY ({big:,} members)")
            results["memory"] = memory.run(live, runs=2 if chain else runs, taps=20 if quick else 50, log=_log)

    if "rtu" in only:
        from bench import rtu

        _log("6. tap → coil over Modbus RTU, 3 gates on one emulated 9,600-baud line (gated run subprocess)")
        results["rtu"] = rtu.run(runs=2 if quick else runs, taps=15 if quick else 30, log=_log)

    if "console" in only:
        from bench import console_burst

        _log("7. the front desk at 6 pm: a burst of taps, the console's feed open in Chromium")
        results["console"] = console_burst.run(runs=1, taps=60 if quick else 200, seconds=36 if quick else 120, log=_log)

    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["load_average_end"] = os.getloadavg()
    meta["pressure_end"] = _pressure()
    rows = table(results, args.scale)
    print_table(rows)
    _log(f"load average at start {meta['load_average']}, at the end {meta['load_average_end']} (a shared machine)")
    _log(f"pressure at start {meta['pressure']}, at the end {meta['pressure_end']}")
    out = {"meta": meta, "results": results, "table": [dict(zip(("figure", "measured", "budget", "link", "share"), r, strict=True)) for r in rows]}
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)
    _log(f"wrote {out_path} ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
