"""recheck(): the taps a gate decided while its own history of the day was missing, looked
at again once it is back. Pure: the taps, what is now known of the day and the gates in;
what to repair out.

A gate whose ledger was lost (a new box, a copy put back) asks the central system for its
own lost events (sync/store/own_history.py) and decides meanwhile without them
(DESIGN.md, "What the gate knows": it says so, `own_history_missing`). Those decisions
rested on a day that looked empty: a member who had walked in and out at the old box came
back within the re-entry grace and paid a second walk-in; a single-use QR code used there
was let in again; a member the old box had let in passed hard anti-passback. When the
history is back, each such tap (`GapTap`: granted, passed, a member's entry) is decided
again on the points the history bears on, in decide()'s order (SCENARIOS.md, "Deciding a
tap"), reusing its predicates — never a second copy of the rules:

1. its QR code used in the lost part before it (`qr_replayed` then) → the site's alarm for
   a single-use code used twice (`qr_double_use`): the entry happened, nothing to undo;
2. a hard anti-passback gate and the member inside then (rules.decide.is_inside) → an
   alarm for the desk (`anti_passback_missed`): nothing to undo either, the charge stands
   (the member came in);
3. a walk-in charge where step 3 of decide() now grants a free re-entry (within the
   gate's grace, or after an evacuation: rules.decide.free_reentry) → the charge refunded.

The same applies to the taps a gate decided before it had heard what another daemon of the
site did earlier (a restart, a split of the site's network: the peer's events come after
the tap). A charge the rules would not have taken is given back: a walk-in the peer's
earlier entry makes a free re-entry, or the charge of a booking the peer had already let
the member in on (`KnownDay.attended`: step 2 would have passed it by) where the member
was free to come back (step 3). Those rechecks give back charges only.

A tap is repaired by its first finding only (a denial ends decide() there). The presence a
tap is decided again at is built from every passage now known before the instant the
rules decided it — the lost part's, the site's other daemons', the gap's own (an exit
taken at the new box counts) — never the tap's own passage, which came after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from rules.decide import ZonePresence, free_reentry, is_inside, within_reentry_grace
from rules.model import AntiPassback, Direction, Gate, Site


class Why(StrEnum):
    """What the history showed (the reason code of a finding)."""

    REENTRY_GRACE = "reentry_grace"  # an entry into the zone within the gate's grace before
    EVACUATED = "evacuated"  # the member's visit was cut short by an evacuation that day
    QR_USED = "qr_used"  # the QR code was used before, in the lost part
    ANTI_PASSBACK = "anti_passback"  # hard anti-passback: the member was inside the zone


class Remedy(StrEnum):
    """What the gate does about it."""

    REFUND = "refund"  # the charge given back (a `deduction`, cause `refund`)
    QR_DOUBLE_USE = "qr_double_use"  # an alarm: a single-use code used twice
    ANTI_PASSBACK_MISSED = "anti_passback_missed"  # an alarm for the desk


@dataclass(frozen=True, slots=True)
class Passage:
    member: str
    zone: str
    direction: Direction
    at: datetime


@dataclass(frozen=True, slots=True)
class Charge:
    """The tap's charge, not given back yet."""

    seq: int
    pass_id: str
    amount: Decimal
    cause: str  # walk_in, booking


@dataclass(frozen=True, slots=True)
class GapTap:
    """A member's entry this gate granted and saw pass while its history was missing."""

    seq: int  # its access event
    gate: str
    member: str
    decided_at: datetime
    token: str | None = None  # a QR code's token id
    charge: Charge | None = None
    booking: str | None = None  # the booking it was let in on


@dataclass(frozen=True, slots=True)
class KnownDay:
    """What is known of the day now that the history is back."""

    passages: tuple[Passage, ...] = ()  # in the order they were recorded
    qr_used: Mapping[str, datetime] = field(default_factory=dict)  # the lost part's QR codes: first use
    evacuations: tuple[datetime, ...] = ()  # when each began
    attended: Mapping[str, datetime] = field(default_factory=dict)  # bookings another daemon let in on: when


@dataclass(frozen=True, slots=True)
class Finding:
    tap: GapTap
    remedy: Remedy
    why: Why
    since: datetime | None = None  # the known fact it rests on: the earlier entry, use or evacuation


def presence_at(day: KnownDay, member: str, zone: str, at: datetime) -> ZonePresence:
    """The member's presence in `zone` as decide() would have read it at `at`, from the
    passages known before that instant."""
    last: Passage | None = None
    last_entry: datetime | None = None
    for p in day.passages:
        if p.member != member or p.zone != zone or p.at >= at:
            continue
        if last is None or p.at >= last.at:
            last = p
        if p.direction == Direction.IN and (last_entry is None or p.at > last_entry):
            last_entry = p.at
    evacuations = [e for e in day.evacuations if e <= at]
    return ZonePresence(
        last_at=last.at if last else None,
        last_direction=last.direction if last else None,
        last_entry_at=last_entry,
        evacuated_at=max(evacuations, default=None),
    )


def recheck_tap(tap: GapTap, day: KnownDay, gate: Gate, site: Site) -> Finding | None:
    """One tap decided again on what the history bears on; None: it stands."""
    if gate.direction != Direction.IN:
        return None
    now = tap.decided_at
    # 1. the credential: a single-use code used before
    used = day.qr_used.get(tap.token) if tap.token is not None else None
    if used is not None and used <= now:
        return Finding(tap, Remedy.QR_DOUBLE_USE, Why.QR_USED, used)
    presence = presence_at(day, tap.member, gate.zone, now)
    # 1. hard anti-passback: the member inside
    if gate.anti_passback == AntiPassback.HARD and is_inside(presence, now, site):
        return Finding(tap, Remedy.ANTI_PASSBACK_MISSED, Why.ANTI_PASSBACK, presence.last_entry_at)
    # 3. a free re-entry where a walk-in was charged (a booking that matched came first, step 2)
    c = tap.charge
    if c is not None and c.amount > 0 and charged_again(tap, c, day) and free_reentry(presence, gate, site, now):
        if within_reentry_grace(presence, gate, now):
            return Finding(tap, Remedy.REFUND, Why.REENTRY_GRACE, presence.last_entry_at)
        return Finding(tap, Remedy.REFUND, Why.EVACUATED, presence.evacuated_at)
    return None


def charged_again(tap: GapTap, c: Charge, day: KnownDay) -> bool:
    """A charge step 3 decides: a walk-in's, or a booking's whose booking another daemon had
    let the member in on before (step 2 matches a booking not attended yet only)."""
    if c.cause == "walk_in":
        return True
    first = day.attended.get(tap.booking) if c.cause == "booking" and tap.booking is not None else None
    return first is not None and first < tap.decided_at


def recheck(taps: Iterable[GapTap], day: KnownDay, gates: Mapping[str, Gate], site: Site) -> tuple[Finding, ...]:
    """Every tap of the gap decided again, in order; a tap at a gate not configured (its
    rules unknown) stands."""
    out = []
    given: set[int] = set()  # charges given back: each once, whichever taps name it
    for tap in taps:
        gate = gates.get(tap.gate)
        found = recheck_tap(tap, day, gate, site) if gate is not None else None
        if found is None:
            continue
        if found.remedy is Remedy.REFUND and found.tap.charge is not None:
            if found.tap.charge.seq in given:
                continue
            given.add(found.tap.charge.seq)
        out.append(found)
    return tuple(out)


__all__ = ["Charge", "Finding", "GapTap", "KnownDay", "Passage", "Remedy", "Why", "charged_again", "presence_at",
           "recheck", "recheck_tap"]
