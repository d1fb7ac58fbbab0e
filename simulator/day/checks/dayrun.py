"""A finished day, loaded once for the invariants (invariants.py): what the day left
behind — the central system's database (every event it applied, its balances, attendance and
points), every gate's configuration and database, the turnstiles' counts and the harness's
record of taps, desk actions, back-office changes and faults — with each site's records as
domain objects, and the findings a check reports (`Invariant`, `Violation`). A violation
carries the events around it (`Run.around`: the site's events near that instant, and the
faults in progress)."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from rules.model import (
    AntiPassback,
    Booking,
    Direction,
    EarlyEntry,
    Gate,
    Member,
    Pass,
    Policy,
    Site,
)
from rules.timeutil import WeekSchedule, parse_duration, parse_instant
from simulator.day.plan import gate_store
from sync.records import BookingIn, MemberIn, PassIn

UTC = ZoneInfo("UTC")
ENTRY_REASONS = ("booking", "linked_booking", "walk_in", "reentry")


def instant(s: str) -> datetime:
    """An instant as the logs write it (ISO 8601), in UTC."""
    return parse_instant(s, UTC)


@dataclass
class Violation:
    invariant: str
    what: str
    site: str | None = None
    at: str | None = None  # simulated instant
    member: str | None = None
    gate: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    around: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Invariant:
    name: str
    statement: str
    checked: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    def fail(self, what: str, **kw: Any) -> None:
        self.violations.append(Violation(self.name, what, **kw))


@dataclass
class Daemon:
    name: str
    site: str
    gate: Gate
    config: dict[str, Any]
    db: Path


@dataclass
class SiteIndex:
    by_member: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    deductions: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))


class Run:
    """Everything a finished run left, loaded once."""

    def __init__(self, d: Path):
        self.dir = d
        self.pop = json.loads((d / "population.json").read_text())
        self.plan = json.loads((d / "plan.json").read_text())
        self.harness = json.loads((d / "harness.json").read_text())
        self.tz = ZoneInfo(self.pop["timezone"])
        self.central = sqlite3.connect(f"file:{d / 'central' / 'central.db'}?mode=ro", uri=True)
        self.daemons: dict[str, Daemon] = {}
        for cfg_path in sorted((d / "gates").glob("*.yaml")):
            cfg = yaml.safe_load(cfg_path.read_text())
            g = cfg["gates"][0]
            gate = Gate(
                g["id"], g["zone"], Direction(g.get("direction", "in")),
                anti_passback=AntiPassback(g.get("anti_passback", "none")),
                reentry_grace=parse_duration(g.get("reentry_grace", "0m")),
                early_arrival=parse_duration(g.get("early_arrival", "15m")),
                late_arrival=parse_duration(g.get("late_arrival", "10m")),
            )
            name = cfg["daemon_id"]
            self.daemons[name] = Daemon(name, cfg["site"]["id"], gate, cfg, gate_store(d, name))
        self.sites = [s["id"] for s in self.pop["sites"]]
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)  # site -> events, by `at`
        self.by_daemon: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for site, daemon, body, received in self.central.execute(
            "SELECT site, daemon, body, received_at FROM events ORDER BY site, daemon, seq"
        ):
            ev = json.loads(body)
            ev["_daemon"] = daemon
            ev["_received"] = received
            self.events[site].append(ev)
            self.by_daemon[daemon].append(ev)
        for evs in self.events.values():
            evs.sort(key=lambda e: (e["at"], e["_daemon"], e["seq"]))
        self.end = instant(self.harness["end_sim"])
        self.speed = float(self.harness["settings"]["speed"])
        # the harness's real seconds and the simulated clock, tied by any tap it recorded
        first = next(iter(self.harness["taps"]), None)
        self._real0: float = float(first["real"]) if first else 0.0
        self._sim0: datetime = instant(first["sim"]) if first else self.end
        self._index: dict[str, SiteIndex] = {}
        # what the back office changed during the day
        self.topups: dict[tuple[str, str], list[tuple[datetime, Decimal]]] = defaultdict(list)
        self.extra_members: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.extra_passes: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for bo in self.harness["back_office"]:
            resp = bo.get("response") or {}
            if not resp.get("committed"):
                continue
            if bo["kind"] == "topup":
                self.topups[(bo["site"], bo["pass"])].append((instant(bo["sim"]), Decimal(str(bo["amount"]))))
            elif bo["kind"] == "enrol":
                self.extra_members[bo["site"]].append(bo["member"])
                self.extra_passes[bo["site"]].append(bo["pass"])

    def sim_of(self, real: float) -> datetime:
        return self._sim0 + timedelta(seconds=(real - self._real0) * self.speed)

    def index(self, site: str) -> SiteIndex:
        if site not in self._index:
            ix = SiteIndex()
            for e in self.events.get(site, []):
                if e.get("member"):
                    ix.by_member[e["member"]].append(e)
                if e["type"] == "deduction" and e.get("pass"):
                    ix.deductions[e["pass"]].append(e)
            self._index[site] = ix
        return self._index[site]

    # -- the site's records, as domain objects --------------------------------------------------

    def site_spec(self, site: str) -> dict[str, Any]:
        return next(s for s in self.pop["sites"] if s["id"] == site)

    def site_domain(self, site: str) -> Site:
        spec = self.site_spec(site)
        return Site(self.tz, WeekSchedule.parse({"mon-sun": f"{spec['opens']}-{spec['closes']}"}), frozenset(), site)

    def policy(self, site: str) -> Policy:
        d = next(x for x in self.daemons.values() if x.site == site)
        p = d.config.get("policy", {})
        return Policy(
            early_entry=EarlyEntry(p.get("early_entry", "strict")),
            no_show_after=parse_duration(p.get("no_show_after", "15m")),
            no_show_fee=Decimal(str(p.get("no_show_fee", 0))),
            loyalty_delay=parse_duration(p.get("loyalty_delay", "3h")),
        )

    def members(self, site: str) -> dict[str, Member]:
        recs = self.pop["records"][site]["members"] + self.extra_members[site]
        return {m["id"]: MemberIn.model_validate(m).to_domain() for m in recs}

    def passes(self, site: str) -> dict[str, Pass]:
        recs = self.pop["records"][site]["passes"] + self.extra_passes[site]
        return {p["id"]: PassIn.model_validate(p).to_domain().pass_ for p in recs}

    def initial_balance(self, site: str, pass_id: str) -> Decimal | None:
        recs = self.pop["records"][site]["passes"] + self.extra_passes[site]
        for p in recs:
            if p["id"] == pass_id:
                return Decimal(str(p["balance"])) if p.get("balance") is not None else None
        return None

    def bookings(self, site: str) -> dict[str, Booking]:
        return {b["id"]: BookingIn.model_validate(b).to_domain(self.tz) for b in self.pop["records"][site]["bookings"]}

    def chaos_around(self, at: datetime, span: timedelta) -> list[dict[str, Any]]:
        out = []
        for c in self.harness["chaos"]:
            t = instant(c["sim"])
            if abs(t - at) <= span:
                out.append({"chaos": c["kind"], "phase": c["phase"], "site": c.get("site"), "gate": c.get("gate"),
                            "sim": c["sim"]})
        return out

    def around(self, site: str, at: datetime, *, member: str | None = None, span: timedelta = timedelta(minutes=10),
               limit: int = 25) -> list[dict[str, Any]]:
        """The site's events near `at` (the member's first), and the faults nearby."""
        evs = [e for e in self.events.get(site, []) if abs(instant(e["at"]) - at) <= span]
        if member is not None:
            mine = [e for e in evs if e.get("member") == member]
            evs = mine + [e for e in evs if e.get("member") != member][: max(0, limit // 3)]
        evs.sort(key=lambda e: e["at"])
        out = [{k: v for k, v in e.items() if k not in ("id", "message", "_received")} for e in evs[:limit]]
        return out + self.chaos_around(at, span * 3)


__all__ = ["ENTRY_REASONS", "UTC", "Daemon", "Invariant", "Run", "SiteIndex", "Violation"]
