"""Snapshot import: staged, merged with what only the gate knows, swapped whole; taps go
on meanwhile. Delta gaps ask for a resync and wait for the snapshot."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiomqtt
import pytest

from gated.engine import Engine
from rules.credential import Card, Credential, TenDigits
from rules.reasons import Reason
from simulator.central import Central
from sync.link import MqttSettings, SyncLink
from sync.protocol import SnapshotChunk
from sync.records import BookingIn, MemberIn, PassIn
from sync.snapshot import SnapshotHeader, SnapshotImporter, SnapshotRejected, delta_seq, payload_of
from sync.store import Store, SyncBatch
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
from tests.snapshot_fixtures import WIN, chunks


async def import_all(imp: SnapshotImporter, parts: list[SnapshotChunk], now: datetime) -> None:
    await imp.begin(SnapshotHeader.of(parts[0]), now)
    for c in parts:
        await imp.add(SnapshotHeader.of(c), payload_of(c))
    await imp.finish()


async def test_a_snapshot_switched_in_while_events_are_held_counts_the_held_charges(tmp_path: Path) -> None:
    """A ledger without its mark of what it sent (sync/store/numbering.py), its events held:
    a snapshot's passes say the central system applied up to 9 — numbers the gate's held
    charge has too. Switched in, they are marked down to the ledger's end at once, so a tap
    in the moments before the link settles the numbering still counts the held charge; the
    link reads how far the central system got from the switch."""
    from sync.store.sent_mark import sent_path

    now = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    db = tmp_path / "a.db"
    store = make_store(db, "gate-a")
    store.apply_sync(SyncBatch(members=[MemberIn(id="m0", cards=["K0"])], passes=[PassIn.model_validate(
        {"id": "p0", "member": "m0", "kind": "visits", "balance": 10, "deduct_on": "access", "access_windows": WIN})]),
        now, snapshot=True)
    store.close()
    sent_path(db).unlink(missing_ok=True)
    store = make_store(db, "gate-a")
    store.hold_unsure()  # as the link's port does
    engine = Engine(store, site(), GATES, POLICY)
    p, _ = engine.tap("in-1", Credential.card("K0"), datetime(2026, 11, 18, 7, 0, tzinfo=UTC))
    assert p.decision.reason == Reason.WALK_IN and store.sendable_seq < store.last_seq <= 9  # held, under 9
    imp = SnapshotImporter(store, "gate-a")
    await import_all(imp, chunks(3, balance=10, applied=9), now)
    assert store.balance("p0") == Decimal(9)  # 10 from the central system, our held charge counted
    assert store.numbering.switched_word == 9  # what the link settles the numbering with
    store.close()


async def test_import_in_the_worker_keeps_local_state_and_taps_go_on(tmp_path: Path) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    engine = Engine(store, site(), GATES, POLICY)
    now = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    store.apply_sync(SyncBatch(
        members=[MemberIn(id=f"m{i}", cards=[f"K{i}"]) for i in range(3)],
        passes=[PassIn.model_validate({"id": f"p{i}", "member": f"m{i}", "kind": "visits", "balance": 10,
                                       "deduct_on": "access", "access_windows": WIN}) for i in range(3)],
        bookings=[BookingIn.model_validate({"id": f"b{i}", "member": f"m{i}", "pass": f"p{i}", "zone": "main",
                                            "starts_at": "2026-11-18T10:00", "ends_at": "2026-11-18T11:00",
                                            "deducted": True}) for i in range(3)],
    ), now, snapshot=True)
    first_replica = store.replica_path
    # m0 attends its booking before the snapshot: a local outcome
    p, _ = engine.tap("in-1", Credential.card("K0"), datetime(2026, 11, 18, 8, 50, tzinfo=UTC))
    assert p.decision.reason == Reason.BOOKING
    imp = SnapshotImporter(store, "gate-a", batch_rows=7)
    parts = chunks(200, balance=10, applied=0)
    await imp.begin(SnapshotHeader.of(parts[0]), now)
    for i, c in enumerate(parts):
        await imp.add(SnapshotHeader.of(c), payload_of(c))
        if i == len(parts) // 2:
            # a tap while chunks are still arriving: decided from the current replica
            p, _ = engine.tap("in-1", Credential.card("K1"), datetime(2026, 11, 18, 7, 0, tzinfo=UTC))
            assert p.decision.reason == Reason.WALK_IN
            assert store.member_for_card("K150") is None  # nothing new is visible yet
    finishing = asyncio.create_task(imp.finish())
    # a tap while the worker builds: decided on the old replica, committed whenever
    p, committed = engine.tap("in-1", Credential.card("K2"), datetime(2026, 11, 18, 7, 1, tzinfo=UTC))
    assert p.decision.reason == Reason.WALK_IN and committed.events[-1]["type"] == "deduction"
    assert imp.active and store.replica_path == first_replica  # not switched yet
    report = await finishing
    assert report["counts"]["members"] == 200 and report["switch_ms"] < 10_000
    assert not imp.active and store.replica_path != first_replica and not first_replica.exists()
    assert store.counts()["members"] == 200
    assert store.member_for_card("K150") == "m150"
    assert store.booking_status("b0").value == "attended"  # survived the snapshot
    assert store.balance("p1") == Decimal(9)  # central 10, minus the walk-in it had not applied
    assert store.balance("p2") == Decimal(9)  # the walk-in committed while the worker built
    assert store.balance("p3") == Decimal(10)
    assert delta_seq(store) == 4
    # nothing left behind: the ledger, the current replica and their side files only
    assert [p.name for p in store.files.ours() if not p.name.startswith(store.replica_path.name)] == []
    assert store.conn.execute("PRAGMA replica.integrity_check").fetchone()[0] == "ok"
    # the worker built the indexes: look-ups by member use one
    plan = store.conn.execute("EXPLAIN QUERY PLAN SELECT * FROM replica.passes WHERE member_id = 'm1'").fetchall()
    assert "INDEX" in str(plan).upper()
    # the read contract, for another thread: same names, the local balance folded in
    reader = store.open_reader()
    try:
        assert reader.execute("SELECT balance FROM passes WHERE id = 'p1'").fetchone()[0] == "9"
        assert reader.execute("SELECT outcome FROM bookings WHERE id = 'b0'").fetchone()[0] == "attended"
    finally:
        reader.close()
    # a second snapshot, applied_seq counting what the central system has seen
    parts = [c.model_copy(update={"snapshot_id": "snap2"}) for c in chunks(200, balance=8, applied=store.last_seq)]
    await import_all(imp, parts, now)
    assert store.balance("p1") == Decimal(8)
    store.close()
    # and it is the replica after a restart
    store = make_store(tmp_path / "a.db", "gate-a")
    assert store.balance("p1") == Decimal(8) and store.member_for_card("K150") == "m150"
    store.close()


async def test_invalid_chunk_fails_the_import_and_keeps_the_replica(tmp_path: Path) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    imp = SnapshotImporter(store, "gate-a")
    now = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    await import_all(imp, chunks(10, balance=5, applied=0), now)
    before = (store.replica_path, store.counts())
    parts = [c.model_copy(update={"snapshot_id": "bad"}) for c in chunks(10, balance=5, applied=0)]
    await imp.begin(SnapshotHeader.of(parts[0]), now)
    for c in parts[:-1]:
        await imp.add(SnapshotHeader.of(c), payload_of(c))
    bad = payload_of(parts[-1]).replace(b'"zone":"main"', b'"zone":""')  # ids must not be empty
    await imp.add(SnapshotHeader.of(parts[-1]), bad)
    with pytest.raises(SnapshotRejected, match="zone"):
        await imp.finish()
    await imp.abort()
    assert (store.replica_path, store.counts()) == before
    assert [p.name for p in store.files.ours() if not p.name.startswith(store.replica_path.name)] == []
    store.close()


async def test_delta_gap_asks_for_a_snapshot_and_waits(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=clock(), gates=GATES)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] == 1)
        await central.push(SITE, members=[{"id": "m5", "cards": ["C5"]}])
        await wait_until(lambda: store.member_for_card("C5") == "m5")
        # a delta from the future: delta 2 was lost
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as c:
            future = {"v": 1, "delta_seq": link.delta_seq + 2, "members": [{"id": "m6", "cards": ["C6"]}]}
            await c.publish(f"gated/{SITE}/delta", json.dumps(future).encode(), qos=1)
        await wait_until(lambda: link.stats["delta_gaps"] == 1)
        assert store.member_for_card("C6") is None  # not applied out of order
        await wait_until(lambda: link.stats["snapshots_applied"] == 2 and not link.awaiting_snapshot, what="resync")
        assert link.delta_seq == central.delta_seq(SITE)
        assert central.stats["resync_gap"] >= 1
        # and the link goes on with the next real delta
        await central.push(SITE, members=[{"id": "m8", "cards": ["C8"]}])
        await wait_until(lambda: store.member_for_card("C8") == "m8")
        await asyncio.sleep(0)


async def test_a_changed_card_rule_asks_for_a_snapshot_that_types_the_cards_again(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    db = tmp_path / "a.db"
    store = make_store(db, "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=clock(), gates=GATES)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] == 1)
        await central.push(SITE, members=[{"id": "m-em", "cards": ["0012345678"]}])
        await wait_until(lambda: store.member_for_card(Card.em32(12345678)) == "m-em")
    store.close()
    # the decimal EM readers were swapped for hex ones, and the daemon restarted
    store = Store(db, site(), daemon_id="gate-a", durable=False, ten_digits=TenDigits.EM)
    assert store.card_rule_changed and store.member_for_card(Card.em(0x0012345678)) is None
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=clock(), gates=GATES)
    async with running(link.run()):
        await wait_until(lambda: link.stats["snapshots_applied"] == 1, what="a snapshot typing the cards again")
        assert not store.card_rule_changed and central.stats["resync_card_rule"] >= 1
        assert store.member_for_card(Card.em(0x0012345678)) == "m-em"
        # a reload back to decimal readers while connected: asked for at once
        store.set_ten_digits(TenDigits.EM32)
        assert store.card_rule_changed
        asked = link.stats["resync_card_rule"]
        await link.card_rule_changed()
        await link.card_rule_changed()  # twice (a reload racing a commit): asked for once
        assert link.stats["resync_card_rule"] == asked + 1
        await wait_until(lambda: link.stats["snapshots_applied"] == 2, what="the second snapshot")
        assert not store.card_rule_changed and central.stats["resync_card_rule"] >= 2
        assert store.member_for_card(Card.em32(12345678)) == "m-em"
        await central.push(SITE, members=[{"id": "m-new", "cards": ["C9"]}])  # deltas go on
        await wait_until(lambda: store.member_for_card("C9") == "m-new")
    store.close()


async def test_deltas_during_an_import_are_applied_once_after_the_switch(tmp_path: Path) -> None:
    """Fed to the link as the broker would hand them: one delta while the chunks arrive,
    one while the worker builds, one repeated; all held, then applied once each, in order,
    on the new replica."""
    store = make_store(tmp_path / "a.db", "gate-a")
    link = SyncLink(store, MqttSettings(site=SITE, daemon="gate-a"), now=clock(), gates=GATES)
    t = link.topics
    parts = chunks(300, balance=10, applied=0)  # delta_seq 4
    payloads = [payload_of(c.model_copy(update={"requested_by": ["gate-a"]})) for c in parts]

    def delta(seq: int, member: str) -> bytes:
        return json.dumps({"v": 1, "delta_seq": seq, "members": [{"id": member, "cards": [f"D{seq}"]}]}).encode()

    for p in payloads[:-1]:
        await link.feed(t.snapshot, p)
    await link.feed(t.delta, delta(5, "d5"))  # while the chunks arrive
    await link.feed(t.snapshot, payloads[-1])
    assert link.snapshot_in_progress
    await link.feed(t.delta, delta(6, "d6"))  # while the worker builds
    await link.feed(t.delta, delta(6, "d6"))  # the broker delivering it twice
    assert store.member_for_card("D5") is None  # held: not on the old replica
    await wait_until(lambda: link.stats["snapshots_applied"] == 1, what="the switch")
    assert link.stats["deltas_applied"] == 2 and link.delta_seq == 6
    assert store.member_for_card("D5") == "d5" and store.member_for_card("D6") == "d6"
    assert store.counts()["members"] == 302
    store.close()


async def test_a_worker_killed_from_outside_is_said_to_be_out_of_memory(tmp_path: Path) -> None:
    """The kernel's OOM killer takes the worker when the unit's MemoryMax is too small for
    the site: the import fails (and is asked for again), and the reason says where to look,
    not a bare exit status."""
    import os
    import signal

    from sync.snapshot import SnapshotError

    store = make_store(tmp_path / "a.db", "gate-a")
    try:
        imp = SnapshotImporter(store, "gate-a")
        parts = chunks(20, balance=10, applied=0)
        now = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
        await imp.begin(SnapshotHeader.of(parts[0]), now)
        await imp.add(SnapshotHeader.of(parts[0]), payload_of(parts[0]))
        assert imp._proc is not None
        os.kill(imp._proc.pid, signal.SIGKILL)  # as the OOM killer does: not gated's own abort
        await imp._proc.wait()
        with pytest.raises(SnapshotError, match="not by gated: out of memory"):
            for c in parts[1:]:
                await imp.add(SnapshotHeader.of(c), payload_of(c))
            await imp.finish()
        await imp.abort()
        # an abort of ours (a new snapshot, a stop) is not reported as one
        await imp.begin(SnapshotHeader.of(parts[0]), now)
        proc = imp._proc
        assert proc is not None
        imp._kill()
        await proc.wait()
        assert "out of memory" not in imp._exit_said(proc.returncode or 0)
        await imp.abort()
    finally:
        store.close()


async def test_a_worker_whose_daemon_died_leaves_no_spool(tmp_path: Path) -> None:
    """Found by the crash torture under load: a daemon killed just after it started a
    worker; the worker (still starting) created its spool after the next start had cleared
    what the killed one left, then saw its input end and exited, and the spool stayed until
    the next snapshot. A worker that ends without building now takes its spool with it."""
    store = make_store(tmp_path / "a.db", "gate-a")
    try:
        imp = SnapshotImporter(store, "gate-a")
        parts = chunks(20, balance=10, applied=0)
        await imp.begin(SnapshotHeader.of(parts[0]), datetime(2026, 11, 18, 9, 0, tzinfo=UTC))
        await imp.add(SnapshotHeader.of(parts[0]), payload_of(parts[0]))
        proc, paths = imp._proc, imp._paths
        assert proc is not None and proc.stdin is not None and paths is not None
        for _ in range(200):  # the worker up, its spool made
            if paths[0].exists():
                break
            await asyncio.sleep(0.05)
        assert paths[0].exists()
        proc.stdin.close()  # the daemon gone: its end of the pipe closes
        assert await asyncio.wait_for(proc.wait(), 30) == 1
        assert not paths[0].exists() and paths[1] is not None and not paths[1].exists()
        await imp.abort()
    finally:
        store.close()
