"""Time-driven work: what falls due as the clock moves (no-shows, loyalty credit).

Pure: the store hands in the candidate bookings, these functions say what is due and in
which order; the store carries it out in one transaction per item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from rules.model import Booking, BookingStatus, DeductOn, Pass, Policy
from rules.timeutil import local_date, start_of_local_day

# a site's evacuation: when it began, when the all-clear came (None: not yet)
Evacuation = tuple[datetime, datetime | None]


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
    """Everything due up to and including `now`, in due order, ties by booking id (SCENARIOS.md,
    "Events"): a no-show and another booking's loyalty due at one instant go by their ids."""
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
    work.sort(key=lambda w: (w.due_at, w.booking.id, w.kind != WorkKind.NO_SHOW))
    return work


@dataclass(frozen=True, slots=True)
class NoShowHorizon:
    """How far no-shows may be settled now: bookings that ended at or before `ends_by`.
    `forced`: the site's other daemons were waited for as long as allowed, and the
    bookings up to `ends_by` are settled without having heard them."""

    ends_by: datetime
    forced: bool = False


def no_show_horizon(
    now: datetime, policy: Policy, heard_through: datetime | None, wait_limit: timedelta
) -> NoShowHorizon:
    """A booking is a no-show once it is still booked `no_show_after` past its end — and,
    on a site whose turnstiles are several daemons, once every other daemon is heard past
    its end (`heard_through`; None when there is no other daemon): an attendance taken at
    another turnstile and not heard yet must not become a no-show and a fee here. The
    wait is bounded: a daemon unheard for `wait_limit` past the due time does not hold
    the books for ever (the no-shows then say so)."""
    due = now - policy.no_show_after
    if heard_through is None or heard_through >= due:
        return NoShowHorizon(due)
    floor = due - wait_limit
    if heard_through < floor:
        return NoShowHorizon(floor, forced=True)
    return NoShowHorizon(heard_through)


def known_through(horizon: NoShowHorizon, instant: datetime) -> NoShowHorizon:
    """`horizon`, held back to the classes that ended by `instant`: what the gate knows of
    the bookings is known right only up to then (a replica behind the central system's
    deltas may miss a booking cancelled since: a class that ended after it waits, as for a
    daemon of the site not heard)."""
    return horizon if horizon.ends_by <= instant else NoShowHorizon(instant, horizon.forced)


def reached_by(instant: datetime, tz: ZoneInfo, policy: Policy) -> datetime:
    """What happened before `instant` bears on the no-show of every class starting before
    the instant returned (and of none after): an attendance (a tap in the arrival window,
    a linked early arrival the same day, the desk's mark) or the member on site that day
    (no_show_fee's `was_on_site` looks from the start of the class's local day). So the
    start of the local day after `instant`'s — or, if later, `instant` + `link_window`:
    a class just after midnight whose arrival window opens the evening before (a gate's
    `early_arrival` is minutes, well within the link window)."""
    next_day = start_of_local_day(local_date(instant, tz) + timedelta(days=1), tz)
    return max(next_day, instant + policy.link_window)


def no_show_fee(
    b: Booking, p: Pass | None, policy: Policy, was_on_site: bool,
    evacuations: Sequence[Evacuation] = (),
) -> Decimal:
    """The fee for a no-show: only for bookings the gate was to charge, capped at the balance.

    Someone who came in that day before the class ended was on site: one access covers
    the day (SPORTRICK scenario 2), so no fee. So was, for this purpose, someone who may
    have come in: granted that day, the turnstile released, and nobody could see whether
    they went through (`passage_unconfirmed`) — the gate does not guess a charge either way;
    `was_on_site` is either. Nor is there one for a class the site was
    evacuated during (`evacuations`: begun, ended or None): the gate kept its members out,
    or the class was cut short.
    """
    if policy.no_show_fee <= 0 or was_on_site or p is None or b.deducted or evacuated_during(b, evacuations):
        return Decimal(0)
    if p.deduct_on != DeductOn.ACCESS or not p.kind.has_balance:
        return Decimal(0)
    balance = p.balance if p.balance is not None else Decimal(0)
    return max(Decimal(0), min(policy.no_show_fee, balance))


def evacuated_during(b: Booking, evacuations: Sequence[Evacuation]) -> bool:
    """The site was evacuated at some moment of the class (from its start to its end). An
    evacuation that ended before the start left the arrival window's last minutes open."""
    return any(start < b.ends_at and (end is None or end > b.starts_at) for start, end in evacuations)
