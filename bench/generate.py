"""A realistic large site, deterministic from a seed, in the central data model.

`generate(members=100_000)` builds, in a few seconds:
- members (2 % blocked, 10 % with a second card, 3 % without a card: app/QR only),
- 1.5 passes per member of every kind: time, visits, credits, marketplace; with validity
  dates (some expired, some not yet valid), zone restrictions and access windows
  (off-peak passes), balances (some empty), deduct at booking or at access,
- 3 bookings per member over a month of classes (07:00-21:00, every hour, in the club's
  zones), 5 % cancelled, the booking-paid ones marked deducted,

as rules domain objects (Member, PassRecord(Pass), Booking), ready for Store.apply_sync,
and, with `chunk_payloads`, as the central system's snapshot chunks (sync.protocol JSON).

The bench's "now" is a Wednesday at 18:05 in the middle of the month: peak hour, with
classes around it, so taps exercise the booking paths as well as the walk-in ones.
"""

from __future__ import annotations

import functools
import gc
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from rules.model import (
    AntiPassback,
    Booking,
    BookingStatus,
    DeductOn,
    Direction,
    Gate,
    Member,
    MemberStatus,
    Pass,
    PassKind,
    Policy,
    Site,
)
from rules.timeutil import WeekSchedule, iso_utc
from sync.records import BookingIn, MemberIn, PassIn, PassRecord
from sync.store import SyncBatch

TIMEZONE = ZoneInfo("Europe/Madrid")
# Wednesday 12 March 2025, 18:05 local (17:05 UTC): peak hour, mid-month
NOW = datetime(2025, 3, 12, 17, 5, tzinfo=UTC)
DAYS = 30
ZONES = ("main", "pool", "spa")
CLASS_NAMES = ("Spinning", "Yoga", "Pilates", "HIIT", "Body Pump", "Zumba", "Boxing", "Aqua Gym", "Stretching")

_KIND_WEIGHTS = (
    (PassKind.TIME, 35),
    (PassKind.VISITS, 30),
    (PassKind.CREDITS, 15),
    (PassKind.MARKETPLACE, 20),
)
_OFF_PEAK = WeekSchedule.parse({"mon-fri": ["06:00-12:00", "14:00-17:00"], "sat-sun": "08:00-20:00"})
_MORNINGS = WeekSchedule.parse({"mon-sun": "06:00-14:00"})
_ALWAYS = WeekSchedule.parse({"mon-sun": "00:00-24:00"})
_DECIMALS = [Decimal(n) for n in range(0, 401)]


@dataclass(frozen=True, slots=True)
class SiteData:
    members: list[Member]
    passes: list[PassRecord]
    bookings: list[Booking]
    now: datetime
    seed: int

    @property
    def cards(self) -> list[str]:
        """Every card of every member, in member order (blocked members included)."""
        return [c for m in self.members for c in m.cards]

    def batch(self) -> SyncBatch:
        """The site as the central system's records (what Store.apply_sync takes)."""
        return SyncBatch(
            members=[member_in(m) for m in self.members],
            passes=[pass_in(r) for r in self.passes],
            bookings=[booking_in(b) for b in self.bookings],
        )

    def counts(self) -> dict[str, int]:
        return {"members": len(self.members), "passes": len(self.passes), "bookings": len(self.bookings)}


def site() -> Site:
    return Site(timezone=TIMEZONE, opening_hours=WeekSchedule.parse({"mon-sun": "06:00-23:00"}), id="bench-gym")


def gates() -> dict[str, Gate]:
    return {
        "turnstile-in": Gate(id="turnstile-in", zone="main", direction=Direction.IN, anti_passback=AntiPassback.SOFT),
        "pool-in": Gate(id="pool-in", zone="pool", direction=Direction.IN),
        "exit": Gate(id="exit", zone="main", direction=Direction.OUT),
    }


def policy() -> Policy:
    return Policy()


