"""sync.store.Store as a ledger, against a model, for any interleaving of walk-in charges,
refunds, syncs (any applied_seq up to the last seq), restarts, transactions that fail
midway, and (LedgerWithImports) whole snapshots built by the worker process while
walk-ins are committed:

- local balance == central balance - own deductions with seq > applied_seq (never a
  deduction lost, never one counted twice);
- events are numbered 1..N with no gap and no repeat, across restarts;
- a transaction that raises leaves nothing behind and consumes no seq;
- the retention (sync/store/retention.py), with every row old enough, deletes exactly the
  deductions the central system acknowledged and applied, and no balance moves.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rules.decide import Decision
from rules.model import Gate
from rules.model import Site as SiteModel
from rules.reasons import Reason
from sync.protocol import SnapshotChunk
from sync.records import BookingIn, MemberIn, PassIn
from sync.snapshot import SnapshotHeader, SnapshotImporter, payload_of
from sync.store import Cutoffs, Store, Sweep, SyncBatch
from tests.tap_fixtures import tap_of

TZ = ZoneInfo("Europe/Madrid")
SITE = SiteModel(TZ)
GATE = Gate(id="g1", zone="main")
START = datetime(2026, 11, 18, 7, 0, tzinfo=TZ)  # local 07:00; every step is a minute later

PASSES = {"p1": "m1", "p2": "m1", "p3": "m2"}
BOOKING_OF = {"m1": "b1", "m2": "b2"}
AMOUNTS = [Decimal(1), Decimal("1.5"), Decimal(2), Decimal("0.25")]


def credits(pid: str, balance: Decimal, applied_seq: int | None = None) -> PassIn:
    return PassIn(
        id=pid, member=PASSES[pid], name=pid, kind="credits", balance=balance, walk_in_cost=Decimal(1),
        applied_seq=applied_seq,
    )


@dataclass
class Charge:
    seq: int
    pass_id: str
    member: str
    amount: Decimal
    refunded: bool = False


class Ledger(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="gated-ledger-"))
        self.path = self.dir / "gate.db"
        self.store = Store(self.path, SITE, durable=False)
        self.now = START
        self.next_seq = 1
        self.central: dict[str, Decimal] = {}
        self.applied: dict[str, int] = {}
        self.own: list[tuple[int, str, Decimal]] = []  # (seq, pass, amount) of every deduction, refunds negative
        self.charges: list[Charge] = []  # walk-in charges, for refunds
        self.pruned: set[int] = set()  # seqs of the deductions the retention deleted

    def teardown(self) -> None:
        try:
            self.store.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def tick(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now

    @initialize(balances=st.lists(st.integers(0, 50), min_size=3, max_size=3))
    def load(self, balances: list[int]) -> None:
        members = [MemberIn(id=m, name=m, cards=[f"C{m}"]) for m in ("m1", "m2")]
        passes = [credits(pid, Decimal(b)) for pid, b in zip(PASSES, balances, strict=True)]
        day = START.replace(hour=18)
        bookings = [
            BookingIn.model_validate({
                "id": b, "member": m, "pass": "p1" if m == "m1" else "p3", "class": "Spin", "zone": "main",
                "starts_at": day.isoformat(), "ends_at": (day + timedelta(hours=1)).isoformat(), "deducted": True,
            })
            for m, b in BOOKING_OF.items()
        ]
        self.store.apply_sync(SyncBatch(members=members, passes=passes, bookings=bookings), self.now)
        for pid, b in zip(PASSES, balances, strict=True):
            self.central[pid], self.applied[pid] = Decimal(b), 0

    # -- operations -----------------------------------------------------------------------

    @rule(pid=st.sampled_from(sorted(PASSES)), amount=st.sampled_from(AMOUNTS))
    def walk_in(self, pid: str, amount: Decimal) -> None:
        member = PASSES[pid]
        decision = Decision(True, Reason.WALK_IN, member, pass_id=pid, amount=amount, cause="walk_in")
        now = self.tick()
        committed = self.store.commit_tap(tap_of(GATE, decision, now), passed=True, now=now)
        assert [(e["seq"], e["type"]) for e in committed.events] == [(self.next_seq, "access"), (self.next_seq + 1, "deduction")]
        seq = self.next_seq + 1
        self.next_seq += 2
        self.own.append((seq, pid, amount))
        self.charges.append(Charge(seq, pid, member, amount))

    @rule(pid=st.sampled_from(sorted(PASSES)))
    def turned_back(self, pid: str) -> None:
        """Granted but nobody went through: an access event, nothing deducted."""
        decision = Decision(True, Reason.WALK_IN, PASSES[pid], pass_id=pid, amount=Decimal(1), cause="walk_in")
        now = self.tick()
        committed = self.store.commit_tap(tap_of(GATE, decision, now), passed=False, now=now)
        assert [(e["seq"], e["type"]) for e in committed.events] == [(self.next_seq, "access")]
        self.next_seq += 1

    @rule(member=st.sampled_from(["m1", "m2"]))
    def refund(self, member: str) -> None:
        committed = self.store.mark_attended(BOOKING_OF[member], "desk", refund=True, now=self.tick())
        open_charges = [c for c in self.charges if c.member == member and not c.refunded]
        # the refund, then the attendance that carries the request (SCENARIOS.md's order)
        expected: list[tuple[int, str]] = []
        if open_charges:
            latest = open_charges[-1]  # the latest un-refunded walk-in charge that day
            latest.refunded = True
            self.own.append((self.next_seq, latest.pass_id, -latest.amount))
            deduction = committed.events[0]
            assert (deduction["pass"], deduction["cause"], Decimal(str(deduction["amount"]))) == (latest.pass_id, "refund", -latest.amount)
            expected.append((self.next_seq, "deduction"))
            self.next_seq += 1
        assert committed.events[-1]["type"] == "attendance" and committed.events[-1]["refund"] is True
        expected.append((self.next_seq, "attendance"))
        self.next_seq += 1
        assert [(e["seq"], e["type"]) for e in committed.events] == expected

    @rule(pid=st.sampled_from(sorted(PASSES)), central=st.integers(0, 200), data=st.data())
    def sync(self, pid: str, central: int, data: st.DataObject) -> None:
        applied = data.draw(st.one_of(st.none(), st.integers(0, self.next_seq - 1)), label="applied_seq")
        if (applied or 0) < self.pruned_floor(pid):
            applied = self.pruned_floor(pid)
        self.store.apply_sync(SyncBatch(passes=[credits(pid, Decimal(central), applied)]), self.tick())
        self.central[pid], self.applied[pid] = Decimal(central), applied or 0

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store(self.path, SITE, durable=False)

    @rule(pid=st.sampled_from(sorted(PASSES)), amount=st.sampled_from(AMOUNTS))
    def crash_midway(self, pid: str, amount: Decimal) -> None:
        """The passage write fails after the access event and the deduction were written."""

        def broken(*args: object, **kwargs: object) -> None:
            raise OSError("disk full")

        before = (self.store.last_seq, {p: self.store.balance(p) for p in PASSES}, self.store.counts())
        self.store.ledger.record_passage = broken  # type: ignore[method-assign]
        try:
            decision = Decision(True, Reason.WALK_IN, PASSES[pid], pass_id=pid, amount=amount, cause="walk_in")
            with pytest.raises(OSError):
                now = self.tick()
                self.store.commit_tap(tap_of(GATE, decision, now), passed=True, now=now)
        finally:
            del self.store.ledger.record_passage
        assert (self.store.last_seq, {p: self.store.balance(p) for p in PASSES}, self.store.counts()) == before

    @precondition(lambda self: self.next_seq > 1)
    @rule()
    def emit_outside_a_tap(self) -> None:
        ev = self.store.emit("health", self.tick(), status="ok")
        assert ev["seq"] == self.next_seq
        self.next_seq += 1

    def pruned_floor(self, pid: str) -> int:
        """The central system may send an older pass (a lower applied_seq), never one from
        before a deduction the retention deleted: those were applied months ago."""
        return max((s for s, p, _ in self.own if p == pid and s in self.pruned), default=0)

    @precondition(lambda self: self.next_seq > 1)
    @rule(data=st.data())
    def retention(self, data: st.DataObject) -> None:
        """The central system acknowledges up to some seq; the retention then runs as if
        every row were older than its cutoff."""
        acked = data.draw(st.integers(self.store.acked_seq, self.next_seq - 1), label="acked")
        self.store.ack(acked)
        sweep = Sweep()
        while not sweep.finished:
            self.store.prune_ledger(sweep, Cutoffs(ledger=float("inf"), audit=float("inf")), 3)
        gone = {s for s, p, _ in self.own if s <= acked and s <= self.applied[p]} - self.pruned
        assert sweep.pruned["deductions"] == len(gone)
        self.pruned |= gone
        left = {int(r[0]) for r in self.store.conn.execute("SELECT seq FROM deductions")}
        assert left == {s for s, _, _ in self.own} - self.pruned
        # a deleted charge is no longer one a refund can find (a real one is months old)
        self.charges = [c for c in self.charges if c.seq not in self.pruned]

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def balances_follow_applied_seq(self) -> None:
        for pid in self.central:
            unseen = sum((a for s, p, a in self.own if p == pid and s > self.applied[pid]), Decimal(0))
            assert self.store.balance(pid) == self.central[pid] - unseen, pid

    @invariant()
    def seq_gap_free(self) -> None:
        events = self.store.events_after(0, limit=10_000)
        assert [e["seq"] for e in events] == list(range(1, self.next_seq))
        assert len({e["id"] for e in events}) == len(events)
        assert self.store.last_seq == self.next_seq - 1


Ledger.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedger = Ledger.TestCase


def snapshot_chunk(snapshot_id: str, balances: dict[str, int], applied: dict[str, int | None]) -> SnapshotChunk:
    """The whole site as one snapshot chunk: members and bookings as loaded, the passes
    with these central balances and applied seqs (for daemon "gate", the store's id)."""
    day = START.replace(hour=18)
    return SnapshotChunk.model_validate({
        "v": 1, "snapshot_id": snapshot_id, "chunk": 0, "chunks": 1, "delta_seq": 1,
        "members": [{"id": m, "name": m, "cards": [f"C{m}"]} for m in ("m1", "m2")],
        "passes": [
            {"id": pid, "member": PASSES[pid], "name": pid, "kind": "credits", "balance": balances[pid],
             "walk_in_cost": 1, "applied": {"gate": applied[pid]} if applied[pid] is not None else {}}
            for pid in PASSES
        ],
        "bookings": [
            {"id": b, "member": m, "pass": "p1" if m == "m1" else "p3", "class": "Spin", "zone": "main",
             "starts_at": day.isoformat(), "ends_at": (day + timedelta(hours=1)).isoformat(), "deducted": True}
            for m, b in BOOKING_OF.items()
        ],
    })


class LedgerWithImports(Ledger):
    """The same ledger, with whole snapshots imported by the worker process while walk-ins
    are committed: the balances still follow applied_seq, nothing lost or doubled."""

    imports = 0

    @rule(data=st.data())
    def snapshot_while_tapping(self, data: st.DataObject) -> None:
        balances = {pid: data.draw(st.integers(0, 200), label=f"central {pid}") for pid in PASSES}
        applied = {
            pid: data.draw(st.one_of(st.none(), st.integers(0, self.next_seq - 1)), label=f"applied {pid}")
            for pid in PASSES
        }
        applied = {pid: a if (a or 0) >= self.pruned_floor(pid) else self.pruned_floor(pid) for pid, a in applied.items()}
        taps = data.draw(st.lists(st.tuples(st.sampled_from(sorted(PASSES)), st.sampled_from(AMOUNTS)), max_size=3))
        LedgerWithImports.imports += 1
        chunk = snapshot_chunk(f"snap-{LedgerWithImports.imports}", balances, applied)

        async def run() -> None:
            imp = SnapshotImporter(self.store, "gate")
            await imp.begin(SnapshotHeader.of(chunk), self.now)
            assert await imp.add(SnapshotHeader.of(chunk), payload_of(chunk))
            finishing = asyncio.create_task(imp.finish())
            for pid, amount in taps:  # decided on the old replica, committed while it builds
                self.walk_in(pid, amount)
            await finishing

        asyncio.run(run())
        for pid in PASSES:
            self.central[pid], self.applied[pid] = Decimal(balances[pid]), applied[pid] or 0


LedgerWithImports.TestCase.settings = settings(
    max_examples=10, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLedgerWithImports = LedgerWithImports.TestCase


def test_raising_transaction_consumes_no_seq(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db", SITE, durable=False)
    try:
        store.emit("health", START, status="ok")
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.emit("health", START, status="half")
            raise RuntimeError("midway")
        assert store.last_seq == 1
        assert store.emit("health", START, status="ok")["seq"] == 2
        store.close()
        store = Store(tmp_path / "g.db", SITE, durable=False)
        assert store.last_seq == 2
        assert [e["seq"] for e in store.events_after(0)] == [1, 2]
        assert store.emit("health", START, status="ok")["seq"] == 3
    finally:
        store.close()



def test_a_booking_synced_in_behind_the_no_show_cursor_is_settled_at_the_next_run(tmp_path: Path) -> None:
    """A sync that brings a booking which ended before the walk's cursor (a late delta, a
    snapshot after an outage) lists it for a recheck: the next run settles it (the query
    of that path was malformed SQL and failed every run that had one, a storage fault)."""
    from rules.model import Policy

    store = Store(tmp_path / "gate.db", SITE, durable=False)
    try:
        store.apply_sync(SyncBatch([MemberIn(id="m1", name="m1", cards=["C1"])],
                                   [credits("p1", Decimal(5))]), START)
        policy = Policy()
        assert store.run_due(policy, START).events == []  # the gate's time-driven work begins
        assert store.run_due(policy, START + timedelta(hours=3)).events == []  # the cursor is set

        def booking(bid: str) -> BookingIn:
            return BookingIn.model_validate({
                "id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
                "starts_at": (START + timedelta(minutes=30)).isoformat(),
                "ends_at": (START + timedelta(hours=1)).isoformat(), "deducted": True,
            })

        store.apply_sync(SyncBatch(bookings=[booking("late")]), START + timedelta(hours=3, minutes=1))
        due = store.run_due(policy, START + timedelta(hours=3, minutes=2))
        assert [(e["type"], e.get("booking"), e.get("status")) for e in due.events] == [
            ("attendance", "late", "no_show")]
        assert store.run_due(policy, START + timedelta(hours=3, minutes=3)).events == []  # once
    finally:
        store.close()


def test_a_class_that_reads_as_ending_before_it_starts_is_no_show_only_after_it_starts(tmp_path: Path) -> None:
    """The central system sends a class as 02:10+01:00 (01:10Z) to 02:50 without an offset —
    in Madrid on the autumn change, that wall time's first occurrence (00:50Z): it ends
    before it starts. A record carries no zone, so it is accepted (BookingIn); the store
    reads it as ending at its start, and its no-show (a fee, where one is due) falls due 15
    minutes after the class began — not 20 minutes before it did."""
    from datetime import UTC

    from rules.model import Policy

    store = Store(tmp_path / "gate.db", SITE, durable=False)
    try:
        t0 = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)
        store.apply_sync(SyncBatch([MemberIn(id="m1", name="m1", cards=["C1"])], [credits("p1", Decimal(5))]), t0)
        policy = Policy(no_show_fee=Decimal(1))
        assert store.run_due(policy, t0).events == []
        store.apply_sync(SyncBatch(bookings=[BookingIn.model_validate({
            "id": "b1", "member": "m1", "pass": "p1", "class": "Late yoga", "zone": "main",
            "starts_at": "2026-10-25T02:10+01:00", "ends_at": "2026-10-25T02:50", "deducted": False,
            "cost": 1})]), t0 + timedelta(minutes=1))
        before_it_began = datetime(2026, 10, 25, 1, 6, tzinfo=UTC)  # 00:50Z + 15 min, passed
        assert store.run_due(policy, before_it_began).events == []
        due = store.run_due(policy, datetime(2026, 10, 25, 1, 25, tzinfo=UTC))  # 01:10Z + 15 min
        assert [(e["type"], e.get("booking"), e.get("status")) for e in due.events] == [("attendance", "b1", "no_show")]
    finally:
        store.close()


def test_a_daemons_first_run_takes_no_class_that_fell_due_before_it(tmp_path: Path) -> None:
    """A daemon that begins the site's time-driven work — a new one, or one the role moved
    to — holds in its replica whatever the central system sends, classes of days ago still
    `booked` among them. Their no-shows were the daemon's that did the work then: settled
    here, a member would be fined twice, or fined though she came in at a turnstile this
    daemon never heard. So it settles only what falls due from its first run on — not the
    older classes at that run, nor when a sync or a snapshot lists them again, nor when a
    snapshot switch takes its cursor back (its worker read the ledger before that run)."""
    from rules.model import Policy
    from sync.store.ledger import CURSOR_KEY

    def spin(bid: str, ends: datetime) -> dict[str, object]:
        return {"id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
                "starts_at": (ends - timedelta(minutes=45)).isoformat(), "ends_at": ends.isoformat(),
                "deducted": False}

    old, recent = spin("b-old", START - timedelta(days=3)), spin("b-recent", START - timedelta(minutes=5))
    store = Store(tmp_path / "gate.db", SITE, durable=False)
    try:
        pass_ = PassIn(id="p1", member="m1", name="p1", kind="credits", balance=Decimal(5), walk_in_cost=Decimal(1),
                       deduct_on="access")
        store.apply_sync(SyncBatch([MemberIn(id="m1", name="m1", cards=["C1"])], [pass_],
                                   [BookingIn.model_validate(b) for b in (old, recent)]), START - timedelta(hours=1))
        policy = Policy(no_show_fee=Decimal(1))
        assert store.run_due(policy, START).events == []  # it begins: b-recent falls due after, b-old before
        due = store.run_due(policy, START + timedelta(minutes=11))
        assert [(e["type"], e.get("booking"), e.get("status") or e.get("cause")) for e in due.events] == [
            ("deduction", "b-recent", "no_show_fee"), ("attendance", "b-recent", "no_show")]
        store.apply_sync(SyncBatch(bookings=[BookingIn.model_validate(old)]), START + timedelta(minutes=12))
        assert store.run_due(policy, START + timedelta(minutes=13)).events == []
        chunk = SnapshotChunk.model_validate({
            "v": 1, "snapshot_id": "s1", "chunk": 0, "chunks": 1, "delta_seq": 1,
            "members": [{"id": "m1", "name": "m1", "cards": ["C1"]}],
            "passes": [{"id": "p1", "member": "m1", "name": "p1", "kind": "credits", "balance": 4,
                        "walk_in_cost": 1, "deduct_on": "access", "applied": {"gate": store.last_seq}}],
            "bookings": [old, recent],
        })

        async def snapshot() -> None:
            imp = SnapshotImporter(store, "gate")
            await imp.begin(SnapshotHeader.of(chunk), START + timedelta(minutes=14))
            assert await imp.add(SnapshotHeader.of(chunk), payload_of(chunk))
            await imp.finish()

        asyncio.run(snapshot())
        assert store.conn.execute("SELECT COUNT(*) FROM main.due_recheck").fetchone()[0] == 1  # b-old, listed
        assert store.run_due(policy, START + timedelta(minutes=15)).events == []
        with store.transaction() as tx:
            tx.delete_meta(CURSOR_KEY)  # as a switch whose worker found no cursor does
        assert store.run_due(policy, START + timedelta(minutes=16)).events == []
        assert store.balance("p1") == Decimal(4)
    finally:
        store.close()


def test_the_work_moved_away_and_back_begins_afresh(tmp_path: Path) -> None:
    """The desk's daemon did the site's time-driven work, then another did it for two days
    (`time_driven_work: false` here meanwhile), then it comes back: its cursor of two days
    ago would settle every class since that it has not heard the other settle. The scheduler
    says the daemon left the work; back, it begins afresh."""
    from rules.model import Policy

    def spin(bid: str, ends: datetime) -> BookingIn:
        return BookingIn.model_validate({
            "id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
            "starts_at": (ends - timedelta(minutes=45)).isoformat(), "ends_at": ends.isoformat(), "deducted": False})

    store = Store(tmp_path / "gate.db", SITE, durable=False)
    try:
        pass_ = PassIn(id="p1", member="m1", name="p1", kind="credits", balance=Decimal(5), walk_in_cost=Decimal(1),
                       deduct_on="access")
        store.apply_sync(SyncBatch([MemberIn(id="m1", name="m1", cards=["C1"])], [pass_]), START)
        policy = Policy(no_show_fee=Decimal(1))
        assert store.run_due(policy, START).events == []
        store.leave_time_driven_work()
        store.leave_time_driven_work()  # every second of it: written once
        store.apply_sync(SyncBatch(bookings=[spin("b-meanwhile", START + timedelta(days=1))]), START + timedelta(days=1))
        back = START + timedelta(days=2)
        assert store.run_due(policy, back).events == []
        store.apply_sync(SyncBatch(bookings=[spin("b-back", back + timedelta(hours=1))]), back)
        due = store.run_due(policy, back + timedelta(hours=1, minutes=15))
        assert [(e["type"], e.get("booking")) for e in due.events] == [("deduction", "b-back"), ("attendance", "b-back")]
    finally:
        store.close()


def test_the_work_taken_on_from_another_daemon_begins_where_it_had_settled_a_day_back_at_most(tmp_path: Path) -> None:
    """A daemon that takes the site's time-driven work on from another's word (its heartbeat:
    settled through an instant, gated/knowledge.py) begins there, not at its own first run —
    never before it (that daemon settled those), never more than a day before its first
    run's due time (a word days old; a day is as far back as a daemon asks the site's
    others for their events), and once begun, a later word moves nothing. It says in turn
    how far it has settled, also after it left the work."""
    from rules.model import Policy
    from sync.store.ledger import HANDOVER_LIMIT

    def spin(bid: str, ends: datetime) -> BookingIn:
        return BookingIn.model_validate({
            "id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
            "starts_at": (ends - timedelta(minutes=45)).isoformat(), "ends_at": ends.isoformat(), "deducted": True})

    policy = Policy(no_show_fee=Decimal(1))
    now = START + timedelta(days=3)
    due = now - policy.no_show_after
    ends = {"settled-there": due - timedelta(hours=2), "between": due - timedelta(hours=1),
            "too-old": due - HANDOVER_LIMIT - timedelta(minutes=1), "a-day": due - HANDOVER_LIMIT + timedelta(minutes=1)}
    for name, word in (("recent", due - timedelta(hours=2)), ("days-old", now - timedelta(days=3))):
        store = Store(tmp_path / f"{name}.db", SITE, durable=False)
        try:
            store.apply_sync(SyncBatch([MemberIn(id="m1", name="m1", cards=["C1"])], [credits("p1", Decimal(5))],
                                       [spin(b, e) for b, e in ends.items()]), START)
            settled = {e["booking"] for e in store.run_due(policy, now, settled_by_site=word).events}
            assert settled == ({"between"} if name == "recent" else {"between", "settled-there", "a-day"}), name
            assert store.time_driven_work()[0] == max(word, due - HANDOVER_LIMIT)
            store.apply_sync(SyncBatch(bookings=[spin("long-ago", due - HANDOVER_LIMIT - timedelta(hours=2))]), now)
            assert store.run_due(policy, now + timedelta(minutes=1), settled_by_site=START).events == []
            store.leave_time_driven_work()
            assert store.time_driven_work() == (None, due)  # its heartbeat: where it had got to
        finally:
            store.close()


def _fee_site(store: Store) -> None:
    """m1 with a credits pass charged at the gate, and Spin (08:00-09:00) booked on it."""
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="m1", cards=["C1"])], [
        PassIn.model_validate({"id": "p1", "member": "m1", "name": "p1", "kind": "credits", "balance": 5,
                               "walk_in_cost": 1, "deduct_on": "access"})]), START)


