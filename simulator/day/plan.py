"""The day's traffic and chaos, as data: who comes when, to which site, with what, and
which faults strike when. Deterministic from the population and a seed.

The plan says what people *intend*; what they do next depends on the gate's answers
(simulator/day/harness/traffic.py): an early arrival refused `too_early` waits for the arrival
window, a member whose turnstile is out of order walks to the other one, a member told
`no_balance` may top the pass up in the app and try again.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from simulator.day.population import Population

# chaos kinds, in the words of the report
KILL_GATE = "kill_gate"  # kill -9 of one gate daemon; restarted after `duration` real seconds
RESTART_SITE_BROKER = "restart_site_broker"
CUT_WAN = "cut_wan"  # the site's bridge to the central broker cut for `duration`
STOP_CENTRAL = "stop_central"  # the central system killed, started again after `duration`
PUSH_SNAPSHOT = "push_snapshot"  # a full snapshot pushed to every gate of the site
RESEND_DELTAS = "resend_deltas"  # the site's recent deltas re-sent, shuffled
UNPLUG_READER = "unplug_reader"
RELAY_OFFLINE = "relay_offline"  # the turnstile's Modbus board stops answering
NEVER_TURNS = "never_turns"  # people granted at this turnstile do not turn it
# the fire panel's contact active at every turnstile of a site for `duration`: who is inside
# leaves, through a released turnstile or a fire exit, and comes back after the all-clear
FIRE_DRILL = "fire_drill"
# one gate daemon's box loses power: what its disk had not made durable is gone (its store
# on simulator/power_cut.py's file system from the start); back after `duration` real seconds
POWER_CUT = "power_cut"
# an exit turnstile's box replaced: its daemon killed once everything it recorded has
# reached the central system, its disk wiped (ledger, its mark of what it sent, replica),
# a new one started under the same daemon id after `duration` real seconds — which must
# number on after what the central system holds (sync/store/numbering.py). An exit's: an
# entry's box takes with it what docs/operations.md says a replaced box forgets (who is
# inside, today's walk-ins), which the day's strict checks would rightly flag
REPLACE_BOX = "replace_box"
CHAOS_KINDS = (
    KILL_GATE, RESTART_SITE_BROKER, CUT_WAN, STOP_CENTRAL, PUSH_SNAPSHOT, RESEND_DELTAS,
    UNPLUG_READER, RELAY_OFFLINE, NEVER_TURNS, FIRE_DRILL, POWER_CUT, REPLACE_BOX,
)
# what needs the bridged topology (site brokers bridged to the central broker)
NEEDS_BRIDGE = (CUT_WAN,)

IN_GATES = ("in-1", "in-2")
EXIT_GATE = "out-1"
GATES = (*IN_GATES, EXIT_GATE)
DESK_GATE = "in-1"  # the front desk's console runs in this gate's daemon


def daemon_id(site: str, gate: str) -> str:
    return f"{site}-{gate}"


def gate_store(run_dir: Path, daemon: str) -> Path:
    """A gate daemon's store in a run's directory: in a directory of its own when a power
    cut was planned for it (the power-cut file system is mounted over that directory)."""
    own = run_dir / "gates" / daemon / f"{daemon}.db"
    return own if own.exists() else run_dir / "gates" / f"{daemon}.db"


@dataclass
class Visit:
    """One member's intended visit to a site."""

    id: int
    member: str
    site: str
    arrive: datetime
    leave: datetime
    booking: str | None = None
    qr: bool = False
    kind: str = "walk_in"  # walk_in | booking | early | late | forgot_card | denied_try
    reentry: tuple[datetime, datetime] | None = None  # out at, back at
    refund_at: datetime | None = None  # early walk-in: the desk refunds it (SPORTRICK)
    qr_replay: bool = False  # a screenshot of the same code shown again after passing
    qr_expired: bool = False  # an old code first (refused), then a fresh one
    seed: int = 0


@dataclass
class Extra:
    """A tap or desk action outside any visit."""

    at: datetime
    site: str
    kind: str  # unknown_card | forged_qr | points | enrol
    gate: str | None = None
    card: str | None = None
    member: str | None = None
    points: int = 0
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Chaos:
    at: datetime
    kind: str
    site: str | None = None
    gate: str | None = None
    duration: float = 0.0  # simulated seconds the fault lasts (kill_gate, power_cut: real seconds down)