def card_of(i: int, second: bool = False) -> str:
    """A unique 8-hex-digit UID per member (an odd multiplier is a bijection mod 2**32)."""
    n = i + (50_000_000 if second else 0)
    return f"{(n * 2654435761 + 0x1234567) % (1 << 32):08X}"


def _class_slots(month_start: date) -> list[tuple[datetime, datetime, str, str]]:
    """Every class of the month: (starts, ends, zone, name); rooms as repeated slots."""
    slots = []
    rng = random.Random(7)
    for d in range(DAYS):
        day = month_start + timedelta(days=d)
        for hour in range(7, 21):
            starts = datetime(day.year, day.month, day.day, hour, 0, tzinfo=TIMEZONE).astimezone(UTC)
            # 6 rooms in the club, 1 pool lane group, 1 spa session each hour
            for room in range(8):
                zone = "main" if room < 6 else ZONES[room - 5]
                minutes = 45 if zone != "spa" else 90
                name = "Aqua Gym" if zone == "pool" else rng.choice(CLASS_NAMES)
                slots.append((starts, starts + timedelta(minutes=minutes), zone, name))
    return slots


def _pick(r: Any, n: int) -> int:
    """A uniform index below n (random.randrange is several times slower)."""
    return int(r() * n)


@functools.cache
def _days_around(today: date) -> tuple[list[date], list[date]]:
    return [today - timedelta(days=k) for k in range(401)], [today + timedelta(days=k) for k in range(401)]


_KINDS = [k for k, w in _KIND_WEIGHTS for _ in range(w)]


def _pass(rng: random.Random, pid: str, member: str, today: date) -> PassRecord:
    r = rng.random
    kind = _KINDS[_pick(r, len(_KINDS))]
    balance = walk_in = None
    deduct_on = DeductOn.BOOKING
    if kind == PassKind.VISITS:
        balance = _DECIMALS[_pick(r, 21)]
        deduct_on = DeductOn.ACCESS if r() < 0.4 else DeductOn.BOOKING
    elif kind == PassKind.CREDITS:
        balance = _DECIMALS[_pick(r, 401)]
        walk_in = _DECIMALS[(8 + _pick(r, 31 - 8))]
        deduct_on = DeductOn.ACCESS if r() < 0.5 else DeductOn.BOOKING
    elif kind == PassKind.TIME:
        deduct_on = DeductOn.ACCESS
    x = r()
    past, future = _days_around(today)
    if x < 0.08:  # expired
        valid_from, valid_until = past[60 + _pick(r, 340)], past[1 + _pick(r, 59)]
    elif x < 0.10:  # starts later this month
        valid_from, valid_until = future[1 + _pick(r, 19)], future[40 + _pick(r, 360)]
    elif x < 0.85:
        valid_from, valid_until = past[_pick(r, 300)], future[_pick(r, 365)]
    else:  # open-ended
        valid_from, valid_until = None, None
    y = r()
    zones: frozenset[str] | None = None
    if y < 0.15:
        zones = frozenset({"main"})
    elif y < 0.25:
        zones = frozenset({"main", "pool"})
    elif y < 0.30:
        zones = frozenset({"pool", "spa"})
    w = r()
    # no windows: the pass books classes only (no walk-in), as class packs are sold
    windows = _OFF_PEAK if w < 0.15 else _MORNINGS if w < 0.20 else _ALWAYS if w < 0.90 else None
    name = {
        PassKind.TIME: "Monthly unlimited" if windows is _ALWAYS else "Monthly off-peak" if windows is not None else "Class pack",
        PassKind.VISITS: "Multipack 10",
        PassKind.CREDITS: "1000 points",
        PassKind.MARKETPLACE: ("wellpass", "Urban Sports Club", "ClassPass")[_pick(r, 3)],
    }[kind]
    p = Pass(
        id=pid,
        member=member,
        name=name,
        kind=kind,
        balance=balance,
        deduct_on=deduct_on,
        walk_in_cost=walk_in,
        valid_from=valid_from,
        valid_until=valid_until,
        zones=zones,
        access_windows=windows,
    )
    return PassRecord(p, _pick(r, 50) if balance is not None else None)


