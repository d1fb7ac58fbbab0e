"""Snapshot import: staged, merged with what only the gate knows, swapped whole; taps go
on meanwhile. Delta gaps ask for a resync and wait for the snapshot."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiomqtt

from gated.engine import Engine
from rules.credential import Credential
from rules.reasons import Reason
from simulator.central import Central
from sync.link import SyncLink
from sync.protocol import SnapshotChunk
from sync.records import BookingIn, MemberIn, PassIn
from sync.snapshot import SnapshotImporter, delta_seq
from sync.store import SyncBatch
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

WIN = {"mon-sun": "00:00-24:00"}


def chunks(n_members: int, balance: int, applied: int, per_chunk: int = 50) -> list[SnapshotChunk]:
    rows: list[tuple[str, dict[str, object]]] = []
    for i in range(n_members):
        rows.append(("members", {"id": f"m{i}", "cards": [f"K{i}"]}))
        rows.append(("passes", {"id": f"p{i}", "member": f"m{i}", "kind": "visits", "balance": balance,
                                "deduct_on": "access", "access_windows": WIN, "applied": {"gate-a": applied}}))
        rows.append(("bookings", {"id": f"b{i}", "member": f"m{i}", "pass": f"p{i}", "zone": "main",
                                  "starts_at": "2026-11-18T10:00", "ends_at": "2026-11-18T11:00", "deducted": True}))
    n = (len(rows) + per_chunk - 1) // per_chunk
    out = []
    for c in range(n):
        part = rows[c * per_chunk : (c + 1) * per_chunk]
        out.append(SnapshotChunk.model_validate({
            "v": 1, "snapshot_id": "snap", "chunk": c, "chunks": n, "delta_seq": 4,
            **{k: [r for kk, r in part if kk == k] for k in ("members", "passes", "bookings")},
        }))
    return out


async def test_staged_import_keeps_local_state_and_taps_during_it(tmp_path: Path) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    engine = Engine(store, site(), GATES, POLICY)
    now = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    store.apply_sync(SyncBatch(
        members=[MemberIn(id=f"m{i}", cards=[f"K{i}"]).to_domain() for i in range(3)],
        passes=[PassIn.model_validate({"id": f"p{i}", "member": f"m{i}", "kind": "visits", "balance": 10,
                                       "deduct_on": "access", "access_windows": WIN}).to_domain() for i in range(3)],
        bookings=[BookingIn.model_validate({"id": f"b{i}", "member": f"m{i}", "pass": f"p{i}", "zone": "main",
                                            "starts_at": "2026-11-18T10:00", "ends_at": "2026-11-18T11:00",
                                            "deducted": True}).to_domain(store.site.timezone) for i in range(3)],
    ), now, snapshot=True)
    # m0 attends its booking before the snapshot: a local outcome
    p, _ = engine.tap("in-1", Credential.card("K0"), datetime(2026, 11, 18, 8, 50, tzinfo=UTC))
    assert p.decision.reason == Reason.BOOKING
    imp = SnapshotImporter(store, "gate-a", batch_rows=7)
    parts = chunks(200, balance=10, applied=0)
    await imp.begin(parts[0])
    for i, c in enumerate(parts):
        await imp.add(c, now)
        if i == len(parts) // 2:
            # a tap while the import is staged: decided from the live replica
            p, _ = engine.tap("in-1", Credential.card("K1"), datetime(2026, 11, 18, 7, 0, tzinfo=UTC))
            assert p.decision.reason == Reason.WALK_IN
            assert store.member_for_card("K150") is None  # nothing new is visible yet
    await imp.finish(now)
    assert store.counts()["members"] == 200
    assert store.member_for_card("K150") == "m150"
    assert store.booking_status("b0").value == "attended"  # survived the snapshot
    assert store.balance("p1") == Decimal(9)  # central 10, minus the walk-in it had not applied
    assert store.balance("p2") == Decimal(10)
    assert delta_seq(store) == 4
    assert store.conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE '\\_snap%' ESCAPE '\\'").fetchone()[0] == 0
    assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # indexes came along (renamed): look-ups by member still use one
    plan = store.conn.execute("EXPLAIN QUERY PLAN SELECT * FROM passes WHERE member_id = 'm1'").fetchall()
    assert "INDEX" in str(plan).upper()
    # a second snapshot (fresh generation of index names) works too, and applied_seq counts
    parts = [c.model_copy(update={"snapshot_id": "snap2"}) for c in chunks(200, balance=8, applied=store.last_seq)]
    await imp.begin(parts[0])
    for c in parts:
        await imp.add(c, now)
    await imp.finish(now)
    assert store.balance("p1") == Decimal(8)


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
