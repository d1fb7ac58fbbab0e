"""Members, passes and bookings as the central system describes them (and as scenario files
write them): pydantic models that validate outside input, then convert to rules types.

Times without an offset are the site's local wall time; `to_domain` takes the zone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from rules.credential import card_from_text
from rules.model import Booking, BookingStatus, DeductOn, Member, MemberStatus, Pass, PassKind
from rules.timeutil import WeekSchedule, parse_date, parse_instant, parse_window
from sync.photos import PHOTO_MAX_BYTES, PHOTO_MAX_TEXT, PHOTO_PATTERN, photo_or_none
from sync.topics import LEVEL

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


# how far apart two wall times of one zone can be read around its clock changes (no zone
# moves its clocks by more than 2 h at once), and a wall time and an instant with an offset
# (UTC-12 to UTC+14)
WALL_SLACK = timedelta(hours=2)
ANY_OFFSET = timedelta(hours=26)


def has_offset(text: str) -> bool:
    """Whether an instant's text gives its offset (or Z), rather than a wall time."""
    # past the date (whose own dashes are in its first 10 characters), only an offset has a sign
    tail = text.strip()[10:]
    return tail.endswith(("Z", "z")) or "+" in tail or "-" in tail


def _check_instant(v: str) -> str:
    parse_instant(v, ZoneInfo("UTC"))
    return v


def _check_date(v: str) -> str:
    parse_date(v)
    return v


def _check_schedule(v: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
    WeekSchedule.parse(v)
    return v



Instant = Annotated[str, AfterValidator(_check_instant)]
# native pydantic types where they say the same: validated in Rust, a snapshot has 550,000 records
LocalDate = date
Schedule = Annotated[dict[str, str | list[str]], AfterValidator(_check_schedule)]
# what SQLite's INTEGER holds: a seq beyond it overflowed the insert, and the whole delta
# (or snapshot) failed again at every retry
MAX_INT = 2**63 - 1
SeqNumber = Annotated[int, Field(ge=0, le=MAX_INT)]
# a balance or a price, either way: amounts are summed and subtracted as exact decimals,
# and one near Decimal's largest exponent (9e999999 minus -9e999999) overflowed there
AMOUNT_LIMIT = 10**12
LOYALTY_LIMIT = 1_000_000  # points of one booking, either way


def check_amount_range(v: Decimal) -> Decimal:
    """For amounts read without the models (another daemon's events)."""
    if not v.is_finite() or abs(v) > AMOUNT_LIMIT:
        raise ValueError(f"out of range: at most {AMOUNT_LIMIT:,} either way")
    return v


Amount = Annotated[Decimal, Field(allow_inf_nan=False, ge=-AMOUNT_LIMIT, le=AMOUNT_LIMIT)]
Price = Annotated[Decimal, Field(allow_inf_nan=False, ge=0, le=AMOUNT_LIMIT)]  # never negative
Window = Annotated[str, AfterValidator(lambda v: (parse_window(v), v)[1])]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _card_text(text: str) -> str:
    card_from_text(text)  # ValueError: pydantic reports it as this card's error
    lead = text.lstrip()
    # a `text:` key's text is the card to its last blank (rules.credential.parse_key)
    return lead if lead[:5].lower() == "text:" else text.strip()


# A member's card: a typed key (`em:0A00BC614E`, `w26:123:45678`, ...) or, from central
# systems that predate typed cards, the identifier string as a reader sent it. The store
# keys it (untyped strings read by their shape and the site's readers: docs/protocol.md,
# "Cards").
CARD_TEXT_MAX = 200
CardText = Annotated[str, Field(min_length=1, max_length=CARD_TEXT_MAX), AfterValidator(_card_text)]


NOTE_MAX = 500
STATUS_REASON_MAX = 200


def desk_text(limit: int) -> AfterValidator:
    """Free text for the desk's eyes, as the gate keeps it: one line, at most `limit`
    characters (longer is cut, not refused: a note never keeps a member out), None when
    empty. The JSON Schema states the bound the central system should keep to."""

    def clean(v: str | None) -> str | None:
        return clean_text(v, limit)

    return AfterValidator(clean)


def clean_text(v: str | None, limit: int) -> str | None:
    text = " ".join(v.split())[:limit] if v is not None else ""
    return text or None


# Lenient on the gate (sync/photos.py: a bad photo is dropped, never the member), strict
# in the schema the central system is given.
PhotoRef = Annotated[
    str | None,
    AfterValidator(photo_or_none),
    WithJsonSchema({
        "anyOf": [{"type": "string", "maxLength": PHOTO_MAX_TEXT, "pattern": PHOTO_PATTERN}, {"type": "null"}],
        "default": None,
        "description": f"The member's photo inline: a `data:` URL of a JPEG, PNG or WebP image of at most "
        f"{PHOTO_MAX_BYTES} bytes (`data:image/jpeg;base64,...`). URLs are not fetched. A value that is not "
        "such a photo is dropped by the gate (the member is kept).",
    }),
]
Note = Annotated[
    str | None,
    desk_text(NOTE_MAX),
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": NOTE_MAX}, {"type": "null"}], "default": None,
                    "description": "A note for the front desk, shown on the member's card (one line; longer is cut)."}),
]
StatusReason = Annotated[
    str | None,
    desk_text(STATUS_REASON_MAX),
    WithJsonSchema({"anyOf": [{"type": "string", "maxLength": STATUS_REASON_MAX}, {"type": "null"}], "default": None,
                    "description": "Why the status is what it is, in the desk's words (\"payment failed on 3 Nov\"); "
                    "shown on the member's card."}),
]


