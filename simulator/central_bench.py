"""Benchmark helpers for bench/: the outbox drain to a real broker and the snapshot import.

Both return a dict of measurements; neither asserts a budget (DESIGN.md "Budgets": drain
>= 5,000 events/s at QoS 1 with none lost or duplicated; 100,000-member snapshot <= 10 s
with no stall > 50 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rules.model import Site
from simulator.central import Central, CentralSettings, generate
from sync.link import MqttSettings, SyncLink
from sync.snapshot import SnapshotHeader, SnapshotImporter
from sync.store import Store


class _StallProbe:
    """Measures the event loop's longest stall: what a tap would wait for."""

    def __init__(self, period: float = 0.002):
        self.period = period
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.perf_counter() - t - self.period)

    def __enter__(self) -> _StallProbe:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def bench_outbox_drain(
    port: int,
    n_events: int = 20_000,
    *,
    host: str = "127.0.0.1",
    workdir: str | Path | None = None,
    batch_events: int = 200,
    timeout: float = 300.0,
) -> dict[str, Any]:
    """Fill a Store's outbox with `n_events` while offline, then start the link and the
    reference central system on the broker at `port` and time the drain until every
    event is acknowledged. Checks at the central side: every seq once, in order."""
    with contextlib.ExitStack() as stack:
        d = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        site = Site(ZoneInfo("UTC"), id="bench")
        store = Store(d / "gate.db", site, daemon_id="bench-gate", durable=True)
        now = datetime.now(UTC)
        for start in range(0, n_events, 1000):  # fill in big transactions (not measured)
            with store.transaction() as tx:
                for i in range(start, min(n_events, start + 1000)):
                    tx.emit("bench", now, n=i)
        central = Central(
            CentralSettings(host=host, port=port, identifier=f"bench-central-{time.time_ns()}"), d / "central.db"
        )
        link = SyncLink(
            store,
            MqttSettings(host=host, port=port, site="bench", daemon="bench-gate", batch_events=batch_events),
        )
        ctask = asyncio.create_task(central.run())
        await central.wait_connected(30)
        t0 = time.perf_counter()
        ltask = asyncio.create_task(link.run())
        try:
            async with asyncio.timeout(timeout):
                while store.acked_seq < store.last_seq:
                    await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - t0
        finally:
            for t in (ltask, ctask):
                t.cancel()
            await asyncio.wait([ltask, ctask])
        seqs = [e["seq"] for e in central.events("bench", "bench-gate")]
        ids = {e["id"] for e in central.events("bench", "bench-gate")}
        result = {
            "events": n_events,
            "seconds": elapsed,
            "events_per_s": n_events / elapsed if elapsed else float("inf"),
            "lost": n_events - len(set(seqs)),
            "duplicated": len(seqs) - len(set(seqs)),
            "in_order": seqs == list(range(1, n_events + 1)),
            "ids_unique": len(ids) == len(seqs),
            "messages": link.stats["messages_published"],
            "resent": link.stats["events_published"] - n_events,
        }
        store.close()
        return result


async def bench_snapshot_import(
    n_members: int = 100_000,
    *,
    passes_per_member: float = 1.5,
    bookings_per_member: float = 3.0,
    chunk_rows: int = 500,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Import a generated snapshot (as the central system would chunk it) into a fresh
    Store, as the link does: validate each chunk, stage it, then merge and swap. Reports
    the total time, the validation share and the longest event-loop stall."""
    with contextlib.ExitStack() as stack:
        d = Path(workdir) if workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        data = generate(n_members, passes_per_member=passes_per_member, bookings_per_member=bookings_per_member)
        central = Central(CentralSettings(chunk_rows=chunk_rows), d / "central.db")
        central.load("bench", data["members"], data["passes"], data["bookings"])
        payloads = central.snapshot_payloads("bench", ["bench-gate"])
        central.conn.close()
        del data, central
        gc.collect()
        gc.freeze()  # the generated data set is the bench's, not the daemon's: keep it out of GC pauses
        store = Store(d / "gate.db", Site(ZoneInfo("Europe/Madrid"), id="bench"), daemon_id="bench-gate")
        importer = SnapshotImporter(store, "bench-gate")
        now = datetime.now(UTC)
        validate = 0.0
        with _StallProbe() as probe:
            t0 = time.perf_counter()
            for p in payloads:
                a = time.perf_counter()
                header = SnapshotHeader.model_validate_json(p)  # the rest is validated by the worker
                validate += time.perf_counter() - a
                if header.chunk == 0:
                    await importer.begin(header, now)
                await importer.add(header, p)
                await asyncio.sleep(0)
            await importer.finish()
            elapsed = time.perf_counter() - t0
        gc.unfreeze()
        counts = store.counts()
        store.close()
        return {
            "members": counts["members"],
            "passes": counts["passes"],
            "bookings": counts["bookings"],
            "chunks": len(payloads),
            "seconds": elapsed,
            "validate_seconds": validate,
            "max_stall_ms": probe.worst * 1000,
        }


if __name__ == "__main__":  # pragma: no cover
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(asyncio.run(bench_snapshot_import(n, bookings_per_member=float(sys.argv[2]) if len(sys.argv) > 2 else 3.0)))