def generate(
    members: int = 100_000, passes: int | None = None, bookings: int | None = None, *, seed: int = 1, now: datetime = NOW
) -> SiteData:
    """The site, scaled: by default 1.5 passes and 3 bookings per member. `now` anchors the
    month of classes (two weeks each side) and the pass validity dates; the default is a
    fixed instant, so the data set is the same on every run."""
    # half a million small objects: the cyclic GC would rescan them again and again
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(members, passes, bookings, seed, now)
    finally:
        if was_enabled:
            gc.enable()


def _generate(members: int, passes: int | None, bookings: int | None, seed: int, now: datetime) -> SiteData:
    n_passes = int(members * 1.5) if passes is None else passes
    n_bookings = members * 3 if bookings is None else bookings
    rng = random.Random(seed)
    r = rng.random
    today = now.astimezone(TIMEZONE).date()

    mem: list[Member] = []
    for i in range(members):
        x = r()
        cards: tuple[str, ...]
        if x < 0.03:
            cards = ()
        elif x < 0.13:
            cards = (card_of(i), card_of(i, second=True))
        else:
            cards = (card_of(i),)
        mem.append(
            Member(
                id=f"m{i:07d}",
                name=f"Member {i}",
                status=MemberStatus.BLOCKED if r() < 0.02 else MemberStatus.ACTIVE,
                cards=cards,
                email=f"m{i}@example.com",
            )
        )

    recs: list[PassRecord] = []
    by_member: list[list[Pass]] = [[] for _ in range(members)]
    for j in range(n_passes):
        owner = j if j < members else _pick(r, members)
        rec = _pass(rng, f"p{j:07d}", mem[owner].id, today)
        recs.append(rec)
        by_member[owner].append(rec.pass_)

    slots = _class_slots(today - timedelta(days=DAYS // 2))
    # bookings go to members who hold a pass that can book classes (not expired ones)
    bookable = [i for i in range(members) if by_member[i]]
    out: list[Booking] = []
    one = _DECIMALS[1]
    for k in range(n_bookings):
        i = bookable[_pick(r, len(bookable))]
        own = by_member[i]
        p = own[_pick(r, len(own))]
        starts, ends, zone, cname = slots[_pick(r, len(slots))]
        cost = one
        if p.kind == PassKind.CREDITS:
            cost = _DECIMALS[8 + _pick(r, 23)]
        elif not p.kind.has_balance:
            cost = _DECIMALS[0]
        out.append(
            Booking(
                id=f"b{k:07d}",
                member=mem[i].id,
                pass_id=p.id,
                class_name=cname,
                zone=zone,
                starts_at=starts,
                ends_at=ends,
                status=BookingStatus.CANCELLED if r() < 0.05 else BookingStatus.BOOKED,
                deducted=p.kind.has_balance and p.deduct_on == DeductOn.BOOKING,
                cost=cost,
                loyalty_points=10 if r() < 0.3 else 0,
            )
        )
    return SiteData(mem, recs, out, now, seed)


# -- the central system's wire format (snapshot chunks) ----------------------------------


def _amount(d: Decimal | None) -> int | float | None:
    if d is None:
        return None
    return int(d) if d == d.to_integral_value() else float(d)


def member_json(m: Member) -> dict[str, Any]:
    out: dict[str, Any] = {"id": m.id, "name": m.name, "status": m.status.value, "cards": list(m.cards)}
    if m.email:
        out["email"] = m.email
    return out


def pass_json(r: PassRecord, daemon: str) -> dict[str, Any]:
    p = r.pass_
    out: dict[str, Any] = {"id": p.id, "member": p.member, "name": p.name, "kind": p.kind.value, "deduct_on": p.deduct_on.value}
    out["applied"] = {daemon: r.applied_seq or 0}  # required on every pass (protocol 1.1)
    if p.balance is not None:
        out["balance"] = _amount(p.balance)
    if p.walk_in_cost is not None:
        out["walk_in_cost"] = _amount(p.walk_in_cost)
    if p.valid_from:
        out["valid_from"] = p.valid_from.isoformat()
    if p.valid_until:
        out["valid_until"] = p.valid_until.isoformat()
    if p.zones is not None:
        out["zones"] = sorted(p.zones)
    if p.access_windows is not None:
        out["access_windows"] = p.access_windows.spec_dict()
    return out


def booking_json(b: Booking) -> dict[str, Any]:
    return {
        "id": b.id,
        "member": b.member,
        "pass": b.pass_id,
        "class": b.class_name,
        "zone": b.zone,
        "starts_at": iso_utc(b.starts_at),
        "ends_at": iso_utc(b.ends_at),
        "status": "cancelled" if b.status == BookingStatus.CANCELLED else "booked",
        "deducted": b.deducted,
        "cost": _amount(b.cost),
        "loyalty_points": b.loyalty_points,
    }


# the same, as records (trusted: built without validating again)


def member_in(m: Member) -> MemberIn:
    return MemberIn.model_construct(
        id=m.id, name=m.name, status=m.status.value, cards=list(m.cards), email=m.email, photo=m.photo
    )


def pass_in(r: PassRecord) -> PassIn:
    p = r.pass_
    windows: dict[str, str | list[str]] | None = (
        dict(p.access_windows.spec_dict()) if p.access_windows is not None else None
    )
    return PassIn.model_construct(
        id=p.id,
        member=p.member,
        name=p.name,
        kind=p.kind.value,
        balance=p.balance,
        deduct_on=p.deduct_on.value,
        walk_in_cost=p.walk_in_cost,
        valid_from=p.valid_from,
        valid_until=p.valid_until,
        zones=sorted(p.zones) if p.zones is not None else None,
        access_windows=windows,
        applied_seq=r.applied_seq,
    )


def booking_in(b: Booking) -> BookingIn:
    return BookingIn.model_construct(
        id=b.id,
        member=b.member,
        pass_=b.pass_id,
        class_=b.class_name,
        zone=b.zone,
        starts_at=iso_utc(b.starts_at),
        ends_at=iso_utc(b.ends_at),
        status="cancelled" if b.status == BookingStatus.CANCELLED else "booked",
        deducted=b.deducted,
        cost=b.cost,
        loyalty_points=b.loyalty_points,
    )


def chunk_payloads(
    data: SiteData, *, daemon: str = "bench-gate", snapshot_id: str = "snap-1", delta_seq: int = 1, records_per_chunk: int = 5000
) -> Iterator[bytes]:
    """The snapshot as the central system publishes it: JSON SnapshotChunk payloads, each
    with up to `records_per_chunk` records (members first, then passes, then bookings)."""
    items: list[tuple[str, Any]] = (
        [("members", m) for m in data.members]
        + [("passes", p) for p in data.passes]
        + [("bookings", b) for b in data.bookings]
    )
    chunks = (len(items) + records_per_chunk - 1) // records_per_chunk
    conv = {"members": member_json, "passes": lambda r: pass_json(r, daemon), "bookings": booking_json}
    for c in range(chunks):
        body: dict[str, Any] = {
            "v": 1,
            "snapshot_id": snapshot_id,
            "chunk": c,
            "chunks": chunks,
            "delta_seq": delta_seq,
            "requested_by": [daemon],
            "members": [],
            "passes": [],
            "bookings": [],
        }
        for kind, obj in items[c * records_per_chunk : (c + 1) * records_per_chunk]:
            body[kind].append(conv[kind](obj))
        yield json.dumps(body, separators=(",", ":")).encode()


if __name__ == "__main__":  # pragma: no cover
    import time

    t0 = time.perf_counter()
    d = generate()
    print(d.counts(), f"{time.perf_counter() - t0:.2f}s")
