"""What must hold after a day, checked on what the day left behind (dayrun.py): the
central system's database, every gate's database, the turnstiles' counts and the harness's
record of taps, desk actions and faults. `check_run` assembles the report from the gates'
checks (gates.py), the books (books.py) and the grants decided again (grants.py),
and, here, the harness's own measures: the taps' latency, each daemon's
resources through the day, and the day having run as planned.

Each check returns an `Invariant` (name, what was checked, figures) and its violations;
each violation carries the events around it (the site's events near that instant, and the
faults in progress).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from simulator.day import procfs
from simulator.day.checks.books import check_books, check_requested_refunds
from simulator.day.checks.dayrun import Invariant, Run, Violation
from simulator.day.checks.gates import (
    check_balances,
    check_exactly_once,
    check_expected_denials,
    check_rotations,
    check_settled,
)
from simulator.day.checks.grants import check_grants, check_refusals

# -- latency and resources ------------------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def latency(run: Run) -> dict[str, Any]:
    healthy = [t for t in run.harness["taps"] if all(t["state"].values())]
    coil = [t["coil_ms"] for t in healthy if t["coil_ms"] is not None]
    coil_all = [t["coil_ms"] for t in run.harness["taps"] if t["coil_ms"] is not None]
    # an unknown card waits for the central's answer (lookup_timeout, 0.3 s): apart
    denied = [t["answer_ms"] for t in healthy if t["decision"] == "denied" and t["answer_ms"] is not None
              and t["reason"] != "unknown_card"]
    unknown = [t["answer_ms"] for t in healthy if t["reason"] == "unknown_card" and t["answer_ms"] is not None]
    decide_ms = [t["decide_ms"] for t in run.harness["taps"] if t.get("decide_ms") is not None]
    stalls = sorted(
        ({"ms": t["coil_ms"] if t["decision"] == "granted" else t["answer_ms"], "sim": t["sim"], "site": t["site"],
          "gate": t["gate"], "decision": t["decision"], "reason": t["reason"]}
         for t in healthy if (t["coil_ms"] if t["decision"] == "granted" else t["answer_ms"]) is not None
         and t["reason"] != "unknown_card"),
        key=lambda x: -x["ms"])
    unanswered = [t for t in healthy if t["decision"] is None]
    return {
        "tap_to_coil_ms": {"n": len(coil), "p50": _pct(coil, 0.5), "p99": _pct(coil, 0.99), "max": max(coil, default=None)},
        "tap_to_coil_ms_all_taps": {"n": len(coil_all), "p99": _pct(coil_all, 0.99), "max": max(coil_all, default=None)},
        "tap_to_denial_ms": {"n": len(denied), "p50": _pct(denied, 0.5), "p99": _pct(denied, 0.99),
                             "max": max(denied, default=None)},
        "unknown_card_answer_ms": {"n": len(unknown), "p50": _pct(unknown, 0.5), "p99": _pct(unknown, 0.99),
                                   "max": max(unknown, default=None)},
        "decision_ms_in_daemon": {"n": len(decide_ms), "p50": _pct(decide_ms, 0.5), "p99": _pct(decide_ms, 0.99),
                                  "max": max(decide_ms, default=None)},
        "longest_stalls": stalls[:5],
        "unanswered_taps_at_healthy_gates": len(unanswered),
        "harness_loop_lag_ms_worst": run.harness.get("harness_loop_lag_ms"),
    }


def check_resources(run: Run) -> Invariant:
    inv = Invariant("resources", "each daemon's RSS and open file descriptors, sampled through the day, are "
                    "flat after warm-up (no descriptor leak; RSS not still rising in the last part of the day — "
                    "for a gate daemon, the part of it that SQLite's bounded caches and the allocator's free memory "
                    "do not explain)")
    per: dict[str, Any] = {}
    warmup = 120.0
    # under --trace-memory the daemons' RSS holds tracemalloc's own bookkeeping, which grows
    # with every allocation it tracks: their heaps are judged from its reports instead
    traced = any((run.dir / "gates").glob("*.tracemalloc-*.json"))
    for key, raw in sorted(run.harness["samples"].items()):
        samples = [procfs.Sample(**s) for s in raw]
        g = procfs.growth(samples, warmup)
        per[key] = g
        name = key.split("#")[0]
        if name not in run.daemons or "rss_mb_per_hour_second_half" not in g:
            continue
        inv.checked += 1
        lived = float(g["lived_s"])
        if lived < 600:
            continue  # a short incarnation (a kill): too short to say
        if int(g["fds_last"]) > int(g["fds_after_warmup"]) + 8:
            inv.fail(f"{key}: open descriptors {g['fds_after_warmup']} -> {g['fds_last']}", gate=name, detail=g)
        # a gate daemon says where its memory is (gated/memory.py): its page caches fill as
        # the ledger grows through the day, up to their bound, and freed memory the
        # allocator keeps follows the peak of use; a leak is in what neither explains
        m = procfs.memory_growth(run.harness.get("memory", {}).get(key, []), samples[0].real, warmup)
        g.update(m)
        if m:
            rise = float(m["unexplained_mb_last"]) - float(m["unexplained_mb_after_warmup"])
            rate, what = float(m["unexplained_mb_per_hour_second_half"]), "unexplained by its caches"
            before, after = m["unexplained_mb_after_warmup"], m["unexplained_mb_last"]
        else:
            rise = float(g["rss_mb_last"]) - float(g["rss_mb_after_warmup"])
            rate, what = float(g["rss_mb_per_hour_second_half"]), "RSS"
            before, after = g["rss_mb_after_warmup"], g["rss_mb_last"]
        if not traced and rate > 6.0 and rise > 4.0:
            inv.fail(f"{key}: {what} still rising at {rate} MB/h in the second half ({before} -> {after} MB)",
                     gate=name, detail=g)
    for f in sorted((run.dir / "gates").glob("*.tracemalloc-*.json")):
        try:
            t = json.loads(f.read_text())
        except ValueError:
            continue
        per[f"tracemalloc {f.stem.replace('.tracemalloc', '')}"] = {
            "seconds": t["seconds_since_first"], "grew_kb_total": t["grew_kb_total"],
            "top": [{"grew_kb": x["grew_kb"], "count": x["count_diff"], "at": x["stack"][-3:]} for x in t["top"][:6]],
        }
    inv.figures = per
    return inv


def check_harness(run: Run) -> Invariant:
    inv = Invariant("harness", "the day ran as planned: no person stuck at a gate, no fault that did not end, "
                    "no daemon that exited by itself")
    for err in run.harness.get("errors", []):
        inv.fail(err)
    for name, g in run.harness["gates"].items():
        inv.checked += 1
        died = int(g["incarnations"]) - 1 - int(g["kills"])
        if died > 0:
            inv.fail(f"{name} ended {died} time(s) without being killed", gate=name)
    if run.harness.get("people_inside_at_end"):
        inv.fail(f"{len(run.harness['people_inside_at_end'])} member(s) still inside at the end",
                 detail={"first": run.harness["people_inside_at_end"][:10]})
    return inv


# -- all of it -------------------------------------------------------------------------------------------


def check_run(d: Path) -> dict[str, Any]:
    run = Run(d)
    books = check_books(run)
    check_requested_refunds(run, books[2])
    invariants = [check_rotations(run), check_exactly_once(run), check_balances(run), check_settled(run), *books,
                  check_grants(run), check_refusals(run), check_expected_denials(run), check_resources(run), check_harness(run)]
    violations = [v for i in invariants for v in i.violations]
    return {
        "run": _run_summary(run),
        "traffic": _traffic(run),
        "chaos": _chaos(run),
        "invariants": [{"name": i.name, "statement": i.statement, "checked": i.checked, "ok": not i.violations,
                        "violations": len(i.violations), "figures": i.figures if i.name != "resources" else {}}
                       for i in invariants],
        "latency": latency(run),
        "resources": next(i for i in invariants if i.name == "resources").figures,
        "violations": [v.__dict__ for v in violations[:200]],
        "violations_total": len(violations),
    }


def _run_summary(run: Run) -> dict[str, Any]:
    h = run.harness
    return {"seed": h.get("seed"), "speed": h["settings"]["speed"], "bridged": h["settings"]["bridged"],
            "day": run.pop["day"], "sites": run.sites, "members": len(run.pop["home"]),
            "simulated": f"{run.plan['start']} .. {h['end_sim']}", "wall_s": h.get("wall_s"),
            "ready_s": h.get("ready_s"), "day_s": h.get("day_s"), "drain_s": h.get("drain_s"),
            "events_at_central": sum(len(v) for v in run.events.values())}


def _traffic(run: Run) -> dict[str, Any]:
    taps = run.harness["taps"]
    by: Counter[str] = Counter()
    for t in taps:
        by[f"{t['decision'] or 'no answer'}:{t['reason'] or '-'}"] += 1
    desk: Counter[str] = Counter(f"{x['kind']}:{x.get('status')}" for x in run.harness["desk"])
    bo: Counter[str] = Counter(f"{x['kind']}:{'ok' if (x.get('response') or {}).get('committed') else 'failed'}"
                               for x in run.harness["back_office"])
    evs: Counter[str] = Counter()
    for site_evs in run.events.values():
        for e in site_evs:
            evs[e["type"] if e["type"] != "deduction" else f"deduction:{e.get('cause')}"] += 1
    return {"taps": len(taps), "by_outcome": dict(sorted(by.items(), key=lambda kv: -kv[1])),
            "desk": dict(desk), "back_office": dict(bo), "events": dict(sorted(evs.items()))}


def _chaos(run: Run) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for c in run.harness["chaos"]:
        x = out.setdefault(c["n"], {"kind": c["kind"], "site": c.get("site"), "gate": c.get("gate")})
        x[c["phase"]] = c["sim"][11:19]
        for k, v in c.items():
            if k not in ("n", "kind", "site", "gate", "phase", "sim", "real"):
                x[k] = v
    return [out[k] for k in sorted(out)]


__all__ = ["Invariant", "Run", "Violation", "check_run"]
