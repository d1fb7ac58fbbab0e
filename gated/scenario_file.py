"""The scenario file: its models, and loading one with every error's line and key.

A scenario is a site's cached state (members, passes, bookings), its gates and policy, and
a timeline of steps with expectations; gated/scenario.py runs it. The examples in
tests/scenarios/ show every field; docs/rules.md says what the rules they check are.
A file is invalid (exit 2 from `gated scenario run`) when the YAML does not parse, a key is
unknown, a value is out of its set, a reference dangles, an id repeats or the steps go
back in time — always with the file, the line and the key, never a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from gated.config import Duration, GateRules, PolicyConfig
from gated.yamlload import DEFAULT_LIMITS, Marked, YamlError, describe_error, dotted, load
from rules.credential import Card
from rules.reasons import Reason
from rules.timeutil import load_zone, parse_instant
from sync.records import (
    CARD_TEXT_MAX,
    LOYALTY_LIMIT,
    Amount,
    BookingIn,
    FieldError,
    Id,
    Instant,
    LocalDate,
    MemberIn,
    PassIn,
    Schedule,
)
from sync.records import Strict as RecordModel

TimeZoneName = Annotated[str, AfterValidator(lambda v: (load_zone(v), v)[1])]


class Strict(RecordModel):
    # constructed in code by field name (`pass_`); a file is read by the contract's keys
    # only (load_scenario: by_name=False), where `pass_` is an unknown key
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SiteIn(Strict):
    timezone: TimeZoneName
    opening_hours: Schedule | None = None
    closed_dates: list[LocalDate] = []


# the site-wide policy and a gate's rules read exactly as in the daemon's configuration
PolicyIn = PolicyConfig
GateIn = GateRules


class QrIn(Strict):
    member: Id
    booking: Id | None = None
    issued: Instant
    ttl: Duration
    signer: Literal["site", "other"] = "site"


def _scenario_card(v: str) -> str:
    # The contract's card is "any string, matched case-insensitively": a scenario's `uid:ana`
    # is a card and `04:A1` and `04A1` are two. So the file's cards are opaque text keys
    # (`text:UID:ANA`), not read by their shape as a reader's untyped strings are
    # (rules.credential.card_from_text), and kept whole: " C1" is not "C1". Too long or
    # unprintable stays the file's error, at its line, not a failure while running.
    key = Card.of_text(v, exact=True).key
    if len(key) > CARD_TEXT_MAX:  # as the store keeps it (`text:` and the text)
        raise ValueError(f"a card identifier is 1 to {CARD_TEXT_MAX - len('text:')} printable characters")
    return key


ScenarioCard = Annotated[str, Field(min_length=1), AfterValidator(_scenario_card)]


class ScenarioMemberIn(Strict):
    """A member as the contract writes one: the central system's record has more (email,
    phone, a photo, a note), which in a scenario file are unknown keys."""

    id: Id
    name: str = ""
    status: Literal["active", "blocked"] = "active"
    cards: list[ScenarioCard] = []

    def record(self) -> MemberIn:
        return MemberIn(id=self.id, name=self.name, status=self.status, cards=self.cards)


class TapIn(Strict):
    gate: Id
    card: ScenarioCard | None = None
    qr: QrIn | None = None
    passes: bool = True

    @model_validator(mode="after")
    def _one_credential(self) -> TapIn:
        if (self.card is None) == (self.qr is None):
            raise FieldError("qr" if self.qr is not None else "card", "a tap has exactly one of card or qr")
        return self


class RemoveIn(Strict):
    members: list[Id] = []
    passes: list[Id] = []
    bookings: list[Id] = []


class SyncIn(Strict):
    members: list[ScenarioMemberIn] = []
    passes: list[PassIn] = []
    bookings: list[BookingIn] = []
    remove: RemoveIn = RemoveIn()


class OverrideIn(Strict):
    gate: Id
    operator: Id
    reason: str = ""


class MarkAttendedIn(Strict):
    booking: Id
    operator: Id
    refund: bool = False


class AdjustPointsIn(Strict):
    member: Id
    # bounded as a booking's points are (the ledger's integers, a sum over a file's steps)
    points: int = Field(ge=-LOYALTY_LIMIT, le=LOYALTY_LIMIT)
    operator: Id
    reason: str = ""


class TickIn(Strict):
    pass


BookingOutcome = Literal["booked", "attended", "no_show", "cancelled"]


def _contract_reason(v: Any) -> Any:
    # checked before the Reason enum reads it: a misspelt code is told the contract's codes,
    # not the daemon's (site_full, lockdown, ...) beside them
    if v is not None and (not isinstance(v, str) or v not in {r.value for r in CONTRACT_REASONS}):
        raise ValueError(f"{v!r} is not one of the contract's reason codes (SCENARIOS.md): "
                         + ", ".join(r.value for r in _CONTRACT_ORDER))
    return v


# the reason codes a scenario can expect (SCENARIOS.md, "Reason codes"); the daemon's others
# (lockdown, fire_alarm, storage_fault, ...) come from what a scenario cannot make happen
_CONTRACT_ORDER = tuple(Reason(r) for r in (
    "booking", "linked_booking", "walk_in", "reentry", "override", "exit", "unknown_card", "member_blocked",
    "site_closed", "anti_passback", "too_early", "too_late", "booking_required", "pass_expired",
    "pass_not_yet_valid", "zone_not_allowed", "outside_window", "no_balance", "no_pass", "invalid_qr", "qr_expired",
    "qr_replayed"))
CONTRACT_REASONS = frozenset(_CONTRACT_ORDER)


class ExpectIn(Strict):
    decision: Literal["granted", "denied"] | None = None
    reason: Annotated[Reason | None, BeforeValidator(_contract_reason)] = None
    booking: str | None = None
    pass_: str | None = Field(default=None, alias="pass")
    deducted: dict[str, Amount] | None = None
    balances: dict[str, Amount] | None = None
    attendance: dict[str, BookingOutcome] | None = None
    points: dict[str, int] | None = None
    events: list[dict[str, Any]] | None = None


ACTIONS = ("tap", "tick", "sync", "override", "mark_attended", "adjust_points")


class StepIn(Strict):
    at: Instant
    tap: TapIn | None = None
    tick: TickIn | None = None
    sync: SyncIn | None = None
    override: OverrideIn | None = None
    mark_attended: MarkAttendedIn | None = None
    adjust_points: AdjustPointsIn | None = None
    expect: ExpectIn | None = None

    @model_validator(mode="before")
    @classmethod
    def _empty_tick(cls, data: Any) -> Any:
        # `tick: {}` and a bare `tick:` both mean "just let the clock move"
        if isinstance(data, dict) and "tick" in data and data["tick"] is None:
            data = {**data, "tick": {}}
        return data

    @model_validator(mode="after")
    def _one_action(self) -> StepIn:
        given = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(given) != 1:
            raise ValueError(f"a step has exactly one action of {', '.join(ACTIONS)} (found {len(given)})")
        return self

    @property
    def action(self) -> str:
        return next(a for a in ACTIONS if getattr(self, a) is not None)


class ScenarioIn(Strict):
    name: str = ""
    site: SiteIn
    policy: PolicyIn = PolicyIn()
    gates: list[GateIn] = []
    members: list[ScenarioMemberIn] = []
    passes: list[PassIn] = []
    bookings: list[BookingIn] = []
    steps: list[StepIn] = []


class ScenarioInvalid(Exception):
    def __init__(self, message: str, line: int | None, key: str):
        super().__init__(message)
        self.message, self.line, self.key = message, line, key


@dataclass
class Scenario:
    model: ScenarioIn
    marked: Marked
    tz: ZoneInfo


def _first_error(e: ValidationError, marked: Marked) -> ScenarioInvalid:
    errors = e.errors()
    first = errors[0]
    if first["type"] == "missing":
        # a key missing beside an unknown one is usually that key misspelt (`pass_` for
        # `pass`): the unknown key is the one to name
        first = next((x for x in errors if x["type"] == "extra_forbidden" and x["loc"][:-1] == first["loc"][:-1]),
                     first)
    line, key, msg = describe_error(first, marked)
    return ScenarioInvalid(msg, line, key)


def _check_references(s: ScenarioIn, marked: Marked) -> None:
    def fail(msg: str, path: tuple[str | int, ...]) -> ScenarioInvalid:
        return ScenarioInvalid(msg, marked.line_of(path), dotted(path))

    def unique(items: Iterable[Any], what: str) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.id in seen:
                raise fail(f"{what} id {item.id!r} repeats", (what, i, "id"))
            seen.add(item.id)

    unique(s.gates, "gates")
    unique(s.members, "members")
    unique(s.passes, "passes")
    unique(s.bookings, "bookings")
    gates = {g.id for g in s.gates}
    # Records and most step references are checked against everything the file ever
    # defines (the store has no foreign keys: a pass may name a member a later sync brings).
    # mark_attended is checked in time order (a sync removes first, then adds, as the store
    # applies it): a booking removed earlier, or synced only later, does not exist at that
    # step, and the store would fail on it at run time.
    members = {m.id for m in s.members}
    passes = {p.id for p in s.passes}
    bookings = {b.id for b in s.bookings}
    for st in s.steps:
        if st.sync:
            members |= {m.id for m in st.sync.members}
            passes |= {p.id for p in st.sync.passes}
            bookings |= {b.id for b in st.sync.bookings}
    bookings_now = {b.id for b in s.bookings}

    tz = ZoneInfo(s.site.timezone)

    def check_records(prefix: tuple[str | int, ...], ps: list[PassIn], bs: list[BookingIn]) -> None:
        for j, b in enumerate(bs):
            # in the site's zone: around a clock change only the zone tells (BookingIn)
            if b.ends_before_start(tz):
                raise fail("ends_at is before starts_at", (*prefix, "bookings", j, "ends_at"))
        for j, p in enumerate(ps):
            if p.member not in members:
                raise fail(f"pass {p.id!r} names unknown member {p.member!r}", (*prefix, "passes", j, "member"))
        for j, b in enumerate(bs):
            if b.member not in members:
                raise fail(f"booking {b.id!r} names unknown member {b.member!r}", (*prefix, "bookings", j, "member"))
            if b.pass_ not in passes:
                raise fail(f"booking {b.id!r} names unknown pass {b.pass_!r}", (*prefix, "bookings", j, "pass"))

    check_records((), s.passes, s.bookings)
    previous: datetime | None = None
    for i, st in enumerate(s.steps):
        at = parse_instant(st.at, tz)
        if previous is not None and at < previous:
            raise fail("steps go backwards in time", ("steps", i, "at"))
        previous = at
        if st.sync:
            sync_ids = (
                ("members", [m.id for m in st.sync.members]),
                ("passes", [p.id for p in st.sync.passes]),
                ("bookings", [b.id for b in st.sync.bookings]),
            )
            for kind, ids in sync_ids:
                seen: set[str] = set()
                for j, item_id in enumerate(ids):
                    if item_id in seen:
                        raise fail(f"{kind} id {item_id!r} repeats in one sync", ("steps", i, "sync", kind, j, "id"))
                    seen.add(item_id)
            bookings_now -= set(st.sync.remove.bookings)
            bookings_now |= {b.id for b in st.sync.bookings}
            check_records(("steps", i, "sync"), st.sync.passes, st.sync.bookings)
        gate = (st.tap.gate if st.tap else None) or (st.override.gate if st.override else None)
        if gate is not None and gate not in gates:
            raise fail(f"unknown gate {gate!r}", ("steps", i, st.action, "gate"))
        if st.mark_attended and st.mark_attended.booking not in bookings_now:
            what = "unknown booking" if st.mark_attended.booking not in bookings else "booking not present at this step"
            raise fail(f"{what} {st.mark_attended.booking!r}", ("steps", i, "mark_attended", "booking"))
        if st.adjust_points and st.adjust_points.member not in members:
            raise fail(f"unknown member {st.adjust_points.member!r}", ("steps", i, "adjust_points", "member"))
        if st.tap and st.tap.qr and st.tap.qr.booking and st.tap.qr.booking not in bookings:
            raise fail(f"unknown booking {st.tap.qr.booking!r}", ("steps", i, "tap", "qr", "booking"))


_KEY = re.compile(r"([A-Za-z_][\w\-]*)\s*:(?:\s|$)")
_KEY_WINDOW = 200  # characters before the point where YAML gave up, searched for the key


def _key_on_line(text: str, line: int | None, column: int | None) -> str:
    """The last key written before the point where YAML gave up, to name it in the error."""
    lines = text.splitlines()
    if line is not None and 1 <= line <= len(lines):
        # a window of the line: the key pattern backtracks over a long run of word
        # characters at every start in it (quadratic), and a quoted key of 100,000 letters
        # held the run for minutes
        end = len(lines[line - 1]) if column is None else column + 1
        written = lines[line - 1][max(0, end - _KEY_WINDOW): end]
        whole = lines[line - 1][:_KEY_WINDOW]
        keys = _KEY.findall(written) or _KEY.findall(whole)
        if keys:
            return str(keys[-1])
    return "(yaml)"


def load_scenario(path: Path) -> Scenario:
    try:
        with path.open("rb") as f:
            data = f.read(DEFAULT_LIMITS.max_bytes + 1)
    except OSError as e:
        raise ScenarioInvalid(f"cannot read file: {e.strerror or e}", None, "(file)") from e
    if len(data) > DEFAULT_LIMITS.max_bytes:
        raise ScenarioInvalid(f"the file is larger than {DEFAULT_LIMITS.max_bytes:,} bytes", None, "(file)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ScenarioInvalid(f"not UTF-8: {e.reason} at byte {e.start}", line, "(file)") from e
    try:
        marked = load(text)
    except YamlError as e:
        raise ScenarioInvalid(e.message, e.line, e.key or _key_on_line(text, e.line, e.column)) from e
    if not isinstance(marked.data, dict):
        raise ScenarioInvalid("a scenario is a mapping with site, gates, ... and steps", 1, "(top)")
    try:
        model = ScenarioIn.model_validate(marked.data, by_alias=True, by_name=False)
    except ValidationError as e:
        raise _first_error(e, marked) from e
    _check_references(model, marked)
    return Scenario(model, marked, ZoneInfo(model.site.timezone))
