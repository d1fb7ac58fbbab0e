"""What the central system sends, in domain terms: passes with the seq their balance
reflects, and batches of changes (a delta, a look-up answer, a scenario's sync step)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rules.model import Booking, Member, Pass


@dataclass(frozen=True, slots=True)
class PassRecord:
    """A pass as the central system sends it, with the seq its balance already reflects."""

    pass_: Pass
    applied_seq: int | None = None


@dataclass(frozen=True, slots=True)
class SyncBatch:
    members: Sequence[Member] = ()
    passes: Sequence[PassRecord] = ()
    bookings: Sequence[Booking] = ()
    remove_members: Sequence[str] = ()
    remove_passes: Sequence[str] = ()
    remove_bookings: Sequence[str] = ()
