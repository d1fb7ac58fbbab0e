"""The ledger's retention (sync/store/retention.py, gated/retention.py): what goes, what
stays, the bounds on the cutoff, and the daemon's runner. The property that no balance
moves, for any interleaving, is in tests/test_ledger.py (`retention`)."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gated.config import StoreConfig
from gated.retention import LedgerRetention
from rules.decide import Decision
from rules.model import Gate, Site
from rules.reasons import Reason
from sync.protocol import EventBatch
from sync.records import MemberIn, SitePassIn
from sync.store import Cutoffs, Store, Sweep, SyncBatch, desk_requests, read_models
from sync.store.retention import CARRIED
from tests.tap_fixtures import tap_of

TZ = ZoneInfo("Europe/Madrid")
SITE = Site(TZ, id="s1")
IN1, IN2 = Gate("in-1", "main"), Gate("in-2", "main")
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=100)  # older than the default 90 days
RECENT = NOW - timedelta(days=1)
KEEP, KEEP_AUDIT = timedelta(days=90), timedelta(days=400)


def pass_in(pid: str, own: int = 0, peers: dict[str, int] | None = None) -> SitePassIn:
    return SitePassIn.model_validate({
        "id": pid, "member": "m1", "name": pid, "kind": "visits", "balance": 50, "deduct_on": "access",
        "walk_in_cost": 1, "applied_seq": own, "applied_peers": peers or {},
    })


def site_store(tmp: Path, daemon: str) -> Store:
    store = Store(tmp / f"{daemon}.db", SITE, daemon_id=daemon, durable=False)
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])], [pass_in("p1"), pass_in("p2")], []), OLD)
    return store


def walk_in(store: Store, gate: Gate, pid: str, at: datetime) -> list[dict[str, Any]]:
    """A walk-in that went through; its events."""
    d = Decision(True, Reason.WALK_IN, "m1", pass_id=pid, amount=Decimal(1), cause="walk_in")
    return list(store.commit_tap(tap_of(gate, d, at), passed=True, now=at).events)


def deduction_seq(events: list[dict[str, Any]]) -> int:
    return next(int(e["seq"]) for e in events if e["type"] == "deduction")


def share(src: Store, dst: Store, events: list[dict[str, Any]]) -> None:
    batch = EventBatch.model_validate({"v": 1, "daemon": src.daemon_id, "events": events, "zones": {"in-2": "main"}})
    dst.record_peer_events(src.daemon_id, [e.model_dump(mode="json") for e in batch.events], {"in-2": "main"})


def sweep_all(store: Store, cut: Cutoffs, batch: int = 2) -> dict[str, int]:
    progress = Sweep()
    while not progress.finished:
        store.prune_ledger(progress, cut, batch)
    return progress.pruned


def rows(store: Store, sql: str) -> set[Any]:
    return {r[0] for r in store.conn.execute(sql)}


def test_what_goes_and_what_stays(tmp_path: Path) -> None:
    own, peer = site_store(tmp_path, "s1-in-1"), site_store(tmp_path, "s1-in-2")
    d_old = deduction_seq(walk_in(own, IN1, "p1", OLD))
    d_unapplied = deduction_seq(walk_in(own, IN1, "p2", OLD + timedelta(minutes=1)))
    d_recent = deduction_seq(walk_in(own, IN1, "p1", RECENT))
    peer_old, peer_recent = walk_in(peer, IN2, "p1", OLD), walk_in(peer, IN2, "p1", RECENT)
    share(peer, own, peer_old + peer_recent)
    # other daemons' refunds of charges, ours and theirs, old and recent; and one of a charge
    # of a third daemon not heard yet (its mark comes first: it stays)
    refunded = {("s1-in-1", d_old), ("s1-in-1", d_recent), ("s1-in-2", deduction_seq(peer_old)),
                ("s1-in-2", deduction_seq(peer_recent)), ("s1-in-3", 7)}
    own.conn.executemany("INSERT INTO site_refunds(daemon, seq) VALUES (?, ?)", refunded)
    # another daemon's desk's refund requests, old and recent (the order of a day's refunds)
    own.conn.executemany("INSERT INTO site_refund_asks(daemon, booking_id, member_id, at) VALUES (?,?,?,?)",
                         [("s1-in-2", "b-old", "m1", OLD.timestamp()), ("s1-in-2", "b-new", "m1", RECENT.timestamp())])
    # grants whose passage nobody saw, old and recent
    own.conn.executemany("INSERT INTO unconfirmed_grants(member_id, at, gate, daemon) VALUES (?,?,?,?)",
                         [("m1", OLD.timestamp(), "in-2", "s1-in-2"), ("m1", RECENT.timestamp(), "in-1", "s1-in-1")])
    own.audit(NOW - timedelta(days=500), "desk", "open_gate", {"gate": "in-1"})
    own.audit(OLD, "desk", "open_gate", {"gate": "in-1"})
    own.adjust_points("m1", 5, "desk", "goodwill", OLD)  # points are a sum: carried forward
    own.adjust_points("m1", 2, "desk", "birthday", RECENT)
    # the desk's request ids: kept a day, whatever the retention (a dialog's retry reads them)
    for rid, at in (("request-old", OLD), ("request-2-days", NOW - timedelta(days=2)), ("request-new", NOW - timedelta(hours=1))):
        with own.transaction():
            desk_requests.done(own.conn, desk_requests.DeskRequest("desk", "/api/members/m1/points", rid, "{}"), [], at)
    # the central system has every event of ours, and applied all but p2's to the balances
    own.ack(own.last_seq)
    own.apply_sync(SyncBatch([], [pass_in("p1", d_recent, {"s1-in-2": deduction_seq(peer_recent)}), pass_in("p2", 0)], []), NOW)
    balances = {p: own.balance(p) for p in ("p1", "p2")}
    passages_before = rows(own, f"SELECT id FROM passages WHERE at >= {RECENT.timestamp()}")

    cut = own.retention_cutoffs(NOW, KEEP, KEEP_AUDIT)
    pruned = sweep_all(own, cut)

    assert pruned == {"passages": 3, "deductions": 1, "site_charges": 1, "unconfirmed_grants": 1,
                      "site_refund_asks": 1, "loyalty": 1, "audit": 1, "desk_requests": 2}
    assert rows(own, "SELECT request_id FROM desk_requests") == {"request-new"}
    assert rows(own, "SELECT booking_id FROM site_refund_asks") == {"b-new"}
    assert rows(own, "SELECT gate FROM unconfirmed_grants") == {"in-1"}
    assert rows(own, "SELECT seq FROM deductions") == {d_unapplied, d_recent}  # p2's: not applied yet
    assert rows(own, "SELECT seq FROM site_charges") == {deduction_seq(peer_recent)}
    assert rows(own, "SELECT id FROM passages") == passages_before  # the old ones, ours and the peer's, gone
    marks = set(own.conn.execute("SELECT daemon, seq FROM site_refunds"))
    assert marks == refunded - {("s1-in-1", d_old), ("s1-in-2", deduction_seq(peer_old))}  # gone with their charges
    # the desk's gate opening, and the points' adjustments
    assert rows(own, "SELECT at FROM audit") == {OLD.timestamp(), RECENT.timestamp()}
    assert {p: own.balance(p) for p in ("p1", "p2")} == balances  # no balance moves
    assert own.points("m1") == 7
    history = [(e.points, e.reason, e.at) for e in read_models.loyalty_history(own.conn, "m1")]
    assert history == [(2, "birthday", RECENT), (5, "carried forward", OLD)]
    assert sweep_all(own, cut) == dict.fromkeys(
        ("passages", "deductions", "site_charges", "unconfirmed_grants", "site_refund_asks", "loyalty", "audit",
         "desk_requests"), 0)
    own.close()
    peer.close()


def test_unacknowledged_events_hold_the_cutoff(tmp_path: Path) -> None:
    store = site_store(tmp_path, "s1-in-1")
    events = walk_in(store, IN1, "p1", OLD)
    walk_in(store, IN1, "p2", RECENT)
    store.apply_sync(SyncBatch([], [pass_in("p1", deduction_seq(events))], []), NOW)
    store.ack(events[0]["seq"])  # the access event only: the deduction is still unsent
    cut = store.retention_cutoffs(NOW, KEEP, KEEP_AUDIT)
    assert cut.ledger is not None and cut.ledger <= OLD.timestamp()
    assert sweep_all(store, cut)["deductions"] == 0
    store.ack(store.last_seq)
    assert sweep_all(store, store.retention_cutoffs(NOW, KEEP, KEEP_AUDIT))["deductions"] == 1
    store.close()


def test_a_clock_run_ahead_does_not_age_a_recent_ledger(tmp_path: Path) -> None:
    """The newest passage bounds the cutoff: now a year ahead, the ledger of the last
    weeks is still within its retention (and a gate nobody used for months keeps its
    ledger until it is used again: it does not grow meanwhile)."""
    store = site_store(tmp_path, "s1-in-1")
    walk_in(store, IN1, "p1", NOW - timedelta(days=30))
    store.ack(store.last_seq)
    cut = store.retention_cutoffs(NOW + timedelta(days=365), KEEP, KEEP_AUDIT)
    assert cut.ledger == (NOW - timedelta(days=30) - KEEP).timestamp()
    assert sweep_all(store, cut)["passages"] == 0
    store.close()


def test_the_no_show_cursor_holds_the_cutoff(tmp_path: Path) -> None:
    """The no-show work has not got past a day 100 days ago (time-driven work was off, the
    clock untrusted): the passages it will read for that day stay."""
    store = site_store(tmp_path, "s1-in-1")
    walk_in(store, IN1, "p1", OLD)
    walk_in(store, IN1, "p1", RECENT)
    store.ack(store.last_seq)
    store.set_meta("due.no_show_through", repr(OLD.timestamp()))
    cut = store.retention_cutoffs(NOW, KEEP, KEEP_AUDIT)
    assert cut.ledger == (OLD - timedelta(days=1)).timestamp()
    assert sweep_all(store, cut)["passages"] == 0
    # a daemon that no longer does the site's time-driven work: its old cursor holds nothing
    cut = store.retention_cutoffs(NOW, KEEP, KEEP_AUDIT, no_show_work=False)
    assert cut.ledger == (RECENT - KEEP).timestamp()
    store.close()


def test_kept_for_ever_when_switched_off(tmp_path: Path) -> None:
    store = site_store(tmp_path, "s1-in-1")
    walk_in(store, IN1, "p1", OLD)
    walk_in(store, IN1, "p1", RECENT)
    store.audit(NOW - timedelta(days=900), "desk", "open_gate", {})
    store.ack(store.last_seq)
    cut = store.retention_cutoffs(NOW, None, None)
    assert (cut.ledger, cut.audit) == (None, None)  # (the desk's request ids go after a day all the same)
    assert sum(sweep_all(store, cut).values()) == 0
    store.close()


# a loyalty row: member, points, age in days (oldest first once sorted), the desk's (else a
# class's credit)
LoyaltyRow = tuple[str, int, int, bool]
loyalty_rows = st.lists(
    st.tuples(st.sampled_from(["m1", "m2", "m3"]), st.integers(-1000, 1000), st.integers(0, 200), st.booleans()),
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(written=loyalty_rows, split=st.integers(0, 25), acked=st.floats(0, 1), batch=st.integers(1, 4))
def test_loyalty_is_carried_forward_and_its_sum_kept(
    written: list[LoyaltyRow], split: int, acked: float, batch: int
) -> None:
    """Two sweeps, rows written between them (in time order, as the ledger writes them):
    each member's points stay their sum; only acknowledged rows older than the cutoff are
    folded, into one carried-forward row per member; a sweep right after a sweep folds
    nothing."""
    written = sorted(written, key=lambda r: -r[2])
    with tempfile.TemporaryDirectory() as tmp:
        store = site_store(Path(tmp), "s1-in-1")
        walk_in(store, IN1, "p1", NOW)  # a gate in use: the newest passage is now
        for rows_now in (written[:split], written[split:]):
            for member, points, days, desk in rows_now:
                store.adjust_points(member, points, "desk", "why", NOW - timedelta(days=days))
                if not desk:  # as a class's credit is written: a booking, no operator
                    store.conn.execute("UPDATE loyalty SET operator = NULL, booking_id = 'b' || id "
                                       "WHERE id = (SELECT MAX(id) FROM loyalty)")
            store.ack(int(store.last_seq * acked))
            points = {m: store.points(m) for m in ("m1", "m2", "m3")}
            before = {r[0]: r[1:] for r in store.conn.execute(
                f"SELECT id, at, seq, {CARRIED} FROM loyalty")}
            cut = store.retention_cutoffs(NOW, KEEP, KEEP_AUDIT)
            folded = sweep_all(store, cut, batch)["loyalty"]
            after = {r[0]: r[1:] for r in store.conn.execute(f"SELECT id, at, seq, {CARRIED} FROM loyalty")}
            assert {m: store.points(m) for m in ("m1", "m2", "m3")} == points
            gone = set(before) - set(after)
            assert len(gone) == folded
            assert cut.ledger is not None
            assert all(before[i][0] < cut.ledger and before[i][1] <= store.acked_seq and not before[i][2]
                       for i in gone)
            kept = [v for i, v in after.items() if not v[2]]
            assert all(at >= cut.ledger or seq > store.acked_seq for at, seq, _ in kept)
            carried_rows = [m for (m,) in store.conn.execute(f"SELECT member_id FROM loyalty WHERE {CARRIED}")]
            assert len(carried_rows) == len(set(carried_rows))
            assert sweep_all(store, cut, batch)["loyalty"] == 0
        store.close()


@pytest.mark.parametrize(("field", "value", "ok"), [
    ("retention", "6d", False), ("retention", "7d", True), ("retention", None, True),
    ("audit_retention", "29d", False), ("audit_retention", "30d", True),
])
def test_the_retention_is_long_enough_for_the_rules(field: str, value: str | None, ok: bool) -> None:
    if ok:
        StoreConfig.model_validate({field: value})
    else:
        with pytest.raises(ValueError, match="at least"):
            StoreConfig.model_validate({field: value})


# -- the daemon's runner ------------------------------------------------------------------


def old_ledger(tmp: Path, taps: int) -> Store:
    """`taps` old walk-ins, all applied, and one of today (a gate in use: the newest passage
    bounds the cutoff)."""
    store = site_store(tmp, "s1-in-1")
    for i in range(taps):
        walk_in(store, IN1, "p1", OLD + timedelta(minutes=i))
    walk_in(store, IN1, "p2", NOW)
    store.ack(store.last_seq)
    store.apply_sync(SyncBatch([], [pass_in("p1", store.last_seq)], []), NOW)
    return store


async def test_the_runner_runs_only_while_it_may(tmp_path: Path) -> None:
    store = old_ledger(tmp_path, 6)
    may = [False]
    errors: list[BaseException] = []
    runner = LedgerRetention(store, KEEP, KEEP_AUDIT, lambda: NOW, lambda: may[0], errors.append)
    assert await runner.sweep(batch=2, pause=0) is None  # the clock untrusted, or a storage fault
    assert len(rows(store, "SELECT seq FROM deductions")) == 7

    calls = 0

    def may_run() -> bool:  # goes after the second batch: the sweep stops between two
        nonlocal calls
        calls += 1
        return calls <= 3

    runner.may_run = may_run
    assert await runner.sweep(batch=2, pause=0) is None
    assert len(rows(store, "SELECT id FROM passages")) == 3  # two batches of passages went
    runner.may_run = lambda: True
    pruned = await runner.sweep(batch=2, pause=0)
    assert pruned is not None and pruned["passages"] == 2 and pruned["deductions"] == 6
    assert runner.last is not None and runner.last["pruned"] == {"passages": 2, "deductions": 6}
    assert not errors
    store.close()


async def test_a_storage_error_goes_to_the_storage_watch(tmp_path: Path) -> None:
    store = old_ledger(tmp_path, 2)
    errors: list[BaseException] = []
    runner = LedgerRetention(store, KEEP, KEEP_AUDIT, lambda: NOW, lambda: True, errors.append)

    def full(*_: object) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    store.prune_ledger = full  # type: ignore[method-assign,assignment]
    assert await runner.sweep(batch=2, pause=0) is None
    assert [str(e) for e in errors] == ["database or disk is full"]
    del store.prune_ledger
    store.close()


async def test_a_long_first_sweep_lets_the_loop_run(tmp_path: Path) -> None:
    """Years of rows: one short transaction at a time, the loop free between them."""
    store = old_ledger(tmp_path, 300)
    runner = LedgerRetention(store, KEEP, KEEP_AUDIT, lambda: NOW, lambda: True, lambda e: None)
    ticks = 0

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    pruned = await runner.sweep(batch=50, pause=0)
    other.cancel()
    assert pruned is not None and pruned["passages"] == 300 and pruned["deductions"] == 300
    assert ticks >= 12  # at least once between every two of its 13 batches
    store.close()


async def test_a_failing_sweep_is_logged_and_tried_again_the_next_hour(tmp_path: Path) -> None:
    store = old_ledger(tmp_path, 2)
    runner = LedgerRetention(store, KEEP, KEEP_AUDIT, lambda: NOW, lambda: True, lambda e: None)
    calls = 0
    real = store.retention_cutoffs

    def flaky(*a: Any, **k: Any) -> Cutoffs:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return real(*a, **k)

    store.retention_cutoffs = flaky  # type: ignore[method-assign]
    task = asyncio.create_task(runner.run(first_after=0, every=0.01))
    try:
        for _ in range(500):
            await asyncio.sleep(0.01)
            if runner.last is not None and "pruned" in runner.last:
                break
    finally:
        task.cancel()
    assert calls >= 2 and runner.last is not None and runner.last["pruned"] == {"passages": 2, "deductions": 2}
    del store.retention_cutoffs
    store.close()
