"""rules.decide.decide, table-driven: every reason code and every branch of the denial order.

Everything is built directly (no store, no YAML); the clock is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from rules.credential import CredentialKind
from rules.decide import (
    Decision,
    MemberView,
    Presented,
    QrClaim,
    ZonePresence,
    decide,
    is_inside,
    override,
)
from rules.model import (
    AntiPassback,
    Booking,
    BookingStatus,
    DeductOn,
    Direction,
    EarlyEntry,
    Gate,
    Member,
    MemberStatus,
    Pass,
    PassKind,
    Policy,
    Site,
)
from rules.reasons import GRANTED, Reason
from rules.timeutil import WeekSchedule, parse_instant

TZ = ZoneInfo("Europe/Madrid")
SITE = Site(timezone=TZ)
GATE = Gate(id="g1", zone="main")
OUT = Gate(id="o1", zone="main", direction=Direction.OUT)
POLICY = Policy()
LINK = Policy(early_entry=EarlyEntry.LINK, link_window=timedelta(minutes=120))
ALL_DAY = WeekSchedule.parse({"mon-sun": "00:00-24:00"})
M1 = Member(id="m1", name="Ana", cards=("C1",))


def t(text: str) -> datetime:
    return parse_instant(text, TZ)


NOON = t("2026-11-18T12:00")  # a Wednesday


def visits(pid: str = "p1", balance: int | str = 5, **kw: object) -> Pass:
    args: dict[str, object] = {
        "kind": PassKind.VISITS,
        "balance": Decimal(balance),
        "access_windows": ALL_DAY,
    }
    args.update(kw)
    return Pass(id=pid, member="m1", name=pid, **args)  # type: ignore[arg-type]


def timepass(pid: str = "t1", **kw: object) -> Pass:
    args: dict[str, object] = {"kind": PassKind.TIME, "access_windows": ALL_DAY}
    args.update(kw)
    return Pass(id=pid, member="m1", name=pid, **args)  # type: ignore[arg-type]


def market(pid: str = "w1") -> Pass:
    return Pass(id=pid, member="m1", name="wellpass", kind=PassKind.MARKETPLACE)


def booking(bid: str = "b1", start: str = "2026-11-18T13:00", minutes: int = 45, **kw: object) -> Booking:
    args: dict[str, object] = {"pass_id": "p1", "class_name": "Spin", "zone": "main", "deducted": True}
    args.update(kw)
    s = t(start)
    return Booking(id=bid, member="m1", starts_at=s, ends_at=s + timedelta(minutes=minutes), **args)  # type: ignore[arg-type]


def view(*passes: Pass, bookings: tuple[Booking, ...] = (), member: Member | None = M1, **kw: object) -> MemberView:
    return MemberView(member=member, passes=passes, bookings=bookings, **kw)  # type: ignore[arg-type]


def entered(at: str, direction: Direction = Direction.IN) -> dict[str, ZonePresence]:
    when = t(at)
    return {"main": ZonePresence(last_at=when, last_direction=direction, last_entry_at=when if direction == Direction.IN else t("2026-11-18T08:00"))}


def evacuated(at: str, evacuated_at: str, direction: Direction = Direction.IN) -> dict[str, ZonePresence]:
    """The member's last passage at `at`, and the site evacuated at `evacuated_at`."""
    (p,) = entered(at, direction).values()
    return {"main": replace(p, evacuated_at=t(evacuated_at))}


CARD = Presented.card()


def qr(member: str = "m1", issued: str = "2026-11-18T11:59", ttl_s: int = 60, booking: str | None = None, seen: bool = False) -> Presented:
    i = t(issued)
    claim = QrClaim(token_id="tok", member=member, issued=i, expires=i + timedelta(seconds=ttl_s), booking=booking)
    return Presented(CredentialKind.QR, claim, seen)


BAD_QR = Presented(CredentialKind.QR, None)


@dataclass
class Case:
    name: str
    view: MemberView
    reason: Reason
    now: datetime = NOON
    presented: Presented = field(default_factory=Presented.card)
    gate: Gate = GATE
    site: Site = SITE
    policy: Policy = POLICY
    booking: str | None = None
    pass_id: str | None = None
    amount: Decimal = Decimal(0)
    anti_passback: bool | None = None


