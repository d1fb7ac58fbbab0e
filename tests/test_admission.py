"""rules.admission.admit(): the site's and the gate's state applied to a decision, as a table."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal

import pytest

from rules.admission import (
    FireInput,
    FireInputPolicy,
    GateConditions,
    Release,
    ReleasePlan,
    SiteSafety,
    StalePolicy,
    admit,
    desk_release,
    fire_input_effect,
    plan_release,
)
from rules.decide import Decision
from rules.model import Direction, Gate, PassKind
from rules.reasons import Reason

WALK_IN = Decision(True, Reason.WALK_IN, "m1", pass_id="p1", amount=Decimal(1), cause="walk_in")
BOOKING = Decision(True, Reason.BOOKING, "m1", booking="b1", pass_id="p1")
REENTRY = Decision(True, Reason.REENTRY, "m1")
EXIT = Decision(True, Reason.EXIT, "m1")
DENIED = Decision(False, Reason.NO_BALANCE, "m1")
SOFT_FLAGGED = replace(WALK_IN, anti_passback=True)
OK = GateConditions()
EVERYTHING_WRONG = GateConditions(
    fire_alarm=True, emergency_release=True, lockdown=True, storage_ok=False, relay_online=False,
    cache_stale=True, stale_policy=StalePolicy.DENY, zone_full=True,
)


@dataclass(frozen=True)
class Case:
    name: str
    decision: Decision
    conditions: GateConditions
    expect: Reason
    pass_kind: PassKind | None = PassKind.VISITS


CASES = [
    Case("nothing wrong: the grant stands", WALK_IN, OK, Reason.WALK_IN),
    Case("fire alarm first of all", WALK_IN, EVERYTHING_WRONG, Reason.FIRE_ALARM),
    Case("emergency release before lockdown", WALK_IN, replace(EVERYTHING_WRONG, fire_alarm=False), Reason.EMERGENCY_RELEASE),
    Case("lockdown", WALK_IN, GateConditions(lockdown=True, storage_ok=False), Reason.LOCKDOWN),
    Case("fire input lost", WALK_IN, GateConditions(safety_input_lost=True, storage_ok=False), Reason.HARDWARE_FAULT),
    Case("storage before the relay", WALK_IN, GateConditions(storage_ok=False, relay_online=False), Reason.STORAGE_FAULT),
    Case("relay offline", BOOKING, GateConditions(relay_online=False, zone_full=True), Reason.HARDWARE_FAULT),
    Case("stale cache, deny policy", BOOKING, GateConditions(cache_stale=True, stale_policy=StalePolicy.DENY), Reason.CACHE_STALE),
    Case("stale cache, keep policy", WALK_IN, GateConditions(cache_stale=True, stale_policy=StalePolicy.KEEP), Reason.WALK_IN),
    Case(
        "stale cache: a booking is a ticket",
        BOOKING,
        GateConditions(cache_stale=True, stale_policy=StalePolicy.BOOKINGS_AND_TIME_PASSES),
        Reason.BOOKING,
    ),
    Case(
        "stale cache: a walk-in on visits is refused",
        WALK_IN,
        GateConditions(cache_stale=True, stale_policy=StalePolicy.BOOKINGS_AND_TIME_PASSES),
        Reason.CACHE_STALE,
    ),
    Case(
        "stale cache: a walk-in on a time pass stands",
        WALK_IN,
        GateConditions(cache_stale=True, stale_policy=StalePolicy.BOOKINGS_AND_TIME_PASSES),
        Reason.WALK_IN,
        PassKind.TIME,
    ),
    Case("fresh cache ignores the stale policy", WALK_IN, GateConditions(stale_policy=StalePolicy.DENY), Reason.WALK_IN),
    Case("zone full", WALK_IN, GateConditions(zone_full=True), Reason.SITE_FULL),
    Case("zone full: a re-entry keeps its place", REENTRY, GateConditions(zone_full=True), Reason.REENTRY),
    Case("an exit is never refused", EXIT, EVERYTHING_WRONG, Reason.EXIT),
    Case("a denial stays the rules' denial", DENIED, EVERYTHING_WRONG, Reason.NO_BALANCE),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_admit(case: Case) -> None:
    d = admit(case.decision, case.conditions, case.pass_kind)
    assert d.reason == case.expect
    if d.reason != case.decision.reason:
        # a refused grant takes nothing and attends nothing
        assert not d.granted and d.amount == 0 and d.booking is None and d.pass_id is None
        assert d.member == case.decision.member


def test_a_refusal_keeps_the_soft_anti_passback_flag() -> None:
    d = admit(SOFT_FLAGGED, GateConditions(lockdown=True))
    assert (d.reason, d.anti_passback) == (Reason.LOCKDOWN, True)


def test_every_admission_reason_is_in_the_table() -> None:
    assert {c.expect for c in CASES if not c.expect.granted} >= {
        Reason.FIRE_ALARM, Reason.EMERGENCY_RELEASE, Reason.LOCKDOWN, Reason.STORAGE_FAULT,
        Reason.HARDWARE_FAULT, Reason.CACHE_STALE, Reason.SITE_FULL,
    }


KEEP, DENY, RELEASE = FireInputPolicy.KEEP, FireInputPolicy.DENY_ENTRIES, FireInputPolicy.RELEASE
FIRE_CASES = [
    # input, policy -> (act as fire alarm, entries refused for a lost input)
    (FireInput(active=False, known=True), RELEASE, (False, False)),
    (FireInput(active=True, known=True), KEEP, (True, False)),
    (FireInput(active=False, known=False), KEEP, (False, False)),
    (FireInput(active=True, known=False), KEEP, (True, False)),
    (FireInput(active=None, known=False), KEEP, (False, False)),
    (FireInput(active=False, known=False), DENY, (False, True)),
    (FireInput(active=True, known=False), DENY, (True, False)),
    (FireInput(active=None, known=False), DENY, (False, True)),
    (FireInput(active=False, known=False), RELEASE, (True, False)),
    (FireInput(active=None, known=False), RELEASE, (True, False)),
]


@pytest.mark.parametrize("fire, policy, expect", FIRE_CASES)
def test_fire_input_effect(fire: FireInput, policy: FireInputPolicy, expect: tuple[bool, bool]) -> None:
    assert fire_input_effect(fire, policy) == expect


@pytest.mark.parametrize(
    ("safety", "purpose", "fail_safe", "expected"),
    [
        (SiteSafety(), Release.ENTRY, False, ReleasePlan()),
        (SiteSafety(lockdown=True), Release.ENTRY, False, ReleasePlan(Reason.LOCKDOWN, pulse=False)),
        (SiteSafety(lockdown=True), Release.DESK, False, ReleasePlan(Reason.LOCKDOWN, pulse=False)),
        (SiteSafety(lockdown=True), Release.EXIT, False, ReleasePlan()),  # nobody is kept in
        (SiteSafety(lockdown=True), Release.DESK_EXIT, False, ReleasePlan()),  # the desk lets someone out
        (SiteSafety(fire_alarm=True), Release.DESK_EXIT, True, ReleasePlan(pulse=False)),
        (SiteSafety(fire_alarm=True, lockdown=True), Release.ENTRY, True, ReleasePlan(Reason.FIRE_ALARM, pulse=False)),
        (SiteSafety(emergency_release=True), Release.ENTRY, True, ReleasePlan(Reason.EMERGENCY_RELEASE, pulse=False)),
        (SiteSafety(fire_alarm=True), Release.EXIT, True, ReleasePlan(pulse=False)),  # stands released
        (SiteSafety(fire_alarm=True), Release.EXIT, False, ReleasePlan()),  # a fail-secure door is pulsed
        (SiteSafety(emergency_release=True), Release.DESK, True, ReleasePlan(pulse=False)),
        (SiteSafety(fire_alarm=True), Release.DESK, False, ReleasePlan()),
    ],
)
def test_what_a_gate_does_when_asked_to_release(safety: SiteSafety, purpose: Release, fail_safe: bool,
                                                expected: ReleasePlan) -> None:
    assert plan_release(safety, purpose, fail_safe=fail_safe) == expected


def test_the_desks_open_once_is_letting_someone_in_or_out_as_the_gate_goes() -> None:
    assert desk_release(Gate(id="in-1", zone="main")) is Release.DESK
    assert desk_release(Gate(id="out-1", zone="main", direction=Direction.OUT)) is Release.DESK_EXIT
