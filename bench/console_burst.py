"""Benchmark 7: the front desk at 6 pm — a burst of taps with the console's live feed open in
a real Chromium: how long from each tap to its row drawn in the page.

A daemon in this process (its turnstile on a real Modbus TCP server, SimTurnstile) with three
gates — an entrance with a relay and a passage sensor, an entrance without a relay, an exit —
and members, a third of them with photos (made on Chromium's canvas, sent as the central
system would). Debian's Chromium logs in and opens the feed; the page notes, for each new
row, when it was drawn (`window.gatedRowAt`, static/feed.js). Taps come at a steady rate
with jitter, each as its own task — several readers at once, as at a real peak — a mix of
entries, exits, unknown cards and a blocked member. Two figures per tap:

- **tap → row**: from the card read (the daemon's `handle_credential` called) to the row
  drawn. For an entry at the turnstile this includes the person walking through: the tap is
  committed, and shown, after the passage (DESIGN.md, "The path of a tap");
- **answer → row**: from the gate's answer (the commit, when the gate display shows it too)
  to the row drawn: what the console adds.

`python -m bench --only console` (in `make bench`); tests/test_console_burst.py runs it at
200 taps in 2 minutes and holds it to its limits.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import summary

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "bench-desk-password"
TZ = "Europe/Madrid"
# the mix of a 6 pm peak: mostly entries, some leaving, a few problems for the desk
MIX = (("turnstile", 0.45), ("door", 0.20), ("exit", 0.20), ("unknown", 0.10), ("blocked", 0.05))


def _config(tmp: Path, modbus_port: int, console_port: int) -> Any:
    from gated.auth import hash_password
    from gated.config import Config

    return Config.model_validate({
        "site": {"id": "bench-gym", "name": "Bench Gym", "timezone": TZ},
        "daemon_id": "gate-bench",
        "stale_cache": {"max_age": None, "policy": "keep"},
        "gates": [
            {"id": "turnstile", "name": "Turnstile", "zone": "main", "direction": "in",
             "output": {"transport": "tcp", "host": "127.0.0.1", "port": modbus_port, "unit": 1, "coil": 0,
                        "pulse": 0.3, "passage_input": 0, "door_contact": 1, "passage_timeout": 3,
                        "mode": "fail_safe"}},
            {"id": "door", "name": "Side door", "zone": "main", "direction": "in"},
            {"id": "exit", "name": "Exit", "zone": "main", "direction": "out"},
        ],
        "mqtt": None,
        "zones": {"main": {"capacity": 400}},
        "store": {"path": str(tmp / "gated.db")},
        "console": {"bind": "127.0.0.1", "port": console_port, "session_minutes": 60,
                    "users": [{"name": "desk", "role": "staff", "password_hash": hash_password(PASSWORD)}]},
        "metrics": {"enabled": False},
        "control": {"socket": str(tmp / "control.sock")},
        "logging": {"format": "json", "level": "warning"},
    })


async def _photos(page: Any, n: int) -> list[str]:
    """n small portraits (60x80 JPEG data: URLs, a few KB each), drawn on the page's canvas."""
    urls: list[str] = await page.evaluate("""(n) => {
        const out = [];
        for (let i = 0; i < n; i++) {
            const c = document.createElement('canvas'); c.width = 60; c.height = 80;
            const g = c.getContext('2d');
            g.fillStyle = 'hsl(' + (i * 37 % 360) + ',45%,45%)'; g.fillRect(0, 0, 60, 80);
            g.fillStyle = 'hsl(' + (20 + i * 7 % 20) + ',50%,' + (45 + i % 30) + '%)';
            g.beginPath(); g.arc(30, 32, 16, 0, 7); g.fill(); g.beginPath(); g.ellipse(30, 80, 26, 22, 0, 0, 7); g.fill();
            out.push(c.toDataURL('image/jpeg', 0.7));
        }
        return out; }""", n)
    return urls


def _seed(members: int, photos: list[str]) -> Any:
    from sync.records import MemberIn, PassIn
    from sync.store import SyncBatch

    windows = {"mon-sun": "00:00-24:00"}
    ms = [MemberIn(id=f"m{i:04d}", name=f"Member {i:04d}", cards=[f"B0{i:06X}"],
                   photo=photos[i % len(photos)] if i % 3 == 0 and photos else None) for i in range(members)]
    ms.append(MemberIn(id="m-blocked", name="Blocked Member", status="blocked", cards=["DEADBEEF"]))
    passes = [PassIn.model_validate({"id": f"p{i:04d}", "member": f"m{i:04d}", "name": "Unlimited", "kind": "time",
                                     "access_windows": windows}) for i in range(members)]
    return SyncBatch(members=ms, passes=passes)


