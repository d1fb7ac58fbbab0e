"""Rotations while the daemon was not reading: the thin shell over drivers/outputs/downtime.py.

A daemon that is not running reads no passage input. Where the gate's board counts the
passage pulses itself (`passage_counter`), the daemon keeps the last count it saw of it in
the ledger (sync/store/counter_marks.py) and, when it starts, compares the board's first
reading with it:

- n ahead (plausibly: downtime.plausible) — n people went through unread, between the
  last count kept and the first reading: one `alarm` `rotations_while_down` (`gate`,
  `direction`, `count`, `since`, `until`) for the central system and the desk. At an exit,
  n people left unrecorded: recorded as exits that opened unrecorded in the gate's zone
  (sync/store/unrecorded_exits.py: occupancy n fewer, hard anti-passback no longer sure
  who is inside), in the same transaction, and the site's other daemons do the same when
  they hear it. At an entry, somebody came in unrecorded: the desk is told (like a
  `passage_without_grant`); who it was is not known, so no member is counted inside and
  no capacity place is held (nothing could ever take an anonymous person off again). With
  the gate held released (a fire alarm, an emergency release, a hand's hold: as it stood
  at the first reading, which is as the stored safety state left it), the detail says so:
  evacuees, not for the desk to settle one by one.
- behind, or further ahead than plausible — the board restarted (or was replaced) while
  the daemon was away: `rotations_while_down_unknown`; how many went through is not
  known and the gate does not pretend it is (no exits counted, nothing re-based silently).
- a board with no counter cannot tell: `gated status` says so for the gate (`while_down`).

The alarm, its effects and the new mark are one transaction: a restart right after does
not report them again, a crash before the commit reports them at the next start. A board
that does not answer at start is compared at its first reading, whenever it comes; a
release written before that reading was sampled leaves the step unknown (its person may
be among them). A gate's controller made anew (a reload that changed its board) is
compared again: the board's identity keys the mark, so another board is a new baseline.

The marks ride on commits that happen anyway (Transactions.riders: every transaction that
writes events — each rotation the daemon sees is one — and the clock's once-a-minute
floor), and are written once more at a clean stop: never a commit or an fsync of their own
on a tap's path. A count is kept only once the gate has handed on its alarms (a rotation no
grant claimed is recorded by its alarm's commit, which then carries the count). So after a kill, the interval begins at the last commit that carried the
count (at most a minute before the kill while the clock is trusted). A rotation seen and
not committed when the daemon was killed (a grant's, cut by the kill) is counted here too,
and may also come back as `passage_unconfirmed`: reported twice, never lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from drivers.outputs.downtime import Mark, WhileDown, board_identity, compare
from drivers.outputs.gate import GateController
from gated.metrics import Metrics
from gated.storage_watch import StorageWatch
from rules.timeutil import iso_utc
from sync.store import Store, Transaction, counter_marks, unrecorded_exits
from sync.store.faults import STORAGE_ERRORS

log = structlog.get_logger("gated")

COUNTED = "rotations_while_down"
UNKNOWN = "rotations_while_down_unknown"


@dataclass(frozen=True, slots=True)
class GateSide:
    zone: str
    direction: str  # "in" or "out"


class RotationsWhileDown:
    def __init__(self, controllers: Mapping[str, GateController], gates: Callable[[], Mapping[str, GateSide]],
                 metrics: Metrics, clock: Callable[[], datetime], trusted: Callable[[], bool]) -> None:
        self.controllers = controllers
        self.gates = gates
        self.metrics = metrics
        self.clock = clock
        self.trusted = trusted
        self.store: Store | None = None
        self.storage: StorageWatch | None = None
        self.daemon_id = ""
        self._compared: dict[str, GateController] = {}  # the controller whose first reading was compared
        self._written: dict[str, int] = {}  # the count last written for each gate
        self.last: dict[str, dict[str, Any]] = {}  # each gate's last finding, for `gated status`

    def attach(self, store: Store, storage: StorageWatch) -> None:
        self.store, self.storage, self.daemon_id = store, storage, store.daemon_id
        store.riders.append(self.ride)
        try:
            self.check()
        except Exception:  # never the reason a daemon does not start
            log.exception("rotations_while_down_failed")

    def check(self) -> None:
        """Every gate whose board has been read for the first time since its controller
        started, and not compared yet: compared now (at start, then from the scheduler)."""
        if self.store is None or (self.storage is not None and not self.storage.ok):
            return
        for gid, ctl in list(self.controllers.items()):
            board = board_identity(ctl.cfg)
            if board is None or self._compared.get(gid) is ctl or ctl.first_count is None:
                continue
            try:
                self._compare(gid, ctl, board)
            except STORAGE_ERRORS as e:
                if self.storage is not None:
                    self.storage.failed(e, "rotations while down")
                return  # compared again at the next check: nothing was recorded

    def _wall(self, ctl: GateController, monotonic: float) -> float:
        return self.clock().timestamp() - max(0.0, ctl.clock() - monotonic)

    def _compare(self, gid: str, ctl: GateController, board: str) -> None:
        assert self.store is not None and ctl.first_count is not None
        first = ctl.first_count
        stored = counter_marks.read(self.store.conn, board)
        mark = Mark(board, *stored) if stored is not None else None
        first_at = self._wall(ctl, first.at)
        found = compare(mark, board, first.count, first_at, released_before=first.released_before,
                        clock_trusted=self.trusted())
        side = self.gates().get(gid)
        now = self.clock()
        with self.store.transaction() as tx:
            if found is not None and side is not None:
                self._record(tx, gid, side, found, first.released_for, now)
            # the count compared is the baseline; what came after it is the running gate's to record
            self._write(tx, gid, board, first.count, self._wall(ctl, first.at))
        self._compared[gid] = ctl
        if found is not None:
            kind = COUNTED if found.people is not None else UNKNOWN
            self.metrics.alarms.labels(gid, kind).inc()
            self.metrics.rotations_while_down.labels(gid, "counted" if found.people is not None else "unknown").inc(
                found.people if found.people is not None else 1)
            self.last[gid] = {"kind": kind, "count": found.people, "since": iso_utc(_dt(found.since)),
                              "until": iso_utc(_dt(found.until)), "at": iso_utc(now)}
        elif mark is None:
            log.info("counter_baseline", gate=gid, board=board, count=first.count)

    def _record(self, tx: Transaction, gid: str, side: GateSide, found: WhileDown, released_for: str | None,
                now: datetime) -> None:
        since, until = _dt(found.since), _dt(found.until)
        span = f"between {iso_utc(since)} and {iso_utc(until)}"
        if found.people is None:
            detail = (f"rotations while the daemon was not running are not known {span}: {found.why}; "
                      "whoever went through then was not recorded")
            tx.emit("alarm", now, gate=gid, kind=UNKNOWN, detail=detail, direction=side.direction,
                    since=iso_utc(since), until=iso_utc(until))
            log.warning("alarm", gate=gid, kind=UNKNOWN, detail=detail)
            return
        n = found.people
        way = "out" if side.direction == "out" else "in"
        detail = f"{n} rotation(s) while the daemon was not running ({way}), {span}, counted by the board"
        if released_for is not None:
            detail += f", while the gate stood released for {released_for}"
        tx.emit("alarm", now, gate=gid, kind=COUNTED, detail=detail, direction=side.direction, count=n,
                since=iso_utc(since), until=iso_utc(until))
        log.warning("alarm", gate=gid, kind=COUNTED, detail=detail, count=n)
        if side.direction == "out":
            # whoever went out is not known: nobody who came in before is known inside
            unrecorded_exits.record(tx.conn, self.daemon_id, {gid: n}, {gid: side.zone}, since, until)

    def _write(self, tx: Transaction, gid: str, board: str, count: int, at: float) -> None:
        counter_marks.write(tx.conn, board, count, at, gid)
        self._written[gid] = count

    def ride(self, tx: Transaction, *, every: bool = False) -> None:
        """On a commit that happens anyway: the count of each compared gate that moved
        since it was last written (`every`: each one, its time refreshed). Not while the
        gate still has alarms to hand on: a rotation no grant claimed is recorded by its
        alarm's commit, and a count kept before it would hide it from the next start if the
        daemon were killed in between (that commit carries the count instead)."""
        for gid, ctl in list(self.controllers.items()):
            board = board_identity(ctl.cfg)
            seen = ctl.count_seen
            if board is None or seen is None or self._compared.get(gid) is not ctl or ctl.alarms_pending:
                continue
            if every or self._written.get(gid) != seen[0]:
                self._write(tx, gid, board, seen[0], self._wall(ctl, seen[1]))

    def refresh(self, tx: Transaction) -> None:
        self.ride(tx, every=True)

    def stop(self) -> None:
        """A clean stop: the last counts seen, so the next start's interval begins here."""
        if self.store is None or not self._compared:
            return
        try:
            with self.store.transaction() as tx:
                self.ride(tx, every=True)
        except STORAGE_ERRORS as e:
            log.warning("counter_marks_unwritten", error=str(e))

    def as_dict(self, gid: str) -> dict[str, Any]:
        """`gated status`: whether this gate can tell rotations while the daemon is down."""
        ctl = self.controllers.get(gid)
        board = board_identity(ctl.cfg) if ctl is not None else None
        if board is None:
            return {"counted": False, "detail": "not known: the board has no passage counter (passage_counter); "
                    "rotations while the daemon is not running cannot be told"}
        out: dict[str, Any] = {"counted": True, "board": board,
                               "compared": ctl is not None and self._compared.get(gid) is ctl}
        if gid in self.last:
            out["last"] = self.last[gid]
        return out


def _dt(posix: float) -> datetime:
    return datetime.fromtimestamp(posix, UTC)


__all__ = ["COUNTED", "UNKNOWN", "GateSide", "RotationsWhileDown"]
