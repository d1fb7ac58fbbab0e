"""rules.schedule's no-show fee, as a table: who pays for a class they did not come to; and
which classes what happened before an instant bears on."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from rules.model import Booking, BookingStatus, DeductOn, Pass, PassKind, Policy
from rules.schedule import evacuated_during, no_show_fee, reached_by

T0 = datetime.fromisoformat("2026-11-18T10:00:00+01:00")  # the class: 10:00-11:00
CLASS = Booking("b1", "m1", "p1", "Spinning", "main", T0, T0 + timedelta(hours=1), BookingStatus.BOOKED)
VISITS = Pass("p1", "m1", "Visits", PassKind.VISITS, Decimal(5), DeductOn.ACCESS)
FEE = Policy(no_show_fee=Decimal(2))


def hm(h: int, m: int = 0) -> datetime:
    return T0.replace(hour=h, minute=m)


@pytest.mark.parametrize(
    ("evacuations", "during"),
    [
        ([], False),
        ([(hm(10, 30), hm(10, 40))], True),  # in the middle of the class
        ([(hm(9, 40), hm(10, 5))], True),  # the all-clear after the start
        ([(hm(10, 55), None)], True),  # still under way
        ([(hm(9, 30), hm(9, 50))], False),  # over before the start: the last arrivals got in
        ([(hm(9, 30), hm(10))], False),  # over at the start, to the second
        ([(hm(11), hm(11, 10))], False),  # after the end
        ([(hm(8), hm(8, 10)), (hm(10, 59), hm(11, 20))], True),  # the day's second one
    ],
)
def test_evacuated_during_the_class(evacuations: list[tuple[datetime, datetime | None]], during: bool) -> None:
    assert evacuated_during(CLASS, evacuations) is during
    assert no_show_fee(CLASS, VISITS, FEE, False, evacuations) == (Decimal(0) if during else Decimal(2))


def test_the_fee_without_an_evacuation_is_as_before() -> None:
    assert no_show_fee(CLASS, VISITS, FEE, False) == Decimal(2)
    assert no_show_fee(CLASS, VISITS, FEE, True) == Decimal(0)  # on site that day


MADRID = ZoneInfo("Europe/Madrid")


@pytest.mark.parametrize(
    ("lost", "reach"),
    [
        # the day's classes: an attendance, or the member on site that day, may be in it
        (datetime(2026, 11, 18, 10, 5, tzinfo=MADRID), datetime(2026, 11, 19, tzinfo=MADRID)),
        # late in the evening: a class just after midnight whose arrival window opens before
        (datetime(2026, 11, 18, 23, 30, tzinfo=MADRID), datetime(2026, 11, 19, 1, 30, tzinfo=MADRID)),
        # the night the clocks go back: the local day is 25 hours
        (datetime(2026, 10, 25, 0, 30, tzinfo=MADRID), datetime(2026, 10, 26, tzinfo=MADRID)),
    ],
)
def test_what_happened_before_an_instant_bears_on_the_classes_starting_before_its_reach(
    lost: datetime, reach: datetime,
) -> None:
    assert reached_by(lost, MADRID, Policy()) == reach
