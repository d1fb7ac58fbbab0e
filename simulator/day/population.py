"""The people of a two-site chain and their day: members with every kind of pass, a
timetable of classes at both sites and the bookings made for them.

Deterministic from a seed. Records are the central system's (sync/records.py shapes:
MemberIn, PassIn, BookingIn as JSON), per site, as the reference central system loads
them. The reference central system keeps passes per site, so a pass with a balance lives
at one site only (the member's home site); a chain membership (a time pass) and a
marketplace pass are listed at both sites, and members who visit the other site hold one
of those there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

TIMEZONE = "Europe/Madrid"
ZONE = "main"
CLASS_NAMES = ("Spinning", "Yoga", "Pilates", "HIIT", "Body Pump", "Zumba", "Boxing", "Stretching")


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """One site of the chain and how its gates are set up."""

    id: str
    opens: time
    closes: time
    early_entry: str  # strict | link
    anti_passback: str  # hard | soft
    no_show_fee: int
    reentry_grace: str = "20m"


@dataclass(frozen=True, slots=True)
class ClassSlot:
    site: str
    name: str
    starts_at: datetime  # aware, local
    ends_at: datetime
    capacity: int


@dataclass
class Population:
    day: date
    timezone: str
    sites: list[SiteSpec]
    records: dict[str, dict[str, list[dict[str, Any]]]]  # site -> members/passes/bookings
    home: dict[str, str]  # member -> home site
    cards: dict[str, str]  # member -> card (hex UID, as the serial readers send it)
    classes: list[ClassSlot]
    qr_members: set[str] = field(default_factory=set)  # members who show the app's QR code

    def site(self, site_id: str) -> SiteSpec:
        return next(s for s in self.sites if s.id == site_id)

    def counts(self) -> dict[str, int]:
        """People, classes, and the records per site (a chain member is listed at both)."""
        out: dict[str, int] = {"people": len(self.home), "classes": len(self.classes)}
        for site, recs in self.records.items():
            for k, v in recs.items():
                out[f"{site}_{k}"] = len(v)
        return out

    def members_at(self, site: str) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.records[site]["members"]}

    def passes_at(self, site: str) -> dict[str, dict[str, Any]]:
        return {p["id"]: p for p in self.records[site]["passes"]}

    def bookings_at(self, site: str) -> dict[str, dict[str, Any]]:
        return {b["id"]: b for b in self.records[site]["bookings"]}


def default_sites(opens: time = time(6, 0), closes: time = time(21, 0)) -> list[SiteSpec]:
    """Two sites set up differently, so both rule variants meet the same traffic."""
    return [
        SiteSpec("north", opens, closes, early_entry="strict", anti_passback="hard", no_show_fee=1),
        SiteSpec("south", opens, closes, early_entry="link", anti_passback="soft", no_show_fee=0),
    ]


def _wall(day: date, t: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, t, tz)


def _local(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M")


def generate(
    members: int = 2000,
    *,
    seed: int = 1,
    day: date = date(2026, 11, 18),
    sites: list[SiteSpec] | None = None,
) -> Population:
    rnd = random.Random(seed)
    tz = ZoneInfo(TIMEZONE)
    sites = sites or default_sites()
    site_ids = [s.id for s in sites]
    records: dict[str, dict[str, list[dict[str, Any]]]] = {
        s: {"members": [], "passes": [], "bookings": []} for s in site_ids
    }
    home: dict[str, str] = {}
    cards: dict[str, str] = {}
    used_cards: set[str] = set()
    qr_members: set[str] = set()
    # which sites a member's passes are listed at, per pass
    bookable: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in site_ids}
    month_start = day.replace(day=1)
    month_end = (month_start + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    opening = {"mon-sun": f"{sites[0].opens:%H:%M}-{sites[0].closes:%H:%M}"}
    pid = 0

    def new_card() -> str:
        while True:
            c = f"{rnd.getrandbits(32):08X}"
            if c not in used_cards and not c.startswith("F"):  # F…: kept for unknown cards
                used_cards.add(c)
                return c

    def add_pass(site_list: list[str], member: str, kind: str, **kw: Any) -> dict[str, Any]:
        nonlocal pid
        pid += 1
        p: dict[str, Any] = {"id": f"p{pid:05d}", "member": member, "kind": kind, **kw}
        for s in site_list:
            records[s]["passes"].append(p)
            bookable[s].setdefault(member, []).append(p)
        return p

    for i in range(members):
        mid = f"m{i + 1:05d}"
        h = site_ids[0] if rnd.random() < 0.55 else site_ids[1]
        other = [s for s in site_ids if s != h]
        home[mid] = h
        card = new_card()
        cards[mid] = card
        if rnd.random() < 0.15:
            qr_members.add(mid)
        chain = rnd.random() < 0.2  # visits the other site too
        member = {
            "id": mid,
            "name": f"Member {i + 1}",
            "status": "blocked" if rnd.random() < 0.01 else "active",
            "cards": [card],
        }
        where = [h, *other] if chain else [h]  # a pass is listed where its member is
        for s in where:
            records[s]["members"].append(member)
        r = rnd.random()
        if r < 0.30:  # a monthly membership, at every site it is good for
            kw: dict[str, Any] = {"name": "Monthly", "access_windows": opening,
                                  "valid_from": month_start.isoformat(), "valid_until": month_end.isoformat()}
            q = rnd.random()
            if q < 0.04:
                kw["valid_until"] = (day - timedelta(days=1)).isoformat()  # lapsed yesterday
            elif q < 0.06:
                kw["valid_from"] = (day + timedelta(days=1)).isoformat()  # starts tomorrow
            elif q < 0.16:
                kw.update(name="Off-peak", access_windows={"mon-fri": "10:00-16:00", "sat-sun": "08:00-20:00"})
            elif q < 0.20:
                kw.update(name="Pool only", zones=["pool"])
            add_pass(where, mid, "time", **kw)
        elif r < 0.62:
            deduct_on = "access" if rnd.random() < 0.7 else "booking"
            add_pass([h], mid, "visits", name="Multipack 10", balance=rnd.choice([0, 1, 2, 3, 5, 8, 10, 10]),
                     deduct_on=deduct_on, walk_in_cost=1, access_windows=opening)
        elif r < 0.78:
            add_pass([h], mid, "credits", name="Credits 60", balance=rnd.choice([0, 4, 5, 10, 25, 40, 60]),
                     deduct_on="access", walk_in_cost=5, access_windows=opening)
        elif r < 0.92:
            add_pass(where, mid, "marketplace", name="Marketplace")
        # else: no pass at all (lapsed members whose card still opens the app)
        if r < 0.62 and rnd.random() < 0.12:  # a second pass: classes from a marketplace
            add_pass(where, mid, "marketplace", name="Marketplace")

    # -- the timetable and its bookings -------------------------------------------------------
    classes: list[ClassSlot] = []
    bid = 0
    for spec in sites:
        first = _wall(day, spec.opens, tz) + timedelta(hours=1)
        last_start = _wall(day, spec.closes, tz) - timedelta(hours=1)
        t = first
        while t <= last_start:
            for name in rnd.sample(CLASS_NAMES, 2):
                minutes = rnd.choice([45, 45, 50, 55])
                classes.append(ClassSlot(spec.id, name, t, t + timedelta(minutes=minutes), rnd.choice([16, 20, 24])))
            t += timedelta(hours=1)
    for c in classes:
        candidates = list(bookable[c.site].items())
        rnd.shuffle(candidates)
        filled = int(c.capacity * rnd.uniform(0.5, 1.0))
        taken = 0
        for mid, passes in candidates:
            if taken >= filled:
                break
            if rnd.random() < 0.5:
                continue
            usable = [p for p in passes if "pool" not in p.get("zones", [ZONE])]
            if not usable:
                continue
            p = rnd.choice(usable)
            if c.site != home[mid] and p["kind"] not in ("time", "marketplace"):
                continue
            bid += 1
            booking: dict[str, Any] = {
                "id": f"b{bid:05d}",
                "member": mid,
                "pass": p["id"],
                "class": c.name,
                "zone": ZONE,
                "starts_at": _local(c.starts_at),
                "ends_at": _local(c.ends_at),
                "loyalty_points": rnd.choice([0, 5, 10, 10]),
            }
            if p["kind"] in ("visits", "credits"):
                if p["deduct_on"] == "booking":
                    booking["deducted"] = True
                booking["cost"] = 1 if p["kind"] == "visits" else 8
            if rnd.random() < 0.05:
                booking["status"] = "cancelled"
            records[c.site]["bookings"].append(booking)
            taken += 1
    return Population(day, TIMEZONE, sites, records, home, cards, classes, qr_members)


__all__ = ["CLASS_NAMES", "TIMEZONE", "ZONE", "ClassSlot", "Population", "SiteSpec", "default_sites", "generate"]
