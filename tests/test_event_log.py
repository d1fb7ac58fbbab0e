"""The event log stays gap-free whatever fails (issue: "a brief disk-full stops a gate's
events reaching the central system, for good").

In WAL mode the pages of a transaction's body stay in SQLite's page cache; only the
COMMIT writes them to the log. So on a full disk it is the COMMIT that fails, after every
`emit` of the body has taken its seq. These tests fill a real tmpfs and check that the
numbers taken by a transaction whose COMMIT failed are given back, and that a store left
with holes by an earlier version has them filled at open (a `void` event per lost
number), so the central system's `applied_seq` can move past them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rules.model import Site
from sync.store import Store
from tests.test_storage_faults import fill, mount_tmpfs, umount

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
SITE = Site(id="s1", timezone="Europe/Madrid")

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


def seqs(store: Store) -> list[int]:
    return [int(r[0]) for r in store.conn.execute("SELECT seq FROM events ORDER BY seq")]


@root_only
def test_a_commit_failing_on_a_full_disk_gives_its_numbers_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mount_tmpfs(state, "2m")
    try:
        store = Store(state / "gated.db", SITE, daemon_id="g1", background_checkpoints=False)
        try:
            for i in range(3):
                with store.transaction() as tx:
                    tx.emit("note", NOW, n=i)
            filler = fill(state)
            failures_at_commit = 0
            for i in range(10):
                body_done = False
                try:
                    with store.transaction() as tx:
                        # a few events per tap, as a tap's access + deduction + attendance
                        for k in range(3):
                            tx.emit("note", NOW, n=100 + i, k=k, pad="x" * 2000)
                        body_done = True
                except sqlite3.OperationalError as e:
                    assert "full" in str(e), e
                    failures_at_commit += body_done
            # the failure this issue is about: the COMMIT, after the body took its seqs
            assert failures_at_commit > 0
            filler.unlink()
            for i in range(3):
                with store.transaction() as tx:
                    tx.emit("note", NOW, n=200 + i)
            held = seqs(store)
            assert held == list(range(1, len(held) + 1)), held
            assert store.last_seq == held[-1]
        finally:
            store.close()
        # and a fresh open agrees with what the daemon believed
        again = Store(state / "gated.db", SITE, daemon_id="g1", background_checkpoints=False)
        try:
            assert seqs(again) == list(range(1, again.last_seq + 1))
        finally:
            again.close()
    finally:
        umount(state)


def test_holes_left_by_an_earlier_version_are_filled_at_open(tmp_path: Path) -> None:
    db = tmp_path / "gated.db"
    store = Store(db, SITE, daemon_id="g1", background_checkpoints=False)
    for i in range(20):
        with store.transaction() as tx:
            tx.emit("note", NOW, n=i)
    store.ack(3)
    store.close()
    # what the old bug left: 1..6, then 17..20, with next_seq at 21
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM events WHERE seq BETWEEN 7 AND 16")
    store = Store(db, SITE, daemon_id="g1", background_checkpoints=False)
    try:
        assert seqs(store) == list(range(1, 21))
        assert store.last_seq == 20
        voids = [json.loads(r[0]) for r in store.conn.execute("SELECT body FROM events WHERE type = 'void'")]
        assert [v["seq"] for v in voids] == list(range(7, 17))
        assert all(v["reason"] == "seq_lost" for v in voids)
        with store.transaction() as tx:
            assert tx.emit("note", NOW)["seq"] == 21
    finally:
        store.close()


def test_a_commit_that_fails_for_any_reason_gives_its_numbers_back(tmp_path: Path) -> None:
    """Without a tmpfs: a COMMIT refused because a deferred constraint fails at COMMIT."""
    store = Store(tmp_path / "gated.db", SITE, daemon_id="g1", background_checkpoints=False)
    try:
        store.conn.execute(
            "CREATE TABLE IF NOT EXISTS main.t_parent (id INTEGER PRIMARY KEY)"
        )
        store.conn.execute(
            "CREATE TABLE IF NOT EXISTS main.t_child (p INTEGER REFERENCES t_parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        store.conn.execute("PRAGMA foreign_keys = ON")
        with store.transaction() as tx:
            tx.emit("note", NOW)
        with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
            tx.emit("note", NOW)
            tx.emit("note", NOW)
            store.conn.execute("INSERT INTO t_child(p) VALUES (42)")  # checked only at COMMIT
        assert not store.conn.in_transaction
        with store.transaction() as tx:
            assert tx.emit("note", NOW)["seq"] == 2
        assert seqs(store) == [1, 2]
    finally:
        store.close()