@dataclass
class Plan:
    start: datetime  # simulated clock at the start of the run
    opens: datetime
    closes: datetime
    end: datetime  # the day is over (time-driven work included)
    visits: list[Visit]
    extras: list[Extra]
    chaos: list[Chaos]

    def to_json(self) -> dict[str, Any]:
        def conv(o: Any) -> Any:
            if isinstance(o, datetime):
                return o.isoformat()
            if isinstance(o, dict):
                return {k: conv(v) for k, v in o.items()}
            if isinstance(o, list | tuple):
                return [conv(v) for v in o]
            return o

        return {
            "start": self.start.isoformat(), "opens": self.opens.isoformat(), "closes": self.closes.isoformat(),
            "end": self.end.isoformat(),
            "visits": [conv(asdict(v)) for v in self.visits],
            "extras": [conv(asdict(e)) for e in self.extras],
            "chaos": [conv(asdict(c)) for c in self.chaos],
        }

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"visits": len(self.visits)}
        for v in self.visits:
            out[f"visits_{v.kind}"] = out.get(f"visits_{v.kind}", 0) + 1
        out["reentries_planned"] = sum(1 for v in self.visits if v.reentry)
        out["qr_visits"] = sum(1 for v in self.visits if v.qr)
        for e in self.extras:
            out[e.kind] = out.get(e.kind, 0) + 1
        return out


def _peak_minute(rnd: random.Random) -> float:
    """Minutes after midnight, local: the morning, lunch and evening peaks of a gym."""
    r = rnd.random()
    if r < 0.30:
        return rnd.gauss(7 * 60 + 45, 40)
    if r < 0.50:
        return rnd.gauss(13 * 60, 45)
    if r < 0.90:
        return rnd.gauss(18 * 60 + 30, 70)
    return rnd.uniform(6 * 60, 20 * 60 + 30)


