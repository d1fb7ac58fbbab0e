"""Only what is on disk leaves the gate.

The ledger commits without waiting for the disk and flushes off the event loop
(sync/store/durability.py). An event published before its commit reached the disk could
be lost in a power cut while the central system (and the site's other daemons) keep it;
its seq would then be given to another event after the restart, which they would ignore
as a repeat. So the uplink sends an event only once its commit is flushed: here the
flush is held (and then failing) while taps are committed, and nothing reaches the
central system until it is through.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from gated.engine import Engine
from rules.credential import Credential
from simulator.central import Central
from sync.link import SyncLink
from sync.store import Store
from tests.broker import (
    GATES,
    POLICY,
    SITE,
    WAIT_S,
    Mosquitto,
    clock,
    make_store,
    running,
    settings_for,
    site,
    wait_until,
)


class HeldDisk:
    """An fdatasync that can be held (it waits) or made to fail, from the test."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.failing = False
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if not self.release.wait(WAIT_S):
            raise OSError("held too long")
        if self.failing:
            raise OSError(5, "Input/output error")
        os.fdatasync(fd)


async def test_events_leave_only_once_their_commit_is_on_disk(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    store = Store(tmp_path / "a.db", site(), daemon_id="gate-a", durable=True)
    disk = HeldDisk()
    assert store.wal_sync is not None
    store.wal_sync._fsync = disk
    now = clock()
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    try:
        async with running(link.run()):
            await link.wait_connected(WAIT_S)
            await wait_until(lambda: link.stats["snapshots_applied"] == 1)
            await wait_until(lambda: store.acked_seq == store.last_seq, what="the start's events acked")
            before = len(central.events(SITE, "gate-a"))

            disk.release.clear()  # the disk holds every flush from here
            engine.tap("in-1", Credential.card("C1"), now())
            committed = store.last_seq
            await wait_until(lambda: disk.calls > 0, what="the uplink asks for a flush")
            for _ in range(25):  # half a second with the flush held: nothing sent
                assert len(central.events(SITE, "gate-a")) == before
                assert store.acked_seq < committed
                await asyncio.sleep(0.02)
            disk.release.set()
            await wait_until(lambda: store.acked_seq == committed, what="sent and acked once flushed")
            assert [e["seq"] for e in central.events(SITE, "gate-a")][-1] == committed

            disk.failing = True  # an I/O error: the uplink waits and says so, never sends
            engine.tap("out-1", Credential.card("C1"), now())
            failed = store.last_seq
            await wait_until(lambda: link.stats["uplink_not_durable"] > 0, what="the failing flush counted")
            assert len(central.events(SITE, "gate-a")) == committed
            disk.failing = False
            await wait_until(lambda: store.acked_seq == failed, what="sent once the disk works again")
            seqs = [e["seq"] for e in central.events(SITE, "gate-a")]
            assert seqs == list(range(1, failed + 1))
    finally:
        disk.release.set()
        store.close()


async def test_a_catch_up_answer_waits_for_the_disk_too(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """The site's other daemons keep what they hear by seq as well: an answer to a
    catch-up carries only events whose commit is on disk."""
    a = Store(tmp_path / "a.db", site(), daemon_id="gate-a", durable=True)
    disk = HeldDisk()
    assert a.wal_sync is not None
    a.wal_sync._fsync = disk
    b = make_store(tmp_path / "b.db", "gate-b")
    now = clock()
    la = SyncLink(a, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    try:
        async with running(la.run()):
            await la.wait_connected(WAIT_S)
            await wait_until(lambda: la.stats["snapshots_applied"] == 1)
            await wait_until(lambda: a.acked_seq == a.last_seq, what="the start's events acked")
            disk.release.clear()
            Engine(a, site(), GATES, POLICY).tap("in-1", Credential.card("C1"), now())
            lb = SyncLink(b, settings_for(mosquitto, "gate-b"), now=now, gates=GATES)
            async with running(lb.run()):
                await lb.wait_connected(WAIT_S)
                await wait_until(lambda: la.stats["catch_up_requests_served"] >= 1, what="b asks a")
                for _ in range(25):
                    assert lb.stats["catch_up_answers"] == 0 and lb.stats["remote_passages"] == 0
                    await asyncio.sleep(0.02)
                disk.release.set()
                await wait_until(lambda: lb.stats["remote_passages"] >= 1, what="a's passage at b")
                await wait_until(lambda: b.peer_marks().get("gate-a", (0,))[0] == a.last_seq, what="b heard all")
    finally:
        disk.release.set()
        a.close()
