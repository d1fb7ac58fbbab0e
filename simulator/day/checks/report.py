"""The day's report as text (the JSON report is `check_run`'s dict as it is)."""

from __future__ import annotations

import json
from typing import Any


def _kv(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def render_text(r: dict[str, Any]) -> str:
    run, lat = r["run"], r["latency"]
    out = [
        "A day at two sites: the report",
        "=" * 30,
        f"seed {run['seed']}, {run['members']} members, sites {', '.join(run['sites'])}, day {run['day']}, "
        f"simulated {run['simulated']} at x{run['speed']:g}, "
        f"{'site brokers bridged to the central broker' if run['bridged'] else 'one broker'}",
        f"wall: {run['wall_s']} s (ready {run['ready_s']} s, day {run['day_s']} s, settling {run['drain_s']} s); "
        f"{run['events_at_central']} events at the central system",
        "",
        f"Traffic: {r['traffic']['taps']} taps",
        "  " + _kv(r["traffic"]["by_outcome"]),
        "  desk: " + _kv(r["traffic"]["desk"]) + "; back office: " + _kv(r["traffic"]["back_office"]),
        "  events: " + _kv(r["traffic"]["events"]),
        "",
        f"Chaos: {len(r['chaos'])} faults",
    ]
    for c in r["chaos"]:
        where = "/".join(x for x in (c.get("site"), c.get("gate")) if x)
        span = f"{c.get('start', c.get('done', ''))}" + (f"-{c['end']}" if c.get("end") else "")
        extra = {k: v for k, v in c.items() if k not in ("kind", "site", "gate", "start", "end", "done")}
        out.append(f"  {span:17} {c['kind']:20} {where:12} {json.dumps(extra) if extra else ''}")
    out += ["", "Invariants"]
    for i in r["invariants"]:
        mark = "ok  " if i["ok"] else "FAIL"
        out.append(f"  [{mark}] {i['name']:17} checked {i['checked']:>6}  {i['statement']}")
        if i["figures"] and i["name"] in ("rotations", "grants", "expected_denials"):
            figs = {k: v for k, v in i["figures"].items() if k not in ("per_gate", "examples")}
            out.append(f"         {json.dumps(figs)}")
    out += [
        "",
        "Latency (real time; this machine is shared, figures are what the day saw)",
        f"  tap -> coil at healthy gates: {_kv(lat['tap_to_coil_ms'])} ms",
        f"  tap -> denial answer: {_kv(lat['tap_to_denial_ms'])} ms",
        f"  unknown card (asks the central, at most 300 ms): {_kv(lat['unknown_card_answer_ms'])} ms",
        f"  decision in the daemon (its log's ms; look-ups included): {_kv(lat['decision_ms_in_daemon'])} ms",
        "  longest stalls (unknown cards aside): " + "; ".join(f"{s['ms']:.0f} ms {s['site']}/{s['gate']} {s['sim'][11:19]} "
                                          f"{s['decision']} {s['reason']}" for s in lat["longest_stalls"]),
        f"  unanswered taps at healthy gates: {lat['unanswered_taps_at_healthy_gates']}; harness loop lag "
        f"worst {lat['harness_loop_lag_ms_worst']} ms",
        "",
        "Memory and descriptors (after 120 s of warm-up; MB/h is per real hour)",
    ]
    for key, g in r["resources"].items():
        if key.startswith("tracemalloc "):
            out.append(f"  {key}: +{g['grew_kb_total']} KB traced in {g['seconds']} s; most:")
            for x in g["top"]:
                out.append(f"      {x['grew_kb']:+9.1f} KB {x['count']:+6} blocks  {' <- '.join(reversed(x['at']))}")
            continue
        if "rss_mb_after_warmup" not in g:
            if g:
                out.append(f"  {key:28} lived {g.get('lived_s')} s, RSS {g.get('rss_mb_last')} MB")
            continue
        out.append(
            f"  {key:28} lived {g['lived_s']:>6} s  RSS {g['rss_mb_start']} -> {g['rss_mb_after_warmup']} -> "
            f"{g['rss_mb_last']} MB (peak {g['rss_mb_peak']}; {g['rss_mb_per_hour_first_half']:+} then "
            f"{g['rss_mb_per_hour_second_half']:+} MB/h)  fds {g['fds_after_warmup']} -> {g['fds_last']} "
            f"(max {g['fds_max']})  cpu {g['cpu_s']} s")
    out.append("")
    if r["violations"]:
        out.append(f"VIOLATIONS: {r['violations_total']}")
        for v in r["violations"]:
            head = " ".join(x for x in (v.get("site"), v.get("gate"), v.get("at"), v.get("member")) if x)
            out.append(f"- [{v['invariant']}] {v['what']}  ({head})")
            if v.get("detail"):
                out.append(f"    detail: {json.dumps(v['detail'], default=str)[:600]}")
            for e in v.get("around", [])[:25]:
                out.append(f"    around: {json.dumps(e, default=str)[:300]}")
    else:
        out.append("No violation: every invariant held.")
    return "\n".join(out) + "\n"


__all__ = ["render_text"]
