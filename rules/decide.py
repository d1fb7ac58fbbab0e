"""decide(): the gate's answer to one tap. Pure: the view, the gate and the clock in; a
Decision out. The shell (gated/) loads the view, drives the relay and commits the result.

The order of the checks is the behaviour contract (SCENARIOS.md, "Deciding a tap"); each
numbered step below is one paragraph of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from rules.credential import CredentialKind
from rules.model import (
    AntiPassback,
    Booking,
    BookingStatus,
    DeductOn,
    Direction,
    EarlyEntry,
    Gate,
    Member,
    MemberStatus,
    Pass,
    PassKind,
    Policy,
    Site,
)
from rules.reasons import PASS_FAILURE_RANK, Reason
from rules.timeutil import local, local_date

# A phone clock a little ahead of the gate's should not make a fresh QR code unusable.
QR_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class QrClaim:
    """What a verified QR token says. Verification (signature, key id) is the shell's job."""

    token_id: str
    member: str
    issued: datetime
    expires: datetime
    booking: str | None = None


@dataclass(frozen=True, slots=True)
class Presented:
    """The credential as the rules need it: a card, or a QR token after verification."""

    kind: CredentialKind
    qr: QrClaim | None = None  # kind qr: None when the token failed verification
    qr_seen_before: bool = False
    # `now` is only a lower bound of the real time (the gate's clock not trusted): a token
    # issued after it is no sign of forgery
    now_is_lower_bound: bool = False
    # the desk's choice when checking a member in by hand: among the bookings that match,
    # this one; among the usable passes, this one
    prefer_booking: str | None = None
    prefer_pass: str | None = None

    @classmethod
    def card(cls) -> Presented:
        return cls(CredentialKind.CARD)

    @classmethod
    def desk(cls, booking: str | None = None, pass_id: str | None = None) -> Presented:
        return cls(CredentialKind.DESK, prefer_booking=booking, prefer_pass=pass_id)


@dataclass(frozen=True, slots=True)
class ZonePresence:
    """The member's last passages through a zone's gates (any daemon of the site), and the
    site's last evacuation (a fire alarm or an emergency release: sync/store/evacuation.py)."""

    last_at: datetime | None = None
    last_direction: Direction | None = None
    last_entry_at: datetime | None = None
    evacuated_at: datetime | None = None
    # the last exit through the zone's gates that opened unrecorded (a storage fault): whoever
    # went out is not known, so no entry before it proves its member is still inside
    exit_unrecorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MemberView:
    """Everything decide() may look at for one member; loaded by the store per tap.

    `passes` are the member's passes with their *local* balances; `bookings` the member's
    bookings around now with their effective status; `presence` per zone.
    """

    member: Member | None
    passes: tuple[Pass, ...] = ()
    bookings: tuple[Booking, ...] = ()
    presence: Mapping[str, ZonePresence] = field(default_factory=dict)
    extra_passes: Mapping[str, Pass] = field(default_factory=dict)  # booking passes not the member's

    def pass_by_id(self, pass_id: str) -> Pass | None:
        for p in self.passes:
            if p.id == pass_id:
                return p
        return self.extra_passes.get(pass_id)


@dataclass(frozen=True, slots=True)
class Decision:
    granted: bool
    reason: Reason
    member: str | None = None
    booking: str | None = None
    pass_id: str | None = None
    amount: Decimal = Decimal(0)  # taken from pass_id once passage is confirmed
    cause: str | None = None  # deduction cause: walk_in | booking
    anti_passback: bool | None = None  # soft gates only: was the member already inside?
    hint: Mapping[str, str] = field(default_factory=dict)  # facts for the human message

    @property
    def attends_booking(self) -> bool:
        return self.granted and self.booking is not None and self.reason in (
            Reason.BOOKING,
            Reason.LINKED_BOOKING,
        )


