"""A batch of changes from the central system (a delta, a look-up answer, a scenario's
sync step, a seed file), as validated records (sync/records.py): entries replace by id,
whole; removals by id. A pass's `applied_seq` is the highest seq of this daemon's events
its balance already reflects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sync.records import BookingIn, MemberIn, PassIn


@dataclass(frozen=True, slots=True)
class SyncBatch:
    members: Sequence[MemberIn] = ()
    passes: Sequence[PassIn] = ()
    bookings: Sequence[BookingIn] = ()
    remove_members: Sequence[str] = ()
    remove_passes: Sequence[str] = ()
    remove_bookings: Sequence[str] = ()
