"""What a gate repairs once it learns what it did not know when it charged or let a member
in (rules/recheck.py decides; this writes): its own lost events of the day come back from
the central system (sync/store/own_history.py, history_recheck.py), or another daemon's
earlier events arrive after a restart or a split of the site's network
(sync/store/peer_events.py). Each repair is an event in the transaction that records what
was learnt — a charge given back (`deduction`, cause `refund`, `because`), a QR code used
twice, an entry hard anti-passback would have refused — so it is done once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from rules import recheck
from rules.timeutil import iso_utc, parse_instant_once
from sync.store import history_recheck, own_history, peer_events
from sync.store.rows import ts
from sync.store.transaction import Transaction

if TYPE_CHECKING:
    from sync.store.ledger import Ledger

_UTC = ZoneInfo("UTC")


def _amount(d: Decimal) -> str:
    return str(int(d)) if d == d.to_integral_value() else str(d)


def recheck_at_commit(ledger: Ledger, tx: Transaction, now: datetime, intent: int, written: datetime, seq: int) -> None:
    """Inside the commit of a grant: decided while our lost events were missing and
    committed after they came back, it is rechecked now (history_recheck.LATE_KEY)."""
    pending = history_recheck.late(ledger.conn)  # a meta look-up; only grants with an intent
    if pending is None:
        return
    w, grants = pending
    rest = [g for g in grants if g != [intent, ts(written)]]
    if len(rest) == len(grants):
        return
    if rest:
        tx.set_meta(own_history.LATE_KEY, history_recheck.late_json(w, rest))
    else:
        tx.delete_meta(own_history.LATE_KEY)
    recheck_gap(ledger, tx, now, w, only=seq)


@dataclass(frozen=True, slots=True)
class Heard:
    """What another daemon's events just recorded say that bears on this daemon's charges:
    the members they let in or marked attended, from when (`since`); the bookings they let
    members in on (`attended`, by member); the evacuation they raised (its start)."""

    since: dict[str, datetime]
    attended: dict[str, dict[str, datetime]]
    evacuated: datetime | None

    def bookings(self) -> dict[str, datetime]:
        return {b: at for by in self.attended.values() for b, at in by.items()}


def heard(entries: dict[str, datetime], events: list[dict[str, Any]]) -> Heard:
    """`entries`: the members whose entries were recorded, each its earliest; `events`: the
    batch (its attendances and fire alarms are read here)."""
    since = dict(entries)
    attended: dict[str, dict[str, datetime]] = {}
    evacuated: datetime | None = None
    for e in events:
        attendance = e.get("type") == "attendance" and e.get("status") == "attended" \
            and isinstance(e.get("booking"), str) and isinstance(e.get("member"), str)
        fire = e.get("type") == "fire_alarm" and e.get("active") is True
        if not (attendance or fire):
            continue
        try:
            at = parse_instant_once(str(e.get("at")), _UTC)
        except ValueError:
            continue
        if fire:  # everyone's visit cut short: a re-entry after it free (rules.decide.evacuated)
            evacuated = at if evacuated is None else min(evacuated, at)
            continue
        member, booking = str(e["member"]), str(e["booking"])
        by = attended.setdefault(member, {})
        by[booking] = min(by.get(booking, at), at)
        since[member] = min(since.get(member, at), at)
    return Heard(since, attended, evacuated)


def recheck_heard(ledger: Ledger, tx: Transaction, now: datetime, h: Heard) -> int:
    """Inside the transaction that records another daemon's events: this daemon's
    charges of the members they let in, decided after those entries and so without them
    (a restart, a split of the site's network), decided again on the day now known
    (rules.recheck): a walk-in they make a free re-entry, or a booking they show used
    already, given back — once (a charge given back is not rechecked again). Returns
    how many. Charges only: the site's QR codes have their own claims, and hard
    anti-passback at two turnstiles that had not heard each other is the member in."""
    return recheck_charges(ledger, tx, now, h.since, h.bookings(), h.evacuated)


def recheck_charges(ledger: Ledger, tx: Transaction, now: datetime, since: dict[str, datetime],
                    attended: dict[str, datetime], evacuated: datetime | None = None) -> int:
    """This daemon's charges of `since`'s members after their instants (and of everyone
    after `evacuated`), decided again on what is known now; what they make undue given
    back, once. Returns how many."""
    taps = history_recheck.charged_since(ledger.conn, ledger.daemon_id, since, evacuated)
    if not taps:
        return 0
    found = [f for f in recheck.recheck(taps, history_recheck.heard_day(ledger.conn, taps, attended), ledger.gates,
                                        ledger.site) if f.remedy is recheck.Remedy.REFUND]
    for f in found:
        give_back(ledger, tx, now, f, "heard_refund")
    return len(found)


def give_back(ledger: Ledger, tx: Transaction, now: datetime, f: recheck.Finding, action: str) -> None:
    """A charge the rules would not have taken (a recheck's finding), given back as the
    desk's refund of a walk-in is: a `deduction`, cause `refund`, naming it and why."""
    t, c = f.tap, f.tap.charge
    if c is None:
        return
    gate = ledger.gates[t.gate]
    refund = ledger.deduct(
        tx, now, pass_id=c.pass_id, member_id=t.member, amount=-c.amount, booking_id=None,
        cause="refund", zone=gate.zone, gate=t.gate, refunded_seq=c.seq,
        refunds={"daemon": ledger.daemon_id, "seq": c.seq}, because=f.why.value,
    )
    peer_events.mark_refunded(
        ledger.conn, peer_events.Charge(ledger.daemon_id, c.seq, c.pass_id, c.amount, ts(t.decided_at), True),
        (ledger.daemon_id, int(refund["seq"]), ts(now)))
    tx.audit(now, "gate", action, {
        "member": t.member, "pass": c.pass_id, "gate": t.gate, "because": f.why.value,
        "refunds": [ledger.daemon_id, c.seq], "cause": c.cause})


def recheck_gap(
    ledger: Ledger, tx: Transaction, now: datetime, wanted: own_history.Wanted, only: int | None = None,
) -> dict[str, int]:
    """Inside the transaction that records the last of our lost events: the taps this
    daemon decided while they were missing, decided again against the day now known
    (rules.recheck), and each finding repaired as an event — a walk-in the history
    shows free given back (a `deduction`, cause `refund`, naming the charge and
    `because`), a QR code it shows used already (`qr_double_use`), an entry hard
    anti-passback would have refused (`anti_passback_missed`, for the desk). Counts
    by what was done. `only`: that access event alone (a grant committed after them)."""
    taps = history_recheck.gap_taps(ledger.conn, ledger.daemon_id, wanted, only)
    found = recheck.recheck(taps, history_recheck.known_day(ledger.conn, wanted, taps), ledger.gates, ledger.site)
    seen = {"rechecked": len(taps)} if taps else {}
    for f in found:
        t, since = f.tap, iso_utc(f.since) if f.since is not None else "?"
        key = "refunded" if f.remedy is recheck.Remedy.REFUND else f.remedy.value
        seen[key] = seen.get(key, 0) + 1
        if f.remedy is recheck.Remedy.REFUND and t.charge is not None:
            give_back(ledger, tx, now, f, "history_refund")
        elif f.remedy is recheck.Remedy.QR_DOUBLE_USE:
            tx.emit("alarm", now, gate=t.gate, kind="qr_double_use", member=t.member, token=t.token,
                    other=ledger.daemon_id,
                    detail=f"{t.member}'s QR code let in at {t.gate} at {iso_utc(t.decided_at)} had been used "
                           f"here at {since}, by this gate's lost ledger (its events came back from the central "
                           "system after the tap)")
        elif f.remedy is recheck.Remedy.ANTI_PASSBACK_MISSED:
            charged = (f"; charged {_amount(t.charge.amount)} on pass {t.charge.pass_id} (event "
                       f"{t.charge.seq}), left to the desk" if t.charge is not None else "")
            tx.emit("alarm", now, gate=t.gate, kind="anti_passback_missed", member=t.member,
                    detail=f"{t.member} was let in at {t.gate} at {iso_utc(t.decided_at)} while inside since "
                           f"{since}, by this gate's lost ledger (its events came back from the central system "
                           f"after the tap): hard anti-passback would have refused the entry{charged}")
    return seen


__all__ = ["Heard", "give_back", "heard", "recheck_at_commit", "recheck_charges", "recheck_gap", "recheck_heard"]