def is_inside(presence: ZonePresence | None, now: datetime, site: Site) -> bool:
    """Inside: a passed entry and no exit since, forgotten at local midnight and at an
    evacuation (nobody is known to be inside after one), and not known when an exit of the
    zone opened unrecorded after it (it may have been theirs: sync/store/unrecorded_exits.py)."""
    if presence is None or presence.last_at is None or presence.last_direction != Direction.IN:
        return False
    if presence.exit_unrecorded_at is not None and presence.last_at <= presence.exit_unrecorded_at:
        return False
    same_day = local_date(presence.last_at, site.timezone) == local_date(now, site.timezone)
    return same_day and not evacuated(presence, now, site)


def evacuated(presence: ZonePresence | None, now: datetime, site: Site) -> bool:
    """The member was inside when the site was evacuated, earlier today — their last entry
    before it, and no exit before it (they left by whatever door was nearest, with a tap at
    an exit or without one): a visit cut short, so their next entry is a free re-entry
    whatever `reentry_grace` says. They paid for the visit the alarm ended."""
    p = presence
    if p is None or p.last_at is None or p.last_entry_at is None or p.evacuated_at is None:
        return False
    inside_then = p.last_entry_at < p.evacuated_at and (p.last_direction == Direction.IN or p.last_at >= p.evacuated_at)
    same_day = local_date(p.last_entry_at, site.timezone) == local_date(now, site.timezone)
    return inside_then and p.evacuated_at <= now and same_day


def within_reentry_grace(presence: ZonePresence | None, gate: Gate, now: datetime) -> bool:
    """A passed entry into the gate's zone at most `reentry_grace` ago (inclusive). An
    entry stamped after now was stamped by a clock that was ahead (a boot before NTP,
    another daemon's): it counts as just now, not as no entry at all."""
    return (
        gate.reentry_grace > timedelta(0)
        and presence is not None
        and presence.last_entry_at is not None
        and max(now - presence.last_entry_at, timedelta(0)) <= gate.reentry_grace
    )


def free_reentry(presence: ZonePresence | None, gate: Gate, site: Site, now: datetime) -> bool:
    """Step 3: a re-entry within the grace period, or after an evacuation — free, no pass needed."""
    return within_reentry_grace(presence, gate, now) or evacuated(presence, now, site)


def _credential_problem(view: MemberView, presented: Presented, now: datetime) -> Reason | None:
    if presented.kind == CredentialKind.QR:
        claim = presented.qr
        if claim is None or (claim.issued - QR_CLOCK_SKEW > now and not presented.now_is_lower_bound):
            return Reason.INVALID_QR
        if now > claim.expires:
            return Reason.QR_EXPIRED
        if presented.qr_seen_before:
            return Reason.QR_REPLAYED
    if view.member is None:
        return Reason.UNKNOWN_CARD
    return None


def booking_cost(b: Booking, p: Pass | None) -> Decimal:
    """What the gate takes for this booking: only deduct-at-access passes not yet paid."""
    if b.deducted or p is None or not p.kind.has_balance or p.deduct_on != DeductOn.ACCESS:
        return Decimal(0)
    return b.cost


def _can_pay(b: Booking, p: Pass | None) -> bool:
    if b.deducted:
        return True
    if p is None:
        return False
    cost = booking_cost(b, p)
    return cost == 0 or (p.balance is not None and p.balance >= cost)


def matching_bookings(
    view: MemberView, gate: Gate, site: Site, policy: Policy, now: datetime
) -> list[tuple[Booking, bool]]:
    """(booking, linked) pairs that this tap may attend, best first."""
    found: list[tuple[Booking, bool]] = []
    for b in view.bookings:
        linked = _within_reach(b, gate, site, policy, now)
        if linked is None or not _can_pay(b, view.pass_by_id(b.pass_id)):
            continue
        found.append((b, linked))
    found.sort(key=lambda bl: (bl[0].starts_at, bl[0].id))
    return found


def _within_reach(b: Booking, gate: Gate, site: Site, policy: Policy, now: datetime) -> bool | None:
    """None when this tap cannot attend `b`; else whether it would be a linked arrival."""
    if b.status != BookingStatus.BOOKED or b.zone != gate.zone:
        return None
    opens, closes = gate.arrival_window(b)
    if opens <= now <= closes:
        return False
    if policy.early_entry != EarlyEntry.LINK:
        return None
    if not (b.starts_at - policy.link_window <= now < opens):
        return None
    if local_date(b.starts_at, site.timezone) != local_date(now, site.timezone):
        return None
    return True


