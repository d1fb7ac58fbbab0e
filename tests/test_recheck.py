"""rules.recheck: the taps a gate decided while its own history of the day was missing,
decided again once it is back — a table of what the history shows and what is repaired."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from rules.model import AntiPassback, Direction, Gate, Site
from rules.recheck import (
    Charge,
    Finding,
    GapTap,
    KnownDay,
    Passage,
    Remedy,
    Why,
    presence_at,
    recheck,
)

TZ = ZoneInfo("Europe/Madrid")
SITE = Site(TZ)
DAY = datetime(2026, 12, 7, tzinfo=TZ)
GRACE = Gate("in-1", "main", reentry_grace=timedelta(hours=2))
HARD = Gate("in-2", "main", anti_passback=AntiPassback.HARD)
BOTH = Gate("in-3", "main", anti_passback=AntiPassback.HARD, reentry_grace=timedelta(hours=2))
PLAIN = Gate("in-4", "main")
OUT = Gate("out-1", "main", Direction.OUT)
GATES = {g.id: g for g in (GRACE, HARD, BOTH, PLAIN, OUT)}
WALK_IN = Charge(11, "p1", Decimal(1), "walk_in")
BOOKING = Charge(11, "p1", Decimal(1), "booking")


def at(hh: int, mm: int = 0) -> datetime:
    return DAY.replace(hour=hh, minute=mm)


def went(direction: Direction, t: datetime, member: str = "m1", zone: str = "main") -> Passage:
    return Passage(member, zone, direction, t)


IN, OUT_ = Direction.IN, Direction.OUT
# the old box's morning: in at 09:00, out at 09:30
IN_AND_OUT = (went(IN, at(9)), went(OUT_, at(9, 30)))


def tap(gate: str, when: datetime, charge: Charge | None = WALK_IN, token: str | None = None) -> GapTap:
    return GapTap(10, gate, "m1", when, token, charge)


CASES: list[tuple[str, GapTap, KnownDay, tuple[Remedy, Why, datetime | None] | None]] = [
    # the walk-in charged again within the grace: refunded, naming the entry it re-enters after
    ("grace", tap("in-1", at(10)), KnownDay(IN_AND_OUT), (Remedy.REFUND, Why.REENTRY_GRACE, at(9))),
    ("grace_inclusive", tap("in-1", at(11)), KnownDay(IN_AND_OUT), (Remedy.REFUND, Why.REENTRY_GRACE, at(9))),
    ("past_grace", tap("in-1", at(11, 1)), KnownDay(IN_AND_OUT), None),
    ("no_grace_at_that_gate", tap("in-4", at(10)), KnownDay(IN_AND_OUT), None),
    ("nothing_before", tap("in-1", at(10)), KnownDay(), None),
    ("another_members_entry", tap("in-1", at(10)), KnownDay((went(IN, at(9), "m2"),)), None),
    ("another_zone", tap("in-1", at(10)), KnownDay((went(IN, at(9), zone="pool"),)), None),
    # only what is known before the instant the rules decided counts
    ("entry_after_the_tap", tap("in-1", at(10)), KnownDay((went(IN, at(10, 5)),)), None),
    # nothing charged, or already given back (the shell leaves the charge out): nothing to refund
    ("free_already", tap("in-1", at(10), charge=None), KnownDay(IN_AND_OUT), None),
    ("a_booking_is_no_walk_in", tap("in-1", at(10), Charge(11, "p1", Decimal(1), "booking")), KnownDay(IN_AND_OUT),
     None),
    ("zero_cost", tap("in-1", at(10), Charge(11, "p1", Decimal(0), "walk_in")), KnownDay(IN_AND_OUT), None),
    # an evacuation cut the visit short: free whatever the grace (rules.decide.evacuated)
    ("evacuated", tap("in-4", at(10)), KnownDay((went(IN, at(9)),), evacuations=(at(9, 20),)),
     (Remedy.REFUND, Why.EVACUATED, at(9, 20))),
    ("evacuated_before_the_entry", tap("in-4", at(10)), KnownDay(IN_AND_OUT, evacuations=(at(8),)), None),
    # hard anti-passback: inside (in, no exit since) → the desk is told; out again → nothing
    ("inside", tap("in-2", at(10)), KnownDay((went(IN, at(9)),)), (Remedy.ANTI_PASSBACK_MISSED, Why.ANTI_PASSBACK, at(9))),
    ("out_again", tap("in-2", at(10)), KnownDay(IN_AND_OUT), None),
    ("inside_yesterday", tap("in-2", at(10)), KnownDay((went(IN, at(9) - timedelta(days=1)),)), None),
    # an exit the new box itself saw counts as any passage known
    ("out_at_the_new_box", tap("in-2", at(10)), KnownDay((went(IN, at(9)), went(OUT_, at(9, 50)))), None),
    # anti-passback first (decide's order): inside within the grace is refused, not a free re-entry
    ("inside_within_grace", tap("in-3", at(10)), KnownDay((went(IN, at(9)),)),
     (Remedy.ANTI_PASSBACK_MISSED, Why.ANTI_PASSBACK, at(9))),
    ("soft_or_none_inside", tap("in-4", at(10)), KnownDay((went(IN, at(9)),)), None),
    # the QR code used in the lost part: first of all
    ("qr_used", tap("in-3", at(10), token="t1"), KnownDay((went(IN, at(9)),), qr_used={"t1": at(9)}),
     (Remedy.QR_DOUBLE_USE, Why.QR_USED, at(9))),
    ("qr_used_later", tap("in-4", at(10), token="t1"), KnownDay(qr_used={"t1": at(10, 5)}), None),
    ("another_qr", tap("in-4", at(10), token="t2"), KnownDay(qr_used={"t1": at(9)}), None),
    ("a_card", tap("in-4", at(10)), KnownDay(qr_used={"t1": at(9)}), None),
    # a booking another daemon had already let the member in on (heard after the tap): step 2
    # would have passed it by, step 3 lets the member back in free — its charge given back
    ("booking_used_at_a_peer", GapTap(10, "in-1", "m1", at(10), None, BOOKING, "b1"),
     KnownDay(IN_AND_OUT, attended={"b1": at(9)}), (Remedy.REFUND, Why.REENTRY_GRACE, at(9))),
    ("booking_used_at_a_peer_evacuated", GapTap(10, "in-4", "m1", at(10), None, BOOKING, "b1"),
     KnownDay((went(IN, at(9)),), evacuations=(at(9, 20),), attended={"b1": at(9)}),
     (Remedy.REFUND, Why.EVACUATED, at(9, 20))),
    # ...not past the grace (a walk-in would have been due: what instead is left as it was)
    ("booking_used_at_a_peer_past_grace", GapTap(10, "in-1", "m1", at(12), None, BOOKING, "b1"),
     KnownDay(IN_AND_OUT, attended={"b1": at(9)}), None),
    # another booking, or the same one first used after the tap: its charge stands
    ("another_booking_used", GapTap(10, "in-1", "m1", at(10), None, BOOKING, "b2"),
     KnownDay(IN_AND_OUT, attended={"b1": at(9)}), None),
    ("booking_used_after", GapTap(10, "in-1", "m1", at(10), None, BOOKING, "b1"),
     KnownDay(IN_AND_OUT, attended={"b1": at(10, 5)}), None),
    # exits and gates not configured stand
    ("exit", tap("out-1", at(10)), KnownDay((went(IN, at(9)),)), None),
    ("unknown_gate", tap("in-9", at(10)), KnownDay(IN_AND_OUT), None),
]


@pytest.mark.parametrize(("name", "gap_tap", "day", "expected"), CASES, ids=[c[0] for c in CASES])
def test_recheck(name: str, gap_tap: GapTap, day: KnownDay, expected: tuple[Remedy, Why, datetime | None] | None) -> None:
    found = recheck([gap_tap], day, GATES, SITE)
    assert found == (() if expected is None else (Finding(gap_tap, *expected),))


def test_each_tap_on_its_own_presence() -> None:
    """Two taps of the gap: the first re-enters within the grace of the old box's entry;
    the second, past it, re-enters within the grace of the first (a passage too)."""
    day = KnownDay((went(IN, at(9)), went(OUT_, at(9, 30)), went(IN, at(10, 0)), went(OUT_, at(11))))
    first, second = GapTap(10, "in-1", "m1", at(9, 59), None, WALK_IN), GapTap(12, "in-1", "m1", at(11, 30))
    third = GapTap(14, "in-1", "m1", at(13, 30), None, Charge(15, "p1", Decimal(1), "walk_in"))
    assert recheck([first, second, third], day, GATES, SITE) == (Finding(first, Remedy.REFUND, Why.REENTRY_GRACE, at(9)),)


def test_presence_at_reads_only_what_came_before() -> None:
    day = KnownDay((went(IN, at(9)), went(OUT_, at(9, 30)), went(IN, at(10))), evacuations=(at(8), at(9, 45)))
    p = presence_at(day, "m1", "main", at(9, 40))
    assert (p.last_at, p.last_direction, p.last_entry_at, p.evacuated_at) == (at(9, 30), OUT_, at(9), at(8))


def test_one_charge_named_by_two_taps_is_given_back_once() -> None:
    """Whatever the shell pairs with a charge, a charge is given back once."""
    day = KnownDay(IN_AND_OUT)
    a, b = GapTap(10, "in-1", "m1", at(10), None, WALK_IN), GapTap(12, "in-1", "m1", at(10, 5), None, WALK_IN)
    assert recheck([a, b], day, GATES, SITE) == (Finding(a, Remedy.REFUND, Why.REENTRY_GRACE, at(9)),)