def make_plan(
    pop: Population,
    *,
    seed: int = 1,
    chaos: bool = True,
    bridged: bool = True,
    chaos_scale: float = 1.0,
    walk_in_rate: float = 0.4,
    due_after: timedelta = timedelta(minutes=30),
) -> Plan:
    rnd = random.Random(seed * 7919 + 17)
    tz = ZoneInfo(pop.timezone)
    site0 = pop.sites[0]
    opens = datetime.combine(pop.day, site0.opens, tz).astimezone(UTC)
    closes = datetime.combine(pop.day, site0.closes, tz).astimezone(UTC)
    last_class_end = max(c.ends_at for c in pop.classes).astimezone(UTC)
    # everything due: the last no-shows (end + no_show_after) and loyalty credits (end +
    # loyalty_delay: 30m in simulator/day/harness/rig.py), and a few simulated minutes for the
    # daemons' schedulers (every real second) to get to them
    end = max(closes + timedelta(minutes=20), last_class_end + due_after + timedelta(minutes=8))
    start = opens - timedelta(minutes=10)

    def clamp(t: datetime, lo: datetime, hi: datetime) -> datetime:
        return min(max(t, lo), hi)

    visits: list[Visit] = []
    vid = 0

    def add(**kw: Any) -> Visit:
        nonlocal vid
        vid += 1
        v = Visit(id=vid, seed=rnd.getrandbits(32), **kw)
        visits.append(v)
        return v

    bookings_by_member: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in pop.sites:
        for b in pop.records[s.id]["bookings"]:
            bookings_by_member.setdefault((s.id, b["member"]), []).append(b)

    def parse_local(text: str) -> datetime:
        return datetime.fromisoformat(text).replace(tzinfo=tz).astimezone(UTC)

    for (site, member), bookings in sorted(bookings_by_member.items()):
        for b in sorted(bookings, key=lambda x: x["starts_at"]):
            if b.get("status") == "cancelled":
                continue
            starts, ends = parse_local(b["starts_at"]), parse_local(b["ends_at"])
            r = rnd.random()
            leave = ends + timedelta(minutes=rnd.uniform(1, 20))
            qr = member in pop.qr_members
            if r < 0.12:
                continue  # a no-show
            if r < 0.24:  # early: before the arrival window (strict: a walk-in or too_early)
                arrive = starts - timedelta(minutes=rnd.uniform(17, 45))
                kind = "early"
            elif r < 0.30:  # late: after the window closed
                arrive = starts + timedelta(minutes=rnd.uniform(11.5, 22))
                kind = "late"
            elif r < 0.33:
                arrive = starts - timedelta(minutes=rnd.uniform(2, 12))
                kind = "forgot_card"  # the desk marks the attendance and opens the gate
            else:
                arrive = starts - timedelta(minutes=rnd.uniform(1, 14.5))
                kind = "booking"
            v = add(member=member, site=site, arrive=clamp(arrive, opens + timedelta(minutes=1), closes),
                    leave=leave, booking=b["id"], qr=qr, kind=kind)
            if kind == "early" and rnd.random() < 0.7:
                v.refund_at = starts + timedelta(minutes=rnd.uniform(3, 25))
            if qr and rnd.random() < 0.05:
                v.qr_replay = True
            if qr and rnd.random() < 0.05:
                v.qr_expired = True

    for member, site in sorted(pop.home.items()):
        passes = [p for p in pop.records[site]["passes"] if p["member"] == member]
        walkable = [p for p in passes if p["kind"] != "marketplace"]
        booked_today = any((s.id, member) in bookings_by_member for s in pop.sites)
        rate = walk_in_rate * (0.3 if booked_today else 1.0)
        where = site
        if rnd.random() < 0.1:  # the other site, if the member is known there
            others = [s.id for s in pop.sites if s.id != site and member in pop.members_at(s.id)]
            if others:
                where = others[0]
        if not walkable:
            rate = 0.04  # tries anyway: no_pass, booking_required, member_blocked
        if rnd.random() >= rate:
            continue
        first = site0.opens.hour * 60 + site0.opens.minute + 2
        last = site0.closes.hour * 60 + site0.closes.minute - 25
        minute = _peak_minute(rnd)
        for _ in range(20):  # the peaks within the opening hours (a short day has only the first)
            if first <= minute <= last:
                break
            minute = _peak_minute(rnd)
        minute = min(max(minute, first), last)
        arrive = (datetime.combine(pop.day, datetime.min.time(), tz) + timedelta(minutes=minute)).astimezone(UTC)
        stay = timedelta(minutes=rnd.uniform(35, 110))
        v = add(member=member, site=where, arrive=clamp(arrive, opens + timedelta(minutes=1), closes),
                leave=min(arrive + stay, closes + timedelta(minutes=5)), qr=member in pop.qr_members,
                kind="walk_in" if walkable else "denied_try")
        if stay > timedelta(minutes=50) and rnd.random() < 0.10:
            out = v.arrive + timedelta(minutes=rnd.uniform(15, stay.total_seconds() / 60 - 30))
            v.reentry = (out, out + timedelta(minutes=rnd.uniform(3, 30)))
        if v.qr and rnd.random() < 0.05:
            v.qr_replay = True
        if v.qr and rnd.random() < 0.03:
            v.qr_expired = True

    visits = _one_body(visits)
    extras: list[Extra] = []
    day_span = (closes - opens).total_seconds()
    for s in pop.sites:
        members = sorted(pop.members_at(s.id))
        for _ in range(max(3, len(members) // 60)):
            extras.append(Extra(opens + timedelta(seconds=rnd.uniform(60, day_span - 60)), s.id, "unknown_card",
                                gate=rnd.choice([*IN_GATES, *IN_GATES, "out-1"]), card=f"F{rnd.getrandbits(28):07X}"))
        for _ in range(max(2, len(members) // 300)):
            extras.append(Extra(opens + timedelta(seconds=rnd.uniform(60, day_span - 60)), s.id, "forged_qr",
                                gate=rnd.choice(IN_GATES), member=rnd.choice(members)))
        for _ in range(max(2, len(members) // 120)):
            extras.append(Extra(opens + timedelta(seconds=rnd.uniform(600, day_span - 600)), s.id, "points",
                                member=rnd.choice(members), points=rnd.choice([-20, -5, 5, 10, 25, 50])))
        for i in range(max(1, len(members) // 250)):
            mid = f"new-{s.id}-{i + 1}"
            card = f"E{rnd.getrandbits(28):07X}"
            extras.append(Extra(opens + timedelta(seconds=rnd.uniform(600, day_span - 3600)), s.id, "enrol",
                                gate=rnd.choice(IN_GATES), member=mid, card=card,
                                data={"tap_after_minutes": rnd.uniform(1, 20)}))
    extras.sort(key=lambda e: e.at)

    faults: list[Chaos] = []
    if chaos:
        faults = _chaos(rnd, pop, opens, closes, bridged, chaos_scale)
    visits.sort(key=lambda v: (v.arrive, v.id))
    return Plan(start, opens, closes, end, visits, extras, faults)


def _one_body(visits: list[Visit]) -> list[Visit]:
    """A member is in one place at a time: a visit that would start before the member's
    previous one ended (two classes back to back, a walk-in around a class) is the same
    stay, longer — the later class is attended by being there, which the gate cannot see
    (it becomes a no-show, without a fee: the member was on site)."""
    out: list[Visit] = []
    last: dict[str, Visit] = {}
    for v in sorted(visits, key=lambda x: (x.arrive, x.id)):
        prev = last.get(v.member)
        if prev is not None and v.arrive < prev.leave + timedelta(minutes=5):
            if v.site == prev.site:
                prev.leave = max(prev.leave, v.leave)
            continue
        out.append(v)
        last[v.member] = v
    return out


def _chaos(
    rnd: random.Random, pop: Population, opens: datetime, closes: datetime, bridged: bool, scale: float
) -> list[Chaos]:
    """Faults at random instants of the opening hours; some placed in the peaks on purpose
    (a snapshot mid-peak)."""
    sites = [s.id for s in pop.sites]
    span = (closes - opens).total_seconds()
    out: list[Chaos] = []

    def at(lo: float = 0.03, hi: float = 0.95) -> datetime:
        return opens + timedelta(seconds=rnd.uniform(lo, hi) * span)

    def n(k: float) -> int:
        return max(1, round(k * scale))

    for _ in range(n(4)):
        out.append(Chaos(at(), KILL_GATE, rnd.choice(sites), rnd.choice(GATES), duration=rnd.uniform(1.0, 6.0)))
    for _ in range(n(2)):
        out.append(Chaos(at(), RESTART_SITE_BROKER, rnd.choice(sites), duration=rnd.uniform(60, 300)))
    if bridged:
        for _ in range(n(2)):
            out.append(Chaos(at(), CUT_WAN, rnd.choice(sites), duration=rnd.uniform(5 * 60, 25 * 60)))
    for _ in range(n(1.5)):
        out.append(Chaos(at(), STOP_CENTRAL, duration=rnd.uniform(3 * 60, 15 * 60)))
    peaks = [(7 * 60 + 30, 8 * 60 + 30), (18 * 60, 19 * 60 + 30)]
    tz = ZoneInfo(pop.timezone)
    midnight = datetime.combine(pop.day, datetime.min.time(), tz)
    for i in range(n(2)):
        lo, hi = peaks[i % len(peaks)]
        t = (midnight + timedelta(minutes=rnd.uniform(lo, hi))).astimezone(UTC)
        out.append(Chaos(min(max(t, opens), closes), PUSH_SNAPSHOT, rnd.choice(sites)))
    for _ in range(n(2)):
        out.append(Chaos(at(), RESEND_DELTAS, rnd.choice(sites)))
    for _ in range(n(3)):
        out.append(Chaos(at(), UNPLUG_READER, rnd.choice(sites), rnd.choice(GATES), duration=rnd.uniform(60, 600)))
    for _ in range(n(2)):
        out.append(Chaos(at(), RELAY_OFFLINE, rnd.choice(sites), rnd.choice(GATES), duration=rnd.uniform(120, 600)))
    for _ in range(n(2)):
        out.append(Chaos(at(), NEVER_TURNS, rnd.choice(sites), rnd.choice(IN_GATES), duration=rnd.uniform(60, 300)))
    # drawn last: the other faults of a seed stay where they were before drills existed
    for _ in range(n(1)):
        out.append(Chaos(at(0.1, 0.85), FIRE_DRILL, rnd.choice(sites), duration=rnd.uniform(4 * 60, 12 * 60)))
    # and after them, for the same reason, the power cut
    for _ in range(n(1)):
        out.append(Chaos(at(), POWER_CUT, rnd.choice(sites), rnd.choice(GATES), duration=rnd.uniform(1.0, 6.0)))
    # and after them the box replaced
    for _ in range(n(1)):
        out.append(Chaos(at(), REPLACE_BOX, rnd.choice(sites), rnd.choice(GATES), duration=rnd.uniform(1.0, 6.0)))
    out.sort(key=lambda c: c.at)
    return out


def plan_from_json(data: dict[str, Any]) -> Plan:
    def dt(s: str) -> datetime:
        return datetime.fromisoformat(s)

    visits = []
    for v in data["visits"]:
        v = dict(v)
        for k in ("arrive", "leave", "refund_at"):
            if v.get(k):
                v[k] = dt(v[k])
        if v.get("reentry"):
            v["reentry"] = (dt(v["reentry"][0]), dt(v["reentry"][1]))
        visits.append(Visit(**v))
    extras = [Extra(**{**e, "at": dt(e["at"])}) for e in data["extras"]]
    chaos = [Chaos(**{**c, "at": dt(c["at"])}) for c in data["chaos"]]
    return Plan(dt(data["start"]), dt(data["opens"]), dt(data["closes"]), dt(data["end"]), visits, extras, chaos)


__all__ = [
    "CHAOS_KINDS", "DESK_GATE", "EXIT_GATE", "GATES", "IN_GATES", "NEEDS_BRIDGE", "POWER_CUT", "REPLACE_BOX", "Chaos",
    "Extra", "Plan", "Visit", "daemon_id", "gate_store", "make_plan", "plan_from_json",
]
