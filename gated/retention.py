"""The daemon's side of the ledger's retention (the rule is sync/store/retention.py): a sweep
every hour, in batches short enough that a tap waits under a millisecond behind one.
`store.retention` and `store.audit_retention` are read again on a reload (SIGHUP).

A sweep runs only while the store works and the clock is trusted (gated/clock.py): a
clock set a year ahead would otherwise make this year's ledger look old. It stops between
two batches as soon as either goes. Each batch is one short transaction on the event loop
(the store's one writer: a second writer would make taps wait on SQLite's lock), then a
pause; a first sweep over years of rows goes on in the background for as long as it needs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from gated.metrics import Metrics
from rules.timeutil import iso_utc
from sync.store import Store, Sweep
from sync.store.faults import STORAGE_ERRORS

log = structlog.get_logger("gated.retention")

SWEEP_INTERVAL = 3600.0  # seconds between sweeps
FIRST_SWEEP_AFTER = 60.0  # after the start: not while the daemon is coming up
BATCH = 50  # rows per transaction: 0.4-0.5 ms of the loop, under 1 at p99 (docs/performance.md)
PAUSE = 0.05  # seconds between two batches: the loop is the sweep's 1 % of the time


class LedgerRetention:
    def __init__(
        self,
        store: Store,
        keep: timedelta | None,
        keep_audit: timedelta | None,
        clock: Callable[[], datetime],
        may_run: Callable[[], bool],
        failed: Callable[[BaseException], object],
        metrics: Metrics | None = None,
        *,
        no_show_work: bool = True,
    ) -> None:
        self.store = store
        self.keep = keep
        self.keep_audit = keep_audit
        self.clock = clock
        self.may_run = may_run  # the store works and the clock is trusted
        self.failed = failed  # a storage error: the storage watch takes it from there
        self.metrics = metrics
        self.no_show_work = no_show_work  # this daemon settles no-shows: their cursor bounds the cutoff
        self.last: dict[str, Any] | None = None  # the last sweep, for `gated status`

    @property
    def enabled(self) -> bool:
        """The ledger or the audit log is pruned (the desk's request ids always are: a day)."""
        return self.keep is not None or self.keep_audit is not None

    async def run(self, first_after: float = FIRST_SWEEP_AFTER, every: float = SWEEP_INTERVAL) -> None:
        await asyncio.sleep(first_after)
        while True:
            try:
                await self.sweep()
            except Exception:  # a bug must not end the retention for the daemon's life unseen
                log.exception("retention_failed")
                self.last = {"at": iso_utc(self.clock()), "error": "the sweep failed: see the log"}
            await asyncio.sleep(every)

    async def sweep(self, batch: int = BATCH, pause: float = PAUSE) -> dict[str, int] | None:
        """One pass over the ledger; the rows deleted by table, None when it could not run."""
        if not self.may_run():
            return None
        started = time.monotonic()
        try:
            cut = self.store.retention_cutoffs(self.clock(), self.keep, self.keep_audit, no_show_work=self.no_show_work)
            progress = Sweep()
            while not progress.finished:
                if not self.may_run():
                    log.info("retention_paused", pruned=progress.pruned)
                    return None
                self.store.prune_ledger(progress, cut, batch)
                await asyncio.sleep(pause)
        except STORAGE_ERRORS as e:
            self.failed(e)
            return None
        pruned = {t: n for t, n in progress.pruned.items() if n}
        if self.metrics is not None:
            for table, n in pruned.items():
                self.metrics.ledger_pruned.labels(table=table).inc(n)
        self.last = {
            "at": iso_utc(self.clock()),
            "seconds": round(time.monotonic() - started, 3),
            "pruned": pruned,
            "cutoff": None if cut.ledger is None else iso_utc(datetime.fromtimestamp(cut.ledger, UTC)),
        }
        if pruned:
            log.info("retention_swept", **self.last)
        return progress.pruned

    def as_dict(self) -> dict[str, Any]:
        return {"keep_days": _days(self.keep), "audit_keep_days": _days(self.keep_audit), "last": self.last}


def _days(d: timedelta | None) -> float | None:
    return None if d is None else d.total_seconds() / 86400
