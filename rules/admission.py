"""admit(): the state of the site and of the gate itself, applied to a rules decision.

decide() answers "may this member come in now?" from the member's passes and bookings.
Whether the gate may act on a yes is a second question, about the site and the hardware:
a fire alarm, an emergency release, a lockdown, a store that cannot record the entry, a
relay that does not answer, a cache too old to trust, a full zone. Those refusals live
here, pure, so that the order they apply in is written down once and tested with a table.

Two rules shape everything below:
- Entries fail closed: any doubt about the site or the gate denies an entry.
- Exits stay free: nothing here ever refuses an exit (nobody is locked in) — the desk's
  "open once" at an exit included, in a lockdown too.

`plan_release` is the same safety policy at the relay: the gate controller asks it before
it touches the relay (an interlock that holds whatever the caller decided), the desk's
"open once" asks it before anything else, and admit() refuses entries by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from rules.decide import Decision
from rules.model import Direction, Gate, PassKind
from rules.reasons import Reason


class StalePolicy(StrEnum):
    """What a gate does with a cache that has not heard from the central system for too long."""

    KEEP = "keep"  # decide as usual
    BOOKINGS_AND_TIME_PASSES = "bookings_and_time_passes"  # no balance-based walk-ins
    DENY = "deny"  # every entry refused


# With a stale cache these grants stand under BOOKINGS_AND_TIME_PASSES: a booking is a
# ticket already paid for, a re-entry is free, and nothing of them can be overspent.
_STALE_SAFE = frozenset({Reason.BOOKING, Reason.LINKED_BOOKING, Reason.REENTRY})


class FireInputPolicy(StrEnum):
    """What the gate does while the fire-alarm input cannot be read."""

    KEEP = "keep"  # the last known state stands (the panel's own wiring is the primary release)
    DENY_ENTRIES = "deny_entries"  # doors as they are; entries refused (hardware_fault)
    RELEASE = "release"  # act as if the alarm were active


@dataclass(frozen=True, slots=True)
class FireInput:
    """The fire-alarm input as the shell last saw it."""

    active: bool | None = None  # the last state read; None: never read
    known: bool = True  # read successfully and the board answers now


def fire_input_effect(fire: FireInput, policy: FireInputPolicy) -> tuple[bool, bool]:
    """(act as a fire alarm, refuse entries because the safety input is lost)."""
    if fire.known:
        return bool(fire.active), False
    if policy == FireInputPolicy.RELEASE:
        return True, False
    last = bool(fire.active)
    return last, policy == FireInputPolicy.DENY_ENTRIES and not last


class Release(StrEnum):
    """Why a gate's relay is asked to release once."""

    ENTRY = "entry"  # a member's grant (a tap or the desk's check-in)
    EXIT = "exit"  # a member going out
    DESK = "desk"  # the front desk's "open once" (an override) at an entrance
    DESK_EXIT = "desk_exit"  # the front desk's "open once" at an exit: letting someone out


def desk_release(gate: Gate) -> Release:
    """What the desk's "open once" is at this gate: letting someone in, or out."""
    return Release.DESK_EXIT if gate.direction is Direction.OUT else Release.DESK


@dataclass(frozen=True, slots=True)
class SiteSafety:
    """The site's safety state as a gate acts on it."""

    fire_alarm: bool = False  # the fire-alarm input is active (or its policy says act so)
    emergency_release: bool = False  # an admin released every fail-safe door
    lockdown: bool = False

    @property
    def doors_released(self) -> bool:
        return self.fire_alarm or self.emergency_release


@dataclass(frozen=True, slots=True)
class ReleasePlan:
    refused: Reason | None = None  # not released, for this reason
    pulse: bool = True  # False: nothing to do, the door already stands released


