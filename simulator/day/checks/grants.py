"""Every entry a gate granted, decided again with `rules.decide` (the pure core) on a view
of the member rebuilt from the central system's event log: as the gate knew it (its own
events only) and with everything the site knew by then. A grant both views deny is a
violation; one only the fuller view denies is a gate that had not yet heard (counted, not a
fault).

And the other way: every entry a gate refused by its rules (a pass, a booking, the
balance, the member, anti-passback, the opening hours), decided again on each view the
gate could have had — its own events only, every event of the site, the worst balance
(every charge of the site until then, no top-up, no other daemon's refund), and each other
daemon heard only up to each of its events. A refusal every one of them grants was made
on knowledge the gate could not have had: a wrong balance (found so: a charge at another
turnstile taken off twice once the central had applied it), a presence, a booking's state.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from rules.credential import CredentialKind
from rules.decide import Decision, MemberView, Presented, ZonePresence, decide
from rules.model import Booking, BookingStatus, Direction, Member, Pass
from rules.reasons import Reason
from simulator.day.checks.dayrun import ENTRY_REASONS, Invariant, Run, instant


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
        # the site's evacuations: each daemon records one as its fire input goes active, and
        # learns the others' from their events (sync/store/evacuation.py); and the exits let
        # out unrecorded, whose alarms say the same of a zone (sync/store/unrecorded_exits.py)
        fires = _presence_resets(evs)
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
            t = instant(e.get("decided_at") or e["at"])
            views = {
                "as_the_gate_knew": _view(run, site, e, t, m, by_member_pass, by_member_booking, fires,
                                          heard=_nobody),
                "everything": _view(run, site, e, t, m, by_member_pass, by_member_booking, fires, heard=_before(t)),
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


# what rules.decide refuses from a member's view; the others are the credential's (unknown
# card, QR) or the site's and the gate's state (rules.admission: fire, lockdown, faults, full)
REFUSED_BY_RULES = frozenset({
    Reason.MEMBER_BLOCKED, Reason.SITE_CLOSED, Reason.ANTI_PASSBACK, Reason.TOO_EARLY, Reason.TOO_LATE,
    Reason.BOOKING_REQUIRED, Reason.PASS_NOT_YET_VALID, Reason.PASS_EXPIRED, Reason.ZONE_NOT_ALLOWED,
    Reason.OUTSIDE_WINDOW, Reason.NO_BALANCE, Reason.NO_PASS,
})


def check_refusals(run: Run) -> Invariant:
    inv = Invariant("refusals", "no gate refused an entry its rules would grant on anything it could have known: "
                    "every entry refused by the rules decided again with rules.decide on its own events only, "
                    "on every event of the site, on the worst balance (every charge of the site, no top-up, no "
                    "other daemon's refund) and with each other daemon heard only up to each of its events")
    refused: Counter[str] = Counter()
    for site in run.sites:
        members = run.members(site)
        by_member_pass: dict[str, list[Pass]] = defaultdict(list)
        for p in run.passes(site).values():
            by_member_pass[p.member].append(p)
        by_member_booking: dict[str, list[Booking]] = defaultdict(list)
        for b in run.bookings(site).values():
            by_member_booking[b.member].append(b)
        sd, policy = run.site_domain(site), run.policy(site)
        fires = _presence_resets(run.events.get(site, []))
        for e in run.events.get(site, []):
            if not (e["type"] == "access" and e.get("decision") == "denied" and e.get("reason") in REFUSED_BY_RULES):
                continue
            d = run.daemons.get(e["_daemon"])
            m = members.get(e.get("member") or "")
            if d is None or m is None:
                continue
            inv.checked += 1
            refused[str(e["reason"])] += 1
            t = instant(e.get("decided_at") or e["at"])
            again: dict[str, Decision] = {}
            for name, heard, worst, lost in _possible(run, site, e, t, m, by_member_pass):
                view = _view(run, site, e, t, m, by_member_pass, by_member_booking, fires, heard=heard, worst=worst,
                             lost=lost)
                again[name] = decide(view, Presented(CredentialKind.CARD), d.gate, sd, policy, t)
                if not again[name].granted:
                    break  # a view the gate could have had refuses it too
            else:
                inv.fail(f"{e['_daemon']} refused {m.id} ({e['reason']}); every view it could have had grants: "
                         + ", ".join(f"{k} {v.reason.value}" for k, v in again.items()),
                         site=site, at=e["at"], member=m.id, gate=e["_daemon"],
                         detail={"decided_at": t.isoformat(), "pass": e.get("pass"), "booking": e.get("booking")},
                         around=run.around(site, t, member=m.id))
    inv.figures = {"refused": dict(refused)}
    return inv


# Daemons of one site share the host's clock; a peer's charge stamped a little after a
# decision may still have been heard before it. The worst case counts those too.
_SKEW = timedelta(seconds=5)

Heard = Callable[[dict[str, Any]], bool]  # which of the other daemons' events a gate had heard


def _nobody(x: dict[str, Any]) -> bool:
    return False


def _before(t: datetime) -> Heard:
    return lambda x: instant(x["at"]) < t


def _before_but_resets(t: datetime) -> Heard:
    """Everything before `t` but what ends the site's knowledge of who is inside."""
    return lambda x: instant(x["at"]) < t and not _resets(x)


# how long a new box may decide before its old box's events and the others' catch-ups are
# in: seconds of real time, minutes of the simulated day's
NEW_BOX_CATCHING_UP = timedelta(minutes=10)


