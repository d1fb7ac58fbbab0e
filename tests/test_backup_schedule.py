"""The ledger's periodic backup (`store.backup_interval`) is scheduled by the age of the copy
on disk, not by the time since the daemon started: a box restarted more often than the
interval (switched off each night, upgraded, crashed) had no backup at all, while
docs/operations.md told the installer to restore it (an outside installer's finding)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gated.config import Config
from gated.metrics import Metrics
from gated.storage_watch import StorageWatch
from sync.store import Store

DAY = timedelta(hours=24)


def store(tmp: Path) -> Store:
    cfg = Config.model_validate({
        "site": {"id": "s", "timezone": "Europe/Madrid"}, "daemon_id": "d1",
        "gates": [{"id": "in", "zone": "main"}], "store": {"path": str(tmp / "g.db")},
    })
    return Store(cfg.store.path, cfg.site_domain(), daemon_id="d1", background_checkpoints=False)


def watch(s: Store, first_after: float = 0.0) -> StorageWatch:
    return StorageWatch(s, lambda: datetime.now(UTC), Metrics(), min_free=0, backup_interval=DAY,
                        first_backup_after=first_after)


async def test_a_run_makes_the_backup_a_missing_copy_calls_for(tmp_path: Path) -> None:
    s = store(tmp_path)
    try:
        w = watch(s)
        assert w.as_dict()["backup_written_at"] is None
        await w.check()
        assert w.backup_path.exists()
        assert w.as_dict()["backup_written_at"] is not None
        written = w.backup_path.stat().st_mtime_ns
        await w.check()  # one interval until the next
        assert w.backup_path.stat().st_mtime_ns == written
    finally:
        s.close()


async def test_a_copy_as_old_as_the_interval_is_written_again_after_a_restart(tmp_path: Path) -> None:
    s = store(tmp_path)
    try:
        await watch(s).check()
        w = watch(s)  # the daemon started again: a fresh copy is left as it is
        fresh = w.backup_path.stat().st_mtime_ns
        await w.check()
        assert w.backup_path.stat().st_mtime_ns == fresh
        old = time.time() - DAY.total_seconds() - 60
        os.utime(w.backup_path, (old, old))
        w = watch(s)  # started again a day later
        await w.check()
        assert w.backup_path.stat().st_mtime > old + 60
        future = time.time() + DAY.total_seconds()  # dated ahead: the clock was set back since
        os.utime(w.backup_path, (future, future))
        w = watch(s)
        await w.check()
        assert w.backup_path.stat().st_mtime < future
    finally:
        s.close()


async def test_the_first_backup_of_a_run_waits_for_the_start_to_be_over(tmp_path: Path) -> None:
    s = store(tmp_path)
    try:
        w = watch(s, first_after=3600)
        await w.check()
        assert not w.backup_path.exists()
    finally:
        s.close()
