"""`gated scenario run FILE...`: the behaviour contract, executed.

Each file is a site's cached state and a timeline of steps with expectations
(gated/scenario_file.py; the rules they check: docs/rules.md). A run goes through the real
engine and a real SQLite store in a temporary folder. Output: one JSON line per step on stdout; a readable line per failed expectation
on stderr; exit 0 (all held), 1 (an expectation failed), 2 (a file is invalid).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from gated.engine import Engine
from gated.scenario_file import (
    QrIn,
    RemoveIn,
    Scenario,
    ScenarioInvalid,
    StepIn,
    load_scenario,
)
from rules.credential import Credential
from rules.model import Site
from rules.timeutil import WeekSchedule, parse_date, parse_duration, parse_instant
from sync import qrtoken
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import Store, SyncBatch

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
        self.store.apply_sync(self._batch([x.record() for x in m.members], m.passes, m.bookings), first - timedelta(seconds=1))
        # the gate has done the site's time-driven work since before the scenario's first
        # class: a daemon's first run takes no class that ended at or before it
        # (Ledger.run_due), so it begins a second before any class's start or end — a
        # class of no length with `no_show_after: 0m` falls due at its start
        bookings = [*m.bookings, *(b for st in m.steps if st.sync for b in st.sync.bookings)]
        instants = [parse_instant(t, self.tz) for b in bookings for t in (b.starts_at, b.ends_at)]
        self.engine.run_due(min([first, *instants]) - timedelta(seconds=1))
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
            self.store.apply_sync(self._batch([x.record() for x in sy.members], sy.passes, sy.bookings, sy.remove), now)
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
