"""Every entry a gate granted, decided again with `rules.decide` (the pure core) on a view
of the member rebuilt from the central system's event log: as the gate knew it (its own
events only) and with everything the site knew by then. A grant both views deny is a
violation; one only the fuller view denies is a gate that had not yet heard (counted, not a
fault).

And the other way: every entry a gate refused for the balance (`no_balance`), decided
again on the worst view the gate could have had — every charge of the site until then,
no top-up, no other daemon's refund. A member that view lets in was refused with visits
or credits left: a wrong balance at the gate (found so: a charge at another turnstile
taken off twice once the central had applied it)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from rules.credential import CredentialKind
from rules.decide import MemberView, Presented, ZonePresence, decide
from rules.model import Booking, BookingStatus, Direction, Member, Pass
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
        # learns the others' from their events (sync/store/evacuation.py)
        fires = [e for e in evs if e["type"] == "fire_alarm" and e.get("active")]
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
                                          own_only=True),
                "everything": _view(run, site, e, t, m, by_member_pass, by_member_booking, fires, own_only=False),
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


def check_balance_refusals(run: Run) -> Invariant:
    inv = Invariant("balance_refusals", "no gate refused an entry for the balance when even the worst balance "
                    "it could have known (every charge of the site, no top-up, no refund by another daemon) "
                    "was enough")
    for site in run.sites:
        members = run.members(site)
        by_member_pass: dict[str, list[Pass]] = defaultdict(list)
        for p in run.passes(site).values():
            by_member_pass[p.member].append(p)
        by_member_booking: dict[str, list[Booking]] = defaultdict(list)
        for b in run.bookings(site).values():
            by_member_booking[b.member].append(b)
        sd, policy = run.site_domain(site), run.policy(site)
        fires = [e for e in run.events.get(site, []) if e["type"] == "fire_alarm" and e.get("active")]
        for e in run.events.get(site, []):
            if not (e["type"] == "access" and e.get("decision") == "denied" and e.get("reason") == "no_balance"):
                continue
            d = run.daemons.get(e["_daemon"])
            m = members.get(e.get("member") or "")
            if d is None or m is None:
                continue
            inv.checked += 1
            t = instant(e.get("decided_at") or e["at"])
            view = _view(run, site, e, t, m, by_member_pass, by_member_booking, fires, own_only=False, worst=True)
            again = decide(view, Presented(CredentialKind.CARD), d.gate, sd, policy, t)
            if again.granted:
                inv.fail(f"{e['_daemon']} refused {m.id} for the balance; with every charge of the site and no "
                         f"top-up: {again.reason.value} on {again.pass_id}",
                         site=site, at=e["at"], member=m.id, gate=e["_daemon"],
                         detail={"decided_at": t.isoformat(), "balances": {p.id: str(p.balance) for p in view.passes}},
                         around=run.around(site, t, member=m.id))
    return inv


# Daemons of one site share the host's clock; a peer's charge stamped a little after a
# decision may still have been heard before it. The worst case counts those too.
_SKEW = timedelta(seconds=5)


def _view(run: Run, site: str, e: dict[str, Any], t: datetime, m: Member,
          by_member_pass: dict[str, list[Pass]], by_member_booking: dict[str, list[Booking]],
          fires: list[dict[str, Any]], *, own_only: bool, worst: bool = False) -> MemberView:
    """The member as a gate saw them at `t`: own_only — from this daemon's own events only
    (what it always knows); else from every event of the site before `t`. `worst`: the
    lowest balances the gate could have had — no top-up, another daemon's refund not
    heard, its charges until a little after `t` heard."""
    daemon, seq = e["_daemon"], e["seq"]

    def known(x: dict[str, Any]) -> bool:
        if x["_daemon"] == daemon:
            return bool(x["seq"] < seq)
        return not own_only and instant(x["at"]) < t

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
    evacuations = [instant(x["at"]) for x in fires if known(x) and instant(x["at"]) <= t]
    if evacuations:
        presence = replace(presence, evacuated_at=max(evacuations))
    return MemberView(m, tuple(passes), tuple(bookings), {d_zone(run, e): presence})


def d_zone(run: Run, e: dict[str, Any]) -> str:
    return run.daemons[e["_daemon"]].gate.zone


def _with_balance(p: Pass, bal: Decimal) -> Pass:
    return Pass(p.id, p.member, p.name, p.kind, bal, p.deduct_on, p.walk_in_cost, p.valid_from, p.valid_until,
                p.zones, p.access_windows)


def _with_status(b: Booking, status: BookingStatus) -> Booking:
    return Booking(b.id, b.member, b.pass_id, b.class_name, b.zone, b.starts_at, b.ends_at, status, b.deducted,
                   b.cost, b.loyalty_points)


__all__ = ["check_balance_refusals", "check_grants"]
