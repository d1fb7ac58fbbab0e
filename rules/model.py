"""The gym's domain, as the gate sees it: members, passes, bookings, gates, the site.

Frozen dataclasses: cheap to build for every tap, impossible to change by accident.
Times are aware UTC datetimes; dates (pass validity, closed dates) are local dates.
Amounts (visits, credits) are Decimal: a credit pass may cost 7.5 per entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from rules.timeutil import WeekSchedule, local


class MemberStatus(StrEnum):
    ACTIVE = "active"
    BLOCKED = "blocked"


class PassKind(StrEnum):
    TIME = "time"
    VISITS = "visits"
    CREDITS = "credits"
    MARKETPLACE = "marketplace"

    @property
    def has_balance(self) -> bool:
        return self in (PassKind.VISITS, PassKind.CREDITS)


class DeductOn(StrEnum):
    BOOKING = "booking"  # the central system took the cost when the class was booked
    ACCESS = "access"  # the gate takes it when the member comes in


class BookingStatus(StrEnum):
    BOOKED = "booked"
    ATTENDED = "attended"
    NO_SHOW = "no_show"
    CANCELLED = "cancelled"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class AntiPassback(StrEnum):
    NONE = "none"
    SOFT = "soft"  # grant, but flag the access event
    HARD = "hard"  # deny while the member is inside


class EarlyEntry(StrEnum):
    STRICT = "strict"  # before the arrival window is a walk-in (SPORTRICK)
    LINK = "link"  # an early arrival the same day is matched to the booking


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    name: str = ""
    status: MemberStatus = MemberStatus.ACTIVE
    cards: tuple[str, ...] = ()
    email: str | None = None
    photo: str | None = None
    phone: str | None = None  # for the desk's search; never used to decide
    # for the desk's eyes (the member card), never used to decide
    note: str | None = None
    status_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Pass:
    id: str
    member: str
    name: str
    kind: PassKind
    balance: Decimal | None = None
    deduct_on: DeductOn = DeductOn.BOOKING
    walk_in_cost: Decimal | None = None
    valid_from: date | None = None
    valid_until: date | None = None
    zones: frozenset[str] | None = None
    access_windows: WeekSchedule | None = None

    @property
    def entry_cost(self) -> Decimal:
        """What one walk-in takes from the balance (time and marketplace passes: nothing)."""
        if not self.kind.has_balance:
            return Decimal(0)
        if self.walk_in_cost is not None:
            return self.walk_in_cost
        return Decimal(1)

    def covers_zone(self, zone: str) -> bool:
        return self.zones is None or zone in self.zones


@dataclass(frozen=True, slots=True)
class Booking:
    id: str
    member: str
    pass_id: str
    class_name: str
    zone: str
    starts_at: datetime
    ends_at: datetime
    status: BookingStatus = BookingStatus.BOOKED
    deducted: bool = False
    cost: Decimal = Decimal(1)
    loyalty_points: int = 0


@dataclass(frozen=True, slots=True)
class Gate:
    id: str
    zone: str
    direction: Direction = Direction.IN
    early_arrival: timedelta = timedelta(minutes=15)
    late_arrival: timedelta = timedelta(minutes=10)
    anti_passback: AntiPassback = AntiPassback.NONE
    reentry_grace: timedelta = timedelta(0)

    def arrival_window(self, b: Booking) -> tuple[datetime, datetime]:
        return b.starts_at - self.early_arrival, b.starts_at + self.late_arrival


@dataclass(frozen=True, slots=True)
class Policy:
    early_entry: EarlyEntry = EarlyEntry.STRICT
    link_window: timedelta = timedelta(minutes=120)
    no_show_after: timedelta = timedelta(minutes=15)
    no_show_fee: Decimal = Decimal(0)
    loyalty_delay: timedelta = timedelta(hours=3)


@dataclass(frozen=True, slots=True)
class Site:
    """The site's calendar: where local time lives, when the doors are open."""

    timezone: ZoneInfo
    opening_hours: WeekSchedule | None = None  # None: always open
    closed_dates: frozenset[date] = field(default_factory=frozenset)
    id: str = "site"

    def is_open(self, at: datetime) -> bool:
        wall = local(at, self.timezone)
        if wall.date() in self.closed_dates:
            return False
        return self.opening_hours is None or self.opening_hours.contains(wall)