def plan_release(safety: SiteSafety, purpose: Release, *, fail_safe: bool) -> ReleasePlan:
    """What a gate does when asked to release once. Nobody is let in during an evacuation
    or a lockdown; nobody is kept in (an exit always opens, the desk's "open once" at an
    exit too); a fail-safe door that stands released for a fire alarm or an emergency
    release is not pulsed (the pulse's end would lock it again)."""
    if purpose is Release.ENTRY:
        if safety.fire_alarm:
            return ReleasePlan(Reason.FIRE_ALARM, pulse=False)
        if safety.emergency_release:
            return ReleasePlan(Reason.EMERGENCY_RELEASE, pulse=False)
        if safety.lockdown:
            return ReleasePlan(Reason.LOCKDOWN, pulse=False)
    if purpose is Release.DESK and safety.lockdown:
        # the lockdown's promise: nobody gets in until an admin lifts it, not even by the
        # desk. It stops people getting in, not out: at an exit (DESK_EXIT) the desk still
        # lets out a visitor without a card, or one whose QR code was used to come in
        return ReleasePlan(Reason.LOCKDOWN, pulse=False)
    if safety.doors_released and fail_safe:
        return ReleasePlan(pulse=False)
    return ReleasePlan()


@dataclass(frozen=True, slots=True)
class GateConditions:
    """What the shell knows about the site and this gate at the instant of a tap."""

    fire_alarm: bool = False  # the fire-alarm input is active
    emergency_release: bool = False  # an admin released every door
    lockdown: bool = False
    safety_input_lost: bool = False  # the fire input cannot be read and policy says deny
    storage_ok: bool = True  # the store can make this entry durable
    relay_online: bool = True  # the gate's output answers (True for a gate without one)
    cache_stale: bool = False
    stale_policy: StalePolicy = StalePolicy.KEEP
    zone_full: bool = False  # one more person would exceed the zone's capacity


def admit(decision: Decision, conditions: GateConditions, pass_kind: PassKind | None = None) -> Decision:
    """The decision the gate acts on. A denial or an exit passes through unchanged; a
    granted entry is refused with the first condition that forbids it, in this order:
    life safety (fire alarm, emergency release), then lockdown, then what would make the
    entry unrecordable or unenforceable (storage, relay), then trust in the data (stale
    cache), then capacity. `pass_kind` is the kind of the pass a walk-in relies on."""
    if not decision.granted or decision.reason == Reason.EXIT:
        return decision
    c = conditions
    safety = plan_release(SiteSafety(c.fire_alarm, c.emergency_release, c.lockdown), Release.ENTRY, fail_safe=False)
    if safety.refused is not None:
        return refused(decision, safety.refused)
    if c.safety_input_lost:
        return refused(decision, Reason.HARDWARE_FAULT)
    if not c.storage_ok:
        return refused(decision, Reason.STORAGE_FAULT)
    if not c.relay_online:
        return refused(decision, Reason.HARDWARE_FAULT)
    if c.cache_stale and _stale_refuses(decision, c.stale_policy, pass_kind):
        return refused(decision, Reason.CACHE_STALE)
    if c.zone_full and decision.reason != Reason.REENTRY:
        return refused(decision, Reason.SITE_FULL)
    return decision


def _stale_refuses(decision: Decision, policy: StalePolicy, pass_kind: PassKind | None) -> bool:
    if policy == StalePolicy.KEEP:
        return False
    if policy == StalePolicy.DENY:
        return True
    return decision.reason not in _STALE_SAFE and pass_kind != PassKind.TIME


def refused(decision: Decision, reason: Reason) -> Decision:
    """A grant turned into a denial for `reason`: nothing deducted, nothing attended; the
    soft anti-passback flag is kept (the access event still says the member was inside)."""
    return Decision(False, reason, decision.member, anti_passback=decision.anti_passback)


__all__ = [
    "FireInput",
    "FireInputPolicy",
    "GateConditions",
    "Release",
    "ReleasePlan",
    "SiteSafety",
    "StalePolicy",
    "admit",
    "desk_release",
    "fire_input_effect",
    "plan_release",
    "refused",
]