class MemberIn(Strict):
    id: Id
    name: str = ""
    status: Literal["active", "blocked"] = "active"
    cards: list[CardText] = []
    email: str | None = None
    photo: PhotoRef = None
    phone: Annotated[str, Field(max_length=50)] | None = None
    note: Note = None
    status_reason: StatusReason = None

    def to_domain(self) -> Member:
        return Member(
            id=self.id,
            name=self.name,
            status=MemberStatus(self.status),
            cards=tuple(self.cards),
            email=self.email,
            phone=self.phone,
            photo=self.photo,
            note=self.note,
            status_reason=self.status_reason,
        )


class PassIn(Strict):
    id: Id
    member: Id
    name: str = ""
    kind: Literal["time", "visits", "credits", "marketplace"]
    balance: Amount | None = None
    deduct_on: Literal["booking", "access"] = "booking"
    walk_in_cost: Price | None = None
    valid_from: LocalDate | None = None
    valid_until: LocalDate | None = None
    zones: list[Id] | None = None
    access_windows: Schedule | None = None
    applied_seq: int | None = Field(default=None, ge=0, le=MAX_INT)

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

    applied_peers: dict[Id, SeqNumber] | None = None


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
    cost: Price = Decimal(1)
    loyalty_points: int = Field(default=0, ge=-LOYALTY_LIMIT, le=LOYALTY_LIMIT)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _ends_after_start(self) -> BookingIn:
        # Two instants with offsets compare as they are. A wall time's instant depends on
        # the site's zone, which a record does not carry: around a clock change, 02:10 can
        # come after 02:50 (the autumn hour read as its first occurrence, the other given
        # with its offset), and 02:40 in the spring gap after 03:10. So a wall time is held
        # here only to what no zone can make right; where the zone is known the order is
        # checked exactly (ends_before_start: gated/scenario_file.py).
        utc = ZoneInfo("UTC")
        starts, ends = parse_instant(self.starts_at, utc), parse_instant(self.ends_at, utc)
        if ends >= starts:  # the usual case, decided without looking at the texts again
            return self
        aware = (has_offset(self.starts_at), has_offset(self.ends_at))
        slack = timedelta(0) if all(aware) else WALL_SLACK if not any(aware) else ANY_OFFSET
        if ends < starts - slack:
            raise FieldError("ends_at", "ends_at is before starts_at")
        return self

    def ends_before_start(self, tz: ZoneInfo) -> bool:
        """Whether, read in the site's zone `tz`, the class ends before it starts."""
        return parse_instant(self.ends_at, tz) < parse_instant(self.starts_at, tz)

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


