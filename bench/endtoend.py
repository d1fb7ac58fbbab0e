"""Benchmark 2: tap → coil set, end to end.

A card is written on a VirtualSerialReader's pty; the daemon (`gated run`, a separate
process, on the large site's store) reads the line, decides, and writes the unlock coil
of a SimTurnstile on a real pymodbus TCP server on loopback. The latency is from just
before the write to the coil-set time the server records (time.monotonic() in this
process, the same clock on both sides).

Each tap uses a different card that is granted at any wall-clock time (open-ended time
pass), so no tap is debounced or denied; the next tap waits for the turnstile to turn
and relock.

The same runs again with **another process writing to the same disk** (a writer that
keeps 1 MiB blocks going into a file beside the daemon's store and fsyncs every 8 MiB, as
a backup job or a log shipper would): the grant intent's flush before the pulse waits for
the disk, but off the daemon's event loop (sync/store/durability.py); what is left for the tap
is that one flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import runs_summary
from bench.daemon import base_store, daemon_process, grantable_cards
from bench.generate import SiteData
from drivers.readers.frames import FrameConfig
from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import SimTurnstile


async def _wait_coil(turnstile: SimTurnstile, count: int, timeout: float) -> float | None:
    """Monotonic time of the coil history entry number `count` (an unlock), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(turnstile.coil_history) > count:
            ts, raw = turnstile.coil_history[count]
            return ts if raw != turnstile.active_low else None
        await asyncio.sleep(0.0005)
    return None


async def _relocked(turnstile: SimTurnstile, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not turnstile.unlocked and not turnstile.passage_active and not turnstile.door_open:
            return
        await asyncio.sleep(0.01)


WRITER = """
import os, sys
path = sys.argv[1]
block = os.urandom(1 << 20)
with open(path, "wb", buffering=0) as f:
    n = 0
    while True:
        f.write(block)
        n += 1
        if n % 8 == 0:
            os.fsync(f.fileno())
        if n % 256 == 0:
            f.seek(0)
"""


@contextlib.contextmanager
def busy_disk(beside: Path) -> Any:
    """Another process writing to the same disk as the store, for as long as the block runs."""
    target = beside / "busy-disk.load"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
    try:
        time.sleep(0.5)  # its writes under way
        if proc.poll() is not None:  # a writer that died would leave the disk quiet
            raise RuntimeError(f"the busy-disk writer exited with {proc.returncode}")
        yield proc
    finally:
        proc.kill()
        proc.wait()
        with contextlib.suppress(OSError):  # never written, or its directory was none
            target.unlink()


def durable_write_floor(beside: Path, writes: int = 300, *, busy: bool) -> dict[str, Any]:
    """The disk's own floor under the tap's durability rule: one 4 KiB write made durable
    (O_DIRECT | O_DSYNC into a file already allocated: no metadata, no journal commit,
    only the write and the device's cache flush), `writes` times 20 ms apart, with or
    without the busy writer. Whatever design holds a grant until its intent is on disk
    waits at least this long; the tap → coil figure above it is ours."""
    path = beside / "durable-floor.bin"
    with open(path, "wb") as f:
        f.write(b"\0" * (256 * 4096))
        f.flush()
        os.fsync(f.fileno())
    buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants
    buf.write(b"i" * 4096)
    samples: list[float] = []
    load = busy_disk(beside) if busy else contextlib.nullcontext()
    fd = os.open(path, os.O_WRONLY | os.O_DSYNC | os.O_DIRECT)
    try:
        with load:
            for i in range(writes):
                t0 = time.perf_counter()
                os.pwrite(fd, buf, (i % 256) * 4096)
                samples.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.02)
    finally:
        os.close(fd)
        path.unlink()
    return runs_summary([samples])


async def _bench(data: SiteData, base: Path, runs: int, taps: int, log: Any, *, busy: bool = False) -> dict[str, Any]:
    cards = grantable_cards(data)
    rng = random.Random(11)
    rng.shuffle(cards)
    needed = runs * taps + 5
    if len(cards) < needed:
        raise RuntimeError(f"only {len(cards)} grantable cards for {needed} taps")
    per_run: list[list[float]] = []
    misses = 0
    reader = VirtualSerialReader(None, FrameConfig())
    try:
        async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, unit=1) as turnstile:
            turnstile.set_person(turns=True, delay=0.05)
            turnstile.passage_pulse = 0.05
            async with daemon_process(
                base, "endtoend", reader_device=reader.slave_name, modbus_port=turnstile.port
            ) as daemon:
                log(f"  daemon pid {daemon.pid} ready in {daemon.ready_seconds:.2f} s")
                await asyncio.sleep(0.5)  # the reader opens its port, the output its connection
                # warm-up: a few taps, not counted
                it = iter(cards)
                for _ in range(5):
                    n = len(turnstile.coil_history)
                    reader.tap(next(it))
                    await _wait_coil(turnstile, n, 3.0)
                    await asyncio.sleep(0.05)
                    await _relocked(turnstile)
                load = busy_disk(base.parent) if busy else contextlib.nullcontext()
                with load:
                    for _ in range(runs):
                        samples: list[float] = []
                        for _ in range(taps):
                            await asyncio.sleep(0.05)
                            n = len(turnstile.coil_history)
                            t0 = time.monotonic()
                            reader.tap(next(it))
                            ts = await _wait_coil(turnstile, n, 3.0)
                            if ts is None:
                                misses += 1
                            else:
                                samples.append((ts - t0) * 1000)
                            await asyncio.sleep(0.05)
                            await _relocked(turnstile)
                        per_run.append(samples)
    finally:
        reader.close()
    res = runs_summary(per_run)
    res["misses"] = misses
    res["members"] = len(data.members)
    return res


def run(data: SiteData, *, runs: int = 5, taps: int = 40, floor_writes: int = 300, log: Any = print) -> dict[str, Any]:
    base = base_store(data, log)
    res = asyncio.run(_bench(data, base, runs, taps, log))
    log(
        f"  tap → coil set: median {res['median']:.2f} ms, p99 {res['p99']:.2f} ms, max {res['max']:.2f} ms "
        f"({res['n']} taps, {res['misses']} without a coil change)"
    )
    busy = asyncio.run(_bench(data, base, runs, taps, log, busy=True))
    log(
        f"  the same, another process writing to the disk: median {busy['median']:.2f} ms, "
        f"p99 {busy['p99']:.2f} ms, max {busy['max']:.2f} ms ({busy['n']} taps, {busy['misses']} without a coil change)"
    )
    res["busy_disk"] = busy
    for name, busy_now in (("disk_floor", False), ("busy_disk_floor", True)):
        floor = durable_write_floor(base.parent, floor_writes, busy=busy_now)
        log(
            f"  the disk's floor, one 4 KiB durable write{', beside the writer' if busy_now else ''}: "
            f"median {floor['median']:.2f} ms, p99 {floor['p99']:.2f} ms, max {floor['max']:.2f} ms"
        )
        res[name] = floor
    return res
