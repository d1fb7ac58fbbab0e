"""Benchmark 3: a full snapshot of the large site imported while taps keep being decided.

The snapshot goes through the daemon's own MQTT link (`SyncLink.feed`: the session reads
each chunk's header, the link hands the payload to the `SnapshotImporter`, whose worker
process builds the new replica file; the session's guard looks at it, the switch puts it
in place), on the daemon's event loop. The chunks are the central system's JSON (1,000
records each, as `simulator/central.py` sends them), read from a file, handed over as
fast as the loop takes them (the broker is left out: the bytes are given as aiomqtt
would give them).

The import time is from the first chunk handed over to the switch done.

Meanwhile, on the same loop and the same store:
- a tap task decides and commits a tap every TAP_INTERVAL; a tap's **stall** is how late
  its decision was: the loop lag until it could start plus the decision itself (the relay
  command would go out then); its commit (after the relay, synchronous=FULL) is reported
  apart;
- a probe sleeps 1 ms at a time and records how late it wakes: the **loop lag** a tap
  arriving at any instant would meet (it also catches what the tap task's own rhythm
  might miss: another tap's commit, the switch).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import struct
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import fresh_dir, summary, values_summary
from bench.generate import SiteData, chunk_payloads, gates, policy, site
from gated.clock import utc_now
from gated.engine import Engine
from rules.credential import Credential
from sync.store import Store

TAP_INTERVAL = 0.01
PROBE_INTERVAL = 0.001
LONG_LAG = 0.020  # the stall budget: lags over it are looked at
DAEMON = "bench-gate"


class Payloads:
    """The snapshot's chunks, written once to a file (a 1M-member snapshot is a gigabyte
    of JSON: not kept in memory) and read back one at a time."""

    def __init__(self, data: SiteData, path: Path, records_per_chunk: int):
        self.path = path
        self.count = 0
        self.bytes = 0
        with open(path, "wb") as f:
            for p in chunk_payloads(data, daemon=DAEMON, snapshot_id="snap-1", records_per_chunk=records_per_chunk):
                f.write(struct.pack("<I", len(p)))
                f.write(p)
                self.count += 1
                self.bytes += len(p)
            # written out now: the kernel's flush of a gigabyte of the bench's own file
            # must not land in the measured import (it held taps' fsyncs)
            f.flush()
            os.fsync(f.fileno())

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while head := f.read(4):
                yield f.read(struct.unpack("<I", head)[0])


async def _tapper(
    engine: Engine,
    data: SiteData,
    cards: tuple[str, ...],
    stop: asyncio.Event,
    stalls: list[float],
    decide_ms: list[float],
    commit_ms: list[float],
    commits: list[tuple[float, float]],
) -> None:
    rng = random.Random(5)
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
        commits.append((t1, t2))
        decide_ms.append((t1 - t0) * 1000)
        stalls.append((max(late, 0.0) + (t1 - t0)) * 1000)
        commit_ms.append((t2 - t1) * 1000)


async def _probe(
    stop: asyncio.Event, lags: list[float], long: list[tuple[float, float]], busy: list[float]
) -> None:
    """`busy`, per long lag: the share of it the loop's thread spent on the CPU (1: our own
    code held the loop; near 0: it waited — for the CPU, taken by other processes, or in a
    system call such as a commit's fsync)."""
    while not stop.is_set():
        t = time.perf_counter()
        cpu = time.thread_time()
        await asyncio.sleep(PROBE_INTERVAL)
        woke = time.perf_counter()
        lag = max(0.0, woke - t - PROBE_INTERVAL)
        lags.append(lag * 1000)
        if lag > LONG_LAG:
            long.append((woke - lag, woke))
            busy.append(round((time.thread_time() - cpu) / (woke - t), 2))