def pass_problem(p: Pass, gate: Gate, site: Site, now: datetime) -> Reason | None:
    """Why this pass cannot pay a walk-in now; checked validity → zone → window → balance."""
    wall = local(now, site.timezone)
    day = wall.date()
    if p.kind == PassKind.MARKETPLACE:
        return Reason.BOOKING_REQUIRED
    if p.valid_from is not None and day < p.valid_from:
        return Reason.PASS_NOT_YET_VALID
    if p.valid_until is not None and day > p.valid_until:
        return Reason.PASS_EXPIRED
    if not p.covers_zone(gate.zone):
        return Reason.ZONE_NOT_ALLOWED
    if p.access_windows is None or not p.access_windows.contains(wall):
        return Reason.OUTSIDE_WINDOW
    if p.kind.has_balance and (p.balance is None or p.balance < p.entry_cost):
        return Reason.NO_BALANCE
    return None


def _walk_in_preference(p: Pass) -> tuple[int, int, str]:
    # time passes first (they cost nothing), then the pass that expires soonest
    expiry = p.valid_until.toordinal() if p.valid_until else 10**9
    return (0 if p.kind == PassKind.TIME else 1, expiry, p.id)


def _hhmm(at: datetime, site: Site) -> str:
    return local(at, site.timezone).strftime("%H:%M")


def _denial(view: MemberView, gate: Gate, site: Site, policy: Policy, now: datetime, flag: bool | None) -> Decision:
    member = view.member
    assert member is not None
    today = local_date(now, site.timezone)

    def deny(reason: Reason, **hint: str) -> Decision:
        return Decision(False, reason, member.id, anti_passback=flag, hint=hint)

    # A booking within reach whose pass is short of its cost "does not match and the rules go
    # on as if it did not exist" (SCENARIOS.md): it must not turn the denial into too_early.
    same_day = [
        b
        for b in view.bookings
        if b.zone == gate.zone
        and local_date(b.starts_at, site.timezone) == today
        and not (
            _within_reach(b, gate, site, policy, now) is not None
            and not _can_pay(b, view.pass_by_id(b.pass_id))
        )
    ]
    later = sorted(
        (b for b in same_day if b.status == BookingStatus.BOOKED and b.starts_at > now),
        key=lambda b: (b.starts_at, b.id),
    )
    if later:
        b = later[0]
        opens = gate.arrival_window(b)[0]
        if policy.early_entry == EarlyEntry.LINK and local_date(b.starts_at - policy.link_window, site.timezone) == today:
            opens = min(opens, b.starts_at - policy.link_window)
        return deny(Reason.TOO_EARLY, **{"class": b.class_name, "starts": _hhmm(b.starts_at, site), "entry_from": _hhmm(opens, site)})
    missed = sorted(
        (
            b
            for b in same_day
            if b.status in (BookingStatus.BOOKED, BookingStatus.NO_SHOW)
            and b.starts_at < now
            and now > gate.arrival_window(b)[1]
        ),
        key=lambda b: (b.starts_at, b.id),
        reverse=True,
    )
    if missed:
        b = missed[0]
        return deny(Reason.TOO_LATE, **{"class": b.class_name, "starts": _hhmm(b.starts_at, site), "closed_at": _hhmm(gate.arrival_window(b)[1], site)})
    if not view.passes:
        return deny(Reason.NO_PASS)
    walk_in_passes = [p for p in view.passes if p.kind != PassKind.MARKETPLACE]
    if not walk_in_passes:
        required = {"pass": view.passes[0].name}
        cancelled = sorted(
            (b for b in view.bookings if b.status == BookingStatus.CANCELLED and b.zone == gate.zone
             and local_date(b.starts_at, site.timezone) == today and b.ends_at > now),
            key=lambda b: (b.starts_at, b.id),
        )
        attended = sorted(
            (b for b in view.bookings if b.status == BookingStatus.ATTENDED and b.zone == gate.zone
             and b.starts_at <= now < b.ends_at),
            key=lambda b: (b.starts_at, b.id),
        )
        if attended:
            # in her class already, back from the changing room: "please book a class"
            # would tell her to do what she did (re-entry is the desk's, or reentry_grace's)
            required.update({"attended_class": attended[0].class_name, "attended_until": _hhmm(attended[0].ends_at, site)})
        elif cancelled:
            required.update({"cancelled_class": cancelled[0].class_name, "cancelled_starts": _hhmm(cancelled[0].starts_at, site)})
        elif (upcoming := _next_booked_day(view, gate, site, now)) is not None:
            # Booked, but for another day (a class just after midnight, or tomorrow's class
            # mistaken for today's): "please book a class" would tell her to do what she did.
            required.update(_upcoming_facts(upcoming, gate, site, now))
        return deny(Reason.BOOKING_REQUIRED, **required)
    best: tuple[int, Pass, Reason] | None = None
    for p in sorted(walk_in_passes, key=_walk_in_preference):
        problem = pass_problem(p, gate, site, now)
        if problem is None:  # pragma: no cover - decide() would have granted
            continue
        rank = PASS_FAILURE_RANK.get(problem, 0)
        if best is None or rank > best[0]:
            best = (rank, p, problem)
    assert best is not None
    _, p, reason = best
    hint: dict[str, str] = {"pass": p.name}
    if reason == Reason.PASS_EXPIRED and p.valid_until:
        hint["until"] = p.valid_until.isoformat()
    elif reason == Reason.PASS_NOT_YET_VALID and p.valid_from:
        hint["from"] = p.valid_from.isoformat()
    elif reason == Reason.OUTSIDE_WINDOW and p.access_windows is not None:
        nxt = p.access_windows.next_opening(local(now, site.timezone))
        if nxt is not None:
            hint["next"] = nxt.strftime("%a %H:%M")
    elif reason == Reason.NO_BALANCE and p.balance is not None:
        hint["balance"] = _fmt_amount(p.balance)
        hint["cost"] = _fmt_amount(p.entry_cost)
        hint["kind"] = p.kind.value
    return deny(reason, **hint)


