"""Benchmark 4: the outbox drained to a real mosquitto after an outage.

50,000 events wait in the outbox (access, deduction and attendance events written by
Store.commit_tap while the broker was away). The daemon's own MQTT link (sync.link.SyncLink)
then connects to a mosquitto started for the bench (own config, loopback, no persistence)
and publishes them at QoS 1. A receiver playing the central system subscribes at QoS 1,
applies each event once by id, and acknowledges the highest gap-free seq (as the central
system does), so the link prunes and never times out into a resend.

Rate = events / seconds from starting the link to the receiver holding every event.
Checked at the receiving side: every seq 1..N present, no id missing, duplicates counted
(QoS 1 allows them; the central system's apply-by-id makes them harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from bench.common import fresh_dir, values_summary
from bench.generate import SiteData, gates, member_in, pass_in, policy, site
from gated.clock import utc_now
from gated.engine import Engine
from rules.credential import Credential
from sync.store import Store, SyncBatch
from sync.store.replica_file import copy_store
from sync.store.sent_mark import SentMark

MOSQUITTO = "/usr/sbin/mosquitto"
DAEMON = "bench-gate"
SITE = "bench-gym"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mosquitto(work: Path) -> Any:
    exe = MOSQUITTO if Path(MOSQUITTO).exists() else shutil.which("mosquitto")
    if exe is None:
        raise RuntimeError("mosquitto not found (make system-deps)")
    port = _free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 100\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\n"
    )
    log = open(work / "mosquitto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"mosquitto did not start; see {work / 'mosquitto.log'}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def fill_outbox(store: Store, data: SiteData, events: int) -> int:
    """Taps until the outbox holds at least `events` events (synchronous=NORMAL while
    filling: the fill is set-up, not measured)."""
    engine = Engine(store, site(), gates(), policy())
    cards = data.cards
    i = 0
    while store.last_seq < events:
        now = data.now + timedelta(seconds=i * 0.05)
        engine.tap("turnstile-in", Credential.card(cards[(i * 7919) % len(cards)], "r", now), now)
        i += 1
    return store.last_seq  # a tap writes 1 to 3 events: a few more than asked


class Central:
    """Receives the daemon's event batches, applies by id, acks the gap-free seq."""

    def __init__(self, port: int, expected: int):
        self.port = port
        self.expected = expected
        self.ids: set[str] = set()
        self.seqs: set[int] = set()
        self.received = 0
        self.duplicates = 0
        self.messages = 0
        self.applied_seq = 0
        self.done = asyncio.Event()
        self.ready = asyncio.Event()
        self.finished_at = 0.0

    async def run(self) -> None:
        base = f"gated/{SITE}/{DAEMON}"
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="bench-central", protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe(f"{base}/events", qos=1)
            self.ready.set()
            async for msg in c.messages:
                payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else b""
                batch = json.loads(payload)
                self.messages += 1
                for ev in batch["events"]:
                    self.received += 1
                    if ev["id"] in self.ids:
                        self.duplicates += 1
                        continue
                    self.ids.add(ev["id"])
                    self.seqs.add(int(ev["seq"]))
                while self.applied_seq + 1 in self.seqs:
                    self.applied_seq += 1
                await c.publish(f"{base}/ack", json.dumps({"v": 1, "applied_seq": self.applied_seq}).encode(), qos=1)
                if self.applied_seq >= self.expected and not self.done.is_set():
                    self.finished_at = time.perf_counter()
                    self.done.set()


async def drain_once(store: Store, port: int, expected: int, timeout: float = 120) -> dict[str, Any]:
    from sync.link import MqttSettings, SyncLink

    central = Central(port, expected)
    ctask = asyncio.create_task(central.run())
    async with asyncio.timeout(10):
        await central.ready.wait()
    settings = MqttSettings(host="127.0.0.1", port=port, site=SITE, daemon=DAEMON, share_access=False)
    link = SyncLink(store, settings, now=utc_now, gates=gates())
    t0 = time.perf_counter()
    ltask = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(timeout):
            await central.done.wait()
        seconds = central.finished_at - t0
        await asyncio.sleep(0.3)  # late duplicates, if any, still count
    finally:
        ltask.cancel()
        ctask.cancel()
        for t in (ltask, ctask):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
    missing = expected - len({s for s in central.seqs if s <= expected})
    return {
        "seconds": seconds,
        "events": expected,
        "rate": expected / seconds,
        "messages": central.messages,
        "received": central.received,
        "duplicates": central.duplicates,
        "missing": missing,
        "acked_seq": store.acked_seq,
        "link_stats": {k: v for k, v in link.stats.items()},
    }


def run(data: SiteData, *, runs: int = 5, events: int = 50_000, log: Any = print) -> dict[str, Any]:
    work = fresh_dir("drain")
    # one outbox, copied for every run: members and passes of 2,000 members, then taps
    filled = work / "filled.db"
    store = Store(filled, site(), daemon_id=DAEMON, durable=False)
    small = SiteData(data.members[:2000], [], [], data.now, data.seed)
    last_id = data.members[1999].id
    store.apply_sync(
        SyncBatch(
            members=[member_in(m) for m in small.members],
            passes=[pass_in(p) for p in data.passes if p.pass_.member <= last_id],
        ),
        data.now,
        snapshot=True,
    )
    n = fill_outbox(store, small, events)
    store.close()
    results = []
    with mosquitto(work) as port:
        for r in range(runs):
            path = work / f"gated-{r}.db"
            copy_store(filled, path)
            # a gate that has run before, its mark of what it sent beside it (a new box's
            # would first wait for the central system's word: sync/store/numbering.py)
            SentMark(path).advance(0, data.now.timestamp())
            store = Store(path, site(), daemon_id=DAEMON)  # the daemon as it runs: synchronous=FULL
            try:
                res = asyncio.run(drain_once(store, port, n))
            finally:
                store.close()
                for suffix in ("", "-wal", "-shm", ".sent"):
                    Path(str(path) + suffix).unlink(missing_ok=True)
            results.append(res)
            log(
                f"  drain run {r + 1}/{runs}: {res['events']} events in {res['seconds']:.2f} s = {res['rate']:.0f} events/s, "
                f"{res['messages']} messages, missing {res['missing']}, duplicates {res['duplicates']}"
            )
    return {
        "events": results[0]["events"],
        "rate_events_per_s": values_summary([r["rate"] for r in results], "events/s"),
        "seconds": values_summary([r["seconds"] for r in results], "s"),
        "missing": sum(r["missing"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "messages_per_run": results[0]["messages"],
        "batch_events": 200,
        "link_stats": results[-1]["link_stats"],
    }
