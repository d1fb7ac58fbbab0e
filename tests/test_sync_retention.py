"""Acknowledged events are kept for the retention period and then pruned; unacknowledged
ones never are (sync/store/outbox.py, Store.prune_acked); the session asks for pruning once a
minute with the configured retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sync.link.session import PruneAcked, Session, SessionConfig, StoreState
from tests.broker import make_store

T0 = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)


def test_prune_keeps_the_retention_and_never_the_unacknowledged(tmp_path: Path) -> None:
    store = make_store(tmp_path / "g.db", "gate-a")
    for i in range(100):  # one event a minute
        store.emit("note", T0 + timedelta(minutes=i), n=i)
    assert store.first_seq == 1
    store.ack(60)
    # older than 30 minutes and acknowledged: seq 1..30 (seq 31 is at minute 30)
    assert store.prune_acked(T0 + timedelta(minutes=30), keep_max=1000) == 30
    assert store.first_seq == 31
    # nothing unacknowledged goes, however old
    assert store.prune_acked(T0 + timedelta(days=30), keep_max=1000) == 30
    assert store.first_seq == 61 and [e["seq"] for e in store.events_after(0, 1000)] == list(range(61, 101))
    # at most keep_max acknowledged events
    store.ack(100)
    assert store.prune_acked(T0, keep_max=25) == 15
    assert store.first_seq == 76
    assert store.prune_acked(T0 + timedelta(days=1), keep_max=0) == 25
    assert store.first_seq == 101 == store.last_seq + 1
    assert store.acked_seq == store.last_seq == 100  # pruning never changes the numbering


def test_the_session_asks_for_pruning_once_a_minute() -> None:
    config = SessionConfig(prefix="gated", site="s1", daemon="g", retain_acked=3600.0, retain_acked_max=5)
    s = Session(config, StoreState(has_snapshot=True))
    s.connect(100.0, "x")
    assert PruneAcked(3600.0, 5) in s.tick(100.0)
    assert not any(isinstance(a, PruneAcked) for a in s.tick(159.0))
    assert PruneAcked(3600.0, 5) in s.tick(160.0)
