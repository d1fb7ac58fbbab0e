"""What must hold after a day, checked on what the day left behind: the central system's
database (every event it applied, its balances, attendance and points), every gate's
database, the turnstiles' counts and the harness's record of taps, desk actions and faults.

Nothing here trusts the code under test to say what is right: attendance, no-shows, fees,
refunds and loyalty are recomputed from the central system's event log and the day's
bookings by the rules as docs/rules.md states them, written again here; grants are decided
again with `rules.decide` (the pure core) on a view rebuilt from the log.

Each check returns an `Invariant` (name, what was checked, figures) and its violations;
each violation carries the events around it (the site's events near that instant, and the
faults in progress).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from rules.credential import CredentialKind
from rules.decide import MemberView, Presented, ZonePresence, decide
from rules.model import (
    AntiPassback,
    Booking,
    BookingStatus,
    Direction,
    EarlyEntry,
    Gate,
    Member,
    MemberStatus,
    Pass,
    Policy,
    Site,
)
from rules.timeutil import (
    WeekSchedule,
    local_date,
    parse_duration,
    parse_instant,
    start_of_local_day,
)
from simulator.day import procfs
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import open_reader

UTC = ZoneInfo("UTC")
ENTRY_REASONS = ("booking", "linked_booking", "walk_in", "reentry")


def _t(s: str) -> datetime:
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
            self.daemons[name] = Daemon(name, cfg["site"]["id"], gate, cfg, d / "gates" / f"{name}.db")
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
        self.end = _t(self.harness["end_sim"])
        self.speed = float(self.harness["settings"]["speed"])
        # the harness's real seconds and the simulated clock, tied by any tap it recorded
        first = next(iter(self.harness["taps"]), None)
        self._real0: float = float(first["real"]) if first else 0.0
        self._sim0: datetime = _t(first["sim"]) if first else self.end
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
                self.topups[(bo["site"], bo["pass"])].append((_t(bo["sim"]), Decimal(str(bo["amount"]))))
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
            t = _t(c["sim"])
            if abs(t - at) <= span:
                out.append({"chaos": c["kind"], "phase": c["phase"], "site": c.get("site"), "gate": c.get("gate"),
                            "sim": c["sim"]})
        return out

    def around(self, site: str, at: datetime, *, member: str | None = None, span: timedelta = timedelta(minutes=10),
               limit: int = 25) -> list[dict[str, Any]]:
        """The site's events near `at` (the member's first), and the faults nearby."""
        evs = [e for e in self.events.get(site, []) if abs(_t(e["at"]) - at) <= span]
        if member is not None:
            mine = [e for e in evs if e.get("member") == member]
            evs = mine + [e for e in evs if e.get("member") != member][: max(0, limit // 3)]
        evs.sort(key=lambda e: e["at"])
        out = [{k: v for k, v in e.items() if k not in ("id", "message", "_received")} for e in evs[:limit]]
        return out + self.chaos_around(at, span * 3)


# -- the checks ----------------------------------------------------------------------------------


def check_rotations(run: Run) -> Invariant:
    inv = Invariant("rotations", "every rotation of every turnstile is a committed entry (or exit) or a "
                    "passage_unconfirmed event; no passage is recorded without a rotation")
    figures: dict[str, Any] = {}
    for name in sorted(run.daemons):
        ts = run.harness["turnstiles"].get(name, {})
        rotations = int(ts.get("rotations", 0))
        evs = run.by_daemon.get(name, [])
        passed = [e for e in evs if e["type"] == "access" and e.get("decision") == "granted" and e.get("passed")]
        unconfirmed = [e for e in evs if e["type"] == "passage_unconfirmed"]
        figures[name] = {"rotations": rotations, "committed": len(passed), "unconfirmed": len(unconfirmed),
                         "unlocks": ts.get("unlocks")}
        inv.checked += rotations
        site = run.daemons[name].site
        if rotations > len(passed) + len(unconfirmed):
            lone = _unexplained(run, [run.sim_of(r) for r in ts.get("rotation_real", [])], passed + unconfirmed)
            at = lone[0] if lone else run.end
            near = [e for e in run.around(site, at, span=timedelta(minutes=3)) if e.get("_daemon") in (name, None)]
            if not any("chaos" not in e for e in near):  # a quiet hour: the gate's own events nearest to it
                near += [{k: v for k, v in e.items() if k not in ("id", "message", "_received")}
                         for e in sorted(evs, key=lambda e: abs(_t(e["at"]) - at))[:10]]
            inv.fail(f"{name}: {rotations - len(passed) - len(unconfirmed)} rotation(s) neither committed nor "
                     f"reported unconfirmed ({rotations} rotations, {len(passed)} committed, "
                     f"{len(unconfirmed)} unconfirmed); the first near {at:%H:%M:%S}", site=site, gate=name,
                     at=at.isoformat(), detail={**figures[name], "unexplained_near": [t.isoformat() for t in lone[:10]]},
                     around=near)
        if len(passed) > rotations:
            inv.fail(f"{name}: {len(passed) - rotations} passage(s) recorded without a rotation",
                     site=site, gate=name, detail=figures[name])
    inv.figures = {"per_gate": figures,
                   "rotations": sum(f["rotations"] for f in figures.values()),
                   "committed": sum(f["committed"] for f in figures.values()),
                   "unconfirmed": sum(f["unconfirmed"] for f in figures.values())}
    return inv


def _unexplained(run: Run, rotations: list[datetime], records: list[dict[str, Any]]) -> list[datetime]:
    """Rotations no record follows closely: where to look. A commit follows its rotation
    within a real second or so (the passage read, one transaction); a grant a kill cut
    becomes passage_unconfirmed when the daemon is back (seconds later)."""
    def slack(e: dict[str, Any]) -> timedelta:
        return timedelta(seconds=(15 if e["type"] == "passage_unconfirmed" else 3) * run.speed)

    pending = sorted(records, key=lambda e: e["at"])
    lead, longest = timedelta(seconds=2 * run.speed), timedelta(seconds=15 * run.speed)
    used: set[int] = set()
    out = []
    for r in sorted(rotations):
        match = None
        for i, e in enumerate(pending):
            t = _t(e["at"])
            if t > r + longest:
                break
            if i not in used and r - lead <= t <= r + slack(e):
                match = i
                break
        if match is None:
            out.append(r)
        else:
            used.add(match)
    return out


def check_exactly_once(run: Run) -> Invariant:
    inv = Invariant("exactly_once", "every gate event reached the central system exactly once: seq 1..N "
                    "gap-free, ids unique, the same event (id) at the gate and at the central system")
    for name, d in sorted(run.daemons.items()):
        with contextlib.closing(sqlite3.connect(f"file:{d.db}?mode=ro", uri=True)) as c:
            last = int((c.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone() or ("1",))[0]) - 1
            local = {int(s): i for s, i in c.execute("SELECT seq, id FROM events")}
        central = run.by_daemon.get(name, [])
        seqs = [e["seq"] for e in central]
        inv.checked += len(central)
        if seqs != list(range(1, last + 1)):
            missing = sorted(set(range(1, last + 1)) - set(seqs))
            dup = [s for s, n in Counter(seqs).items() if n > 1]
            extra = sorted(set(seqs) - set(range(1, last + 1)))
            inv.fail(f"{name}: central seqs are not 1..{last}", site=d.site, gate=name,
                     detail={"missing": missing[:50], "duplicates": dup[:50], "beyond_last": extra[:50]})
        ids = [e["id"] for e in central]
        if len(set(ids)) != len(ids):
            inv.fail(f"{name}: an event id twice at the central system", site=d.site, gate=name)
        for e in central:
            lid = local.get(e["seq"])
            if lid is not None and lid != e["id"]:
                inv.fail(f"{name}: seq {e['seq']} is another event at the gate than at the central system",
                         site=d.site, gate=name, at=e["at"], detail={"gate_id": lid, "central_id": e["id"]})
                break
    return inv


def check_balances(run: Run) -> Invariant:
    inv = Invariant("balances", "every pass balance at every gate equals the central's, and the central's "
                    "equals its start + top-ups - the deductions it received (the `applied` rule)")
    central_bal = {(s, p): Decimal(b) for s, p, b in run.central.execute(
        "SELECT site, id, balance FROM passes WHERE balance IS NOT NULL")}
    taken: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for site, evs in run.events.items():
        for e in evs:
            if e["type"] == "deduction" and e.get("pass"):
                taken[(site, e["pass"])] += Decimal(str(e["amount"]))
    for (site, pid), bal in sorted(central_bal.items()):
        start = run.initial_balance(site, pid)
        if start is None:
            continue
        want = start + sum((a for _, a in run.topups.get((site, pid), [])), Decimal(0)) - taken[(site, pid)]
        inv.checked += 1
        if bal != want:
            inv.fail(f"central balance of {pid} at {site} is {bal}, start {start} + top-ups - deductions = {want}",
                     site=site, detail={"pass": pid})
    for name, d in sorted(run.daemons.items()):
        with contextlib.closing(open_reader(d.db)) as c:  # the local balance as the gate reads it
            rows = c.execute("SELECT id, balance FROM passes WHERE balance IS NOT NULL").fetchall()
        wrong = []
        for pid, bal in rows:
            inv.checked += 1
            cb = central_bal.get((d.site, pid))
            if cb is None or Decimal(str(bal)) != cb:
                wrong.append({"pass": pid, "gate": str(bal), "central": str(cb)})
        if wrong:
            inv.fail(f"{name}: {len(wrong)} pass balance(s) differ from the central's", site=d.site, gate=name,
                     detail={"first": wrong[:20]})
    return inv


def check_settled(run: Run) -> Invariant:
    inv = Invariant("settled", "at the end every outbox is acknowledged, every gate has the central's last "
                    "delta, and no grant intent is left unresolved")
    drained = run.harness.get("drained", {})
    if drained.get("timed_out"):
        inv.fail("the gates did not settle after the day", detail=drained)
    for name, d in sorted(run.daemons.items()):
        inv.checked += 1
        with contextlib.closing(sqlite3.connect(f"file:{d.db}?mode=ro", uri=True)) as c:
            left = c.execute("SELECT COUNT(*) FROM grant_intents").fetchone()[0]
        if left:
            inv.fail(f"{name}: {left} grant intent(s) left", site=d.site, gate=name)
    return inv


@dataclass
class Ledger:
    """The site's day recomputed from the central's event log."""

    attended_at: dict[str, datetime] = field(default_factory=dict)  # booking -> first attended
    no_shows: Counter[str] = field(default_factory=Counter)
    fees: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    loyalty: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))


def check_books(run: Run) -> list[Invariant]:
    """Attendance, no-shows, fees, refunds and loyalty recomputed from the log."""
    att = Invariant("attendance", "each booking attended at a gate has its attendance event; a booking "
                    "nobody attended is a no-show exactly once, on time; the central's attendance agrees")
    fees = Invariant("fees", "each no-show fee and each deduction is what the rules charge: walk-in cost, "
                     "booking cost, the fee capped at the balance (none if the member was on site)")
    refunds = Invariant("refunds", "each refund by the desk gives back the member's latest walk-in charge "
                        "of that day and zone not yet refunded, once")
    loyalty = Invariant("loyalty", "each attended booking's points are credited once after the delay; manual "
                        "points as the desk gave them; the central's totals agree")
    for site in run.sites:
        policy = run.policy(site)
        bookings = run.bookings(site)
        passes = run.passes(site)
        evs = run.events.get(site, [])
        cutoff = run.end - timedelta(minutes=10)  # due before this: must have happened
        attended_at: dict[str, datetime] = {}
        attended_n: Counter[str] = Counter()
        no_show_ev: dict[str, list[dict[str, Any]]] = defaultdict(list)
        by_seq = {(e["_daemon"], e["seq"]): e for e in evs}
        balance: dict[str, Decimal] = {}
        for pid in passes:
            b0 = run.initial_balance(site, pid)
            if b0 is not None:
                balance[pid] = b0
        topups = sorted((t, pid, a) for (s, pid), lst in run.topups.items() if s == site for t, a in lst)
        ti = 0
        entries: dict[str, list[datetime]] = defaultdict(list)  # member -> passed entries (in gates)
        walk_ins: dict[str, list[dict[str, Any]]] = defaultdict(list)  # member -> walk-in deductions
        refunded: set[tuple[str, int]] = set()
        credited: Counter[str] = Counter()
        manual: list[dict[str, Any]] = []
        for e in evs:
            at = _t(e["at"])
            while ti < len(topups) and topups[ti][0] <= at:
                balance[topups[ti][1]] = balance.get(topups[ti][1], Decimal(0)) + topups[ti][2]
                ti += 1
            kind = e["type"]
            if kind == "access" and e.get("decision") == "granted" and e.get("passed"):
                d = run.daemons.get(e["_daemon"])
                if d is not None and d.gate.direction == Direction.IN and e.get("member"):
                    entries[e["member"]].append(at)
                if e.get("reason") in ("booking", "linked_booking") and e.get("booking"):
                    att.checked += 1
                    nxt = [by_seq.get((e["_daemon"], e["seq"] + k)) for k in (1, 2)]
                    if not any(n and n["type"] == "attendance" and n.get("booking") == e["booking"]
                               and n.get("status") == "attended" for n in nxt):
                        att.fail(f"booking {e['booking']} let in at {e.get('gate')} without its attendance event",
                                 site=site, at=e["at"], member=e.get("member"), gate=e["_daemon"],
                                 around=run.around(site, at, member=e.get("member")))
                # the deduction this entry should take, in the same transaction
                want = _entry_cost(e, passes, bookings)
                nxt1 = by_seq.get((e["_daemon"], e["seq"] + 1))
                got = (Decimal(str(nxt1["amount"])) if nxt1 and nxt1["type"] == "deduction"
                       and nxt1.get("cause") in ("walk_in", "booking") else Decimal(0))
                fees.checked += 1
                if want is not None and got != want:
                    fees.fail(f"{e.get('reason')} at {e.get('gate')} took {got}, the rules say {want}",
                              site=site, at=e["at"], member=e.get("member"), gate=e["_daemon"],
                              detail={"pass": e.get("pass"), "booking": e.get("booking")},
                              around=run.around(site, at, member=e.get("member")))
            elif kind == "attendance":
                b = e.get("booking")
                if e.get("status") == "attended" and b:
                    attended_n[b] += 1
                    attended_at.setdefault(b, at)
                elif e.get("status") == "no_show" and b:
                    no_show_ev[b].append(e)
            elif kind == "deduction" and e.get("pass"):
                amount = Decimal(str(e["amount"]))
                if e.get("cause") == "walk_in" and e.get("member"):
                    walk_ins[e["member"]].append({**e, "_at": at})
                if e.get("cause") == "refund":
                    refunds.checked += 1
                    _check_refund(run, refunds, site, e, at, walk_ins, refunded, bookings)
                if e.get("cause") == "no_show_fee":
                    fees.checked += 1
                    b = bookings.get(e.get("booking") or "")
                    want = _fee(b, passes, policy, balance, entries, run.tz) if b else None
                    if want is None or amount != want:
                        fees.fail(f"no-show fee {amount} for {e.get('booking')}; the rules say {want}",
                                  site=site, at=e["at"], member=e.get("member"), gate=e["_daemon"],
                                  around=run.around(site, at, member=e.get("member")))
                if e["pass"] in balance:
                    balance[e["pass"]] -= amount
            elif kind == "loyalty":
                if e.get("booking"):
                    credited[e["booking"]] += 1
                    b = bookings.get(e["booking"])
                    loyalty.checked += 1
                    if b is None or int(e.get("points") or 0) != b.loyalty_points:
                        loyalty.fail(f"{e.get('points')} points for booking {e['booking']}, it carries "
                                     f"{b.loyalty_points if b else '?'}", site=site, at=e["at"], member=e.get("member"))
                    elif e["booking"] not in attended_at:
                        loyalty.fail(f"points for booking {e['booking']} that nobody attended", site=site,
                                     at=e["at"], member=e.get("member"), around=run.around(site, at, member=e.get("member")))
                    elif at < b.ends_at + policy.loyalty_delay:
                        loyalty.fail(f"points for booking {e['booking']} before its loyalty delay", site=site,
                                     at=e["at"], member=e.get("member"))
                else:
                    manual.append(e)
        # every booking: attended, or a no-show once, on time
        for bid, b in sorted(bookings.items()):
            if b.status == BookingStatus.CANCELLED:
                if attended_n[bid] or no_show_ev[bid]:
                    att.fail(f"cancelled booking {bid} has attendance events", site=site, member=b.member)
                continue
            att.checked += 1
            due = b.ends_at + policy.no_show_after
            first_att = attended_at.get(bid)
            expect_no_show = first_att is None or first_att > due
            n = len(no_show_ev[bid])
            if due > cutoff:
                if n > 1:
                    att.fail(f"booking {bid}: {n} no-show events", site=site, member=b.member)
                continue
            if expect_no_show and n != 1:
                att.fail(f"booking {bid} (ended {b.ends_at:%H:%M}) nobody attended: {n} no-show events, want 1",
                         site=site, at=due.isoformat(), member=b.member, around=run.around(site, due, member=b.member))
            elif not expect_no_show and n:
                at = _t(no_show_ev[bid][0]["at"])
                att.fail(f"booking {bid} attended at {first_att:%H:%M:%S} but made a no-show at {at:%H:%M:%S} "
                         f"by {no_show_ev[bid][0]['_daemon']}", site=site, at=no_show_ev[bid][0]["at"],
                         member=b.member, around=run.around(site, at, member=b.member))
            for ev in no_show_ev[bid]:
                if _t(ev["at"]) < due:
                    att.fail(f"booking {bid} made a no-show before it was due", site=site, at=ev["at"], member=b.member)
            if attended_n[bid] > 1:
                att.fail(f"booking {bid} attended {attended_n[bid]} times", site=site, member=b.member,
                         around=run.around(site, attended_at[bid], member=b.member))
            # loyalty: due after the delay, from the later of the end and the attendance
            if b.loyalty_points and first_att is not None:
                credit_due = max(b.ends_at + policy.loyalty_delay, first_att)
                if credit_due <= cutoff:
                    loyalty.checked += 1
                    if credited[bid] != 1:
                        loyalty.fail(f"booking {bid}: {credited[bid]} loyalty credits, want 1", site=site,
                                     member=b.member, at=credit_due.isoformat(),
                                     around=run.around(site, credit_due, member=b.member))
        # the central's attendance table: attended wins; else the no-show
        table = {bk: st for bk, st in run.central.execute("SELECT booking, status FROM attendance WHERE site = ?", (site,))}
        for bid in bookings:
            status: str | None = "attended" if bid in attended_at else ("no_show" if no_show_ev[bid] else None)
            if table.get(bid) != status:
                att.fail(f"the central's attendance of {bid} is {table.get(bid)}, the log says {status}", site=site,
                         member=bookings[bid].member)
        # manual points: as the desk gave them, once each
        desk_points = [x for x in run.harness["desk"] if x["site"] == site and x["kind"] == "points"
                       and x.get("status") == 200]
        given = Counter((str(m.get("member")), int(m.get("points") or 0)) for m in manual)
        asked = Counter((str(x["member"]), int(x["points"])) for x in desk_points)
        loyalty.checked += len(desk_points)
        if given != asked:
            loyalty.fail("manual points at the central differ from what the desk gave", site=site,
                         detail={"missing": list((asked - given).elements())[:20],
                                 "extra": list((given - asked).elements())[:20]})
        totals: Counter[str] = Counter()
        for e in evs:
            if e["type"] == "loyalty" and e.get("member"):
                totals[e["member"]] += int(e.get("points") or 0)
        central_pts = {m: int(p) for m, p in run.central.execute("SELECT member, points FROM points WHERE site = ?", (site,))}
        for m in set(totals) | set(central_pts):
            if totals.get(m, 0) != central_pts.get(m, 0):
                loyalty.fail(f"{m}: the central's points {central_pts.get(m, 0)}, the log sums {totals.get(m, 0)}",
                             site=site, member=m)
    return [att, fees, refunds, loyalty]


def _entry_cost(e: dict[str, Any], passes: dict[str, Pass], bookings: dict[str, Booking]) -> Decimal | None:
    reason = e.get("reason")
    p = passes.get(e.get("pass") or "")
    if reason == "walk_in":
        return p.entry_cost if p is not None else None
    if reason in ("booking", "linked_booking"):
        b = bookings.get(e.get("booking") or "")
        if b is None:
            return None
        if b.deducted or p is None or not p.kind.has_balance or p.deduct_on.value != "access":
            return Decimal(0)
        return b.cost
    return Decimal(0)


def _fee(b: Booking, passes: dict[str, Pass], policy: Policy, balance: dict[str, Decimal],
         entries: dict[str, list[datetime]], tz: ZoneInfo) -> Decimal:
    p = passes.get(b.pass_id)
    if policy.no_show_fee <= 0 or p is None or b.deducted or p.deduct_on.value != "access" or not p.kind.has_balance:
        return Decimal(0)
    day = local_date(b.starts_at, tz)
    start = start_of_local_day(day, tz)
    if any(start <= t < b.ends_at for t in entries.get(b.member, [])):
        return Decimal(0)  # on site that day before the class ended: one access covers the day
    return max(Decimal(0), min(policy.no_show_fee, balance.get(b.pass_id, Decimal(0))))


def _check_refund(run: Run, inv: Invariant, site: str, e: dict[str, Any], at: datetime,
                  walk_ins: dict[str, list[dict[str, Any]]], refunded: set[tuple[str, int]],
                  bookings: dict[str, Booking]) -> None:
    b = bookings.get(e.get("booking") or "")
    member = e.get("member")
    if b is None or member is None:
        inv.fail("a refund without its booking", site=site, at=e["at"], member=member)
        return
    day = local_date(b.starts_at, run.tz)
    cands = [w for w in walk_ins.get(member, []) if local_date(w["_at"], run.tz) == day and w["_at"] < at
             and (w["_daemon"], w["seq"]) not in refunded]
    if not cands:
        inv.fail(f"refund for {b.id} but no walk-in charge to give back", site=site, at=e["at"], member=member,
                 around=run.around(site, at, member=member, span=timedelta(hours=2)))
        return
    w = max(cands, key=lambda x: (x["_at"], x["seq"]))
    refunded.add((w["_daemon"], w["seq"]))
    if Decimal(str(e["amount"])) != -Decimal(str(w["amount"])) or e.get("pass") != w.get("pass"):
        inv.fail(f"refund of {e['amount']} on {e.get('pass')}; the latest walk-in was {w['amount']} on {w.get('pass')}",
                 site=site, at=e["at"], member=member, around=run.around(site, at, member=member))


def check_requested_refunds(run: Run, inv: Invariant) -> None:
    """Every refund the desk asked for and was told it got is in the log; every one it was
    told it did not get had nothing to give back (recomputed)."""
    for x in run.harness["desk"]:
        if x["kind"] != "attend" or not x.get("refund") or x.get("status") != 200:
            continue
        inv.checked += 1
        site, booking = x["site"], x["booking"]
        got = [e for e in run.events.get(site, []) if e["type"] == "deduction" and e.get("cause") == "refund"
               and e.get("booking") == booking]
        at = _t(x["sim"])
        member = x.get("member")
        walked = [e for e in run.events.get(site, []) if e["type"] == "deduction" and e.get("cause") == "walk_in"
                  and e.get("member") == member and _t(e["at"]) < at
                  and local_date(_t(e["at"]), run.tz) == local_date(at, run.tz)]
        if walked and not got:
            inv.fail(f"the desk refunded {booking}: a walk-in of that day was charged at "
                     f"{walked[-1]['_daemon']} but nothing was given back", site=site, at=x["sim"], member=member,
                     detail={"desk_answer": x.get("response")},
                     around=run.around(site, at, member=member, span=timedelta(hours=2)))


# -- re-deciding grants ------------------------------------------------------------------------------


def check_grants(run: Run) -> Invariant:
    inv = Invariant("grants", "no gate granted an entry its rules would deny at that instant: every granted "
                    "entry decided again with rules.decide on the log (as the gate knew it)")
    lag: list[dict[str, Any]] = []
    differ: Counter[str] = Counter()
    for site in run.sites:
        members = run.members(site)
        passes = run.passes(site)
        bookings = run.bookings(site)
        sd = run.site_domain(site)
        policy = run.policy(site)
        by_member_pass: dict[str, list[Pass]] = defaultdict(list)
        for p in passes.values():
            by_member_pass[p.member].append(p)
        by_member_booking: dict[str, list[Booking]] = defaultdict(list)
        for b in bookings.values():
            by_member_booking[b.member].append(b)
        evs = run.events.get(site, [])
        # what every daemon did, in order, to rebuild views from
        for e in evs:
            if not (e["type"] == "access" and e.get("decision") == "granted" and e.get("reason") in ENTRY_REASONS):
                continue
            d = run.daemons.get(e["_daemon"])
            m = members.get(e.get("member") or "")
            if d is None or m is None:
                inv.fail(f"a grant for an unknown member {e.get('member')}", site=site, at=e["at"])
                continue
            inv.checked += 1
            t = _t(e.get("decided_at") or e["at"])
            views = {
                "as_the_gate_knew": _view(run, site, e, t, m, by_member_pass, by_member_booking, own_only=True),
                "everything": _view(run, site, e, t, m, by_member_pass, by_member_booking, own_only=False),
            }
            presented = Presented(CredentialKind.QR if e.get("credential") == "qr" else CredentialKind.CARD)
            if presented.kind == CredentialKind.QR:
                presented = Presented(CredentialKind.CARD)  # the token was verified by the gate
            out = {k: decide(v, presented, d.gate, sd, policy, t) for k, v in views.items()}
            own, full = out["as_the_gate_knew"], out["everything"]
            if not own.granted and not full.granted:
                inv.fail(f"{e['_daemon']} granted {e.get('reason')} to {m.id}; decided again: {own.reason.value}",
                         site=site, at=e["at"], member=m.id, gate=e["_daemon"],
                         detail={"decided_at": t.isoformat(), "pass": e.get("pass"), "booking": e.get("booking")},
                         around=run.around(site, t, member=m.id))
            elif not full.granted:
                lag.append({"daemon": e["_daemon"], "member": m.id, "at": e["at"], "granted": e.get("reason"),
                            "with_everything": full.reason.value})
            elif own.granted and own.reason.value != e.get("reason"):
                differ[f"{e.get('reason')}->{own.reason.value}"] += 1
    inv.figures = {"granted_on_what_the_gate_had_not_yet_heard": len(lag), "examples": lag[:10],
                   "same_grant_other_reason": dict(differ)}
    return inv


def _view(run: Run, site: str, e: dict[str, Any], t: datetime, m: Member,
          by_member_pass: dict[str, list[Pass]], by_member_booking: dict[str, list[Booking]],
          *, own_only: bool) -> MemberView:
    """The member as a gate saw them at `t`: own_only — from this daemon's own events only
    (what it always knows); else from every event of the site before `t`."""
    daemon, seq = e["_daemon"], e["seq"]

    def known(x: dict[str, Any]) -> bool:
        if x["_daemon"] == daemon:
            return bool(x["seq"] < seq)
        return not own_only and _t(x["at"]) < t

    passes = []
    idx = run.index(site)
    member_events = [x for x in idx.by_member.get(m.id, []) if known(x)]
    for p in by_member_pass.get(m.id, []):
        if p.balance is not None:
            bal = p.balance + sum((a for when, a in run.topups.get((site, p.id), []) if when <= t), Decimal(0))
            for x in idx.deductions.get(p.id, []):
                if known(x):
                    bal -= Decimal(str(x["amount"]))
            p = _with_balance(p, bal)
        passes.append(p)
    bookings = []
    for b in by_member_booking.get(m.id, []):
        status = b.status
        for x in member_events:
            if x["type"] == "attendance" and x.get("booking") == b.id:
                status = BookingStatus(x["status"]) if status != BookingStatus.ATTENDED else status
        bookings.append(_with_status(b, status))
    presence = ZonePresence()
    for x in member_events:
        if x["type"] == "access" and x.get("decision") == "granted" and x.get("passed"):
            d = run.daemons.get(x["_daemon"])
            if d is None:
                continue
            at = _t(x["at"])
            direction = Direction.OUT if x.get("reason") == "exit" else Direction.IN
            last_entry = at if direction == Direction.IN else presence.last_entry_at
            presence = ZonePresence(at, direction, last_entry)
    return MemberView(m, tuple(passes), tuple(bookings), {d_zone(run, e): presence})


def d_zone(run: Run, e: dict[str, Any]) -> str:
    return run.daemons[e["_daemon"]].gate.zone


def _with_balance(p: Pass, bal: Decimal) -> Pass:
    return Pass(p.id, p.member, p.name, p.kind, bal, p.deduct_on, p.walk_in_cost, p.valid_from, p.valid_until,
                p.zones, p.access_windows)


def _with_status(b: Booking, status: BookingStatus) -> Booking:
    return Booking(b.id, b.member, b.pass_id, b.class_name, b.zone, b.starts_at, b.ends_at, status, b.deducted,
                   b.cost, b.loyalty_points)


# -- what the harness expected of the gates ------------------------------------------------------------


def check_expected_denials(run: Run) -> Invariant:
    inv = Invariant("expected_denials", "unknown cards, forged and replayed QR codes at the same turnstile "
                    "and blocked members are never let in")
    want = {"unknown_card": {"unknown_card"}, "forged_qr": {"invalid_qr"}, "qr_replay": {"qr_replayed"}}
    seen: Counter[str] = Counter()
    for tap in run.harness["taps"]:
        purpose = tap["purpose"]
        if purpose not in want or tap["decision"] is None:
            continue
        inv.checked += 1
        seen[f"{purpose}:{tap['reason']}"] += 1
        if tap["decision"] == "granted" or tap["reason"] not in want[purpose]:
            inv.fail(f"{purpose} at {tap['site']}/{tap['gate']}: {tap['decision']} {tap['reason']}",
                     site=tap["site"], at=tap["sim"], gate=tap["gate"], member=tap.get("who"),
                     around=run.around(tap["site"], _t(tap["sim"]), member=tap.get("who")))
    members = {s: run.members(s) for s in run.sites}
    for site, evs in run.events.items():
        for e in evs:
            if e["type"] == "access" and e.get("decision") == "granted" and e.get("reason") in ENTRY_REASONS:
                m = members[site].get(e.get("member") or "")
                if m is not None and m.status == MemberStatus.BLOCKED:
                    inv.fail(f"blocked member {m.id} let in", site=site, at=e["at"], member=m.id)
    inv.figures = dict(seen)
    return inv


# -- latency and resources ------------------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


def latency(run: Run) -> dict[str, Any]:
    healthy = [t for t in run.harness["taps"] if all(t["state"].values())]
    coil = [t["coil_ms"] for t in healthy if t["coil_ms"] is not None]
    coil_all = [t["coil_ms"] for t in run.harness["taps"] if t["coil_ms"] is not None]
    # an unknown card waits for the central's answer (lookup_timeout, 0.3 s): apart
    denied = [t["answer_ms"] for t in healthy if t["decision"] == "denied" and t["answer_ms"] is not None
              and t["reason"] != "unknown_card"]
    unknown = [t["answer_ms"] for t in healthy if t["reason"] == "unknown_card" and t["answer_ms"] is not None]
    decide_ms = [t["decide_ms"] for t in run.harness["taps"] if t.get("decide_ms") is not None]
    stalls = sorted(
        ({"ms": t["coil_ms"] if t["decision"] == "granted" else t["answer_ms"], "sim": t["sim"], "site": t["site"],
          "gate": t["gate"], "decision": t["decision"], "reason": t["reason"]}
         for t in healthy if (t["coil_ms"] if t["decision"] == "granted" else t["answer_ms"]) is not None
         and t["reason"] != "unknown_card"),
        key=lambda x: -x["ms"])
    unanswered = [t for t in healthy if t["decision"] is None]
    return {
        "tap_to_coil_ms": {"n": len(coil), "p50": _pct(coil, 0.5), "p99": _pct(coil, 0.99), "max": max(coil, default=None)},
        "tap_to_coil_ms_all_taps": {"n": len(coil_all), "p99": _pct(coil_all, 0.99), "max": max(coil_all, default=None)},
        "tap_to_denial_ms": {"n": len(denied), "p50": _pct(denied, 0.5), "p99": _pct(denied, 0.99),
                             "max": max(denied, default=None)},
        "unknown_card_answer_ms": {"n": len(unknown), "p50": _pct(unknown, 0.5), "p99": _pct(unknown, 0.99),
                                   "max": max(unknown, default=None)},
        "decision_ms_in_daemon": {"n": len(decide_ms), "p50": _pct(decide_ms, 0.5), "p99": _pct(decide_ms, 0.99),
                                  "max": max(decide_ms, default=None)},
        "longest_stalls": stalls[:5],
        "unanswered_taps_at_healthy_gates": len(unanswered),
        "harness_loop_lag_ms_worst": run.harness.get("harness_loop_lag_ms"),
    }


def check_resources(run: Run) -> Invariant:
    inv = Invariant("resources", "each daemon's RSS and open file descriptors, sampled through the day, are "
                    "flat after warm-up (no descriptor leak; RSS not still rising in the last part of the day)")
    per: dict[str, Any] = {}
    warmup = 120.0
    for key, raw in sorted(run.harness["samples"].items()):
        samples = [procfs.Sample(**s) for s in raw]
        g = procfs.growth(samples, warmup)
        per[key] = g
        name = key.split("#")[0]
        if name not in run.daemons or "rss_mb_per_hour_second_half" not in g:
            continue
        inv.checked += 1
        lived = float(g["lived_s"])
        if lived < 600:
            continue  # a short incarnation (a kill): too short to say
        if int(g["fds_last"]) > int(g["fds_after_warmup"]) + 8:
            inv.fail(f"{key}: open descriptors {g['fds_after_warmup']} -> {g['fds_last']}", gate=name, detail=g)
        rise = float(g["rss_mb_last"]) - float(g["rss_mb_after_warmup"])
        if float(g["rss_mb_per_hour_second_half"]) > 6.0 and rise > 4.0:
            inv.fail(f"{key}: RSS still rising at {g['rss_mb_per_hour_second_half']} MB/h in the second half "
                     f"({g['rss_mb_after_warmup']} -> {g['rss_mb_last']} MB)", gate=name, detail=g)
    for f in sorted((run.dir / "gates").glob("*.tracemalloc-*.json")):
        try:
            t = json.loads(f.read_text())
        except ValueError:
            continue
        per[f"tracemalloc {f.stem.replace('.tracemalloc', '')}"] = {
            "seconds": t["seconds_since_first"], "grew_kb_total": t["grew_kb_total"],
            "top": [{"grew_kb": x["grew_kb"], "count": x["count_diff"], "at": x["stack"][-3:]} for x in t["top"][:6]],
        }
    inv.figures = per
    return inv


def check_harness(run: Run) -> Invariant:
    inv = Invariant("harness", "the day ran as planned: no person stuck at a gate, no fault that did not end, "
                    "no daemon that exited by itself")
    for err in run.harness.get("errors", []):
        inv.fail(err)
    for name, g in run.harness["gates"].items():
        inv.checked += 1
        died = int(g["incarnations"]) - 1 - int(g["kills"])
        if died > 0:
            inv.fail(f"{name} ended {died} time(s) without being killed", gate=name)
    if run.harness.get("people_inside_at_end"):
        inv.fail(f"{len(run.harness['people_inside_at_end'])} member(s) still inside at the end",
                 detail={"first": run.harness["people_inside_at_end"][:10]})
    return inv


# -- all of it -------------------------------------------------------------------------------------------


def check_run(d: Path) -> dict[str, Any]:
    run = Run(d)
    books = check_books(run)
    check_requested_refunds(run, books[2])
    invariants = [check_rotations(run), check_exactly_once(run), check_balances(run), check_settled(run), *books,
                  check_grants(run), check_expected_denials(run), check_resources(run), check_harness(run)]
    violations = [v for i in invariants for v in i.violations]
    return {
        "run": _run_summary(run),
        "traffic": _traffic(run),
        "chaos": _chaos(run),
        "invariants": [{"name": i.name, "statement": i.statement, "checked": i.checked, "ok": not i.violations,
                        "violations": len(i.violations), "figures": i.figures if i.name != "resources" else {}}
                       for i in invariants],
        "latency": latency(run),
        "resources": next(i for i in invariants if i.name == "resources").figures,
        "violations": [v.__dict__ for v in violations[:200]],
        "violations_total": len(violations),
    }


def _run_summary(run: Run) -> dict[str, Any]:
    h = run.harness
    return {"seed": h.get("seed"), "speed": h["settings"]["speed"], "bridged": h["settings"]["bridged"],
            "day": run.pop["day"], "sites": run.sites, "members": len(run.pop["home"]),
            "simulated": f"{run.plan['start']} .. {h['end_sim']}", "wall_s": h.get("wall_s"),
            "ready_s": h.get("ready_s"), "day_s": h.get("day_s"), "drain_s": h.get("drain_s"),
            "events_at_central": sum(len(v) for v in run.events.values())}


def _traffic(run: Run) -> dict[str, Any]:
    taps = run.harness["taps"]
    by: Counter[str] = Counter()
    for t in taps:
        by[f"{t['decision'] or 'no answer'}:{t['reason'] or '-'}"] += 1
    desk: Counter[str] = Counter(f"{x['kind']}:{x.get('status')}" for x in run.harness["desk"])
    bo: Counter[str] = Counter(f"{x['kind']}:{'ok' if (x.get('response') or {}).get('committed') else 'failed'}"
                               for x in run.harness["back_office"])
    evs: Counter[str] = Counter()
    for site_evs in run.events.values():
        for e in site_evs:
            evs[e["type"] if e["type"] != "deduction" else f"deduction:{e.get('cause')}"] += 1
    return {"taps": len(taps), "by_outcome": dict(sorted(by.items(), key=lambda kv: -kv[1])),
            "desk": dict(desk), "back_office": dict(bo), "events": dict(sorted(evs.items()))}


def _chaos(run: Run) -> list[dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for c in run.harness["chaos"]:
        x = out.setdefault(c["n"], {"kind": c["kind"], "site": c.get("site"), "gate": c.get("gate")})
        x[c["phase"]] = c["sim"][11:19]
        for k, v in c.items():
            if k not in ("n", "kind", "site", "gate", "phase", "sim", "real"):
                x[k] = v
    return [out[k] for k in sorted(out)]


__all__ = ["Invariant", "Run", "Violation", "check_run"]