class SeedPass(PassIn):
    """A pass as a seed file writes it: as the central system sends it (`applied`) or as
    scenarios write it (`applied_seq`)."""

    applied: dict[Annotated[str, Field(pattern=LEVEL.pattern)], SeqNumber] | None = Field(
        None,
        description="Each daemon's applied seq when the balance was computed (docs/protocol.md); "
        "a daemon missing from the map: none of its deductions were applied.",
    )

    def for_daemon(self, daemon: str) -> PassIn:
        """The pass as `daemon`'s store keeps it: its own entry of `applied` as `applied_seq`."""
        if self.applied is None:
            return PassIn.model_validate(self.model_dump(by_alias=True, exclude={"applied"}))
        data = self.model_dump(by_alias=True, exclude={"applied", "applied_seq"})
        return PassIn.model_validate({**data, "applied_seq": self.applied.get(daemon, 0)})

    def record(self) -> PassIn:
        """The pass without any seq: a central system keeps those per daemon, not per pass."""
        return PassIn.model_validate(self.model_dump(by_alias=True, exclude={"applied", "applied_seq"}))


class SeedFile(BaseModel):
    """Members, passes and bookings written by hand (config/members.example.yaml) or in a
    scenario: what `gated seed` loads into a gate's store and `gated sim central --seed`
    into the reference central system's database, so one file serves both."""

    # scenario files carry more (site, gates, steps): only these three are read
    model_config = ConfigDict(extra="ignore")
    members: list[MemberIn] = []
    passes: list[SeedPass] = []
    bookings: list[BookingIn] = []


class CentralSeedFile(SeedFile):
    """A seed file for a central system, which keeps one applied seq per daemon of a site
    (docs/protocol.md, "Balances") rather than one per pass: the passes' `applied` maps
    must agree, and a scenario's `applied_seq`, which names no daemon, has nowhere to go."""

    @model_validator(mode="after")
    def _one_applied_per_daemon(self) -> CentralSeedFile:
        self.site_applied()
        return self

    def site_applied(self) -> dict[str, int]:
        """Each daemon's applied seq the seed's balances reflect ({} for a fresh site)."""
        for p in self.passes:
            if p.applied is None and p.applied_seq is not None:
                raise FieldError(
                    "passes",
                    f"pass {p.id}: applied_seq names no daemon, and a central system keeps one applied seq "
                    f"per daemon: write applied: {{DAEMON: {p.applied_seq}}} (or applied: {{}} for none)",
                )
        maps = [p for p in self.passes if p.applied is not None]
        daemons = sorted({d for p in maps for d in p.applied or {}})
        said: dict[str, tuple[int, str]] = {}  # daemon -> (seq, the pass that said it first)
        for p in maps:
            for d in daemons:
                seq = (p.applied or {}).get(d, 0)  # absent from a map: none of its events applied
                first = said.setdefault(d, (seq, p.id))
                if first[0] != seq:
                    raise FieldError(
                        "passes",
                        f"pass {first[1]} says {d} applied up to {first[0]}, pass {p.id} says {seq}: a central "
                        "system keeps one applied seq per daemon of a site, so every pass's applied must agree",
                    )
        return {d: seq for d, (seq, _) in said.items()}


__all__ = [
    "BookingIn", "CentralSeedFile", "MemberIn", "PassIn", "PassRecord", "SeedFile", "SeedPass", "datetime",
]