def _next_booked_day(view: MemberView, gate: Gate, site: Site, now: datetime) -> Booking | None:
    """The member's next booked class in the gate's zone on a later local day."""
    today = local_date(now, site.timezone)
    later = [
        b for b in view.bookings
        if b.status == BookingStatus.BOOKED and b.zone == gate.zone and local_date(b.starts_at, site.timezone) > today
    ]
    return min(later, key=lambda b: (b.starts_at, b.id), default=None)


def _upcoming_facts(b: Booking, gate: Gate, site: Site, now: datetime) -> dict[str, str]:
    today = local_date(now, site.timezone)
    starts = local(b.starts_at, site.timezone)
    if (starts.date() - today).days == 1:
        day = "tomorrow"
    else:
        day = f"on {starts:%a} {starts.day} {starts:%b}"
    facts = {"next_class": b.class_name, "next_day": day, "next_starts": _hhmm(b.starts_at, site)}
    opens = gate.arrival_window(b)[0]
    if local_date(opens, site.timezone) == today:  # the window opens before midnight
        facts["next_entry_from"] = _hhmm(opens, site)
    return facts


def _later_booking_today(view: MemberView, gate: Gate, site: Site, now: datetime) -> Booking | None:
    today = local_date(now, site.timezone)
    later = [
        b for b in view.bookings
        if b.status == BookingStatus.BOOKED and b.zone == gate.zone and b.starts_at > now
        and local_date(b.starts_at, site.timezone) == today
    ]
    return min(later, key=lambda b: (b.starts_at, b.id)) if later else None


def _fmt_amount(d: Decimal) -> str:
    return str(d.quantize(Decimal(1))) if d == d.to_integral_value() else str(d.normalize())