CASES = [
    # -- credentials and member -----------------------------------------------------------
    Case("unknown card", MemberView(None), Reason.UNKNOWN_CARD),
    Case("unknown card at an out gate", MemberView(None), Reason.UNKNOWN_CARD, gate=OUT),
    Case("bad qr", view(timepass()), Reason.INVALID_QR, presented=BAD_QR),
    Case("bad qr at an out gate", view(timepass()), Reason.INVALID_QR, presented=BAD_QR, gate=OUT),
    Case("qr issued far in the future", view(timepass()), Reason.INVALID_QR, presented=qr(issued="2026-11-18T12:30")),
    Case("qr at issued + ttl is still valid", view(timepass()), Reason.WALK_IN, presented=qr(issued="2026-11-18T11:59", ttl_s=60), pass_id="t1"),
    Case("qr one second after issued + ttl", view(timepass()), Reason.QR_EXPIRED, now=t("2026-11-18T12:00:01"), presented=qr(ttl_s=60)),
    Case("qr replayed", view(timepass()), Reason.QR_REPLAYED, presented=qr(seen=True)),
    Case("expired beats replayed", view(timepass()), Reason.QR_EXPIRED, now=t("2026-11-18T12:05"), presented=qr(seen=True)),
    Case("qr of an unknown member", MemberView(None), Reason.UNKNOWN_CARD, presented=qr(member="ghost")),
    Case("blocked", view(timepass(), member=replace(M1, status=MemberStatus.BLOCKED)), Reason.MEMBER_BLOCKED),
    Case(
        "blocked beats a matching booking and a closed site",
        view(visits(), bookings=(booking(start="2026-11-18T12:05"),), member=replace(M1, status=MemberStatus.BLOCKED)),
        Reason.MEMBER_BLOCKED,
        site=Site(TZ, closed_dates=frozenset({date(2026, 11, 18)})),
    ),
    # -- out gates ------------------------------------------------------------------------
    Case("exit", view(), Reason.EXIT, gate=OUT),
    Case("exit when blocked", view(member=replace(M1, status=MemberStatus.BLOCKED)), Reason.EXIT, gate=OUT),
    Case("exit when closed", view(), Reason.EXIT, gate=OUT, site=Site(TZ, closed_dates=frozenset({date(2026, 11, 18)}))),
    # -- site --------------------------------------------------------------------------------
    Case("closed date", view(timepass()), Reason.SITE_CLOSED, site=Site(TZ, closed_dates=frozenset({date(2026, 11, 18)}))),
    Case("outside opening hours", view(timepass()), Reason.SITE_CLOSED, site=Site(TZ, WeekSchedule.parse({"mon-sun": "13:00-20:00"}))),
    Case("opening hours start inclusive", view(timepass()), Reason.WALK_IN, site=Site(TZ, WeekSchedule.parse({"wed": "12:00-20:00"})), pass_id="t1"),
    Case("opening hours end exclusive", view(timepass()), Reason.SITE_CLOSED, site=Site(TZ, WeekSchedule.parse({"wed": "08:00-12:00"}))),
    Case(
        "closed beats anti-passback",
        view(timepass(), presence=entered("2026-11-18T09:00")),
        Reason.SITE_CLOSED,
        gate=replace(GATE, anti_passback=AntiPassback.HARD),
        site=Site(TZ, WeekSchedule.parse({"mon-sun": "06:00-11:00"})),
    ),
    # -- anti-passback ---------------------------------------------------------------------
    Case("hard, inside", view(timepass(), presence=entered("2026-11-18T09:00")), Reason.ANTI_PASSBACK, gate=replace(GATE, anti_passback=AntiPassback.HARD)),
    Case(
        "hard beats a matching booking",
        view(visits(), bookings=(booking(start="2026-11-18T12:05"),), presence=entered("2026-11-18T09:00")),
        Reason.ANTI_PASSBACK,
        gate=replace(GATE, anti_passback=AntiPassback.HARD),
    ),
    Case("hard, exited", view(timepass(), presence=entered("2026-11-18T09:00", Direction.OUT)), Reason.WALK_IN, gate=replace(GATE, anti_passback=AntiPassback.HARD), pass_id="t1"),
    Case("hard, entered yesterday", view(timepass(), presence=entered("2026-11-17T23:59")), Reason.WALK_IN, gate=replace(GATE, anti_passback=AntiPassback.HARD), pass_id="t1"),
    Case("soft, inside", view(timepass(), presence=entered("2026-11-18T09:00")), Reason.WALK_IN, gate=replace(GATE, anti_passback=AntiPassback.SOFT), pass_id="t1", anti_passback=True),
    Case("soft, not inside", view(timepass()), Reason.WALK_IN, gate=replace(GATE, anti_passback=AntiPassback.SOFT), pass_id="t1", anti_passback=False),
    Case("none: no flag", view(timepass(), presence=entered("2026-11-18T09:00")), Reason.WALK_IN, pass_id="t1", anti_passback=None),
    # -- bookings ----------------------------------------------------------------------------
    Case("booking at window start", view(visits(), bookings=(booking(start="2026-11-18T12:15"),)), Reason.BOOKING, booking="b1", pass_id="p1"),
    Case("booking at window end", view(visits(), bookings=(booking(start="2026-11-18T11:50"),)), Reason.BOOKING, booking="b1", pass_id="p1"),
    Case("strict: one second early is a walk-in", view(visits(), bookings=(booking(start="2026-11-18T12:15:01"),)), Reason.WALK_IN, pass_id="p1", amount=Decimal(1)),
    Case("one second late is a walk-in", view(visits(), bookings=(booking(start="2026-11-18T11:49:59"),)), Reason.WALK_IN, pass_id="p1", amount=Decimal(1)),
    Case("gate's own arrival window", view(visits(), bookings=(booking(start="2026-11-18T12:30"),)), Reason.BOOKING, gate=replace(GATE, early_arrival=timedelta(minutes=30)), booking="b1", pass_id="p1"),
    Case("other zone's booking", view(visits(), bookings=(booking(start="2026-11-18T12:05", zone="spa"),)), Reason.WALK_IN, pass_id="p1", amount=Decimal(1)),
    Case("attended booking", view(visits(), bookings=(booking(start="2026-11-18T12:05", status=BookingStatus.ATTENDED),)), Reason.WALK_IN, pass_id="p1", amount=Decimal(1)),
    Case("cancelled booking", view(visits(), bookings=(booking(start="2026-11-18T12:05", status=BookingStatus.CANCELLED),)), Reason.WALK_IN, pass_id="p1", amount=Decimal(1)),
    Case(
        "deduct on access takes the cost",
        view(visits(deduct_on=DeductOn.ACCESS), bookings=(booking(start="2026-11-18T12:05", deducted=False, cost=Decimal(3)),)),
        Reason.BOOKING,
        booking="b1",
        pass_id="p1",
        amount=Decimal(3),
    ),
    Case(
        "deduct on booking, not deducted: nothing at the gate",
        view(visits(), bookings=(booking(start="2026-11-18T12:05", deducted=False, cost=Decimal(3)),)),
        Reason.BOOKING,
        booking="b1",
        pass_id="p1",
    ),
    Case(
        "time pass booking pays nothing",
        view(timepass("p1", deduct_on=DeductOn.ACCESS), bookings=(booking(start="2026-11-18T12:05", deducted=False),)),
        Reason.BOOKING,
        booking="b1",
        pass_id="p1",
    ),
    Case(
        "an expired booking pass still pays",
        view(visits(deduct_on=DeductOn.ACCESS, valid_until=date(2026, 11, 1)), bookings=(booking(start="2026-11-18T12:05", deducted=False),)),
        Reason.BOOKING,
        booking="b1",
        pass_id="p1",
        amount=Decimal(1),
    ),
    Case(
        "balance short of cost: booking ignored, time pass walks in",
        view(visits(balance=2, deduct_on=DeductOn.ACCESS, access_windows=None), timepass(), bookings=(booking(start="2026-11-18T12:05", deducted=False, cost=Decimal(3)),)),
        Reason.WALK_IN,
        pass_id="t1",
    ),
    Case(
        "balance short of cost and nothing else: not too_early, the pass decides",
        view(visits(balance=2, deduct_on=DeductOn.ACCESS, access_windows=None), bookings=(booking(start="2026-11-18T12:10", deducted=False, cost=Decimal(3)),)),
        Reason.OUTSIDE_WINDOW,
    ),
    Case(
        "balance equal to cost pays",
        view(visits(balance=3, deduct_on=DeductOn.ACCESS), bookings=(booking(start="2026-11-18T12:05", deducted=False, cost=Decimal(3)),)),
        Reason.BOOKING,
        booking="b1",
        pass_id="p1",
        amount=Decimal(3),
    ),
    Case(
        "booking paid by another member's pass",
        MemberView(M1, (), (booking(start="2026-11-18T12:05", pass_id="fam"),), extra_passes={"fam": replace(visits("fam"), member="m2")}),
        Reason.BOOKING,
        booking="b1",
        pass_id="fam",
    ),
    Case(
        "earliest start wins",
        view(visits(), bookings=(booking("b1", start="2026-11-18T12:05"), booking("b2", start="2026-11-18T12:00"))),
        Reason.BOOKING,
        booking="b2",
        pass_id="p1",
    ),
    Case(
        "same start: lowest id",
        view(visits(), bookings=(booking("b9", start="2026-11-18T12:05"), booking("b10", start="2026-11-18T12:05"))),
        Reason.BOOKING,
        booking="b10",
        pass_id="p1",
    ),
    Case(
        "the qr's booking is preferred",
        view(visits(), bookings=(booking("b1", start="2026-11-18T12:00"), booking("b2", start="2026-11-18T12:05"))),
        Reason.BOOKING,
        presented=qr(booking="b2"),
        booking="b2",
        pass_id="p1",
    ),
    Case(
        "a qr naming a booking that does not match: the usual order",
        view(visits(), bookings=(booking("b1", start="2026-11-18T12:00"),)),
        Reason.BOOKING,
        presented=qr(booking="b7"),
        booking="b1",
        pass_id="p1",
    ),
    Case("marketplace booking", view(market(), bookings=(booking(start="2026-11-18T12:05", pass_id="w1"),)), Reason.BOOKING, booking="b1", pass_id="w1"),
    # -- link --------------------------------------------------------------------------------
    Case("link at starts_at - link_window", view(visits(), bookings=(booking(start="2026-11-18T14:00"),)), Reason.LINKED_BOOKING, policy=LINK, booking="b1", pass_id="p1"),
    Case("link: one second before", view(visits(), bookings=(booking(start="2026-11-18T14:00:01"),)), Reason.WALK_IN, policy=LINK, pass_id="p1", amount=Decimal(1)),
    Case("link: just before the arrival window", view(visits(), bookings=(booking(start="2026-11-18T12:15:01"),)), Reason.LINKED_BOOKING, policy=LINK, booking="b1", pass_id="p1"),
    Case("link: in the arrival window it is a booking", view(visits(), bookings=(booking(start="2026-11-18T12:15"),)), Reason.BOOKING, policy=LINK, booking="b1", pass_id="p1"),
    Case(
        "link: not across local midnight",
        view(visits(), bookings=(booking(start="2026-11-19T00:30"),)),
        Reason.WALK_IN,
        now=t("2026-11-18T23:00"),
        policy=LINK,
        pass_id="p1",
        amount=Decimal(1),
    ),
    Case(
        "link: in-window and linked bookings together: the earliest start wins",
        view(visits(), bookings=(booking("b1", start="2026-11-18T12:05"), booking("b2", start="2026-11-18T13:00"))),
        Reason.BOOKING,
        policy=LINK,
        booking="b1",
        pass_id="p1",
    ),
    # -- re-entry ----------------------------------------------------------------------------
    Case(
        "re-entry at the grace bound, with an empty pass",
        view(visits(balance=0), presence={"main": ZonePresence(t("2026-11-18T11:55"), Direction.OUT, t("2026-11-18T11:50"))}),
        Reason.REENTRY,
        gate=replace(GATE, reentry_grace=timedelta(minutes=10)),
    ),
    Case(
        "re-entry: one second past the grace",
        view(visits(balance=0), presence={"main": ZonePresence(t("2026-11-18T11:55"), Direction.OUT, t("2026-11-18T11:49:59"))}),
        Reason.NO_BALANCE,
        gate=replace(GATE, reentry_grace=timedelta(minutes=10)),
    ),
    Case(
        # a clock that was an hour ahead stamped it (a boot before NTP, another daemon's):
        # now - entry is negative, and the member paid a second walk-in
        "re-entry: an entry stamped in the future counts as just now",
        view(visits(balance=0), presence={"main": ZonePresence(t("2026-11-18T13:00"), Direction.IN, t("2026-11-18T13:00"))}),
        Reason.REENTRY,
        gate=replace(GATE, reentry_grace=timedelta(minutes=10)),
    ),
    Case(
        "re-entry: an entry stamped a minute on, with an exit since",
        view(visits(balance=0), presence={"main": ZonePresence(t("2026-11-18T12:01"), Direction.OUT, t("2026-11-18T12:01"))}),
        Reason.REENTRY,
        gate=replace(GATE, reentry_grace=timedelta(minutes=10)),
    ),
    Case(
        "re-entry disabled by 0m",
        view(visits(balance=0), presence={"main": ZonePresence(t("2026-11-18T11:59"), Direction.IN, t("2026-11-18T11:59"))}),
        Reason.NO_BALANCE,
    ),
    Case(
        "re-entry needs no pass at all",
        view(presence={"main": ZonePresence(t("2026-11-18T11:58"), Direction.OUT, t("2026-11-18T11:55"))}),
        Reason.REENTRY,
        gate=replace(GATE, reentry_grace=timedelta(minutes=10)),
    ),
    Case(
        "a booking comes before re-entry",
        view(visits(), bookings=(booking(start="2026-11-18T12:05"),), presence={"main": ZonePresence(t("2026-11-18T11:58"), Direction.IN, t("2026-11-18T11:58"))}),
        Reason.BOOKING,
        gate=replace(GATE, reentry_grace=timedelta(minutes=10)),
        booking="b1",
        pass_id="p1",
    ),
    # -- after an evacuation (a fire alarm, an emergency release): sync/store/evacuation.py --
    Case(
        "evacuated: hard anti-passback lets them back in, free, with an empty pass",
        view(visits(balance=0), presence=evacuated("2026-11-18T09:00", "2026-11-18T10:30")),
        Reason.REENTRY,
        gate=replace(GATE, anti_passback=AntiPassback.HARD),
    ),
    Case(
        "evacuated: free even where re-entry is disabled (0m)",
        view(visits(), presence=evacuated("2026-11-18T09:00", "2026-11-18T10:30")),
        Reason.REENTRY,
    ),
    Case(
        "evacuated: soft anti-passback does not flag them",
        view(visits(), presence=evacuated("2026-11-18T09:00", "2026-11-18T10:30")),
        Reason.REENTRY,
        gate=replace(GATE, anti_passback=AntiPassback.SOFT),
        anti_passback=False,
    ),
    Case(
        "an entry after the evacuation is inside as usual",
        view(visits(), presence=evacuated("2026-11-18T11:00", "2026-11-18T10:30")),
        Reason.ANTI_PASSBACK,
        gate=replace(GATE, anti_passback=AntiPassback.HARD),
    ),
    Case(
        "an entry yesterday is not a visit the evacuation cut short",
        view(visits(), presence=evacuated("2026-11-17T20:00", "2026-11-17T21:00")),
        Reason.WALK_IN,
        pass_id="p1",
        amount=Decimal(1),
    ),
    Case(
        "out through a released exit during the evacuation, with a tap: also free",
        view(visits(), presence={"main": ZonePresence(t("2026-11-18T10:35"), Direction.OUT, t("2026-11-18T09:00"),
                                                      t("2026-11-18T10:30"))}),
        Reason.REENTRY,
    ),
    Case(
        "out before the evacuation: a walk-in as usual",
        view(visits(), presence=evacuated("2026-11-18T09:00", "2026-11-18T10:30", Direction.OUT)),
        Reason.WALK_IN,
        pass_id="p1",
        amount=Decimal(1),
    ),
    Case(
        "a booking still comes first after an evacuation",
        view(visits(), bookings=(booking(start="2026-11-18T12:05"),), presence=evacuated("2026-11-18T09:00", "2026-11-18T10:30")),
        Reason.BOOKING,
        booking="b1",
        pass_id="p1",
    ),
    # -- walk-in -----------------------------------------------------------------------------
    Case("walk-in on visits", view(visits()), Reason.WALK_IN, pass_id="p1", amount=Decimal(1)),
    Case("walk-in on credits at its cost", view(visits(kind=PassKind.CREDITS, balance="7.5", walk_in_cost=Decimal("7.5"))), Reason.WALK_IN, pass_id="p1", amount=Decimal("7.5")),
    Case("time pass first", view(visits("a", valid_until=date(2026, 11, 20)), timepass("z", valid_until=date(2027, 1, 1))), Reason.WALK_IN, pass_id="z"),
    Case("soonest expiry next", view(visits("a"), visits("b", valid_until=date(2027, 1, 1)), visits("c", valid_until=date(2026, 12, 1))), Reason.WALK_IN, pass_id="c", amount=Decimal(1)),
    Case("then the lowest id", view(visits("b", valid_until=date(2027, 1, 1)), visits("a", valid_until=date(2027, 1, 1))), Reason.WALK_IN, pass_id="a", amount=Decimal(1)),
    Case("valid_from is inclusive", view(visits(valid_from=date(2026, 11, 18))), Reason.WALK_IN, now=t("2026-11-18T00:00"), pass_id="p1", amount=Decimal(1)),
    Case("valid_until is inclusive", view(visits(valid_until=date(2026, 11, 18))), Reason.WALK_IN, now=t("2026-11-18T23:59:59"), pass_id="p1", amount=Decimal(1)),
    Case("zones cover", view(visits(zones=frozenset({"main", "spa"}))), Reason.WALK_IN, pass_id="p1", amount=Decimal(1)),
    Case("a marketplace pass never walks in, the time pass does", view(market(), timepass()), Reason.WALK_IN, pass_id="t1"),
    # -- denials -----------------------------------------------------------------------------
    Case("too early", view(visits(access_windows=None), bookings=(booking(start="2026-11-18T18:00"),)), Reason.TOO_EARLY),
    Case(
        "too early beats too late",
        view(visits(access_windows=None), bookings=(booking("b1", start="2026-11-18T09:00"), booking("b2", start="2026-11-18T18:00"))),
        Reason.TOO_EARLY,
    ),
    Case("too late (booked)", view(visits(access_windows=None), bookings=(booking(start="2026-11-18T09:00"),)), Reason.TOO_LATE),
    Case("too late (no_show)", view(visits(access_windows=None), bookings=(booking(start="2026-11-18T09:00", status=BookingStatus.NO_SHOW),)), Reason.TOO_LATE),
    Case("not too late once attended", view(visits(access_windows=None), bookings=(booking(start="2026-11-18T09:00", status=BookingStatus.ATTENDED),)), Reason.OUTSIDE_WINDOW),
    Case("not too early when cancelled", view(visits(access_windows=None), bookings=(booking(start="2026-11-18T18:00", status=BookingStatus.CANCELLED),)), Reason.OUTSIDE_WINDOW),
    Case("not too early for tomorrow", view(visits(access_windows=None), bookings=(booking(start="2026-11-19T09:00"),)), Reason.OUTSIDE_WINDOW),
    Case("not too late for yesterday", view(visits(access_windows=None), bookings=(booking(start="2026-11-17T18:00"),)), Reason.OUTSIDE_WINDOW),
    Case("not too early in another zone", view(visits(access_windows=None), bookings=(booking(start="2026-11-18T18:00", zone="spa"),)), Reason.OUTSIDE_WINDOW),
    Case("too early even with no pass of one's own", MemberView(M1, (), (booking(start="2026-11-18T18:00", pass_id="fam"),)), Reason.TOO_EARLY),
    Case("booking required", view(market(), market("w2")), Reason.BOOKING_REQUIRED),
    Case("too early beats booking required", view(market(), bookings=(booking(start="2026-11-18T18:00", pass_id="w1"),)), Reason.TOO_EARLY),
    Case("no pass", view(), Reason.NO_PASS),
    Case("not yet valid", view(visits(valid_from=date(2026, 11, 19))), Reason.PASS_NOT_YET_VALID),
    Case("expired", view(visits(valid_until=date(2026, 11, 17))), Reason.PASS_EXPIRED),
    Case("expired > not yet valid", view(visits("a", valid_from=date(2026, 12, 1)), visits("b", valid_until=date(2026, 11, 17))), Reason.PASS_EXPIRED),
    Case("zone > expired", view(visits("a", valid_until=date(2026, 11, 17)), visits("b", zones=frozenset({"spa"}))), Reason.ZONE_NOT_ALLOWED),
    Case("window > zone", view(visits("a", zones=frozenset({"spa"})), visits("b", access_windows=WeekSchedule.parse({"mon": "06:00-07:00"}))), Reason.OUTSIDE_WINDOW),
    Case("no walk-in windows is outside_window", view(timepass(access_windows=None)), Reason.OUTSIDE_WINDOW),
    Case("balance > window", view(visits("a", access_windows=None), visits("b", balance=0)), Reason.NO_BALANCE),
    Case("credits below walk_in_cost", view(visits(kind=PassKind.CREDITS, balance="4.99", walk_in_cost=Decimal(5))), Reason.NO_BALANCE),
    Case("checked in order: expired and wrong zone fails as expired", view(visits(valid_until=date(2026, 11, 17), zones=frozenset({"spa"}), balance=0)), Reason.PASS_EXPIRED),
    Case("checked in order: wrong zone and empty fails as zone", view(visits(zones=frozenset({"spa"}), balance=0, access_windows=None)), Reason.ZONE_NOT_ALLOWED),
    Case("a marketplace pass beside: the other pass decides", view(market(), visits(valid_until=date(2026, 11, 17))), Reason.PASS_EXPIRED),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decide(case: Case) -> None:
    d = decide(case.view, case.presented, case.gate, case.site, case.policy, case.now)
    assert d.reason == case.reason
    assert d.granted == (case.reason in GRANTED)
    assert d.booking == case.booking
    assert d.pass_id == case.pass_id
    assert d.amount == case.amount
    assert d.anti_passback == case.anti_passback
    if case.view.member is not None:
        assert d.member == case.view.member.id
    else:
        assert d.member is None


def test_every_reason_the_rules_give_is_covered() -> None:
    produced = {c.reason for c in CASES} | {Reason.OVERRIDE}
    # rules.admission's refusals (tests/test_admission.py) and the report of a cut commit
    not_decide = {
        Reason.FIRE_ALARM, Reason.EMERGENCY_RELEASE, Reason.LOCKDOWN, Reason.STORAGE_FAULT,
        Reason.HARDWARE_FAULT, Reason.CACHE_STALE, Reason.SITE_FULL, Reason.PASSAGE_UNCONFIRMED,
    }
    assert produced == set(Reason) - not_decide


def test_override() -> None:
    d = override(GATE)
    assert d == Decision(True, Reason.OVERRIDE, None)
    assert d.amount == 0 and d.pass_id is None and d.booking is None


def test_attends_booking_only_for_booking_grants() -> None:
    b = decide(view(visits(), bookings=(booking(start="2026-11-18T12:05"),)), CARD, GATE, SITE, POLICY, NOON)
    w = decide(view(visits()), CARD, GATE, SITE, POLICY, NOON)
    assert b.attends_booking and not w.attends_booking


@pytest.mark.parametrize(
    ("presence", "now", "inside"),
    [
        (None, "2026-11-18T12:00", False),
        (ZonePresence(), "2026-11-18T12:00", False),
        (ZonePresence(t("2026-11-18T00:00"), Direction.IN, t("2026-11-18T00:00")), "2026-11-18T23:59:59", True),
        (ZonePresence(t("2026-11-17T23:59:59"), Direction.IN, t("2026-11-17T23:59:59")), "2026-11-18T00:00", False),
        (ZonePresence(t("2026-11-18T10:00"), Direction.OUT, t("2026-11-18T09:00")), "2026-11-18T12:00", False),
        # evacuated after the entry: not known to be inside; before it, or after now: still inside
        (ZonePresence(t("2026-11-18T10:00"), Direction.IN, t("2026-11-18T10:00"), t("2026-11-18T10:00:01")), "2026-11-18T12:00", False),
        (ZonePresence(t("2026-11-18T10:00"), Direction.IN, t("2026-11-18T10:00"), t("2026-11-18T10:00")), "2026-11-18T12:00", True),
        (ZonePresence(t("2026-11-18T10:00"), Direction.IN, t("2026-11-18T10:00"), t("2026-11-18T12:00:01")), "2026-11-18T12:00", True),
        # an exit of the zone opened unrecorded after the entry: it may have been theirs; one
        # before the entry says nothing of it
        (ZonePresence(t("2026-11-18T10:00"), Direction.IN, t("2026-11-18T10:00"), exit_unrecorded_at=t("2026-11-18T10:30")),
         "2026-11-18T12:00", False),
        (ZonePresence(t("2026-11-18T10:00"), Direction.IN, t("2026-11-18T10:00"), exit_unrecorded_at=t("2026-11-18T09:59")),
         "2026-11-18T12:00", True),
    ],
)
def test_is_inside(presence: ZonePresence | None, now: str, inside: bool) -> None:
    assert is_inside(presence, t(now), SITE) is inside


def test_inside_resets_at_local_not_utc_midnight() -> None:
    # 23:30 in Madrid on the 18th is 22:30Z; 00:30 on the 19th is 23:30Z the 18th (UTC)
    p = ZonePresence(t("2026-11-18T23:30"), Direction.IN, t("2026-11-18T23:30"))
    assert not is_inside(p, t("2026-11-19T00:30"), SITE)
    utc_site = Site(ZoneInfo("UTC"))
    assert is_inside(p, t("2026-11-19T00:30"), utc_site)


def test_a_desk_check_in_follows_the_rules_with_the_desk_s_choice() -> None:
    two = (booking("b1", "2026-11-18T12:05"), booking("b2", "2026-11-18T12:10"))
    d = decide(view(visits(), bookings=two), Presented.desk(), GATE, SITE, POLICY, NOON)
    assert (d.reason, d.booking) == (Reason.BOOKING, "b1")  # the contract's own choice
    d = decide(view(visits(), bookings=two), Presented.desk(booking="b2"), GATE, SITE, POLICY, NOON)
    assert (d.reason, d.booking) == (Reason.BOOKING, "b2")
    # a walk-in on the pass the desk picked, not the one the rules prefer (a time pass)
    d = decide(view(visits("p1"), timepass("t1")), Presented.desk(pass_id="p1"), GATE, SITE, POLICY, NOON)
    assert (d.reason, d.pass_id, d.amount) == (Reason.WALK_IN, "p1", Decimal(1))
    # a choice the rules do not allow changes nothing: an empty pass is not usable
    d = decide(view(visits("p1", 0), timepass("t1")), Presented.desk(pass_id="p1"), GATE, SITE, POLICY, NOON)
    assert (d.reason, d.pass_id) == (Reason.WALK_IN, "t1")
    # and the desk cannot check in a blocked member
    blocked = replace(M1, status=MemberStatus.BLOCKED)
    d = decide(view(timepass(), member=blocked), Presented.desk(), GATE, SITE, POLICY, NOON)
    assert d.reason == Reason.MEMBER_BLOCKED