def _spin(status: str = "booked") -> dict[str, object]:
    return {"id": "b9", "member": "m1", "pass": "p1", "class": "Spin", "zone": "main", "status": status,
            "starts_at": (START + timedelta(hours=1)).isoformat(), "ends_at": (START + timedelta(hours=2)).isoformat()}


def test_a_booking_cancelled_and_booked_again_is_not_settled_twice(tmp_path: Path) -> None:
    """Settled as a no-show with its fee at 09:20; the central system cancels it, then books
    it again (a cancellation undone). It is still the no-show it was: not walked, settled and
    fined a second time (its outcome was deleted with the cancellation, so the booking came
    back behind the cursor with none: a second no-show, a second fee)."""
    from rules.model import Policy

    policy = Policy(no_show_fee=Decimal(1))
    store = Store(tmp_path / "gate.db", SITE, durable=False)
    try:
        _fee_site(store)
        store.apply_sync(SyncBatch(bookings=[BookingIn.model_validate(_spin())]), START)
        assert store.run_due(policy, START).events == []  # the gate's time-driven work begins
        first = store.run_due(policy, START + timedelta(hours=2, minutes=20)).events
        assert [(e["type"], e.get("cause") or e.get("status")) for e in first] == [
            ("deduction", "no_show_fee"), ("attendance", "no_show")]
        store.apply_sync(SyncBatch(bookings=[BookingIn.model_validate(_spin("cancelled"))]), START + timedelta(hours=3))
        assert store.booking_status("b9") is not None and store.booking_status("b9").value == "cancelled"  # type: ignore[union-attr]
        store.apply_sync(SyncBatch(bookings=[BookingIn.model_validate(_spin())]), START + timedelta(hours=3, minutes=5))
        assert store.run_due(policy, START + timedelta(hours=3, minutes=10)).events == []
        assert store.booking_status("b9") is not None and store.booking_status("b9").value == "no_show"  # type: ignore[union-attr]
        assert store.balance("p1") == Decimal(4)
        # the same through whole snapshots (the worker's switch lists): cancelled in one,
        # booked in the next
        for n, status in enumerate(("cancelled", "booked")):
            chunk = SnapshotChunk.model_validate({
                "v": 1, "snapshot_id": f"s{n}", "chunk": 0, "chunks": 1, "delta_seq": n + 1,
                "members": [{"id": "m1", "name": "m1", "cards": ["C1"]}],
                "passes": [{"id": "p1", "member": "m1", "name": "p1", "kind": "credits", "balance": 5,
                            "walk_in_cost": 1, "deduct_on": "access", "applied": {"gate": 0}}],
                "bookings": [_spin(status)],
            })

            async def run(chunk: SnapshotChunk = chunk) -> None:
                imp = SnapshotImporter(store, "gate")
                await imp.begin(SnapshotHeader.of(chunk), START + timedelta(hours=4))
                assert await imp.add(SnapshotHeader.of(chunk), payload_of(chunk))
                await imp.finish()

            asyncio.run(run())
        assert store.run_due(policy, START + timedelta(hours=4, minutes=10)).events == []
        assert store.balance("p1") == Decimal(4)
        # a booking the replica no longer holds at all takes its outcome with it
        store.apply_sync(SyncBatch(remove_bookings=["b9"]), START + timedelta(hours=5))
        assert store.conn.execute("SELECT COUNT(*) FROM main.booking_outcomes").fetchone()[0] == 0
    finally:
        store.close()


