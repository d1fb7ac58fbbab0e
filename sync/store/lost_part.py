"""The part of this daemon's own ledger that was lost (a box replaced, a copy put back:
sync/store/own_history.py, sync/store/numbering.py), as the no-show walk sees it
(Ledger.run_due): which classes' no-shows wait for the lost events, and which, the wait
over, are settled naming this daemon as not heard. Pure but for one read of the ledger's
meta (`of`)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from rules.model import Booking, Policy
from rules.model import Site as SiteModel
from rules.schedule import reached_by
from sync.store import own_history
from sync.store.rows import dt, ts


@dataclass(frozen=True, slots=True)
class LostPart:
    """This daemon's own events that a lost ledger held (a box replaced, a copy put back:
    sync/store/own_history.py). An attendance among them, or the member on site earlier
    that day, makes a class no no-show, or its no-show no fee: so this daemon is, for the
    classes they bear on (rules.schedule.reached_by), a daemon not heard. Their no-shows
    wait while the events are wanted (`waiting`: the classes starting before its first
    instant whose no-show fell due after the restore, its second — those due by then are
    _unsure_after_restore's); once the wait ran out (own_history.WAIT after the loss) they
    are settled naming this daemon (`unheard`), as no-shows settled past an unheard
    peer's `peer_wait_limit` name it."""

    waiting: tuple[float, float] | None  # (starting before, due after), POSIX seconds
    given_up: tuple[float, ...]  # the classes starting before one of these are settled unheard

    @classmethod
    def of(
        cls, conn: sqlite3.Connection, site: SiteModel, policy: Policy, now: datetime, restored: float | None,
    ) -> LostPart | None:
        wanted, gone = own_history.wanted(conn), own_history.given_up(conn)
        if wanted is None and gone is None:
            return None
        waiting = None
        given_up = [] if gone is None else [ts(reached_by(gone, site.timezone, policy))]
        if wanted is not None:
            found = cls.found(wanted, restored)
            reach = ts(reached_by(found, site.timezone, policy))
            if now < wanted.expires:
                end = restored if restored is not None else ts(found)
                waiting = (reach, end - policy.no_show_after.total_seconds())
            else:  # the link gives up on them at the same time (sync/link/own_history.py)
                given_up.append(reach)
        return cls(waiting, tuple(given_up))

    def holds(self, b: Booking) -> bool:
        """`b`'s no-show waits for the lost events."""
        return self.waiting is not None and ts(b.starts_at) < self.waiting[0] and ts(b.ends_at) > self.waiting[1]

    def unheard(self, b: Booking) -> bool:
        """`b`'s no-show is settled without the lost events: it names this daemon."""
        return any(ts(b.starts_at) < r for r in self.given_up)

    @staticmethod
    def found(wanted: own_history.Wanted, restored: float | None) -> datetime:
        """Where the lost part ends: by the loss's finding — and at least at the last event
        of it that was sent (RESTORED_KEY, a copy put back), whatever the clock said then."""
        return wanted.found_at if restored is None else max(wanted.found_at, dt(restored))


__all__ = ["LostPart"]
