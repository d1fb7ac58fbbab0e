"""What the member reads at the gate: rules/messages.py as a table, and the facts decide()
hands it for the cases the front desk reported (issue 13, "Messages a member understands")."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from rules.credential import CredentialKind
from rules.decide import MemberView, Presented, QrClaim, decide
from rules.messages import message, split_message
from rules.model import Booking, BookingStatus, DeductOn, Gate, Member, Pass, PassKind, Policy, Site
from rules.reasons import Reason
from rules.timeutil import WeekSchedule

TABLE: list[tuple[Reason, dict[str, str], str]] = [
    (Reason.WALK_IN, {"name": "Ana López", "pass": "Multipack 10", "balance_after": "8"}, "Welcome Ana — Multipack 10: 8 left"),
    (Reason.WALK_IN, {"name": "", "pass": "", "balance_after": "999"}, "Welcome — your pass: 999 left"),
    (Reason.WALK_IN, {"name": "Jonas Weber", "pass": "Monthly"}, "Welcome Jonas — Monthly"),
    (Reason.WALK_IN, {"name": "Ana", "pass": "Multipack 10", "kind": "visits", "cost": "1", "balance_after": "8",
                      "class": "Spinning", "starts": "13:00"},
     "Welcome Ana — Spinning at 13:00: entry now is a walk-in, 1 entry from Multipack 10 (8 left)"),
    (Reason.WALK_IN, {"name": "Kari", "pass": "1000 points", "kind": "credits", "cost": "120", "class": "Yoga", "starts": "9:00"},
     "Welcome Kari — Yoga at 9:00: entry now is a walk-in, 120 credits from 1000 points"),
    (Reason.BOOKING, {"name": "Ana López", "class": "Spinning", "starts": "13:00", "pass": "Multipack 10",
                      "balance_after": "8"}, "Welcome Ana — Spinning at 13:00 · Multipack 10: 8 left"),
    (Reason.BOOKING, {"name": "Lena", "class": "Yoga", "starts": "10:00"}, "Welcome Lena — Yoga at 10:00"),
    (Reason.LINKED_BOOKING, {"class": "Yoga", "starts": "10:00"}, "Welcome — you're early for Yoga at 10:00"),
    (Reason.REENTRY, {"name": "Bruno Díaz"}, "Welcome back Bruno"),
    (Reason.EXIT, {"name": "Bruno Díaz"}, "Goodbye Bruno"),
    (Reason.OVERRIDE, {}, "Please go through — opened by the front desk"),
    (Reason.TOO_EARLY, {"class": "Spinning", "starts": "13:00", "entry_from": "12:45"},
     "Your class Spinning starts at 13:00 — entry from 12:45"),
    (Reason.TOO_LATE, {"starts": "13:00", "closed_at": "13:10"}, "Your class started at 13:00 — entry closed at 13:10"),
    (Reason.BOOKING_REQUIRED, {"pass": "wellpass"}, "Please book a class in your app first — wellpass is for booked classes"),
    (Reason.BOOKING_REQUIRED, {"pass": "wellpass", "attended_class": "Yoga", "attended_until": "19:00"},
     "You are checked in for Yoga until 19:00 — the front desk will let you back in"),
    (Reason.BOOKING_REQUIRED, {"pass": "wellpass", "cancelled_class": "Yoga", "cancelled_starts": "18:00"},
     "Your class Yoga at 18:00 was cancelled — book another class in your app"),
    (Reason.BOOKING_REQUIRED, {"pass": "wellpass", "next_class": "Spinning", "next_day": "tomorrow", "next_starts": "00:03",
                               "next_entry_from": "23:48"},
     "Your class Spinning is tomorrow at 00:03 — entry from 23:48"),
    (Reason.BOOKING_REQUIRED, {"pass": "wellpass", "next_class": "Yoga", "next_day": "on Sat 21 Nov", "next_starts": "09:00"},
     "Your class Yoga is on Sat 21 Nov at 09:00 — see you then"),
    (Reason.NO_BALANCE, {"pass": "1000 points", "kind": "credits", "balance": "100", "cost": "120"},
     "Not enough left on 1000 points — 120 credits needed, 100 left"),
    (Reason.NO_BALANCE, {"pass": "Multipack 10", "kind": "visits", "balance": "0", "cost": "1"},
     "Not enough left on Multipack 10 — 1 entry needed, 0 left"),
    (Reason.UNKNOWN_CARD, {"credential": "card"}, "Card not recognised — please see the front desk"),
    (Reason.UNKNOWN_CARD, {"credential": "qr"}, "QR code not recognised — please see the front desk"),
    (Reason.PASS_EXPIRED, {"pass": "Multipack 10", "until": "2026-10-31"}, "Multipack 10 has expired — last day was 2026-10-31"),
    (Reason.PASS_EXPIRED, {}, "Your pass has expired — please see the front desk"),
    (Reason.OUTSIDE_WINDOW, {"pass": "Morning", "next": "Tue 06:30"}, "Morning is not valid at this time — next entry Tue 06:30"),
    (Reason.SITE_CLOSED, {"next": "Mon 06:00"}, "We're closed — we open Mon 06:00"),
    (Reason.MEMBER_BLOCKED, {"name": "Max"}, "Membership on hold — please see the front desk"),
    (Reason.FIRE_ALARM, {"name": "Max"}, "Fire alarm — no entry: please leave by the nearest exit"),
    (Reason.STORAGE_FAULT, {}, "Gate out of order — please see the front desk"),
]


@pytest.mark.parametrize(("reason", "facts", "expected"), TABLE, ids=[f"{r.value}-{i}" for i, (r, _, _) in enumerate(TABLE)])
def test_message_table(reason: Reason, facts: dict[str, str], expected: str) -> None:
    assert message(reason, facts) == expected


def test_every_reason_has_words_and_a_headline() -> None:
    for reason in Reason:
        text = message(reason, {})
        head, _ = split_message(text)
        assert head and head[0].isupper() and "{" not in text and "?" not in head, reason


# -- the facts decide() gives, for the reported cases -----------------------------------------

TZ = ZoneInfo("Europe/Madrid")
SITE = Site(timezone=TZ)
GATE = Gate(id="in", zone="main")
NOW = datetime(2026, 11, 18, 12, 40, tzinfo=TZ).astimezone(UTC)
ALWAYS = WeekSchedule.parse({"mon-sun": "00:00-24:00"})


def _facts(view: MemberView, presented: Presented | None = None) -> str:
    d = decide(view, presented or Presented.card(), GATE, SITE, Policy(), NOW)
    name = view.member.name if view.member else ""
    return message(d.reason, {**d.hint, "name": name})


def test_decided_messages() -> None:
    ana = Member("m1", "Ana López")
    multipack = Pass("p1", "m1", "Multipack 10", PassKind.VISITS, Decimal(9), access_windows=ALWAYS)
    spin = Booking("b1", "m1", "p1", "Spinning", "main", NOW + timedelta(minutes=20), NOW + timedelta(minutes=65), deducted=True)
    # 20 minutes early under strict entry: a paid walk-in, and the member is told
    assert _facts(MemberView(ana, (multipack,), (spin,))) == (
        "Welcome Ana — Spinning at 13:00: entry now is a walk-in, 1 entry from Multipack 10 (8 left)"
    )
    # inside the window: the booking, with what is left on the pass
    on_time = Booking("b1", "m1", "p1", "Spinning", "main", NOW + timedelta(minutes=5), NOW + timedelta(minutes=50), deducted=True)
    assert _facts(MemberView(ana, (multipack,), (on_time,))) == "Welcome Ana — Spinning at 12:45 · Multipack 10: 9 left"
    # a cancelled class on a marketplace pass
    lena = Member("m2", "Lena Vogel")
    wellpass = Pass("p2", "m2", "wellpass", PassKind.MARKETPLACE)
    yoga = Booking("b2", "m2", "p2", "Yoga", "main", NOW + timedelta(minutes=5), NOW + timedelta(minutes=60),
                   status=BookingStatus.CANCELLED)
    assert _facts(MemberView(lena, (wellpass,), (yoga,))) == "Your class Yoga at 12:45 was cancelled — book another class in your app"
    # booked, but not for today: told when, not asked to book (the contract's reason stays
    # booking_required: too_early is for a class later the same local day)
    late = datetime(2026, 11, 18, 23, 43, tzinfo=TZ).astimezone(UTC)
    spin = Booking("b3", "m2", "p2", "Spinning", "main", late + timedelta(minutes=20), late + timedelta(minutes=65))
    d = decide(MemberView(lena, (wellpass,), (spin,)), Presented.card(), GATE, SITE, Policy(), late)
    assert d.reason == Reason.BOOKING_REQUIRED
    assert message(d.reason, d.hint) == "Your class Spinning is tomorrow at 00:03 — entry from 23:48"
    thursday = Booking("b4", "m2", "p2", "Yoga", "main", NOW + timedelta(days=1, hours=7), NOW + timedelta(days=1, hours=8))
    assert _facts(MemberView(lena, (wellpass,), (thursday,))) == "Your class Yoga is tomorrow at 19:40 — see you then"
    saturday = replace(thursday, starts_at=NOW + timedelta(days=3), ends_at=NOW + timedelta(days=3, hours=1))
    assert _facts(MemberView(lena, (wellpass,), (saturday,))) == "Your class Yoga is on Sat 21 Nov at 12:40 — see you then"
    done = replace(thursday, status=BookingStatus.ATTENDED)  # only a class still to come counts
    assert _facts(MemberView(lena, (wellpass,), (done,))).startswith("Please book a class in your app first")
    # checked in for her class, out to the changing room and back during it (issue 24): not
    # asked to book what she booked and attended (the contract's reason stays booking_required)
    in_class = Booking("b5", "m2", "p2", "Spinning", "main", NOW - timedelta(minutes=20), NOW + timedelta(minutes=25),
                       status=BookingStatus.ATTENDED)
    d = decide(MemberView(lena, (wellpass,), (in_class,)), Presented.card(), GATE, SITE, Policy(), NOW)
    assert d.reason == Reason.BOOKING_REQUIRED
    assert message(d.reason, d.hint) == "You are checked in for Spinning until 13:05 — the front desk will let you back in"
    # a credit pass short of the price
    kari = Member("m3", "Kari Nordmann")
    points = Pass("p3", "m3", "1000 points", PassKind.CREDITS, Decimal(100), DeductOn.ACCESS, Decimal(120), access_windows=ALWAYS)
    assert _facts(MemberView(kari, (points,))) == "Not enough left on 1000 points — 120 credits needed, 100 left"
    # a valid QR code naming nobody known is not a "card"; a forged one is not valid here
    claim = QrClaim("t1", "m-gone", NOW - timedelta(seconds=10), NOW + timedelta(seconds=50))
    assert _facts(MemberView(None), Presented(CredentialKind.QR, claim)) == "QR code not recognised — please see the front desk"
    assert _facts(MemberView(None), Presented(CredentialKind.QR, None)).startswith("This QR code is not valid here")
    assert _facts(MemberView(None)) == "Card not recognised — please see the front desk"