def test_another_daemons_attendance_of_a_booking_not_heard_of_yet_survives_a_snapshot_without_it(tmp_path: Path) -> None:
    """The turnstile next door let m1 in for b9, a booking this daemon's replica does not have
    yet (booked minutes ago); its attendance is kept here for when the booking comes. A
    snapshot made before the booking was switched in: the attendance is still kept — before,
    the switch dropped every outcome of a booking the new replica lacked, so when the booking
    came by delta it was `booked` again: m1 charged for the class a second time at this
    turnstile, or fined as a no-show. A booking the replica in use had and the snapshot lacks
    still takes its outcome with it."""
    store = Store(tmp_path / "gate.db", SITE, durable=False)
    try:
        _fee_site(store)
        store.apply_sync(SyncBatch(bookings=[BookingIn.model_validate({**_spin(), "id": "b8"})]), START)
        other = {"type": "attendance", "seq": 1, "id": "s1-in-2:1", "at": (START + timedelta(minutes=55)).isoformat(),
                 "member": "m1", "booking": "b9", "status": "attended", "by": "gate"}
        store.record_peer_events("s1-in-2", [other], {})
        mine = {**other, "seq": 2, "id": "s1-in-2:2", "booking": "b8"}
        store.record_peer_events("s1-in-2", [mine], {})
        outcomes = lambda: {r[0] for r in store.conn.execute("SELECT booking_id FROM main.booking_outcomes")}  # noqa: E731
        assert outcomes() == {"b8", "b9"}
        chunk = SnapshotChunk.model_validate({
            "v": 1, "snapshot_id": "s1", "chunk": 0, "chunks": 1, "delta_seq": 1,
            "members": [{"id": "m1", "name": "m1", "cards": ["C1"]}],
            "passes": [{"id": "p1", "member": "m1", "name": "p1", "kind": "credits", "balance": 5,
                        "walk_in_cost": 1, "deduct_on": "access", "applied": {"gate": 0}}],
            "bookings": [],  # b8 deleted at the central system; b9 not in it yet
        })

        async def run() -> None:
            imp = SnapshotImporter(store, "gate")
            await imp.begin(SnapshotHeader.of(chunk), START + timedelta(hours=1))
            assert await imp.add(SnapshotHeader.of(chunk), payload_of(chunk))
            await imp.finish()

        asyncio.run(run())
        assert outcomes() == {"b9"}
        store.apply_sync(SyncBatch(bookings=[BookingIn.model_validate(_spin())]), START + timedelta(hours=1, minutes=1))
        assert store.booking_status("b9") is not None and store.booking_status("b9").value == "attended"  # type: ignore[union-attr]
    finally:
        store.close()