def _possible(run: Run, site: str, e: dict[str, Any], t: datetime, m: Member,
              by_member_pass: dict[str, list[Pass]]) -> Iterator[tuple[str, Heard, bool, int]]:
    """What a gate deciding `e` at `t` could have heard of the other daemons' events: none,
    all of them until `t`, the worst balance, and each other daemon heard up to (not
    including) each of its events about this member — one daemon behind, the rest heard,
    as after a cut link to it. Its own events it knows, but for a new box in its first
    minutes: its old box's events (up to the seq the central system held) come back from
    the central, and the other daemons' from their catch-ups, each in its own time
    (docs/operations.md, "A gate's box replaced": it decides meanwhile without them) —
    the member's charges heard before the evacuation that made a re-entry free, say."""
    daemon = e["_daemon"]
    yield "own events only", _nobody, False, 0
    yield "every event", _before(t), False, 0
    yield "worst balance", _before(t), True, 0
    for c in run.harness["chaos"]:
        if (c["kind"] == "replace_box" and c["phase"] == "start" and f"{c.get('site')}-{c.get('gate')}" == daemon
                and instant(c["sim"]) <= t <= instant(c["sim"]) + NEW_BOX_CATCHING_UP):
            lost = int(c.get("central_holds") or 0)
            yield "a new box, its old box's events not back", _nobody, False, lost
            yield "a new box, the others' evacuations not heard yet", _before_but_resets(t), False, lost
    idx = run.index(site)
    theirs = [x for x in idx.by_member.get(m.id, []) if x["_daemon"] != daemon]
    theirs += [x for p in by_member_pass.get(m.id, []) for x in idx.deductions.get(p.id, [])
               if x["_daemon"] != daemon and x.get("member") != m.id]
    for x in theirs:
        if instant(x["at"]) >= t:
            continue
        behind, cut = str(x["_daemon"]), int(x["seq"])

        def heard(y: dict[str, Any], behind: str = behind, cut: int = cut) -> bool:
            return instant(y["at"]) < t and (y["_daemon"] != behind or int(y["seq"]) < cut)

        yield f"{behind} heard before seq {cut}", heard, False, 0


def _view(run: Run, site: str, e: dict[str, Any], t: datetime, m: Member,
          by_member_pass: dict[str, list[Pass]], by_member_booking: dict[str, list[Booking]],
          fires: list[dict[str, Any]], *, heard: Heard, worst: bool = False, lost: int = 0) -> MemberView:
    """The member as a gate saw them at `t`: from its own events before this one and the
    other daemons' events it had `heard`. `worst`: the lowest balances the gate could have
    had — no top-up, another daemon's refund not heard, its charges until a little after
    `t` heard."""
    daemon, seq = e["_daemon"], e["seq"]

    def known(x: dict[str, Any]) -> bool:
        if x["_daemon"] == daemon:
            return bool(lost < x["seq"] < seq)  # `lost`: its old box's, not back yet
        return heard(x)

    def charged(x: dict[str, Any]) -> bool:
        if not worst or x["_daemon"] == daemon:
            return known(x)
        return Decimal(str(x["amount"])) > 0 and instant(x["at"]) < t + _SKEW

    passes = []
    idx = run.index(site)
    member_events = [x for x in idx.by_member.get(m.id, []) if known(x)]
    for p in by_member_pass.get(m.id, []):
        if p.balance is not None:
            bal = p.balance
            if not worst:
                bal += sum((a for when, a in run.topups.get((site, p.id), []) if when <= t), Decimal(0))
            for x in idx.deductions.get(p.id, []):
                if charged(x):
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
            at = instant(x["at"])
            direction = Direction.OUT if x.get("reason") == "exit" else Direction.IN
            last_entry = at if direction == Direction.IN else presence.last_entry_at
            presence = ZonePresence(at, direction, last_entry)
    evacuations = [instant(x["at"]) for x in fires if x["type"] == "fire_alarm" and known(x) and instant(x["at"]) <= t]
    if evacuations:
        presence = replace(presence, evacuated_at=max(evacuations))
    zone = d_zone(run, e)
    unseen = [instant(x["until"]) for x in fires if x["type"] == "alarm" and known(x) and instant(x["at"]) <= t
              and x["_daemon"] in run.daemons and d_zone(run, x) == zone]
    if unseen:
        presence = replace(presence, exit_unrecorded_at=max(unseen))
    return MemberView(m, tuple(passes), tuple(bookings), {zone: presence})


def _presence_resets(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ends the site's knowledge of who is inside: fire alarms going active, and the
    alarms of exits that opened unrecorded."""
    return [e for e in evs if _resets(e)]


def _resets(e: dict[str, Any]) -> bool:
    return bool((e["type"] == "fire_alarm" and e.get("active"))
                or (e["type"] == "alarm" and e.get("kind") == "exits_not_recorded" and e.get("until")))


def d_zone(run: Run, e: dict[str, Any]) -> str:
    return run.daemons[e["_daemon"]].gate.zone


def _with_balance(p: Pass, bal: Decimal) -> Pass:
    return Pass(p.id, p.member, p.name, p.kind, bal, p.deduct_on, p.walk_in_cost, p.valid_from, p.valid_until,
                p.zones, p.access_windows)


def _with_status(b: Booking, status: BookingStatus) -> Booking:
    return Booking(b.id, b.member, b.pass_id, b.class_name, b.zone, b.starts_at, b.ends_at, status, b.deducted,
                   b.cost, b.loyalty_points)


__all__ = ["REFUSED_BY_RULES", "check_grants", "check_refusals"]