async def burst(tmp: Path, *, taps: int = 200, seconds: float = 120.0, members: int = 150, seed: int = 24,
                log: Any = print) -> dict[str, Any]:
    """One burst: `taps` taps over `seconds`; the figures (module doc) and what was missed."""
    from playwright.async_api import async_playwright

    from gated.daemon import Daemon
    from rules.credential import Credential
    from simulator.turnstile import SimTurnstile
    from sync.store import Store

    rng = random.Random(seed)
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0) as turnstile, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            config = _config(tmp, turnstile.port, port)
            blank = await browser.new_page()
            await blank.goto("about:blank")
            photos = await _photos(blank, 24)
            await blank.close()
            store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id)
            store.apply_sync(_seed(members, photos), time_now())
            store.close()
            daemon = Daemon(config)
            await daemon.start()
            try:
                page = await (await browser.new_context(viewport={"width": 1366, "height": 768})).new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                base = f"http://127.0.0.1:{port}"
                await page.goto(base + "/login")
                await page.fill("#user", "desk")
                await page.fill("#password", PASSWORD)
                await page.press("#password", "Enter")
                await page.wait_for_url(base + "/")
                await page.wait_for_selector("#stream-state.live", timeout=10000)
                await page.evaluate("() => { window.gatedRowAt = {}; }")

                inside: set[int] = set()
                done: list[dict[str, Any]] = []

                def pick() -> tuple[str, str, str]:
                    """(kind, gate, card): entries by members outside, exits by members inside."""
                    kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
                    if kind == "unknown":
                        return kind, rng.choice(["turnstile", "door"]), f"C0{rng.randrange(1 << 24):06X}"
                    if kind == "blocked":
                        return kind, "turnstile", "DEADBEEF"
                    if kind == "exit" and inside:
                        i = rng.choice(sorted(inside))
                        inside.discard(i)
                        return kind, "exit", f"B0{i:06X}"
                    if kind == "exit":
                        kind = "turnstile"  # nobody inside yet
                    i = rng.choice([m for m in range(members) if m not in inside])
                    inside.add(i)
                    return kind, kind, f"B0{i:06X}"

                async def one(kind: str, gate: str, card: str) -> None:
                    t_in = time.time()
                    r = await daemon.handle_credential(gate, Credential.card(card, "bench"))
                    t_out = time.time()
                    seqs = r.get("seq") or []
                    done.append({"kind": kind, "gate": gate, "seq": min(seqs) if seqs else None, "in": t_in, "out": t_out,
                                 "decision": r.get("decision")})

                interval = seconds / taps
                t0 = time.monotonic()
                tasks = []
                for n in range(taps):
                    due = t0 + n * interval + rng.uniform(-0.4, 0.4) * interval
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    tasks.append(asyncio.create_task(one(*pick())))
                await asyncio.gather(*tasks)
                took = time.monotonic() - t0
                wanted = {d["seq"] for d in done if d["seq"] is not None}
                deadline = time.monotonic() + 15
                drawn: dict[str, float] = {}
                while time.monotonic() < deadline:
                    drawn = await page.evaluate("() => window.gatedRowAt")
                    if wanted <= {int(k) for k in drawn}:
                        break
                    await asyncio.sleep(0.2)
                rows = await page.locator("#feed-body tr[data-type='access']").count()
            finally:
                await daemon.stop()
        finally:
            await browser.close()

    tap_to_row: list[float] = []
    answer_to_row: list[float] = []
    by_kind: dict[str, list[float]] = defaultdict(list)
    missing = 0
    for d in done:
        at = drawn.get(str(d["seq"]))
        if at is None:
            missing += 1
            continue
        tap_to_row.append(at - d["in"] * 1000)
        answer_to_row.append(at - d["out"] * 1000)
        by_kind[d["kind"]].append(at - d["in"] * 1000)
    result: dict[str, Any] = {
        "taps": taps,
        "seconds": round(took, 1),
        "members": members,
        "decisions": {k: sum(1 for d in done if d["decision"] == k) for k in ("granted", "denied")},
        "rows_in_page": rows,
        "missing": missing,
        "tap_to_row": summary(tap_to_row),
        "answer_to_row": summary(answer_to_row),
        "by_kind": {k: summary(v) for k, v in sorted(by_kind.items())},
        "over_1s": sum(1 for x in tap_to_row if x >= 1000),
        "page_errors": errors,
    }
    t, a = summary(tap_to_row), summary(answer_to_row)
    log(f"   {taps} taps in {result['seconds']} s: tap → row median {t.get('median', 0):.0f} ms, p99 "
        f"{t.get('p99', 0):.0f}, max {t.get('max', 0):.0f}; answer → row median {a.get('median', 0):.0f} ms, "
        f"p99 {a.get('p99', 0):.0f}, max {a.get('max', 0):.0f}; {result['over_1s']} over 1 s, {missing} missing")
    return result


def time_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def run(*, runs: int = 1, taps: int = 200, seconds: float = 120.0, log: Any = print) -> dict[str, Any]:
    """`make bench`: `runs` bursts, each with its own figures."""
    per_run = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as d:
            per_run.append(asyncio.run(burst(Path(d), taps=taps, seconds=seconds, log=log)))
    return {"taps": taps, "seconds": seconds, "runs": per_run}


__all__ = ["burst", "run"]