class LoopWaits:
    """What held the loop's thread during a long lag. A thread samples it every 1 ms:
    its state and wait channel (/proc/self/task/TID/{stat,wchan}, and the kernel stack
    when readable: root) — state D (uninterruptible: disk, page locks, dirty-page
    throttling) names what blocked it, which the CPU share alone cannot say — and, when it
    runs, its Python stack (sys._current_frames: what our code was doing). Sampling needs
    the GIL, so a sample of running Python code lands at the interpreter's switch interval
    (5 ms) at most: enough to name a lag of 20 ms or more. It is not free: a sample taken
    while the loop runs Python costs the loop a hand-over of the GIL."""

    def __init__(self) -> None:
        self.tid = threading.get_native_id()  # made on the loop's thread
        self.ident = threading.get_ident()
        self.samples: list[tuple[float, str]] = []  # (perf_counter, where)
        # (perf_counter, the thread's ns on a CPU, its ns waiting for one): its schedstat
        self.sched: list[tuple[float, int, int]] = []
        # (perf_counter, its minor page faults, its user and system ticks): /proc/.../stat.
        # On this VM a page the kernel freed is handed back to the host (free page
        # reporting), so touching fresh memory costs a fault in the host as well
        self.faults: list[tuple[float, int, int, int]] = []
        # (perf_counter, the VM's steal time in ticks, all CPUs): the hypervisor running
        # something else on our virtual CPUs, which no state inside the guest shows
        self.steal: list[tuple[float, int]] = []
        self._gc_start = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-waits", daemon=True)

    def __enter__(self) -> LoopWaits:
        self._thread.start()
        gc.callbacks.append(self._gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._gc)
        self._stop.set()
        self._thread.join()

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        """The cyclic GC holds the GIL for all of a collection (no sample lands in it): its
        collections of the loop's thread are timed here instead."""
        if threading.get_ident() != self.ident:
            return
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif (took := time.perf_counter() - self._gc_start) > 0.002:
            self.samples.append((time.perf_counter(), f"gc: generation {info['generation']} collection, {took * 1000:.1f} ms"))

    def _run(self) -> None:
        base = f"/proc/self/task/{self.tid}"
        rounds = 0
        while not self._stop.wait(0.001):
            rounds += 1
            now = time.perf_counter()
            try:
                with open(f"{base}/schedstat") as f:
                    run_ns, wait_ns = f.read().split()[:2]
                self.sched.append((now, int(run_ns), int(wait_ns)))
                if rounds % 5 == 0:  # /proc/stat is longer to read: every 5 ms (ticks are 10)
                    with open("/proc/stat") as f:
                        self.steal.append((now, int(f.readline().split()[8])))
            except (OSError, ValueError, IndexError):
                pass
            try:
                with open(f"{base}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                state = fields[0]
                self.faults.append((time.perf_counter(), int(fields[7]), int(fields[11]), int(fields[12])))
            except (OSError, ValueError, IndexError):
                continue
            if state == "D":
                self.samples.append((time.perf_counter(), "kernel: " + self._kernel(base)))
            elif state == "R":
                frame = sys._current_frames().get(self.ident)
                if frame is not None:
                    self.samples.append((time.perf_counter(), "python: " + _stack(frame)))

    @staticmethod
    def _kernel(base: str) -> str:
        try:
            with open(f"{base}/stack") as f:
                frames = [ln.split()[1].split("+")[0] for ln in f.read().splitlines()[:8] if " " in ln]
            if frames:
                return " < ".join(frames)
        except OSError:
            pass
        with open(f"{base}/wchan") as f:
            return f.read().strip()

    def during(self, a: float, b: float) -> list[str]:
        """The distinct places seen between a and b, most frequent first."""
        counts: dict[str, int] = {}
        for t, where in self.samples:
            if a <= t <= b:
                counts[where] = counts.get(where, 0) + 1
        places = [f"{n}× {w}" for w, n in sorted(counts.items(), key=lambda kv: -kv[1])[:4]]
        return [*places, *self._accounts(a, b)]

    def _accounts(self, a: float, b: float) -> list[str]:
        """Where the lag's time went, by the kernel's accounts: the loop thread on a CPU,
        waiting for one (runnable, another task on it), and the VM's steal time."""
        out = []
        before = [s for s in self.sched if s[0] <= a]
        after = [s for s in self.sched if s[0] >= b]
        if before and after:
            (_, r0, w0), (_, r1, w1) = before[-1], after[0]
            span = (after[0][0] - before[-1][0]) * 1000
            out.append(f"sched: on a CPU {(r1 - r0) / 1e6:.1f} ms, waiting for one {(w1 - w0) / 1e6:.1f} ms "
                       f"of {span:.1f} ms")
        f_before = [f for f in self.faults if f[0] <= a]
        f_after = [f for f in self.faults if f[0] >= b]
        if f_before and f_after:
            (_, m0, u0, s0), (_, m1, u1, s1) = f_before[-1], f_after[0]
            tick = 1000 // os.sysconf("SC_CLK_TCK")
            out.append(f"faults: {m1 - m0} minor; ticks user {(u1 - u0) * tick} ms, system {(s1 - s0) * tick} ms")
        s_before = [s for s in self.steal if s[0] <= a]
        s_after = [s for s in self.steal if s[0] >= b]
        if s_before and s_after:
            ticks = s_after[0][1] - s_before[-1][1]
            span = (s_after[0][0] - s_before[-1][0]) * 1000
            out.append(f"steal: {ticks * 1000 // os.sysconf('SC_CLK_TCK')} ms (all CPUs) in {span:.0f} ms")
        return out


def _stack(frame: Any, depth: int = 6) -> str:
    """The innermost frames of our own code (and the library call it is in)."""
    out: list[str] = []
    f = frame
    while f is not None and len(out) < depth:
        code = f.f_code
        name = code.co_filename.rsplit("/", 2)
        out.append(f"{'/'.join(name[-2:])}:{code.co_name}:{f.f_lineno}")
        f = f.f_back
    return " < ".join(out)


def _during_commit(long: list[tuple[float, float]], commits: list[tuple[float, float]]) -> int:
    """How many of the long lags overlap a tap's commit (its fsync: the disk, not the import)."""
    return sum(1 for a, b in long if any(c < b and a < d for c, d in commits))


async def import_once(store: Store, payloads: Payloads, data: SiteData, cards: tuple[str, ...],
                      number: int = 1) -> dict[str, Any]:
    """One import of the snapshot, as the central's `number`th: each its own snapshot_id (a
    gate skips the one its replica already is, `snapshots_repeated`)."""
    from sync.link import MqttSettings, SyncLink

    engine = Engine(store, site(), gates(), policy())
    link = SyncLink(store, MqttSettings(site="bench", daemon=DAEMON), now=utc_now, gates=gates())
    topic = link.topics.snapshot
    applied = link.stats["snapshots_applied"]
    stop = asyncio.Event()
    stalls: list[float] = []
    decide_ms: list[float] = []
    commit_ms: list[float] = []
    lags: list[float] = []
    commits: list[tuple[float, float]] = []
    long: list[tuple[float, float]] = []
    busy: list[float] = []
    tasks = [
        asyncio.create_task(_tapper(engine, data, cards, stop, stalls, decide_ms, commit_ms, commits)),
        asyncio.create_task(_probe(stop, lags, long, busy)),
    ]
    await asyncio.sleep(0.05)
    before = store.replica_generation
    slow_feeds: list[tuple[int, float, float]] = []  # (chunk, seconds into the import, ms)
    t0 = time.perf_counter()
    with LoopWaits() as waits:
        ours = f'"snap-{number}"'.encode()
        for i, p in enumerate(payloads):
            f0 = time.perf_counter()
            await link.feed(topic, p if number == 1 else p.replace(b'"snap-1"', ours, 1))
            took = time.perf_counter() - f0
            if took > LONG_LAG / 2:  # a chunk's own handling that holds the loop
                slow_feeds.append((i, round(f0 - t0, 3), round(took * 1000, 1)))
            await asyncio.sleep(0)  # the next MQTT message comes through the loop
        fed = time.perf_counter() - t0
        while link.stats["snapshots_applied"] == applied:
            if not link.snapshot_in_progress:
                raise RuntimeError(f"snapshot not applied: {dict(link.stats)}")
            await asyncio.sleep(0.005)
        seconds = time.perf_counter() - t0
    report = link.port.import_report
    switched = time.perf_counter()
    stop.set()
    await asyncio.wait(tasks)
    counts = store.counts()
    if store.replica_generation != before + 1 or counts["members"] != len(data.members) or counts["bookings"] != len(
        data.bookings
    ):
        raise RuntimeError(f"snapshot not applied: counts {counts}")
    return {
        "seconds": seconds,
        "fed_seconds": fed,
        "taps": len(stalls),
        "max_stall_ms": max(stalls) if stalls else 0.0,
        "max_lag_ms": max(lags) if lags else 0.0,
        "long_lags": len(long),
        "long_lags_during_a_commit": _during_commit(long, commits),
        # (seconds into the import, ms): when they came — feeding, building, switching
        "long_lag_times": [(round(a - t0, 3), round((b - a) * 1000, 1)) for a, b in long],
        "long_lags_loop_busy": busy,  # per long lag: the loop thread's CPU share during it
        # per long lag: what held the loop's thread (kernel waits in state D, Python stacks)
        "long_lags_held_by": [waits.during(a, b) for a, b in long],
        "slow_feeds": slow_feeds,
        "switched_at": round(switched - t0, 3),
        "stalls_ms": stalls,
        "lags_ms": lags,
        "decide_ms": decide_ms,
        "commit_ms": commit_ms,
        "worker": report,
    }


def _cpu(worker: dict[str, Any]) -> float:
    cpu = worker["cpu_seconds"]
    return float(cpu["builder"] + cpu["parsers"])


def run(data: SiteData, *, runs: int = 3, records_per_chunk: int = 1000, log: Any = print) -> dict[str, Any]:
    work = fresh_dir("snapshot")
    t0 = time.perf_counter()
    payloads = Payloads(data, work / "chunks.bin", records_per_chunk)
    prep = time.perf_counter() - t0
    store = Store(work / "gated.db", site(), daemon_id=DAEMON)
    # the taps' cards, made before and put out of the cyclic GC's sight as the data set is
    # (bench/__main__.py): a list of a million cards made during the import was walked
    # by every young collection for 30-50 ms, a stall of the bench's own, not the daemon's
    cards = tuple(data.cards)
    gc.collect()
    gc.freeze()
    results = []
    try:
        for r in range(runs):
            res = asyncio.run(import_once(store, payloads, data, cards, r + 1))
            results.append(res)
            w = res["worker"]
            log(
                f"  snapshot run {r + 1}/{runs} ({'into an empty store' if r == 0 else 'over the previous one'}): "
                f"{res['seconds']:.2f} s, worker {_cpu(w):.2f} CPU-s {w['cpu_seconds']} "
                f"(chunks handed over in {res['fed_seconds']:.2f} s, switch "
                f"{w['switch_ms']:.1f} ms), {res['taps']} taps during it, longest stall {res['max_stall_ms']:.1f} ms, "
                f"longest loop lag {res['max_lag_ms']:.1f} ms ({res['long_lags']} over 20 ms, "
                f"{res['long_lags_during_a_commit']} of them during a tap's commit, at (s, ms) "
                f"{res['long_lag_times'][:12]}, loop thread busy {res['long_lags_loop_busy'][:12]}, "
                f"held by {res['long_lags_held_by'][:12]}); chunks whose handling took over 10 ms "
                f"(chunk, s, ms) {res['slow_feeds'][:12]}; worker {w['timings']}"
            )
        sizes = {
            "ledger_mb": round(sum(os.path.getsize(p) for p in work.glob("gated.db*")) / 1e6, 1),
            "replica_mb": round(sum(os.path.getsize(p) for p in work.glob("gated.replica-*")) / 1e6, 1),
        }
    finally:
        store.close()
    stalls = [s for res in results for s in res["stalls_ms"]]
    lags = [s for res in results for s in res["lags_ms"]]
    return {
        "members": len(data.members),
        "passes": len(data.passes),
        "bookings": len(data.bookings),
        "chunks": payloads.count,
        "records_per_chunk": records_per_chunk,
        "payload_mb": round(payloads.bytes / 1e6, 1),
        "payload_prep_seconds": round(prep, 2),
        "import_seconds": values_summary([res["seconds"] for res in results], "s"),
        # the work itself, whatever else ran: the worker and its parsers' CPU time
        "worker_cpu_seconds": values_summary([_cpu(res["worker"]) for res in results], "s"),
        "builder_cpu_seconds": values_summary([res["worker"]["cpu_seconds"]["builder"] for res in results], "s"),
        "parsers_cpu_seconds": values_summary([res["worker"]["cpu_seconds"]["parsers"] for res in results], "s"),
        "switch_ms": values_summary([res["worker"]["switch_ms"] for res in results], "ms"),
        "max_stall_ms": values_summary([res["max_stall_ms"] for res in results], "ms"),
        "stall_ms": summary(stalls),
        "max_lag_ms": values_summary([res["max_lag_ms"] for res in results], "ms"),
        "loop_lag_ms": summary(lags),
        "taps_during_import": sum(res["taps"] for res in results),
        "long_lags": sum(res["long_lags"] for res in results),
        "long_lags_during_a_commit": sum(res["long_lags_during_a_commit"] for res in results),
        "decide_ms_during_import": summary([c for res in results for c in res["decide_ms"]]),
        "tap_commit_ms_during_import": summary([c for res in results for c in res["commit_ms"]]),
        "worker": [res["worker"] for res in results],
        "long_lag_times": [res["long_lag_times"] for res in results],
        "long_lags_loop_busy": [res["long_lags_loop_busy"] for res in results],
        "long_lags_held_by": [res["long_lags_held_by"] for res in results],
        # long lags the loop's own work explains (its thread on the CPU most of the lag)
        "long_lags_loop_busy_over_half": sum(1 for res in results for b in res["long_lags_loop_busy"] if b > 0.5),
        "disk": sizes,
    }
