"""Time-driven work: what falls due as the clock moves (no-shows, loyalty credit).

Pure: the store hands in the candidate bookings, these functions say what is due and in
which order; the store carries it out in one transaction per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from rules.model import Booking, BookingStatus, DeductOn, Pass, Policy


class WorkKind(StrEnum):
    NO_SHOW = "no_show"
    LOYALTY = "loyalty"


@dataclass(frozen=True, slots=True)
class DueWork:
    due_at: datetime
    kind: WorkKind
    booking: Booking


def no_show_due_at(b: Booking, policy: Policy) -> datetime:
    return b.ends_at + policy.no_show_after


def loyalty_due_at(b: Booking, policy: Policy) -> datetime:
    return b.ends_at + policy.loyalty_delay


def due_work(
    booked: list[Booking], attended_uncredited: list[Booking], policy: Policy, now: datetime
) -> list[DueWork]:
    """Everything due up to and including `now`, in due order (then kind, then booking id)."""
    work = [
        DueWork(no_show_due_at(b, policy), WorkKind.NO_SHOW, b)
        for b in booked
        if b.status == BookingStatus.BOOKED and no_show_due_at(b, policy) <= now
    ]
    work += [
        DueWork(loyalty_due_at(b, policy), WorkKind.LOYALTY, b)
        for b in attended_uncredited
        if b.status == BookingStatus.ATTENDED and b.loyalty_points and loyalty_due_at(b, policy) <= now
    ]
    work.sort(key=lambda w: (w.due_at, w.kind != WorkKind.NO_SHOW, w.booking.id))
    return work


def no_show_fee(b: Booking, p: Pass | None, policy: Policy, was_on_site: bool) -> Decimal:
    """The fee for a no-show: only for bookings the gate was to charge, capped at the balance.

    Someone who came in that day before the class ended was on site: one access covers
    the day (SPORTRICK scenario 2), so no fee.
    """
    if policy.no_show_fee <= 0 or was_on_site or p is None or b.deducted:
        return Decimal(0)
    if p.deduct_on != DeductOn.ACCESS or not p.kind.has_balance:
        return Decimal(0)
    balance = p.balance if p.balance is not None else Decimal(0)
    return max(Decimal(0), min(policy.no_show_fee, balance))
