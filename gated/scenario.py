"""`gated scenario run FILE...`: the behaviour contract, executed.

Each file is a site's cached state and a timeline of steps with expectations (the rules
they check: docs/rules.md; the file format: the examples in tests/scenarios/). A run goes through the real engine and a real SQLite store in a temporary
folder. Output: one JSON line per step on stdout; a readable line per failed expectation
on stderr; exit 0 (all held), 1 (an expectation failed), 2 (a file is invalid).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO
from zoneinfo import ZoneInfo

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from gated.config import GateRules, PolicyConfig
from gated.engine import Engine
from gated.yamlload import DEFAULT_LIMITS, Marked, YamlError, describe_error, dotted, load
from rules.credential import Credential
from rules.model import (
    Site,
)
from rules.reasons import Reason
from rules.timeutil import WeekSchedule, load_zone, parse_date, parse_duration, parse_instant
from sync import qrtoken
from sync.records import (
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
from sync.store import Store, SyncBatch

Duration = Annotated[str, AfterValidator(lambda v: (parse_duration(v), v)[1])]
TimeZoneName = Annotated[str, AfterValidator(lambda v: (load_zone(v), v)[1])]


class Strict(BaseModel):
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


class TapIn(Strict):
    gate: Id
    card: Annotated[str, Field(min_length=1)] | None = None
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
    members: list[MemberIn] = []
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
    points: int
    operator: Id
    reason: str = ""


class TickIn(Strict):
    pass


BookingOutcome = Literal["booked", "attended", "no_show", "cancelled"]


class ExpectIn(Strict):
    decision: Literal["granted", "denied"] | None = None
    reason: Reason | None = None
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
    members: list[MemberIn] = []
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
    line, key, msg = describe_error(e.errors()[0], marked)
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

    def check_records(prefix: tuple[str | int, ...], ps: list[PassIn], bs: list[BookingIn]) -> None:
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
    tz = ZoneInfo(s.site.timezone)
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


def _key_on_line(text: str, line: int | None, column: int | None) -> str:
    """The last key written before the point where YAML gave up, to name it in the error."""
    lines = text.splitlines()
    if line is not None and 1 <= line <= len(lines):
        written = lines[line - 1]
        keys = _KEY.findall(written[: column + 1] if column is not None else written) or _KEY.findall(written)
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
        model = ScenarioIn.model_validate(marked.data)
    except ValidationError as e:
        raise _first_error(e, marked) from e
    _check_references(model, marked)
    return Scenario(model, marked, ZoneInfo(model.site.timezone))


# -- running ---------------------------------------------------------------------------


def _num(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


def _same(expected: Any, actual: Any, key: str, tz: ZoneInfo) -> bool:
    if expected == actual and type(expected) is type(actual):
        return True
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, dict) and isinstance(actual, dict):
        # an expected null also matches a field the event does not carry (a refund has no gate,
        # an access event at a gate without anti-passback no anti_passback)
        return all(_same(v, actual[k], k, tz) if k in actual else v is None for k, v in expected.items())
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(_same(e, a, key, tz) for e, a in zip(expected, actual, strict=True))
    if isinstance(actual, bool) or isinstance(expected, bool):
        return str(expected).lower() == str(actual).lower()
    if isinstance(actual, int | float | Decimal):
        try:
            return Decimal(str(expected)) == Decimal(str(actual))
        except InvalidOperation:
            return False
    if key == "at" and isinstance(expected, str) and isinstance(actual, str):
        try:
            return parse_instant(expected, tz) == parse_instant(actual, tz)
        except ValueError:
            return False
    return str(expected) == str(actual)


def _match_events(expected: list[dict[str, Any]], actual: list[dict[str, Any]], tz: ZoneInfo) -> bool:
    """Each expected event matches a distinct actual one (as a subset of its fields)."""
    candidates = [[j for j, a in enumerate(actual) if _same(e, a, "", tz)] for e in expected]
    used: set[int] = set()

    def assign(i: int) -> bool:
        if i == len(expected):
            return True
        for j in candidates[i]:
            if j not in used:
                used.add(j)
                if assign(i + 1):
                    return True
                used.discard(j)
        return False

    return assign(0)


@dataclass
class StepResult:
    record: dict[str, Any]
    failures: list[dict[str, Any]]


class Runner:
    """Runs one scenario file against a fresh store."""

    def __init__(self, scenario: Scenario, workdir: Path):
        self.s = scenario
        m = scenario.model
        tz = scenario.tz
        self.tz = tz
        site = Site(
            timezone=tz,
            opening_hours=WeekSchedule.parse(m.site.opening_hours) if m.site.opening_hours is not None else None,
            closed_dates=frozenset(parse_date(str(d)) for d in m.site.closed_dates),
        )
        self.site_key = qrtoken.generate_private_key()
        self.other_key = qrtoken.generate_private_key()
        self.store = Store(workdir / "gate.db", site, daemon_id="scenario", durable=False)
        self.engine = Engine(
            self.store,
            site,
            {g.id: g.to_domain() for g in m.gates},
            m.policy.to_domain(),
            qrtoken.TrustedKeys.of([self.site_key.public_key()]),
        )

    def close(self) -> None:
        self.store.close()

    def _batch(self, members: list[MemberIn], passes: list[PassIn], bookings: list[BookingIn], remove: RemoveIn | None = None) -> SyncBatch:
        return SyncBatch(
            members=members,
            passes=passes,
            bookings=bookings,
            remove_members=remove.members if remove else [],
            remove_passes=remove.passes if remove else [],
            remove_bookings=remove.bookings if remove else [],
        )

    def _mint(self, qr: QrIn) -> str:
        issued = parse_instant(qr.issued, self.tz)
        # normalised, so that descriptions meaning the same (17:53 vs 17:53:00, 60s vs 1m) are one token
        ttl = parse_duration(qr.ttl)
        description = json.dumps([qr.member, qr.booking, issued.isoformat(), ttl.total_seconds(), qr.signer])
        token_id = hashlib.sha256(description.encode()).hexdigest()[:24]
        key = self.site_key if qr.signer == "site" else self.other_key
        return qrtoken.mint(
            key, token_id=token_id, member=qr.member, booking=qr.booking, issued=issued,
            expires=issued + parse_duration(qr.ttl),
        )

    def run(self) -> list[StepResult]:
        m = self.s.model
        first = parse_instant(m.steps[0].at, self.tz) if m.steps else datetime.now(self.tz)
        self.store.apply_sync(self._batch(m.members, m.passes, m.bookings), first - timedelta(seconds=1))
        return [self._step(i, st) for i, st in enumerate(m.steps)]

    def _step(self, i: int, st: StepIn) -> StepResult:
        now = parse_instant(st.at, self.tz)
        events = list(self.engine.run_due(now).events)
        rec: dict[str, Any] = {"step": i + 1, "line": self.s.marked.line_of(("steps", i)), "at": st.at, "action": st.action}
        decision = None
        if st.tap:
            t = st.tap
            cred = Credential.card(t.card, t.gate, now) if t.card is not None else Credential.qr(self._mint(t.qr), t.gate, now)  # type: ignore[arg-type]
            pending, committed = self.engine.tap(t.gate, cred, now, passed=t.passes)
            decision = pending.decision
            events += committed.events
            rec.update(gate=t.gate, credential=cred.kind.value, message=pending.message)
        elif st.override:
            decision, committed = self.engine.override(st.override.gate, st.override.operator, st.override.reason, now)
            events += committed.events
            rec.update(gate=st.override.gate)
        elif st.sync:
            sy = st.sync
            self.store.apply_sync(self._batch(sy.members, sy.passes, sy.bookings, sy.remove), now)
        elif st.mark_attended:
            ma = st.mark_attended
            events += self.engine.mark_attended(ma.booking, ma.operator, refund=ma.refund, now=now).events
        elif st.adjust_points:
            ap = st.adjust_points
            events += self.engine.adjust_points(ap.member, ap.points, ap.operator, ap.reason, now).events
        deducted: dict[str, Decimal] = {}
        for ev in events:
            if ev["type"] == "deduction":
                deducted[ev["pass"]] = deducted.get(ev["pass"], Decimal(0)) + Decimal(str(ev["amount"]))
        deducted = {k: v for k, v in deducted.items() if v != 0}
        if decision is not None:
            rec.update(
                decision="granted" if decision.granted else "denied",
                reason=decision.reason.value,
                booking=decision.booking,
                **{"pass": decision.pass_id},
            )
        elif st.mark_attended:
            rec["booking"] = st.mark_attended.booking
        rec["deducted"] = {k: _num(v) for k, v in deducted.items()}
        rec["events"] = events
        failures = self._check(st, rec, deducted, events) if st.expect else []
        rec["ok"] = not failures
        if failures:
            rec["failures"] = failures
        return StepResult(rec, failures)

    def _check(self, st: StepIn, rec: dict[str, Any], deducted: dict[str, Decimal], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ex = st.expect
        assert ex is not None
        fails: list[dict[str, Any]] = []

        def check(key: str, expected: Any, actual: Any) -> None:
            if not _same(expected, actual, key, self.tz):
                fails.append({"key": key, "expected": _num(expected), "actual": _num(actual)})

        given = ex.model_fields_set
        if "decision" in given:
            check("decision", ex.decision, rec.get("decision"))
        if "reason" in given:
            check("reason", ex.reason.value if ex.reason else None, rec.get("reason"))
        if "booking" in given:
            check("booking", ex.booking, rec.get("booking"))
        if "pass_" in given:
            check("pass", ex.pass_, rec.get("pass"))
        if ex.deducted is not None:
            exp = {k: v for k, v in ex.deducted.items()}
            if {k for k, v in exp.items() if v != 0} != set(deducted) or any(exp.get(k, Decimal(0)) != v for k, v in deducted.items()):
                fails.append({"key": "deducted", "expected": {k: _num(v) for k, v in exp.items()}, "actual": {k: _num(v) for k, v in deducted.items()}})
        for pid, amount in (ex.balances or {}).items():
            check(f"balances.{pid}", amount, self.store.balance(pid))
        for bid, status in (ex.attendance or {}).items():
            actual = self.store.booking_status(bid)
            check(f"attendance.{bid}", status, actual.value if actual else None)
        for mid, pts in (ex.points or {}).items():
            check(f"points.{mid}", pts, self.store.points(mid))
        if ex.events is not None and not _match_events(ex.events, events, self.tz):
            missing = [e for e in ex.events if not any(_same(e, a, "", self.tz) for a in events)]
            fails.append({"key": "events", "expected": missing or ex.events, "actual": events})
        return fails


def _json_default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return _num(o)
    if isinstance(o, datetime):
        return o.isoformat()
    return str(o)


def run_files(paths: list[str], out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    status = 0
    for name in paths:
        path = Path(name)
        try:
            scenario = load_scenario(path)
        except ScenarioInvalid as e:
            line = f":{e.line}" if e.line else ""
            # exactly one line, whatever the message carries (YAML problems can span lines)
            message = " ".join(str(e.message).split())
            print(f"{name}{line}: invalid: {e.key}: {message}", file=err)
            status = max(status, 2)
            continue
        with tempfile.TemporaryDirectory(prefix="gated-scenario-") as tmp:
            runner = Runner(scenario, Path(tmp))
            try:
                results = runner.run()
            finally:
                runner.close()
        for r in results:
            print(json.dumps({"file": name, **r.record}, default=_json_default, ensure_ascii=False), file=out)
            for f in r.failures:
                print(
                    f"FAIL {name} step {r.record['step']} (line {r.record['line']}, at {r.record['at']}): "
                    f"{f['key']}: expected {json.dumps(f['expected'], default=_json_default, ensure_ascii=False)}, "
                    f"actual {json.dumps(f['actual'], default=_json_default, ensure_ascii=False)}",
                    file=err,
                )
        if any(r.failures for r in results):
            status = max(status, 1)
    return status
