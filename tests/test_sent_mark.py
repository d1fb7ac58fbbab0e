"""A ledger put back from a copy never hands out a number that has left the gate
(sync/store/sent_mark.py): the store, opened on a ledger that ends below the last seq
sent, numbers on from it — `void` events in between and a `ledger_restored` alarm."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from rules.model import Site
from sync.store import Store
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
    SentMark(db).advance(9)  # 7..9 left the gate (10 did not)
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
    SentMark(db).advance(40)
    store = store_at(db)
    assert store.last_seq == 41
    assert store.events_after(40, 10)[0]["kind"] == "ledger_restored"
    store.close()


def test_nothing_sent_beyond_the_ledger_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "gated.db"
    store = store_at(db)
    alarms(store, 3)
    SentMark(db).advance(2)
    store.close()
    store = store_at(db)
    assert store.last_seq == 3
    store.close()


def test_the_mark_only_moves_up_and_an_unreadable_one_is_zero(tmp_path: Path) -> None:
    db = tmp_path / "gated.db"
    mark = SentMark(db)
    assert mark.value == 0 and not sent_path(db).exists()
    mark.advance(12)
    mark.advance(5)
    assert SentMark(db).value == 12
    sent_path(db).write_bytes(b"\xff garbage")
    assert SentMark(db).value == 0
