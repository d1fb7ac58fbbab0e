"""Benchmark 3: a full snapshot of the large site imported while taps keep being decided.

The snapshot goes through the MQTT link's own downlink path (sync.link.SyncLink._handle:
size check, SnapshotChunk validation, SnapshotImporter stage → merge → swap → drop), fed
with the JSON chunks the central system would publish, on the daemon's event loop. The
broker is left out: the bytes are handed over as aiomqtt would hand them.

Meanwhile a tap task decides and commits a tap every TAP_INTERVAL seconds on the same
loop and the same store. The stall of a tap is how late its decision was: the loop lag
until the tap could start plus the decision itself (the relay command would go out
then); the longest one is the figure against the 50 ms budget. The tap's commit (after
the relay, synchronous=FULL) is reported apart.

For comparison, the single-transaction path (Store.apply_sync(snapshot=True)) is timed
once: it holds the loop for its whole duration.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import timedelta
from typing import Any

from bench.common import fresh_dir, summary, values_summary
from bench.generate import SiteData, chunk_payloads, gates, policy, site
from gated.clock import utc_now
from gated.engine import Engine
from rules.credential import Credential
from sync.store import Store

TAP_INTERVAL = 0.01
DAEMON = "bench-gate"


async def _tapper(
    engine: Engine, data: SiteData, stop: asyncio.Event, stalls: list[float], decide_ms: list[float], commit_ms: list[float]
) -> None:
    rng = random.Random(5)
    cards = data.cards
    loop = asyncio.get_running_loop()
    i = 0
    while not stop.is_set():
        due = loop.time() + TAP_INTERVAL
        await asyncio.sleep(TAP_INTERVAL)
        late = loop.time() - due
        now = data.now + timedelta(seconds=i * 0.4)
        i += 1
        t0 = time.perf_counter()
        pending = engine.decide("turnstile-in", Credential.card(cards[rng.randrange(len(cards))], "r", now), now)
        t1 = time.perf_counter()
        engine.commit(pending, passed=True, now=now)
        t2 = time.perf_counter()
        decide_ms.append((t1 - t0) * 1000)
        stalls.append((max(late, 0.0) + (t1 - t0)) * 1000)
        commit_ms.append((t2 - t1) * 1000)


async def import_once(store: Store, payloads: list[bytes], data: SiteData, snapshot_id: str) -> dict[str, Any]:
    from sync.link import MqttSettings, SyncLink

    settings = MqttSettings(site="bench", daemon=DAEMON)
    link = SyncLink(store, settings, now=utc_now, gates=gates())
    link.session.awaiting_snapshot = True
    topic = link.topics.snapshot
    engine = Engine(store, site(), gates(), policy())
    stop = asyncio.Event()
    stalls: list[float] = []
    decide_ms: list[float] = []
    commit_ms: list[float] = []
    tapper = asyncio.create_task(_tapper(engine, data, stop, stalls, decide_ms, commit_ms))
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    for p in payloads:
        await link.feed(topic, p)
        await asyncio.sleep(0)  # the next MQTT message comes through the loop
    seconds = time.perf_counter() - t0
    stop.set()
    await tapper
    applied = link.stats["snapshots_applied"]
    counts = store.counts()
    if applied != 1 or counts["members"] != len(data.members) or counts["bookings"] != len(data.bookings):
        raise RuntimeError(f"snapshot not applied: stats {dict(link.stats)}, counts {counts}")
    return {
        "seconds": seconds,
        "taps": len(stalls),
        "max_stall_ms": max(stalls) if stalls else 0.0,
        "stalls_ms": stalls,
        "decide_ms": decide_ms,
        "commit_ms": commit_ms,
    }


def run(data: SiteData, *, runs: int = 5, records_per_chunk: int = 5000, log: Any = print) -> dict[str, Any]:
    path = fresh_dir("snapshot") / "gated.db"
    t0 = time.perf_counter()
    first = list(chunk_payloads(data, daemon=DAEMON, snapshot_id="snap-0", records_per_chunk=records_per_chunk))
    prep = time.perf_counter() - t0
    # each run is a new snapshot (a new id), the same content
    chunks = [[p.replace(b'"snapshot_id":"snap-0"', f'"snapshot_id":"snap-{r}"'.encode(), 1) for p in first] for r in range(runs)]
    store = Store(path, site(), daemon_id=DAEMON)
    results = []
    try:
        for r in range(runs):
            res = asyncio.run(import_once(store, chunks[r], data, f"snap-{r}"))
            results.append(res)
            log(
                f"  snapshot run {r + 1}/{runs} ({'into an empty store' if r == 0 else 'over the previous one'}): "
                f"{res['seconds']:.2f} s, {res['taps']} taps during it, longest stall {res['max_stall_ms']:.1f} ms"
            )
    finally:
        store.close()
    all_stalls = [s for res in results for s in res["stalls_ms"]]
    all_stalls.sort()
    out = {
        "members": len(data.members),
        "passes": len(data.passes),
        "bookings": len(data.bookings),
        "chunks": len(chunks[0]),
        "records_per_chunk": records_per_chunk,
        "payload_mb": round(sum(len(p) for p in chunks[0]) / 1e6, 1),
        "payload_prep_seconds": round(prep, 2),
        "import_seconds": values_summary([res["seconds"] for res in results], "s"),
        "max_stall_ms": values_summary([res["max_stall_ms"] for res in results], "ms"),
        "stall_ms": {
            "n": len(all_stalls),
            "median": round(all_stalls[len(all_stalls) // 2], 3) if all_stalls else None,
            "p99": round(all_stalls[int(0.99 * (len(all_stalls) - 1))], 3) if all_stalls else None,
            "max": round(all_stalls[-1], 3) if all_stalls else None,
        },
        "taps_during_import": sum(res["taps"] for res in results),
        "tap_commit_ms_during_import": summary([c for res in results for c in res["commit_ms"]]),
    }
    return out


def single_transaction(data: SiteData, log: Any = print) -> dict[str, Any]:
    """Store.apply_sync(snapshot=True): one transaction, the loop held throughout."""
    path = fresh_dir("snapshot-tx") / "gated.db"
    store = Store(path, site(), daemon_id=DAEMON)
    try:
        t0 = time.perf_counter()
        store.apply_sync(data.batch(), data.now, snapshot=True)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.apply_sync(data.batch(), data.now, snapshot=True)
        second = time.perf_counter() - t0
    finally:
        store.close()
    log(f"  Store.apply_sync(snapshot=True), one transaction: {first:.2f} s into an empty store, {second:.2f} s over it")
    return {"empty_seconds": round(first, 2), "replace_seconds": round(second, 2)}
