"""A ledger put back from a copy never hands out a number that has left the gate
(sync/store/sent_mark.py): the store, opened on a ledger that ends below the last seq
sent, numbers on from it — `void` events in between and a `ledger_restored` alarm."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rules.model import Policy, Site
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import Store, SyncBatch
from sync.store.sent_mark import SentMark, sent_path

SITE = Site(ZoneInfo("Europe/Madrid"), id="s1")
NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def store_at(path: Path) -> Store:
    return Store(path, SITE, daemon_id="s1-in-1", durable=False)


def alarms(store: Store, n: int) -> list[str]:
    for i in range(n):
        store.emit("alarm", NOW + timedelta(seconds=i), gate=None, kind="door_forced", detail=str(i))
    return [e["id"] for e in store.events_after(0, 1000)]


def restored(db: Path, copy: Path) -> None:
    """What docs/operations.md tells: the copy over the ledger, its -wal and -shm gone."""
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(copy, db)


def test_a_ledger_restored_from_a_copy_numbers_on_after_what_was_sent(tmp_path: Path) -> None:
    db = tmp_path / "gated.db"
    store = store_at(db)
    alarms(store, 6)
    store.close()
    shutil.copy(db, tmp_path / "copy.db")  # the night's backup: events 1..6
    store = store_at(db)
    alarms(store, 4)
    SentMark(db).advance(9, NOW.timestamp())  # 7..9 left the gate (10 did not)
    store.close()

    restored(db, tmp_path / "copy.db")
    store = store_at(db)
    events = store.events_after(0, 1000)
    assert [e["seq"] for e in events] == list(range(1, 11))
    assert [(e["type"], e.get("reason")) for e in events[6:9]] == [("void", "restored")] * 3
    alarm = events[9]
    assert (alarm["type"], alarm["kind"]) == ("alarm", "ledger_restored"), alarm
    assert "7" in alarm["detail"] and "9" in alarm["detail"]
    assert store.emit("alarm", NOW, gate=None, kind="door_forced")["seq"] == 11  # never 7 again
    store.close()
    store = store_at(db)  # and only once
    assert store.last_seq == 11
    store.close()


def test_a_ledger_gone_altogether_numbers_on_after_what_was_sent(tmp_path: Path) -> None:
    """The file lost and the daemon started on an empty one: its first event is not seq 1,
    which the central system would take for the old seq 1 and drop."""
    db = tmp_path / "gated.db"
    SentMark(db).advance(40, NOW.timestamp())
    store = store_at(db)
    assert store.last_seq == 41
    assert store.events_after(40, 10)[0]["kind"] == "ledger_restored"
    store.close()


def test_nothing_sent_beyond_the_ledger_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "gated.db"
    store = store_at(db)
    alarms(store, 3)
    SentMark(db).advance(2, NOW.timestamp())
    store.close()
    store = store_at(db)
    assert store.last_seq == 3
    store.close()


def test_the_mark_only_moves_up_and_an_unreadable_one_is_zero(tmp_path: Path) -> None:
    db = tmp_path / "gated.db"
    mark = SentMark(db)
    assert mark.value == 0 and not sent_path(db).exists()
    mark.advance(12, NOW.timestamp())
    mark.advance(5, NOW.timestamp() + 60)
    again = SentMark(db)
    assert (again.value, again.at) == (12, NOW.timestamp())
    sent_path(db).write_bytes(b"\xff garbage")
    assert (SentMark(db).value, SentMark(db).at) == (0, None)
    sent_path(db).write_bytes(b"00000000000000000007\n")  # a number alone: its instant not known
    assert (SentMark(db).value, SentMark(db).at) == (7, None)


def booking(bid: str, ends: datetime, points: int = 0) -> BookingIn:
    return BookingIn.model_validate({
        "id": bid, "member": "m1", "pass": "p1", "class": "Spin", "zone": "main", "deducted": True,
        "starts_at": (ends - timedelta(hours=1)).isoformat(), "ends_at": ends.isoformat(), "loyalty_points": points,
    })


def kinds(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["type"], e.get("booking") or e.get("kind"), e.get("status")) for e in events if e["type"] != "deduction"]


def test_what_fell_due_before_the_restore_is_not_settled_again(tmp_path: Path) -> None:
    """The part of the ledger that was lost may have settled a no-show (and its fee) or
    credited a class's points, which the central system has if their events were sent:
    settled again they would fine a member twice, or one who came. A credit due by the
    instant of the last event sent is named in an alarm for a person, once, and not made
    (the lost part's credits are not put back); a no-show due by then waits for the lost
    events and, once they are back whole without it, is settled as usual — the central
    system holds no no-show of it. What fell due after it is settled as usual — the
    restart's own clock is no measure."""
    now = datetime.now(UTC)
    db = tmp_path / "gated.db"
    policy = Policy(no_show_after=timedelta(minutes=15), loyalty_delay=timedelta(hours=3), no_show_fee=Decimal(1))
    store = store_at(db)
    hours = {"old": -4, "lost": -2, "later": 1, "came_old": -7, "came": -5}
    bookings = {bid: booking(bid, now + timedelta(hours=h), points=10 if bid.startswith("came") else 0)
                for bid, h in hours.items()}
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])],
                               [PassIn(id="p1", member="m1", name="p1", kind="credits", balance=Decimal(5),
                                       walk_in_cost=Decimal(1))],
                               list(bookings.values())), now - timedelta(hours=9))
    for bid in ("came_old", "came"):
        store.mark_attended(bid, "desk", refund=False, now=now + timedelta(hours=hours[bid], minutes=-30))
    # what the copy lacks had been sent, the last of it stamped three hours ago
    SentMark(db).advance(store.last_seq + 2, (now - timedelta(hours=3)).timestamp())
    store.close()
    store = store_at(db)  # the ledger put back
    try:
        # its lost events back from the central system (none of them about these classes):
        # until then the classes of the day they may bear on wait (tests/test_own_history.py)
        wanted = store.own_history_wanted()
        assert wanted is not None
        store.record_own_history(wanted, [], {}, True)
        due = store.run_due(policy, now + timedelta(hours=2))
        assert sorted(kinds(due.events), key=str) == sorted([
            ("alarm", "ledger_restored", None), ("attendance", "lost", "no_show"), ("attendance", "old", "no_show"),
            ("attendance", "later", "no_show"), ("loyalty", "came", None)], key=str)
        alarm = next(e for e in due.events if e["type"] == "alarm")
        assert " old (m1)" not in alarm["detail"] and "came_old (m1)" in alarm["detail"], alarm
        assert "lost (m1)" not in alarm["detail"] and "came (m1)" not in alarm["detail"], alarm
        assert store.points("m1") == 10
        # a snapshot lists the old booking again: settled once, not again
        store.apply_sync(SyncBatch(bookings=[bookings["old"]]), now + timedelta(hours=2, minutes=1))
        assert store.run_due(policy, now + timedelta(hours=2, minutes=30)).events == []
    finally:
        store.close()
