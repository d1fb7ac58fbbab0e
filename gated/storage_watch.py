"""The shell around sync.store.faults.StorageGuard: it looks at the store every second, tries
to recover by itself, retries the commits that failed, reports alarms, and takes backups.

- While storage is at fault: a probe write each round; for a database file that was
  deleted behind the daemon's back, first a rescue (the open connection still holds the
  ledger: it is written back to its path). Recovered when a probe succeeds and the file
  and free-space checks pass.
- A tap that was acted on (the turnstile turned) but whose commit failed is kept here, in
  memory, and committed as soon as storage works again — in order, with its own time. Its
  durable grant intent is still in the store; if the daemon dies first, the intent becomes
  a `passage_unconfirmed` event at the next start (Store.report_unconfirmed).
- Held exits are bounded (`store.max_held_exits`): exits open during a fault, so a long
  one at a busy site would grow the held list without end. Beyond the bound an exit is
  counted by gate instead of held (`gated_exits_unrecorded_total{gate}`, `gated status`),
  and the count goes to the central system in one `alarm` (`exits_not_recorded`) once the
  store works. Entries and overrides are always held: entries are refused during a fault,
  so the ones held are the few already under way when it began. An exit the store could
  not even be read to decide (rules.tap.unreadable: whose card it was is unknown, so there
  is nothing to hold) is counted the same way.
- Alarms (`storage_fault`, `storage_recovered`) are events like any other; the one that
  says the store failed can only be written once it works again, so it is kept until then
  and carries the instant the fault began. Logs and metrics say it at once.
- Damage no tap has read yet (pages overwritten by a failing card, a stray write): SQLite's
  `PRAGMA quick_check` of the ledger and the replica every `store.integrity_interval`, on
  a read-only connection of its own in a worker thread — every page is read, taps go on
  (the sqlite3 module lets go of the GIL while SQLite works). Damage found is a `corrupt`
  fault; each check is counted (`gated_store_checks_total{result}`). While corrupt, the
  check is run again every minute: only a clean one (a backup restored under the running
  daemon) clears the fault, never a write, which may well succeed over bad pages.
- What other parts owe the store (`owed`: the safety state set during a fault, which is in
  force but would not survive a restart): written after the held commits, each round the
  store works, until nothing is owed.
- Backups: `VACUUM INTO` on a connection of its own, in a worker thread (a consistent copy
  of the database under WAL, without holding taps), then renamed to `<path>.backup`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from gated.exits_mirror import ExitsMirror, Mirrored
from gated.metrics import Metrics
from gated.store_checks import IntegrityCheck, backup
from rules.timeutil import iso_utc
from sync.store import Committed, Store, unrecorded_exits
from sync.store.faults import STORAGE_ERRORS, StorageChange, StorageGuard, StorageProblem, classify

log = structlog.get_logger("gated.storage")

CHECK_INTERVAL = 1.0
# A run's first backup, when the copy on disk is missing or as old as the interval, waits
# this long after the start: start-up's own writes (a catch-up, the held commits) go first.
FIRST_BACKUP_AFTER = 60.0
INTEGRITY_INTERVAL = 60.0  # while corrupt: how often a clean check is looked for


@dataclass
class HeldCommit:
    """A tap acted on whose commit failed: retried until it goes through."""

    commit: Callable[[], Committed]
    what: dict[str, object]
    at: datetime
    exit_tap: bool = False


@dataclass
class UnrecordedExits:
    """Exits of one gate dropped beyond the bound, not yet reported."""

    count: int
    first: datetime
    last: datetime


MAX_HELD_EXITS = 1000

# why exits went unrecorded, in the words of the `exits_not_recorded` alarm's detail
BEYOND_BOUND = "beyond_bound"
UNREADABLE = "unreadable"
RESTARTED = "restarted"  # held or counted by the run before this one (gated/exits_mirror.py)


class StorageWatch:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime],
        metrics: Metrics,
        *,
        min_free: int,
        backup_interval: timedelta | None = None,
        integrity_interval: timedelta | None = None,
        max_held_exits: int = MAX_HELD_EXITS,
        zones: Mapping[str, str] | None = None,
        mirror: ExitsMirror | None = None,
        first_backup_after: float = FIRST_BACKUP_AFTER,
    ):
        self.store = store
        self.zones: Mapping[str, str] = zones or {}  # gate → zone, for the exits not recorded
        self.clock = clock
        self.metrics = metrics
        self.guard = StorageGuard(store.path, min_free=min_free)
        self.held: list[HeldCommit] = []
        self.max_held_exits = max_held_exits
        self._held_exits = 0
        self.unrecorded: dict[str, UnrecordedExits] = {}  # by gate, until reported
        self.unrecorded_total: dict[str, int] = {}  # by gate, since the start
        self._unrecorded_why: set[str] = set()  # BEYOND_BOUND, UNREADABLE: until reported
        self.backup_interval = backup_interval
        self.backup_path = Path(str(store.path) + ".backup")
        self._first_backup_at = time.monotonic() + first_backup_after
        self._last_backup: float | None = None  # monotonic, this run's last
        self.integrity_interval = integrity_interval
        self._last_integrity = time.monotonic()  # the first check one interval after the start
        self._integrity: IntegrityCheck | None = None
        self._integrity_task: asyncio.Future[list[str]] | None = None
        self._clean_check = False  # a check found no damage since the store was last corrupt
        self.last_check: dict[str, object] | None = None
        self._pending_alarms: list[StorageChange] = []
        self.on_change: list[Callable[[StorageChange], None]] = []
        # writes other parts owe the store (Safety.write_pending): True once nothing is left
        self.owed: list[Callable[[], Awaitable[bool]]] = []
        # the exits above, also outside the store: a restart before it works forgets none
        self.mirror = mirror
        if mirror is not None:
            for gate, m in mirror.read().items():
                self.unrecorded[gate] = UnrecordedExits(m.count, m.first, m.last)
                self._unrecorded_why.add(RESTARTED)

    # -- on the tap path ------------------------------------------------------------------

    @property
    def ok(self) -> bool:
        return self.guard.ok

    def ok_for_entry(self) -> bool:
        """Two system calls: may an entry be attempted (an intent written, a relay pulsed)?"""
        ok = self.guard.precheck(self.clock())
        self._drain_changes()
        return ok

    def failed(self, error: BaseException, where: str) -> StorageProblem:
        problem = self.guard.failed(error, self.clock())
        log.error("storage_write_failed", where=where, problem=problem.value, error=str(error))
        self._drain_changes()
        return problem

    @property
    def alarms_pending(self) -> bool:
        return bool(self._pending_alarms or self.guard.has_changes or self.unrecorded)

    def hold(self, commit: Callable[[], Committed], what: dict[str, object], *, exit_tap: bool = False) -> None:
        """Keep a failed commit of a tap that was acted on; retried in order. An exit
        beyond `max_held_exits` held ones is counted instead (module doc)."""
        now = self.clock()
        if exit_tap and self._held_exits >= self.max_held_exits:
            self._count_unrecorded(str(what.get("gate")), now, BEYOND_BOUND,
                                   held_exits=self._held_exits, limit=self.max_held_exits)
            return
        self.held.append(HeldCommit(commit, what, now, exit_tap))
        self._held_exits += int(exit_tap)
        self.metrics.uncommitted.set(len(self.held))
        if exit_tap:
            self._mirror()
        log.error("tap_commit_held", held=len(self.held), **{k: v for k, v in what.items() if k != "event"})

    def exit_unrecorded(self, gate: str) -> None:
        """An exit let out that the store could not be read to decide (rules.tap.unreadable):
        nobody to write it for, so it is counted like an exit beyond the bound (module doc)."""
        self._count_unrecorded(gate, self.clock(), UNREADABLE)

    def _count_unrecorded(self, gate: str, now: datetime, why: str, **said: object) -> None:
        seen = self.unrecorded.get(gate)
        if seen is None:
            self.unrecorded[gate] = UnrecordedExits(1, now, now)
            log.error("exit_not_recorded", gate=gate, why=why, **said)  # the first of a gate, not each
        else:
            seen.count += 1
            seen.last = now
        self._unrecorded_why.add(why)
        self.unrecorded_total[gate] = self.unrecorded_total.get(gate, 0) + 1
        self.metrics.exits_unrecorded.labels(gate).inc()
        self._mirror()

    def _mirror(self) -> None:
        """The exits not in the store now — held and counted, by gate — to the mirror."""
        if self.mirror is None:
            return
        gates = {g: Mirrored(u.count, u.first, u.last) for g, u in self.unrecorded.items()}
        for item in self.held:
            if item.exit_tap:
                gate = str(item.what.get("gate"))
                m = gates.get(gate)
                gates[gate] = Mirrored(1, item.at, item.at) if m is None else \
                    Mirrored(m.count + 1, min(m.first, item.at), max(m.last, item.at))
        self.mirror.write(gates)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            await self.check()

    async def check(self) -> None:
        """One round: look, recover, retry, report. Never raises for a storage error."""
        now = self.clock()
        g = self.guard
        g.check_file(now)
        g.check_space(now)
        if g.problem == StorageProblem.FILE_GONE:
            self._rescue(now)
        elif g.problem == StorageProblem.READ_ONLY:
            self._reopen()
        self._integrity_round(now)
        if g.problem == StorageProblem.CORRUPT:
            if self._clean_check:  # then a durable write proves it can record again
                self._probe(now)
        elif not g.ok or self.held or self._pending_alarms:
            self._probe(now)
        self._drain_changes()
        if g.ok:
            self._clean_check = False
            self._retry_held()
            await self._retry_owed()
            self._report_alarms()
            self._report_unrecorded()
            await self._maybe_backup()
        self.metrics.storage_ok.set(1 if g.ok else 0)
        if g.free_bytes is not None:
            self.metrics.storage_free.set(g.free_bytes)

    def _reopen(self) -> None:
        try:
            self.store.reopen()
        except STORAGE_ERRORS as e:
            log.warning("storage_reopen_failed", error=str(e))

    def _rescue(self, now: datetime) -> None:
        try:
            self.store.rescue()
        except STORAGE_ERRORS as e:
            log.error("storage_rescue_failed", path=str(self.store.path), error=str(e))
            return
        self.guard.reopened(now)
        log.warning("storage_rescued", path=str(self.store.path))

    # -- the integrity check -------------------------------------------------------------------

    def _integrity_round(self, now: datetime) -> None:
        """Take the result of a check that finished; start one when it is due. Never waits
        for a check: a round stays a few system calls while a large file is read."""
        task = self._integrity_task
        if task is not None:
            if not task.done():
                return
            self._integrity_task = None
            self._checked(task, now)
        due = self._integrity_due()
        if due is None or time.monotonic() - self._last_integrity < due:
            return
        self._last_integrity = time.monotonic()
        check = self._integrity = IntegrityCheck(self.store.path, self.store.replica_path, now)
        self._integrity_task = asyncio.ensure_future(asyncio.to_thread(check.run))

    def _integrity_due(self) -> float | None:
        """Seconds between checks now: the configured interval while the store is healthy,
        at most a minute while it is corrupt; none under another fault (a file gone, a
        full disk: a check would only see that fault again)."""
        configured = self.integrity_interval.total_seconds() if self.integrity_interval is not None else None
        problem = self.guard.problem
        if problem is None:
            return configured
        if problem == StorageProblem.CORRUPT:
            return INTEGRITY_INTERVAL if configured is None else min(configured, INTEGRITY_INTERVAL)
        return None

    def _checked(self, task: asyncio.Future[list[str]], now: datetime) -> None:
        check = self._integrity
        seconds = check.seconds if check is not None else None
        try:
            problems = task.result()
        except STORAGE_ERRORS as e:
            if classify(e) != StorageProblem.CORRUPT:
                # busy, interrupted, a file that cannot be opened: not evidence of damage
                self._count_check("error", now, seconds, str(e))
                log.warning("store_check_failed", error=str(e))
                return
            problems = [str(e)]
        except Exception as e:  # noqa: BLE001 - a bug in the check must not end the watch
            self._count_check("error", now, seconds, repr(e))
            log.exception("store_check_failed")
            return
        if problems == ["ok"]:
            self._count_check("ok", now, seconds, None)
            g = self.guard
            # only a check begun after the damage was seen speaks for the file as it is now
            if g.problem == StorageProblem.CORRUPT and check is not None and g.since is not None and check.started >= g.since:
                self._clean_check = True
                log.warning("store_check_clean", seconds=seconds)
            return
        self._count_check("damaged", now, seconds, problems[0])
        self._clean_check = False
        log.error("store_check_damaged", problems=problems[:5], seconds=seconds)
        self.guard.damaged(f"quick_check: {problems[0]}", now)

    def _count_check(self, result: str, now: datetime, seconds: float | None, detail: str | None) -> None:
        self.metrics.store_checks.labels(result).inc()
        self.last_check = {"at": iso_utc(now), "result": result, "seconds": seconds, "detail": detail}

    def stop_checks(self) -> None:
        """A check still reading stops now (at shutdown: the thread must not hold the exit)."""
        if self._integrity is not None:
            self._integrity.interrupt()

    def _probe(self, now: datetime) -> None:
        try:
            self.store.probe(now)
        except STORAGE_ERRORS as e:
            self.guard.failed(e, now)
            return
        self.guard.probe_succeeded(now)

    def _retry_held(self) -> None:
        exits = self._held_exits
        while self.held:
            item = self.held[0]
            try:
                item.commit()
            except STORAGE_ERRORS as e:
                self.guard.failed(e, self.clock())
                break
            self.held.pop(0)
            self._held_exits -= int(item.exit_tap)
            log.warning("tap_commit_recovered", **{k: v for k, v in item.what.items() if k != "event"})
        self.metrics.uncommitted.set(len(self.held))
        if self._held_exits != exits:
            self._mirror()

    async def _retry_owed(self) -> None:
        for write in self.owed:
            if not await write():  # it told the guard why (failed): probed again next round
                break

    def _drain_changes(self) -> None:
        for change in self.guard.take_changes():
            if change.problem is None:
                log.warning("storage_recovered")
            else:
                log.error("storage_fault", problem=change.problem.value, detail=change.detail)
            self._pending_alarms.append(change)
            for listener in self.on_change:
                listener(change)
        self.metrics.storage_ok.set(1 if self.guard.ok else 0)

    def _report_alarms(self) -> None:
        while self._pending_alarms:
            change = self._pending_alarms[0]
            kind = "storage_recovered" if change.problem is None else "storage_fault"
            try:
                self.store.emit(
                    "alarm",
                    self.clock(),
                    kind=kind,
                    detail=change.detail or "",
                    problem=change.problem.value if change.problem else None,
                    since=iso_utc(change.at),
                )
            except STORAGE_ERRORS as e:
                self.guard.failed(e, self.clock())
                return
            self._pending_alarms.pop(0)

    def _report_unrecorded(self) -> None:
        """The exits dropped beyond the bound, in one alarm, after the held commits (their
        own events come first, in the order they happened)."""
        if not self.unrecorded or self.held:
            return
        gates = dict(sorted(self.unrecorded.items()))
        count = sum(u.count for u in gates.values())
        why = {
            BEYOND_BOUND: f"more than {self.max_held_exits} were waiting to be written",
            UNREADABLE: "the store could not be read to tell whose card it was",
            RESTARTED: "the daemon stopped before the store could record them",
        }
        first, last = min(u.first for u in gates.values()), max(u.last for u in gates.values())
        by_gate = {g: u.count for g, u in gates.items()}
        try:
            with self.store.transaction() as tx:
                tx.emit(
                    "alarm",
                    self.clock(),
                    gate=None,
                    kind="exits_not_recorded",
                    detail=f"{count} exits opened during a storage fault were not recorded: "
                    + "; ".join(text for key, text in why.items() if key in self._unrecorded_why),
                    count=count,
                    gates=by_gate,
                    since=iso_utc(first),
                    until=iso_utc(last),
                )
                # whoever went out is not known: nobody who came in before is known inside
                unrecorded_exits.record(tx.conn, self.store.daemon_id, by_gate, self.zones, first, last)
        except STORAGE_ERRORS as e:
            self.guard.failed(e, self.clock())
            return
        log.warning("exits_not_recorded", count=count, gates={g: u.count for g, u in gates.items()})
        self.unrecorded.clear()
        self._unrecorded_why.clear()
        self._mirror()

    # -- backups -----------------------------------------------------------------------------

    def _backup_due(self, interval: float) -> bool:
        if self._last_backup is not None:
            return time.monotonic() - self._last_backup >= interval
        if time.monotonic() < self._first_backup_at:
            return False
        # This run's first: by the age of the copy on disk, not the time since the start —
        # a box restarted more often than the interval (switched off at night, upgraded)
        # would otherwise never have one.
        written = self.backup_written_at()
        if written is None:
            return True
        age = (datetime.now(UTC) - written).total_seconds()
        return not 0 <= age < interval  # one dated ahead (a clock set back since) is not fresh

    def backup_written_at(self) -> datetime | None:
        """When the copy at `backup_path` was written (its mtime), None if there is none."""
        try:
            return datetime.fromtimestamp(os.stat(self.backup_path).st_mtime, UTC)
        except OSError:
            return None

    async def _maybe_backup(self) -> None:
        if self.backup_interval is None or not self._backup_due(self.backup_interval.total_seconds()):
            return
        self._last_backup = time.monotonic()
        try:
            await asyncio.to_thread(backup, self.store.path, self.backup_path)
        except STORAGE_ERRORS as e:
            log.error("backup_failed", path=str(self.backup_path), error=str(e))
            return
        log.info("backup_written", path=str(self.backup_path))

    def as_dict(self) -> dict[str, object]:
        interval = self.integrity_interval.total_seconds() if self.integrity_interval is not None else None
        return {
            **self.guard.as_dict(),
            "held_commits": len(self.held),
            "held_exits": self._held_exits,
            "max_held_exits": self.max_held_exits,
            "exits_not_recorded": dict(sorted(self.unrecorded_total.items())),
            "exits_mirror": None if self.mirror is None else
            {"path": str(self.mirror.path), "write_failures": self.mirror.failures},
            "backup": str(self.backup_path),
            "backup_written_at": None if (at := self.backup_written_at()) is None else iso_utc(at),
            "integrity": {"interval": interval, "running": self._integrity_task is not None, "last": self.last_check},
        }


__all__ = ["MAX_HELD_EXITS", "HeldCommit", "StorageWatch", "UnrecordedExits"]
