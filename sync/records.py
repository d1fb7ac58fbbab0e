"""Members, passes and bookings as the central system describes them (and as scenario files
write them): pydantic models that validate outside input, then convert to rules types.

Times without an offset are the site's local wall time; `to_domain` takes the zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from rules.credential import card_from_text
from rules.model import Booking, BookingStatus, DeductOn, Member, MemberStatus, Pass, PassKind
from rules.timeutil import WeekSchedule, parse_date, parse_instant, parse_window

Id = Annotated[str, Field(min_length=1, max_length=200)]


@dataclass(frozen=True, slots=True)
class PassRecord:
    """A pass as rules objects, with the seq its balance already reflects."""

    pass_: Pass
    applied_seq: int | None = None


class FieldError(ValueError):
    """A model-level check that knows which of the model's keys is at fault (for messages)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _check_instant(v: str) -> str:
    parse_instant(v, ZoneInfo("UTC"))
    return v


def _check_date(v: str) -> str:
    parse_date(v)
    return v


def _check_schedule(v: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
    WeekSchedule.parse(v)
    return v


def _check_amount(v: Decimal) -> Decimal:
    if not v.is_finite():
        raise ValueError("must be a finite number")
    return v


Instant = Annotated[str, AfterValidator(_check_instant)]
# native pydantic types where they say the same: validated in Rust, a snapshot has 550,000 records
LocalDate = date
Schedule = Annotated[dict[str, str | list[str]], AfterValidator(_check_schedule)]
Amount = Annotated[Decimal, Field(allow_inf_nan=False)]
Window = Annotated[str, AfterValidator(lambda v: (parse_window(v), v)[1])]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _card_text(text: str) -> str:
    card_from_text(text)  # ValueError: pydantic reports it as this card's error
    return text.strip()


# A member's card: a typed key (`em:0A00BC614E`, `w26:123:45678`, ...) or, from central
# systems that predate typed cards, the identifier string as a reader sent it. The store
# keys it (untyped strings read by their shape and the site's readers: docs/protocol.md,
# "Cards").
CardText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_card_text)]


class MemberIn(Strict):
    id: Id
    name: str = ""
    status: Literal["active", "blocked"] = "active"
    cards: list[CardText] = []
    email: str | None = None
    photo: str | None = None
    phone: Annotated[str, Field(max_length=50)] | None = None

    def to_domain(self) -> Member:
        return Member(
            id=self.id,
            name=self.name,
            status=MemberStatus(self.status),
            cards=tuple(self.cards),
            email=self.email,
            phone=self.phone,
            photo=self.photo,
        )


class PassIn(Strict):
    id: Id
    member: Id
    name: str = ""
    kind: Literal["time", "visits", "credits", "marketplace"]
    balance: Amount | None = None
    deduct_on: Literal["booking", "access"] = "booking"
    walk_in_cost: Amount | None = Field(default=None, ge=0)
    valid_from: LocalDate | None = None
    valid_until: LocalDate | None = None
    zones: list[Id] | None = None
    access_windows: Schedule | None = None
    applied_seq: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _balance_fits_kind(self) -> PassIn:
        if PassKind(self.kind).has_balance:
            if self.balance is None:
                raise FieldError("balance", f"balance is required for a {self.kind} pass")
        elif self.balance is not None:
            raise FieldError("balance", f"balance is not allowed for a {self.kind} pass")
        if PassKind(self.kind) == PassKind.CREDITS and self.walk_in_cost is None:
            raise FieldError("walk_in_cost", "walk_in_cost is required for a credits pass")
        if self.valid_from and self.valid_until and self.valid_from > self.valid_until:
            raise FieldError("valid_until", "valid_from is after valid_until")
        return self

    def to_domain(self) -> PassRecord:
        return PassRecord(
            Pass(
                id=self.id,
                member=self.member,
                name=self.name,
                kind=PassKind(self.kind),
                balance=self.balance,
                deduct_on=DeductOn(self.deduct_on),
                walk_in_cost=self.walk_in_cost,
                valid_from=parse_date(str(self.valid_from)) if self.valid_from else None,
                valid_until=parse_date(str(self.valid_until)) if self.valid_until else None,
                zones=frozenset(self.zones) if self.zones is not None else None,
                access_windows=WeekSchedule.parse(self.access_windows) if self.access_windows is not None else None,
            ),
            self.applied_seq,
        )


class SitePassIn(PassIn):
    """A pass as a gate of a site with several daemons stores it: with the other daemons'
    entries of the central's `applied` map (the highest seq of each one's events the
    balance reflects; a daemon missing: none of its events). sync/store/peer_events.py."""

    applied_peers: dict[Id, Annotated[int, Field(ge=0)]] | None = None


class BookingIn(Strict):
    id: Id
    member: Id
    pass_: Id = Field(alias="pass")
    class_: str = Field(default="", alias="class")
    zone: Id
    starts_at: Instant
    ends_at: Instant
    status: Literal["booked", "cancelled"] = "booked"
    deducted: bool = False
    cost: Amount = Field(default=Decimal(1), ge=0)
    loyalty_points: int = Field(default=0)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _ends_after_start(self) -> BookingIn:
        utc = ZoneInfo("UTC")
        if parse_instant(self.ends_at, utc) < parse_instant(self.starts_at, utc):
            raise FieldError("ends_at", "ends_at is before starts_at")
        return self

    def to_domain(self, tz: ZoneInfo) -> Booking:
        return Booking(
            id=self.id,
            member=self.member,
            pass_id=self.pass_,
            class_name=self.class_,
            zone=self.zone,
            starts_at=parse_instant(self.starts_at, tz),
            ends_at=parse_instant(self.ends_at, tz),
            status=BookingStatus(self.status),
            deducted=self.deducted,
            cost=self.cost,
            loyalty_points=self.loyalty_points,
        )


__all__ = ["BookingIn", "MemberIn", "PassIn", "PassRecord", "datetime"]
