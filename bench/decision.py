"""Benchmark 1: decision latency in process.

Credential in → Engine.decide (card look-up, member view from SQLite, rules.decide) → the
relay command could go out: that is the budgeted "decision". Then Engine.commit (one
SQLite transaction, synchronous=FULL as the daemon runs it): the whole Engine.tap.

Taps are drawn from the site's cards (5 % unknown cards), at the bench's "now" (peak hour,
classes around), 0.4 s apart.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

from bench.common import fresh_dir, loaded_store, runs_summary
from bench.generate import SiteData, gates, generate, policy, site
from gated.engine import Engine
from rules.credential import Credential

SPACING = 0.4  # seconds between taps: 5 × 1000 taps stay within the peak hour


def tap_cards(data: SiteData, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    cards = data.cards
    out = []
    for i in range(n):
        if rng.random() < 0.05:
            out.append(f"FF{i:06X}")  # nobody's card
        else:
            out.append(cards[rng.randrange(len(cards))])
    return out


def run_taps(engine: Engine, data: SiteData, cards: list[str], start_offset: int) -> tuple[list[float], list[float], dict[str, int]]:
    """Decide and commit each card; (decide ms, tap ms) per tap, and the reasons seen."""
    decide_ms: list[float] = []
    tap_ms: list[float] = []
    reasons: dict[str, int] = {}
    perf = time.perf_counter
    for i, card in enumerate(cards):
        now = data.now + timedelta(seconds=(start_offset + i) * SPACING)
        cred = Credential.card(card, "reader-in", now)
        t0 = perf()
        pending = engine.decide("turnstile-in", cred, now)
        t1 = perf()
        engine.commit(pending, passed=True, now=now)
        t2 = perf()
        decide_ms.append((t1 - t0) * 1000)
        tap_ms.append((t2 - t0) * 1000)
        r = pending.decision.reason.value
        reasons[r] = reasons.get(r, 0) + 1
    return decide_ms, tap_ms, reasons


def bench_scale(data: SiteData, *, runs: int, taps: int, durable: bool = True, warmup: int = 50) -> dict[str, Any]:
    path = fresh_dir(f"decision-{len(data.members)}") / "gated.db"
    store, load_s = loaded_store(path, data, durable=durable)
    try:
        engine = Engine(store, site(), gates(), policy())
        run_taps(engine, data, tap_cards(data, warmup, 999), 0)
        per_decide, per_tap = [], []
        reasons: dict[str, int] = {}
        for r in range(runs):
            d, t, rs = run_taps(engine, data, tap_cards(data, taps, r), warmup + r * taps)
            per_decide.append(d)
            per_tap.append(t)
            for k, v in rs.items():
                reasons[k] = reasons.get(k, 0) + v
        return {
            "members": len(data.members),
            "passes": len(data.passes),
            "bookings": len(data.bookings),
            "load_seconds": round(load_s, 2),
            "synchronous": "FULL" if durable else "NORMAL",
            "decide": runs_summary(per_decide),
            "tap": runs_summary(per_tap),
            "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        }
    finally:
        store.close()


def run(scales: list[int], *, runs: int = 5, taps: int = 1000, full: SiteData | None = None, log: Any = print) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in scales:
        data = full if full is not None and len(full.members) == n else generate(n)
        res = bench_scale(data, runs=runs, taps=taps)
        out[str(n)] = res
        log(
            f"  decision @ {n:>7} members: decide median {res['decide']['median']:.3f} ms, "
            f"p99 {res['decide']['p99']:.3f} ms, max {res['decide']['max']:.3f} ms | "
            f"tap (decide+commit) median {res['tap']['median']:.3f} ms, p99 {res['tap']['p99']:.3f} ms, "
            f"max {res['tap']['max']:.3f} ms  (store load {res['load_seconds']} s)"
        )
    return out
