"""The books of the day: attendance, no-shows, fees, refunds and loyalty recomputed from
the central system's event log and the day's bookings by the rules as docs/rules.md states
them, written again here — nothing trusts the code under test to say what is right — then
compared with what the gates charged, what the desk was told and what the central system
holds."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from rules.model import Booking, BookingStatus, Direction, Pass, Policy
from rules.schedule import Evacuation
from rules.timeutil import local_date, start_of_local_day
from simulator.day.checks.dayrun import Invariant, Run, instant


def check_books(run: Run) -> list[Invariant]:
    """Attendance, no-shows, fees, refunds and loyalty recomputed from the log."""
    att = Invariant("attendance", "each booking attended at a gate has its attendance event; a booking "
                    "nobody attended is a no-show exactly once, on time; the central's attendance agrees")
    fees = Invariant("fees", "each no-show fee and each deduction is what the rules charge: walk-in cost, "
                     "booking cost, the fee capped at the balance (none if the member was on site, or "
                     "the site was evacuated during the class)")
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
        attended_ev: dict[str, list[dict[str, Any]]] = defaultdict(list)
        no_show_ev: dict[str, list[dict[str, Any]]] = defaultdict(list)
        by_seq = {(e["_daemon"], e["seq"]): e for e in evs}
        # attended anywhere in the day's log: a fee may be given back on an attendance that
        # reached the central system after the refund did
        # a fee goes back only for a gate's attendance (the member was on site); one the desk
        # marked leaves it standing (docs/rules.md, "The front desk")
        attended_at_gate = {e.get("booking") for e in evs if e["type"] == "attendance"
                            and e.get("status") == "attended" and e.get("by") == "gate"}
        evacuations = _evacuations(evs)
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
            at = instant(e["at"])
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
                    attended_ev[b].append(e)
                    attended_at.setdefault(b, at)
                elif e.get("status") == "no_show" and b:
                    no_show_ev[b].append(e)
            elif kind == "deduction" and e.get("pass"):
                amount = Decimal(str(e["amount"]))
                if e.get("cause") == "walk_in" and e.get("member"):
                    walk_ins[e["member"]].append({**e, "_at": at})
                ref: dict[str, Any] = e["refunds"] if isinstance(e.get("refunds"), dict) else {}
                fee = by_seq.get((ref.get("daemon"), ref.get("seq"))) if e.get("cause") == "refund" else None
                if fee is not None and fee.get("cause") == "no_show_fee":
                    # a no-show fee given back: its booking turned out attended, once, in full
                    refunds.checked += 1
                    key = (fee["_daemon"], fee["seq"])
                    if (key in refunded or e.get("booking") != fee.get("booking")
                            or fee.get("booking") not in attended_at_gate
                            or Decimal(str(e["amount"])) != -Decimal(str(fee["amount"]))):
                        refunds.fail(f"the no-show fee {key} given back by {e['_daemon']} "
                                     f"({e['amount']} for {e.get('booking')}): not once, in full, for a booking a "
                                     "gate attended", site=site, at=e["at"], member=e.get("member"),
                                     around=run.around(site, at, member=e.get("member")))
                    refunded.add(key)
                elif e.get("cause") == "refund" and e.get("because"):
                    # the gate's own: a walk-in it charged while its lost events were missing
                    refunds.checked += 1
                    charge = by_seq.get((ref.get("daemon"), ref.get("seq")))
                    access = by_seq.get((ref.get("daemon"), int(ref.get("seq") or 0) - 1))
                    _check_own_refund(run, refunds, site, e, charge, access, entries, refunded)
                elif e.get("cause") == "refund":
                    refunds.checked += 1
                    # asked for when the desk marked the booking attended (the same transaction,
                    # or earlier when the refund waited to hear another daemon)
                    requested = min(at, attended_at.get(str(e.get("booking")), at))
                    _check_refund(run, refunds, site, e, requested, walk_ins, refunded, bookings)
                if e.get("cause") == "no_show_fee":
                    fees.checked += 1
                    b = bookings.get(e.get("booking") or "")
                    want = _fee(b, passes, policy, balance, entries, run.tz, evacuations) if b else None
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
                at = instant(no_show_ev[bid][0]["at"])
                att.fail(f"booking {bid} attended at {first_att:%H:%M:%S} but made a no-show at {at:%H:%M:%S} "
                         f"by {no_show_ev[bid][0]['_daemon']}", site=site, at=no_show_ev[bid][0]["at"],
                         member=b.member, around=run.around(site, at, member=b.member))
            for ev in no_show_ev[bid]:
                if instant(ev["at"]) < due:
                    att.fail(f"booking {bid} made a no-show before it was due", site=site, at=ev["at"], member=b.member)
            unheard = [x for x in attended_ev[bid][1:] if _not_out_yet(run, attended_ev[bid][0], x)]
            if unheard:
                att.figures["attended_again_where_the_first_was_not_out_yet"] = (
                    att.figures.get("attended_again_where_the_first_was_not_out_yet", 0) + len(unheard))
            if attended_n[bid] - len(unheard) > 1:
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
         entries: dict[str, list[datetime]], tz: ZoneInfo,
         evacuations: list[Evacuation]) -> Decimal:
    p = passes.get(b.pass_id)
    if policy.no_show_fee <= 0 or p is None or b.deducted or p.deduct_on.value != "access" or not p.kind.has_balance:
        return Decimal(0)
    if any(start < b.ends_at and (end is None or end > b.starts_at) for start, end in evacuations):
        return Decimal(0)  # the site was evacuated during the class
    day = local_date(b.starts_at, tz)
    start = start_of_local_day(day, tz)
    if any(start <= t < b.ends_at for t in entries.get(b.member, [])):
        return Decimal(0)  # on site that day before the class ended: one access covers the day
    return max(Decimal(0), min(policy.no_show_fee, balance.get(b.pass_id, Decimal(0))))


def _evacuations(evs: list[dict[str, Any]]) -> list[Evacuation]:
    """The site's evacuations from its daemons' `fire_alarm` events: from the earliest
    active one to the earliest all-clear (an event no longer active) after it."""
    spans: list[Evacuation] = []
    for at, active in sorted((instant(e["at"]), bool(e.get("active"))) for e in evs if e["type"] == "fire_alarm"):
        open_ = bool(spans) and spans[-1][1] is None
        if active and not open_:
            spans.append((at, None))
        elif not active and open_:
            spans[-1] = (spans[-1][0], at)
    return spans


def _check_own_refund(run: Run, inv: Invariant, site: str, e: dict[str, Any], charge: dict[str, Any] | None,
                      access: dict[str, Any] | None, entries: dict[str, list[datetime]],
                      refunded: set[tuple[str, int]]) -> None:
    """A refund the gate gave by itself once its lost events came back, or the earlier events
    of another daemon of the site it had not heard when it charged (rules/recheck.py): of its
    own walk-in charge — or booking charge, the booking attended at another daemon before —
    in full, once, of a member it shows free: an entry within the gate's re-entry grace
    before the charge (or an evacuation: not recomputed here)."""
    member = e.get("member")
    booked_before = charge is not None and charge.get("cause") == "booking" and any(
        a["type"] == "attendance" and a.get("status") == "attended" and a.get("booking") == charge.get("booking")
        and a["_daemon"] != charge["_daemon"] and instant(a["at"]) < instant(charge["at"])
        for a in run.events.get(site, []))
    if (charge is None or charge["_daemon"] != e["_daemon"] or (charge.get("cause") != "walk_in" and not booked_before)
            or charge.get("member") != member or charge.get("pass") != e.get("pass")
            or Decimal(str(e["amount"])) != -Decimal(str(charge["amount"]))
            or (charge["_daemon"], charge["seq"]) in refunded):
        inv.fail(f"a refund by {e['_daemon']} ({e.get('because')}) that is not once, in full, of its own walk-in "
                 "(or of a booking used at another daemon before)",
                 site=site, at=e["at"], member=member, detail={"refunds": e.get("refunds")})
        return
    refunded.add((charge["_daemon"], charge["seq"]))
    d = run.daemons.get(e["_daemon"])
    charged_at = instant(charge["at"])
    # the rules decided the tap at its `decided_at` (the charge's access event, just before it)
    decided = instant(str(access.get("decided_at") or access["at"])) if access is not None else charged_at
    if e.get("because") == "reentry_grace" and d is not None and not any(
            decided - d.gate.reentry_grace <= t < charged_at for t in entries.get(str(member), [])):
        inv.fail(f"a refund by {e['_daemon']} of a walk-in at {charge['at']} as a re-entry, with no entry within "
                 f"the grace before it", site=site, at=e["at"], member=member,
                 around=run.around(site, charged_at, member=member, span=timedelta(hours=2)))


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
        fees = {(e.get("_daemon"), e.get("seq")) for e in run.events.get(site, [])
                if e["type"] == "deduction" and e.get("cause") == "no_show_fee"}
        got = [e for e in run.events.get(site, []) if e["type"] == "deduction" and e.get("cause") == "refund"
               and e.get("booking") == booking and isinstance(e.get("refunds"), dict)
               and (e["refunds"].get("daemon"), e["refunds"].get("seq")) not in fees]  # a fee back is no walk-in
        at = instant(x["sim"])
        member = x.get("member")
        # a walk-in another of the member's bookings got back (an earlier request) is not this one's
        elsewhere = {(r["refunds"].get("daemon"), r["refunds"].get("seq")) for r in run.events.get(site, [])
                     if r["type"] == "deduction" and r.get("cause") == "refund" and r.get("booking") != booking
                     and isinstance(r.get("refunds"), dict)}
        walked = [e for e in run.events.get(site, []) if e["type"] == "deduction" and e.get("cause") == "walk_in"
                  and e.get("member") == member and instant(e["at"]) < at
                  and local_date(instant(e["at"]), run.tz) == local_date(at, run.tz)
                  and (e.get("_daemon"), e.get("seq")) not in elsewhere]
        if walked and not got:
            inv.fail(f"the desk refunded {booking}: a walk-in of that day was charged at "
                     f"{walked[-1]['_daemon']} but nothing was given back", site=site, at=x["sim"], member=member,
                     detail={"desk_answer": x.get("response")},
                     around=run.around(site, at, member=member, span=timedelta(hours=2)))


__all__ = ["check_books", "check_requested_refunds"]


# a daemon stopped this soon after an event (sim time) may not have sent it to anyone
_NOT_SENT = timedelta(seconds=30)


def _not_out_yet(run: Run, first: dict[str, Any], again: dict[str, Any]) -> bool:
    """A second `attended` of one booking at another daemon that cannot have heard the
    first: the first's daemon was killed, cut off its power or replaced within moments of
    it and was not back before the second (docs/reliability.md, "Not covered": the booking
    keeps its second attended event; a charge it took is given back once they hear each
    other)."""
    if again["_daemon"] == first["_daemon"]:
        return False
    t0, t1 = instant(first["at"]), instant(again["at"])
    downs = [c for c in run.harness["chaos"]
             if c["kind"] in ("kill_gate", "power_cut", "replace_box") and f"{c.get('site')}-{c.get('gate')}" == first["_daemon"]]
    for c in downs:
        if c["phase"] != "start" or not t0 <= instant(c["sim"]) <= t0 + _NOT_SENT:
            continue
        ends = [instant(x["sim"]) for x in downs if x.get("n") == c.get("n") and x["phase"] == "end"]
        if not ends or ends[0] > t1:
            return True
    return False