def decide(
    view: MemberView,
    presented: Presented,
    gate: Gate,
    site: Site,
    policy: Policy,
    now: datetime,
) -> Decision:
    """The gate's answer to one tap. See SCENARIOS.md, "Deciding a tap"."""
    member_id = view.member.id if view.member else None
    problem = _credential_problem(view, presented, now)
    if problem is not None:
        return Decision(False, problem, member_id, hint={"credential": presented.kind.value})
    member = view.member
    assert member is not None

    if gate.direction == Direction.OUT:
        # nobody is locked in: blocked members, closed sites, empty passes all get out
        return Decision(True, Reason.EXIT, member.id)

    # 1. the member, the site, the people already inside
    if member.status == MemberStatus.BLOCKED:
        return Decision(False, Reason.MEMBER_BLOCKED, member.id)
    if not site.is_open(now):
        hint: dict[str, str] = {}
        if site.opening_hours is not None:
            nxt = site.opening_hours.next_opening(local(now, site.timezone))
            if nxt is not None:
                hint["next"] = nxt.strftime("%a %H:%M")
        return Decision(False, Reason.SITE_CLOSED, member.id, hint=hint)
    inside = is_inside(view.presence.get(gate.zone), now, site)
    flag: bool | None = None
    if gate.anti_passback == AntiPassback.HARD and inside:
        return Decision(False, Reason.ANTI_PASSBACK, member.id)
    if gate.anti_passback == AntiPassback.SOFT:
        flag = inside

    # 2. a booking: the booking is the ticket
    matches = matching_bookings(view, gate, site, policy, now)
    if matches:
        chosen = matches[0]
        preferred = presented.qr.booking if presented.qr else presented.prefer_booking
        if preferred:
            chosen = next((m for m in matches if m[0].id == preferred), chosen)
        b, linked = chosen
        p = view.pass_by_id(b.pass_id)
        cost = booking_cost(b, p)
        booked_hint = {"class": b.class_name, "starts": _hhmm(b.starts_at, site)}
        if p is not None and p.kind.has_balance and p.balance is not None:
            booked_hint.update({"pass": p.name, "kind": p.kind.value, "balance_after": _fmt_amount(p.balance - cost)})
        return Decision(
            True,
            Reason.LINKED_BOOKING if linked else Reason.BOOKING,
            member.id,
            booking=b.id,
            pass_id=b.pass_id,
            amount=cost,
            cause="booking" if cost else None,
            anti_passback=flag,
            hint=booked_hint,
        )

    # 3. re-entry within the grace period, or after an evacuation: free, no pass needed
    if free_reentry(view.presence.get(gate.zone), gate, site, now):
        return Decision(True, Reason.REENTRY, member.id, anti_passback=flag)

    # 4. a walk-in on the best usable pass
    usable = [p for p in view.passes if pass_problem(p, gate, site, now) is None]
    if usable:
        p = min(usable, key=_walk_in_preference)
        if presented.prefer_pass is not None:
            p = next((u for u in usable if u.id == presented.prefer_pass), p)
        cost = p.entry_cost
        hint = {"pass": p.name, "kind": p.kind.value}
        if p.balance is not None:
            hint["balance_after"] = _fmt_amount(p.balance - cost)
        if cost:
            hint["cost"] = _fmt_amount(cost)
            later = _later_booking_today(view, gate, site, now)
            if later is not None and later.starts_at - now < policy.link_window:
                # early for a class: this entry is a paid walk-in, say so
                hint.update({"class": later.class_name, "starts": _hhmm(later.starts_at, site)})
        return Decision(
            True,
            Reason.WALK_IN,
            member.id,
            pass_id=p.id,
            amount=cost,
            cause="walk_in" if cost else None,
            anti_passback=flag,
            hint=hint,
        )

    # 5. denied: say why as precisely as possible
    return _denial(view, gate, site, policy, now, flag)


def override(gate: Gate) -> Decision:
    """Front desk opens the gate once: granted whatever the state, nothing deducted."""
    return Decision(True, Reason.OVERRIDE, None)
