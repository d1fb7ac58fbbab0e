"""The ledger: what happened at this gate, each change with the events that report it in
one transaction — taps (access, deduction, attendance, passage), overrides, attendance
marked by staff with refunds, loyalty points, and the time-driven work (no-shows,
loyalty credits). Also the gate's own reads of it: presence in a zone, points, used QR
tokens.

Everything here is written to the ledger file only, keyed by the ids of the replica's
records (pass, booking, member), never into the replica: a tap decided on one replica
and committed after a switch to the next one stays right — its deduction counts against
whichever central balance is current (balances are derived, sync/store/replica.py), its
booking outcome is a row by booking id that the new replica's booking picks up.

No-shows are found by walking the replica's open bookings by `ends_at` from a cursor
kept in the ledger (`due.no_show_through`: every open booking that ended by then is
settled), so the scheduler's work is proportional to what fell due, not to the size of
the replica. A booking a sync brings in behind the cursor (a late arrival) is listed in
`due_recheck` before the replica changes, and settled at the next run. What ended before
this daemon began the site's time-driven work (`due.no_show_from`, its first run — or where
the site's previous worker said it had settled, gated/knowledge.py) is not its to settle,
walked or listed; and while its own events of a lost ledger are wanted,
the classes they may bear on wait in `due_recheck` (`LostPart`).

About 1,050 lines: every change here reads and writes the same few tables under the same
rules (one transaction, its events, the replica's ids), so they stay side by side — the
desk's refunds and the fees given back beside the charges they undo, the no-show walk
beside the outcomes it reads; the grant intents, the peers' events, occupancy, what a
lost ledger held (lost_part.py) and what the gate repairs once it learns what it did not
know (repairs.py), which have tables or a question of their own, are not.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from rules.decide import ZonePresence
from rules.model import Booking, Direction, Gate, Policy
from rules.model import Site as SiteModel
from rules.reasons import Reason
from rules.schedule import NoShowHorizon, WorkKind, due_work, no_show_fee
from rules.tap import Tap
from rules.timeutil import iso_utc, local_date, start_of_local_day
from sync.errors import StoreError
from sync.store import (
    desk_requests,
    evacuation,
    history_recheck,
    numbering,
    own_history,
    peer_events,
    refunds_wanted,
    repairs,
    unconfirmed,
    unrecorded_exits,
)
from sync.store.desk_requests import DeskRequest
from sync.store.lost_part import LostPart
from sync.store.outbox import Event
from sync.store.replica import Replica
from sync.store.rows import BOOKING_READ, booking_from_row, dt, ts
from sync.store.transaction import Committed, Transaction, Transactions

CURSOR_KEY = "due.no_show_through"
# a ledger put back from a copy (sync/store/sent_mark.py): the instant of the last event it
# had sent; what fell due by then may have been settled in the part that was lost
RESTORED_KEY = "ledger.restored_at"
# no-shows of bookings that ended at or before this (POSIX seconds) are not this daemon's:
# its first run's `now` less `no_show_after`, when it began the site's time-driven work
FROM_KEY = "due.no_show_from"
# written while this daemon does not do the site's time-driven work (Ledger.leave_no_shows)
LEFT_KEY = "due.left"
# where its cursor was when it left the work (POSIX seconds): what it had settled, said in its
# heartbeat, so that the daemon that takes the work on begins there (docs/protocol.md 1.6)
LEFT_THROUGH_KEY = "due.left_through"
# a daemon that takes the work on from another's word begins at most this far before its own
# first run's due time: as far back as it asks a daemon of the site it first hears for events
HANDOVER_LIMIT = timedelta(days=1)
FEES_UNSURE_KEY = own_history.FEES_UNSURE_KEY
# written once the no-shows held for a lost part that never came back were named for a person
UNSURE_NAMED_KEY = "due.unsure_named"
CURSOR_IDLE = timedelta(minutes=10)
# an attended booking the replica never held (heard from another daemon) waits this long for
# its copy before its points are settled without credit (Ledger._loyalty_due)
OUTCOME_WAIT = timedelta(days=2)
# a no-show names at most this many of the member's unconfirmed grants (one is the usual)
UNCONFIRMED_NAMED = 10
_BOOKINGS = "replica.bookings b LEFT JOIN main.booking_outcomes o ON o.booking_id = b.id"
# our no-show fees not given back, of bookings attended after all (the deduction aliased `d`)
_ATTENDED_FEES = (
    "FROM main.deductions d JOIN main.booking_outcomes o ON o.booking_id = d.booking_id AND o.outcome = 'attended' "
    "WHERE d.cause = 'no_show_fee' AND d.refunded_by IS NULL"
)


HEARD_KEPT = 1000  # members told of lately, before the old ones are dropped
HEARD_FOR = timedelta(minutes=10)


def amount_json(d: Decimal) -> int | float:
    """Amounts travel as JSON numbers: whole numbers as integers."""
    return int(d) if d == d.to_integral_value() else float(d)


@dataclass(frozen=True, slots=True)
class StampMarks:
    """The last row of each table a clock correction moves, as a run began (Ledger.stamp_marks)."""

    passages: int
    seq: int
    unconfirmed: int


class Ledger:
    def __init__(
        self, conn: sqlite3.Connection, transactions: Transactions, replica: Replica, site: SiteModel,
        daemon_id: str = "gate",
    ):
        self.conn = conn
        self.transactions = transactions
        self.replica = replica
        self.site = site
        self.daemon_id = daemon_id
        # a QR code's first use is an event the site's other daemons hear (the daemon sets
        # it when it shares with them; scenarios keep their events as the contract says)
        self.site_wide_qr = False
        # the gates' rules (the link sets them): the taps decided while the history of the
        # day was missing are decided again by them (recheck_gap); a gate not here stands
        self.gates: dict[str, Gate] = {}
        # members whose entries or attendances another daemon's events told lately: when
        # recorded (the daemon's clock) and the bookings it let them in on; and when its
        # last fire alarm was. A charge of theirs decided before and committed after (the
        # member in the turnstile) is rechecked at its commit, nobody else's
        self._heard: dict[str, tuple[datetime, dict[str, datetime]]] = {}
        self._heard_fire: datetime | None = None
        self._collisions_said: set[tuple[str, int, float]] = set()  # numbering_collision, once a run each

    # -- the steps a commit is made of (inside a transaction) -----------------------------

    def deduct(
        self,
        tx: Transaction,
        now: datetime,
        *,
        pass_id: str,
        member_id: str | None,
        amount: Decimal,
        booking_id: str | None,
        cause: str,
        zone: str | None,
        gate: str | None,
        refunded_seq: int | None = None,
        refunds: dict[str, Any] | None = None,
        because: str | None = None,
    ) -> Event:
        balance = self.replica.balance(pass_id)  # derived: central - our deductions since
        after = balance - amount if balance is not None else None
        fields: dict[str, Any] = {
            "member": member_id,
            "pass": pass_id,
            "amount": amount_json(amount),
            "booking": booking_id,
            "cause": cause,
        }
        if gate:
            fields = {"gate": gate, **fields}
        if after is not None:
            fields["balance"] = amount_json(after)
        if refunds is not None:
            fields["refunds"] = refunds  # which charge (daemon, seq): refunded once, site-wide
        if because is not None:
            fields["because"] = because  # a refund the gate gave by itself: why (rules.recheck.Why)
        event = tx.emit("deduction", now, **fields)
        self.conn.execute(
            "INSERT INTO deductions(seq, pass_id, member_id, booking_id, amount, cause, zone, at, refunded_by) "
            "VALUES (?,?,?,?,?,?,?,?,NULL)",
            (event["seq"], pass_id, member_id, booking_id, str(amount), cause, zone, ts(now)),
        )
        if refunded_seq is not None:
            self.conn.execute("UPDATE deductions SET refunded_by = ? WHERE seq = ?", (event["seq"], refunded_seq))
        return event

    def attend(
        self, tx: Transaction, now: datetime, booking: Booking, by: str, gate: str | None, *, refund: bool = False,
    ) -> None:
        self._attended(booking, now)
        self._attendance_event(tx, now, booking, by, gate, refund=refund)

    def _attended(self, booking: Booking, now: datetime) -> None:
        self.conn.execute(
            "INSERT INTO main.booking_outcomes(booking_id, outcome, attended_at, loyalty_settled) "
            "VALUES (?, 'attended', ?, 0) ON CONFLICT(booking_id) DO UPDATE SET outcome = 'attended', "
            "attended_at = excluded.attended_at, "
            # a no-show marked attended by staff earns its points after all
            "loyalty_settled = CASE WHEN booking_outcomes.outcome = 'attended' THEN booking_outcomes.loyalty_settled "
            "ELSE 0 END",
            (booking.id, ts(now)),
        )

    def _attendance_event(
        self, tx: Transaction, now: datetime, booking: Booking, by: str, gate: str | None, *, refund: bool = False,
    ) -> None:
        fields: dict[str, Any] = {"member": booking.member, "booking": booking.id, "status": "attended", "by": by}
        if gate:
            fields = {"gate": gate, **fields}
        if refund:
            fields["refund"] = True
        tx.emit("attendance", now, **fields)

    def first_record(self, tx: Transaction, tap: Tap, now: datetime) -> bool:
        """What the transaction that first records a tap does besides: its QR code is used
        up (whatever the decision: a code read once is spent). A grant is first recorded
        by its intent (sync/store/intents.py), anything else by its commit. False when the code
        was used up meanwhile (the caller refuses the grant)."""
        if tap.qr_token is None:
            return True
        return self.use_qr_token(tx, now, tap.qr_token, tap.gate.id, tap.decision.member)

    def use_qr_token(self, tx: Transaction, now: datetime, token: tuple[str, datetime], gate: str,
                     member: str | None) -> bool:
        """Use up a QR token (on its first verified read, whatever the decision). False
        when it was used already — here, or at another daemon of the site (sync/store/peer_events.py).
        With `site_wide_qr`, a first use is also a `qr_used` event: the site's other
        daemons hear it within milliseconds and refuse the token (`qr_replayed`)."""
        first = self.conn.execute(
            "INSERT OR IGNORE INTO qr_used(token_id, expires_at) VALUES (?, ?)", (token[0], ts(token[1]))
        ).rowcount == 1
        if first and self.site_wide_qr:
            tx.emit("qr_used", now, gate=gate, member=member, token=token[0], expires=iso_utc(token[1]))
        return first

    def unconfirmed_grant(self, fields: dict[str, Any], zone: str | None) -> None:
        """Inside the transaction of its `passage_unconfirmed` event: one of our grants whose
        passage nobody saw, kept for the no-show fee (sync/store/unconfirmed.py)."""
        unconfirmed.record(self.conn, self.daemon_id, fields, zone)

    def record_passage(
        self, member_id: str | None, zone: str, direction: Direction, now: datetime, gate: str, origin: str = "local"
    ) -> None:
        self.conn.execute(
            "INSERT INTO passages(member_id, zone, direction, at, gate, origin) VALUES (?,?,?,?,?,?)",
            (member_id, zone, direction.value, ts(now), gate, origin),
        )

    # -- commits --------------------------------------------------------------------------

    def commit_tap(
        self, tap: Tap, *, passed: bool, now: datetime, unconfirmed: str | None = None,
        request: DeskRequest | None = None,
    ) -> Committed:
        """One tap, whole: the access event, and on a confirmed passage the deduction,
        attendance and presence. No passage, no deduction, no attendance. The grant's
        intent (sync/store/intents.py, which used up its QR token) is resolved in the same
        transaction: with `unconfirmed` (why nobody could see the passage), as a
        `passage_unconfirmed` event beside the access event — both or neither, as after a
        crash. `request`: the desk's check-in this tap is (sync/store/desk_requests.py),
        done with a grant — the gate opened — and forgotten with a denial (nothing done)."""
        gate, decision, intent = tap.gate, tap.decision, tap.intent
        with self.transactions.open() as tx:
            held = None
            if intent is not None:
                if unconfirmed is not None:
                    held = self.conn.execute("SELECT body FROM grant_intents WHERE id = ?", (intent,)).fetchone()
                self.conn.execute("DELETE FROM grant_intents WHERE id = ?", (intent,))
            else:
                self.first_record(tx, tap, now)
            went_through = decision.granted and passed
            access: dict[str, Any] = {
                "gate": gate.id,
                "member": decision.member,
                "decision": "granted" if decision.granted else "denied",
                "reason": decision.reason.value,
                "booking": decision.booking,
                "pass": decision.pass_id,
                "credential": tap.credential.kind.value,
            }
            if decision.granted:
                access["passed"] = passed
            if decision.anti_passback is not None:
                access["anti_passback"] = decision.anti_passback
            if tap.qr_token is not None:  # its single use, known again should this ledger be lost
                access["token"] = tap.qr_token[0]
            if tap.message:
                access["message"] = tap.message
            access.update(tap.event_detail())
            access_event = tx.emit("access", now, **access)
            if held is not None:
                fields = unconfirmed_fields(json.loads(held[0]))
                tx.emit("passage_unconfirmed", now, **fields, because=unconfirmed)
                # the member may be through: their no-show is not fined (sync/store/unconfirmed.py)
                self.unconfirmed_grant(fields, gate.zone)
            if went_through:
                if decision.amount and decision.pass_id:
                    self.deduct(
                        tx,
                        now,
                        pass_id=decision.pass_id,
                        member_id=decision.member,
                        amount=decision.amount,
                        booking_id=decision.booking,
                        cause=decision.cause or decision.reason.value,
                        zone=gate.zone,
                        gate=gate.id,
                    )
                    # another daemon's charge heard while the member was passing
                    self.check_overdraft(tx, decision.pass_id, now)
                if decision.attends_booking and decision.booking:
                    booking = self.replica.get_booking(decision.booking)
                    if booking is not None:
                        self.attend(tx, now, booking, "gate", gate.id)
                direction = Direction.OUT if decision.reason == Reason.EXIT else Direction.IN
                self.record_passage(decision.member, gate.zone, direction, now, gate.id)
            late = self._heard_while(decision.member, tap.decided_at) if went_through and decision.amount else None
            if late is not None and decision.member is not None:
                # another daemon's events recorded while the member was in the turnstile: what
                # they say was not known when this charge was decided (repairs.recheck_heard)
                repairs.recheck_charges(self, tx, now, {decision.member: tap.decided_at - timedelta(seconds=1)}, late)
            if intent is not None and tap.intent_at is not None:
                repairs.recheck_at_commit(self, tx, now, intent, tap.intent_at, int(access_event["seq"]))
            if request is not None:
                if decision.granted:
                    desk_requests.done(self.conn, request, tx.committed.events, now)
                else:
                    desk_requests.forget(self.conn, request)
        return tx.committed

    def commit_override(
        self, gate: Gate, operator: str, reason: str, now: datetime, *, passed: bool = True,
        request: DeskRequest | None = None,
    ) -> Committed:
        """The desk opened a gate once (`request`: its request, begun before the pulse, done
        here)."""
        with self.transactions.open() as tx:
            tx.emit(
                "access",
                now,
                gate=gate.id,
                member=None,
                decision="granted",
                reason=Reason.OVERRIDE.value,
                booking=None,
                credential=None,
                passed=passed,
                operator=operator,
                **{"pass": None},
            )
            tx.emit("override", now, gate=gate.id, operator=operator, reason=reason)
            if passed and gate.direction == Direction.IN:
                self.record_passage(None, gate.zone, Direction.IN, now, gate.id)
            tx.audit(now, operator, "override", {"gate": gate.id, "reason": reason})
            if request is not None:
                desk_requests.done(self.conn, request, tx.committed.events, now)
        return tx.committed

    def mark_attended(
        self, booking_id: str, operator: str, *, refund: bool, now: datetime, waiting: Sequence[str] = (),
        request: DeskRequest | None = None,
    ) -> Committed:
        """Staff say the member was there. A no-show fee this daemon took for the booking
        stands (keep_no_show_fees). With refund, give back the extra walk-in
        credit they paid that day in the class's zone (SPORTRICK's early-arrival case).
        `waiting`: the daemons whose events are not all in up to now (gated/knowledge.py).
        While any is, the refund is not decided here but asked for again as they come
        (sync/store/refunds_wanted.py): a charge not found may be on its way, and one
        found may already have been given back there. `request`: the desk's, done in the
        same transaction (sync/store/desk_requests.py)."""
        booking = self.replica.get_booking(booking_id)
        if booking is None:
            raise StoreError(f"unknown booking {booking_id!r}")
        with self.transactions.open() as tx:
            # the events in the contract's order: the deductions, then the attendance (a refund
            # may reach the site's other daemons before the request it settles:
            # peer_events.apply keeps the request settled whichever comes first)
            self._attended(booking, now)
            self.keep_no_show_fees([(booking.member, booking.id)])
            if refund:
                # the charge may have been taken at another turnstile of the site (another
                # daemon): sync/store/peer_events.py keeps the site's walk-in charges and refunds
                start, end = self._class_day(booking)
                if waiting:
                    refunds_wanted.want(self.conn, refunds_wanted.RefundWanted(
                        booking.id, booking.member, booking.zone, start, end, now, operator, tuple(waiting)))
                else:
                    charge = self._charge_for(booking.member, booking.zone, start, end, now)
                    if charge is not None:
                        self._refund(tx, now, booking, charge)
            self._attendance_event(tx, now, booking, operator, None, refund=refund)
            tx.audit(now, operator, "mark_attended", {"booking": booking_id, "refund": refund})
            if request is not None:
                desk_requests.done(self.conn, request, tx.committed.events, now)
        return tx.committed

    def _charge_for(self, member: str, zone: str, start: datetime, end: datetime, asked_at: datetime) -> peer_events.Charge | None:
        """The walk-in a refund asked for at `asked_at` gives back: the member's latest of
        that day and zone taken before it and not given back — after the requests other
        daemons' desks made before it (by time, then daemon id) have each taken theirs.
        Every daemon orders them alike, so two desks asking for one walk-in within
        seconds of each other (two classes of the member's day) do not both give it back;
        a request not given yet that found nothing takes nothing here either (everyone is
        heard up to ours, so up to it: the same charges)."""
        taken: set[tuple[str, int]] = set()
        for ask in peer_events.refund_asks_before(self.conn, member, self.daemon_id, asked_at):
            other = self.replica.get_booking(ask.booking_id)
            if other is None:
                continue
            s, e = self._class_day(other)
            for c in peer_events.walk_in_charges(self.conn, self.daemon_id, member, other.zone, s, e, ask.at):
                if (c.daemon, c.seq) not in taken:
                    taken.add((c.daemon, c.seq))
                    break
        for c in peer_events.walk_in_charges(self.conn, self.daemon_id, member, zone, start, end, asked_at):
            if (c.daemon, c.seq) not in taken:
                return c
        return None

    def _class_day(self, booking: Booking) -> tuple[datetime, datetime]:
        day = local_date(booking.starts_at, self.site.timezone)
        return start_of_local_day(day, self.site.timezone), start_of_local_day(day + timedelta(days=1), self.site.timezone)

    def _refund(self, tx: Transaction, now: datetime, booking: Booking, charge: peer_events.Charge) -> None:
        refund = self.deduct(
            tx,
            now,
            pass_id=charge.pass_id,
            member_id=booking.member,
            amount=-charge.amount,
            booking_id=booking.id,
            cause="refund",
            zone=booking.zone,
            gate=None,
            refunded_seq=charge.seq if charge.own else None,
            refunds={"daemon": charge.daemon, "seq": charge.seq},
        )
        peer_events.mark_refunded(self.conn, charge, (self.daemon_id, int(refund["seq"]), ts(now)))
        refunds_wanted.drop(self.conn, booking.id)

    def give_back_no_show_fees(self, tx: Transaction, now: datetime, bookings: Iterable[tuple[str, str]]) -> None:
        """Inside a transaction: the no-show fees this daemon took for these bookings
        (member, booking) that are attended after all — an attendance heard late from a
        daemon of the site the no-show was settled without (`unheard`), or staff marking a
        no-show attended — given back, each once: attended wins over a no-show, and the
        fee was for not coming. A refund naming the fee (`refunds`), as the desk's refund
        names a walk-in; a fee given back already (here, or by a refund heard) is not
        given back again, so a resend or a catch-up of the same attendance changes
        nothing. Only the daemon that took a fee gives it back: the others find none of
        theirs. Not while this daemon's own lost events are wanted, or its numbering held
        (a ledger put back, a new box): the lost part may have given it back already —
        decided when they are back (give_back_attended_fees). A fee the lost part may have
        given back, and that part never came back (FEES_UNSURE_KEY), is a `refund_unsettled`
        alarm for a person, once."""
        if own_history.wanted(self.conn) is not None or self._meta_float(numbering.HELD_KEY) is not None:
            return
        unsure = self._meta_float(FEES_UNSURE_KEY)
        for member, booking_id in bookings:
            fees = self.conn.execute(
                f"SELECT d.seq, d.pass_id, d.amount, d.at, d.zone {_ATTENDED_FEES} AND d.member_id = ? "
                "AND d.booking_id = ? AND NOT EXISTS (SELECT 1 FROM main.site_refunds r WHERE r.daemon = ? AND r.seq = d.seq)",
                (member, booking_id, self.daemon_id),
            ).fetchall()
            for seq, pass_id, amount, at, zone in fees:
                fee = peer_events.Charge(self.daemon_id, int(seq), str(pass_id), Decimal(amount), float(at), True)
                if unsure is not None and seq <= unsure:
                    # marked as given back by nobody: the alarm is raised once
                    self.conn.execute("INSERT OR IGNORE INTO main.site_refunds(daemon, seq) VALUES (?, ?)",
                                      (fee.daemon, fee.seq))
                    tx.emit("alarm", now, gate=None, kind="refund_unsettled", member=member,
                            detail=f"{member}'s no-show fee of {amount_json(fee.amount)} for booking {booking_id} "
                            f"(event {fee.seq}) is for a booking attended after all, but this gate's events that "
                            "may have given it back were lost with its old ledger: give it back by hand if they "
                            "did not")
                    continue
                refund = self.deduct(
                    tx, now, pass_id=fee.pass_id, member_id=member, amount=-fee.amount, booking_id=booking_id,
                    cause="refund", zone=zone, gate=None, refunded_seq=fee.seq,
                    refunds={"daemon": fee.daemon, "seq": fee.seq, "cause": "no_show_fee"},
                )
                peer_events.mark_refunded(self.conn, fee, (self.daemon_id, int(refund["seq"]), ts(now)))

    def keep_no_show_fees(self, bookings: Iterable[tuple[str, str]]) -> None:
        """Inside a transaction: the no-show fees this daemon took for these bookings
        (member, booking), which staff marked attended, stand — and are never given back by
        the gate afterwards (a row in site_refunds naming no refund: settled by a person, as
        the fees left to one in give_back_no_show_fees). The contract's mark_attended gives
        back a walk-in charge and nothing else (SCENARIOS.md, "Steps"); the fee stands in for
        the class the booking was to pay at the gate, which nothing else took. A gate's
        attendance heard late is another matter: the member was on site, and the fee
        should never have been taken (give_back_no_show_fees)."""
        for member, booking_id in bookings:
            self.conn.execute(
                "INSERT OR IGNORE INTO main.site_refunds(daemon, seq) SELECT ?, d.seq FROM main.deductions d "
                "WHERE d.cause = 'no_show_fee' AND d.refunded_by IS NULL AND d.member_id = ? AND d.booking_id = ?",
                (self.daemon_id, member, booking_id),
            )

    def give_back_attended_fees(self, tx: Transaction, now: datetime) -> None:
        """Inside a transaction: every fee of ours for a booking attended, not given back —
        once what a lost ledger held is back (or known never to come), the attendances heard
        meanwhile (give_back_no_show_fees waited) are acted on."""
        back = self.conn.execute(
            f"SELECT DISTINCT d.member_id, d.booking_id {_ATTENDED_FEES} AND d.member_id IS NOT NULL"
        ).fetchall()
        self.give_back_no_show_fees(tx, now, [(str(m), str(b)) for m, b in back])

    def settle_refunds(
        self, now: datetime, waiting: Callable[[datetime], list[str]], *, give_up: bool = True,
    ) -> Committed:
        """The refunds the desk asked for that wait to hear the site. Once every daemon is
        heard up to the request: its charge is given back, or (none) it is dropped; after
        refunds_wanted.GIVE_UP, or with its booking gone, an alarm for a person.
        `waiting(instant)`: the daemons not heard up to it. `give_up`: whether `now` may
        end a wait (the clock's time of day is confirmed, rules/clock.py): a clock hours
        ahead must not drop a request early; the rest does not depend on the time."""
        due = [w for w in refunds_wanted.wanted(self.conn)
               if self._refund_outcome(w, now, waiting, give_up)[0] is not None]
        if not due:
            return Committed()  # nothing new: no transaction
        with self.transactions.open() as tx:
            for w in due:
                # decided again in the transaction: a request settled before it in this one
                # may have taken the charge (one walk-in, two classes of that day)
                outcome, booking, charge, unheard = self._refund_outcome(w, now, waiting, give_up)
                if outcome is None:
                    continue
                if outcome == "waiting":
                    refunds_wanted.still_waiting(self.conn, w.booking_id, unheard)
                elif outcome == "refund_unsettled":
                    refunds_wanted.drop(self.conn, w.booking_id)
                    self._unsettled(tx, now, w, "its booking is gone" if booking is None
                                    else f"not heard: {', '.join(unheard)}", unheard)
                elif booking is not None and charge is not None:  # refund_settled
                    self._refund(tx, now, booking, charge)  # drops the request too
                    tx.audit(now, w.operator, outcome, {**self._asked(w), "refunds": [charge.daemon, charge.seq]})
                else:  # refund_none
                    refunds_wanted.drop(self.conn, w.booking_id)
                    tx.audit(now, w.operator, outcome, {**self._asked(w), "heard": list(w.waiting)})
        return tx.committed

    @staticmethod
    def _asked(w: refunds_wanted.RefundWanted) -> dict[str, Any]:
        """A waiting request in the audit's words."""
        return {"booking": w.booking_id, "member": w.member_id, "asked_at": iso_utc(w.asked_at)}

    def _unsettled(self, tx: Transaction, now: datetime, w: refunds_wanted.RefundWanted, why: str,
                   unheard: list[str]) -> None:
        """A waiting refund given up on (its request already dropped): an alarm and the audit."""
        tx.emit("alarm", now, gate=None, kind="refund_unsettled",
                detail=f"the refund of {w.member_id}'s walk-in the desk asked for with booking "
                       f"{w.booking_id} at {iso_utc(w.asked_at)} was not settled ({why}): "
                       "check the member's charges of that day by hand")
        tx.audit(now, w.operator, "refund_unsettled", {**self._asked(w), "waiting": unheard})

    def _refund_outcome(
        self, w: refunds_wanted.RefundWanted, now: datetime, waiting: Callable[[datetime], list[str]],
        give_up: bool = True,
    ) -> tuple[str | None, Booking | None, peer_events.Charge | None, list[str]]:
        """What to do with a waiting request now: `refund_settled` / `refund_none` once
        everyone is heard up to it, `refund_unsettled`, `waiting` (who it waits for
        changed), or None (nothing new)."""
        booking = self.replica.get_booking(w.booking_id)
        unheard = waiting(w.asked_at)
        if booking is not None and not unheard:
            charge = self._charge_for(w.member_id, w.zone, w.day_start, w.day_end, w.asked_at)
            return ("refund_none" if charge is None else "refund_settled"), booking, charge, unheard
        if booking is None or (give_up and now - w.asked_at >= refunds_wanted.GIVE_UP):
            return "refund_unsettled", booking, None, unheard
        if tuple(unheard) != w.waiting:
            return "waiting", booking, None, unheard
        return None, booking, None, unheard

    def adjust_points(
        self, member_id: str, points: int, operator: str, reason: str, now: datetime, request: DeskRequest | None = None,
    ) -> Committed:
        with self.transactions.open() as tx:
            ev = tx.emit("loyalty", now, member=member_id, points=points, reason=reason, operator=operator)
            self.conn.execute(
                "INSERT INTO loyalty(member_id, points, booking_id, reason, operator, at, seq) VALUES (?,?,?,?,?,?,?)",
                (member_id, points, None, reason, operator, ts(now), ev["seq"]),
            )
            tx.audit(now, operator, "adjust_points", {"member": member_id, "points": points, "reason": reason})
            if request is not None:
                desk_requests.done(self.conn, request, tx.committed.events, now)
        return tx.committed

    # -- around a sync of the replica ------------------------------------------------------

    def recheck_late(self, bookings: Iterable[tuple[str, float]]) -> None:
        """Before a sync writes the replica: the bookings (id, ends_at) it brings in
        behind the no-show cursor are listed for the next run (a crash after this leaves
        a harmless extra check, never a booking the walk has passed)."""
        cursor = self.cursor()
        if cursor is None:
            return
        began = self._meta_float(FROM_KEY)  # before it, not this daemon's to settle (run_due)
        late = [
            (bid,)
            for bid, ends_at in bookings
            if ends_at <= cursor and (began is None or ends_at > began)
            and self.conn.execute("SELECT 1 FROM main.booking_outcomes WHERE booking_id = ?", (bid,)).fetchone() is None
        ]
        if late:
            with self.transactions.open():
                self.conn.executemany("INSERT OR IGNORE INTO main.due_recheck(booking_id) VALUES (?)", late)

    def forget_outcomes(self, booking_ids: Iterable[str]) -> None:
        """After a sync removed these bookings from the replica: their outcomes go — the
        only way the table sheds rows (the retention keeps them: a booking the replica
        still lists would be walked again for a no-show); a crash before this leaves an
        outcome nobody reads. A *cancelled* booking keeps its outcome: reads ignore it while
        the booking is cancelled (rows.booking_from_row, the `bookings` view; its loyalty is
        settled without credit), and should the central system book it again — an undone
        cancellation — it is still attended or a no-show, never walked, settled and fined a
        second time (its no-show's fee is in the ledger already)."""
        ids = list(booking_ids)
        found = [
            (r[0],)
            for i in range(0, len(ids), 500)
            for r in self.conn.execute(
                f"SELECT booking_id FROM main.booking_outcomes WHERE booking_id IN ({','.join('?' * len(ids[i:i + 500]))})",
                ids[i : i + 500],
            )
        ]
        if found:
            with self.transactions.open():
                self.conn.executemany("DELETE FROM main.booking_outcomes WHERE booking_id = ?", found)

    # -- the site's other daemons ---------------------------------------------------------

    def record_peer_events(
        self, sender: str, events: list[dict[str, Any]], zones: dict[str, str],
        mark: tuple[int | None, float | None] | None = None, now: datetime | None = None,
    ) -> dict[str, int]:
        """What another daemon of the site did (sync/store/peer_events.py), and how far it is now
        heard (`mark`), in one transaction: the mark never gets ahead of what it covers."""
        with self.transactions.open() as tx:
            doubles: list[peer_events.DoubleRefund] = []
            collisions: list[peer_events.Collision] = []
            since: dict[str, datetime] = {}  # member -> the earliest of their entries heard now

            def record(member: str | None, zone: str, direction: Direction, at: datetime, gate: str,
                       origin: str = "local") -> None:
                self.record_passage(member, zone, direction, at, gate, origin)
                if member is not None and direction == Direction.IN and (member not in since or at < since[member]):
                    since[member] = at

            seen = dict(peer_events.apply(self.conn, sender, events, zones, record, doubles, collisions))
            if mark is not None:
                peer_events.save_mark(self.conn, sender, *mark)
            at_gate, by_staff = peer_events.attendances(events)
            self.keep_no_show_fees(by_staff)
            if at_gate:  # a no-show of ours one of them attended after all
                self.give_back_no_show_fees(tx, now or datetime.now(UTC), at_gate)
            h = repairs.heard(since, events)
            if h.since or h.evacuated is not None:
                self._note_heard(h, now or datetime.now(UTC))
                if self.gates:
                    found = repairs.recheck_heard(self, tx, now or datetime.now(UTC), h)
                    if found:
                        seen["charges_given_back"] = found
            charged = {str(e["pass"]) for e in events if e.get("type") == "deduction" and e.get("pass")}
            for pass_id in sorted(charged):
                self.check_overdraft(tx, pass_id, now or datetime.now(UTC))
            for double in doubles:
                self.report_double_refund(tx, double, now or datetime.now(UTC))
            self.report_collisions(tx, sender, collisions, now or datetime.now(UTC))
        return seen

    def _note_heard(self, h: repairs.Heard, recorded: datetime) -> None:
        """What a peer's batch told, kept a while for the charges under way (commit_tap)."""
        for member in h.since:
            _, before = self._heard.get(member, (recorded, {}))
            self._heard[member] = (recorded, {**before, **h.attended.get(member, {})})
        if h.evacuated is not None:
            self._heard_fire = recorded
        if len(self._heard) > HEARD_KEPT:  # a turnstile holds a member seconds, not minutes
            self._heard = {m: v for m, v in self._heard.items() if v[0] >= recorded - HEARD_FOR}

    def _heard_while(self, member: str | None, decided: datetime) -> dict[str, datetime] | None:
        """The bookings a peer let `member` in on, if a peer's events about them (or a fire
        alarm) were recorded after `decided`; None when nothing was."""
        told = self._heard.get(member) if member is not None else None
        if told is not None and told[0] > decided:
            return told[1]
        if self._heard_fire is not None and self._heard_fire > decided:
            return {}
        return None

    def report_collisions(self, tx: Transaction, sender: str, collisions: list[peer_events.Collision],
                          now: datetime) -> None:
        """Inside a transaction: charges of `sender` under seqs held here for other charges
        (sync/store/peer_events.py, Collision) — an alarm `numbering_collision`, once a run
        for each, never a repeat dropped in silence."""
        new = [c for c in collisions if (c.daemon, c.seq, c.at) not in self._collisions_said]
        if not new:
            return
        self._collisions_said.update((c.daemon, c.seq, c.at) for c in new)
        seqs = sorted({c.seq for c in new})
        first = new[0]
        tx.emit(
            "alarm", now, gate=None, kind="numbering_collision", other=sender, seqs=seqs[:100],
            detail=f"{sender}'s event(s) {', '.join(map(str, seqs[:10]))} came under numbers held here for other "
                   f"events of {sender} (a new box that numbered on below what this daemon heard of the old one, "
                   f"or two daemons configured with one id): not recorded here — e.g. {first.member}'s charge of "
                   f"{amount_json(first.amount)} on pass {first.pass_id} at "
                   f"{iso_utc(datetime.fromtimestamp(first.at, UTC))}; the pass's balance here lacks it",
        )

    def report_double_refund(self, tx: Transaction, d: peer_events.DoubleRefund, now: datetime) -> None:
        """Inside a transaction: a charge given back twice, one of the refunds ours, is an
        `alarm` (kind `double_refund`) for the central system and the desk. Raised by each
        daemon whose refund it is, when it hears of the other: a daemon of an older version
        (the usual cause) says nothing, so the other must."""
        if all(r[0] != self.daemon_id for r in d.refunds) and d.refunds[0][0] != d.refunds[1][0]:
            return  # two other daemons' refunds: theirs to report (one daemon's two: it cannot see
            # the first, lost with its old ledger — whoever hears both says so)
        (first, _, first_at), (second, _, second_at) = d.refunds
        tx.emit(
            "alarm", now, gate=None, kind="double_refund", member=d.member,
            detail=f"{d.member}'s charge of {amount_json(d.amount)} on pass {d.pass_id} (event "
                   f"{d.charge[1]} of {d.charge[0]}) was given back twice: by {first} at "
                   f"{iso_utc(datetime.fromtimestamp(first_at, UTC))} and by {second} at "
                   f"{iso_utc(datetime.fromtimestamp(second_at, UTC))}; take one refund back by hand",
            charges=[{"daemon": d.charge[0], "seq": d.charge[1]}],
            refunds=[{"daemon": r[0], "seq": r[1]} for r in d.refunds],
            **{"pass": d.pass_id},
        )

    def record_own_history(
        self, wanted: own_history.Wanted, events: list[dict[str, Any]], zones: dict[str, str], done: bool,
        *, expired: bool = False, now: datetime | None = None,
    ) -> dict[str, int]:
        """Our own events the ledger lost, from the central system (sync/store/own_history.py),
        in one transaction; `done`: the last of them, nothing more is wanted. `expired`:
        they never came — a refund the desk asked for that waited for them is not
        "nothing charged" but a `refund_unsettled` alarm for a person."""
        with self.transactions.open() as tx:
            # still wanted: the recheck below is this transaction's, once (a second answer after
            # it, from the central system or a caller holding the old range, rechecks nothing)
            still = own_history.wanted(self.conn) is not None
            seen = dict(own_history.record(self.conn, self.daemon_id, wanted, events, zones, self.record_passage))
            # a fee of ours for a booking our lost desk marked attended stood there: it stands
            self.keep_no_show_fees(peer_events.attendances(events)[1])
            if expired:  # what they may have given back is not known: for a person
                unsure = max(wanted.to_seq, int(self._meta_float(FEES_UNSURE_KEY) or 0))
                tx.set_meta(FEES_UNSURE_KEY, str(unsure))
            if done:
                own_history.done(tx.delete_meta)
                # what was decided without them, decided again now that the day is known:
                # in this transaction, so once (rules.recheck, sync/store/history_recheck.py)
                if still and not expired:  # never back whole: what is known may be half the day
                    seen.update(repairs.recheck_gap(self, tx, now or datetime.now(UTC), wanted))
                    # grants decided without them whose members are still in the turnstile:
                    # rechecked at their commit (sync/store/history_recheck.py)
                    grants = history_recheck.open_grants(self.conn)
                    if grants:
                        tx.set_meta(own_history.LATE_KEY, history_recheck.late_json(wanted, grants))
                # fees of ours for bookings attended: given back now if the lost part did not
                self.give_back_attended_fees(tx, now or datetime.now(UTC))
            if expired:
                # the no-shows they held are settled without them, naming this daemon
                tx.set_meta(own_history.GIVEN_UP_KEY,
                            repr(ts(LostPart.found(wanted, self._meta_float(RESTORED_KEY)))))
                at = now or datetime.now(UTC)
                for w in refunds_wanted.wanted(self.conn):
                    if self.daemon_id in w.waiting:
                        refunds_wanted.drop(self.conn, w.booking_id)
                        self._unsettled(tx, at, w, f"this gate's own events from before {iso_utc(wanted.since)} "
                                        "never came back from the central system", [self.daemon_id])
        return seen

    def check_overdraft(self, tx: Transaction, pass_id: str, now: datetime) -> None:
        """Inside a transaction: a pass that charges of this daemon and another's took below
        zero is an `alarm` (kind `overdraft`) for the central system and the desk —
        reported by the daemon whose charge went below (sync/store/peer_events.py, `overdraft`)."""
        o = peer_events.overdraft(self.conn, self.daemon_id, pass_id)
        if o is None:
            return
        peer_events.report_overdraft(self.conn, o)
        row = self.conn.execute("SELECT member_id FROM replica.passes WHERE id = ?", (pass_id,)).fetchone()
        tx.emit(
            "alarm", now, gate=None, kind="overdraft", member=row[0] if row else None,
            detail=f"pass {pass_id} charged below zero by two turnstiles at once (balance {o.balance})",
            balance=amount_json(o.balance), charges=[{"daemon": d, "seq": s} for d, s in o.charges],
            **{"pass": pass_id},
        )

    def save_peer_mark(self, peer: str, heard_seq: int | None, heard_through: float | None) -> None:
        with self.transactions.open():
            peer_events.save_mark(self.conn, peer, heard_seq, heard_through)

    def peer_marks(self) -> dict[str, tuple[int | None, float | None]]:
        return peer_events.marks(self.conn)

    # -- time-driven work -------------------------------------------------------------------

    def cursor(self) -> float | None:
        """Every open booking that ended at or before this (POSIX seconds) is settled."""
        return self._meta_float(CURSOR_KEY)

    def leave_no_shows(self) -> None:
        """This daemon does not do the site's time-driven work (another does, or none): its
        cursor and where it began go, so that should the work come back to it, it begins
        afresh (run_due) — not from a cursor left days ago, which would settle every class
        since that the daemon doing the work settled, as far as this one has not heard of
        them — and not as a ledger put back that did the work when it was lost."""
        if self._meta_float(LEFT_KEY) is not None:
            return
        cursor = self.cursor()
        with self.transactions.open() as tx:
            if cursor is not None:  # said in the heartbeat: the next daemon begins there
                tx.set_meta(LEFT_THROUGH_KEY, repr(cursor))
            tx.delete_meta(CURSOR_KEY)
            tx.delete_meta(FROM_KEY)
            tx.set_meta(LEFT_KEY, "1")

    def work_claim(self) -> tuple[float | None, float | None]:
        """What this daemon says of the site's time-driven work in its heartbeat (POSIX
        seconds): where it began it (None: it does not do it now), and how far it has
        settled — its cursor, or where the cursor was when it left the work."""
        if self._meta_float(LEFT_KEY) is not None:
            return None, self._meta_float(LEFT_THROUGH_KEY)
        cursor, began = self.cursor(), self._meta_float(FROM_KEY)
        if began is None:  # a ledger from before FROM_KEY that does the work: its cursor
            began = cursor
        return began, cursor if cursor is not None else began

    def _meta_float(self, key: str) -> float | None:
        row = self.conn.execute("SELECT value FROM main.meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else float(row[0])

    def run_due(
        self, policy: Policy, now: datetime, horizon: NoShowHorizon | None = None,
        unheard: Callable[[datetime], list[str]] | None = None, settled_by_site: datetime | None = None,
    ) -> Committed:
        """No-shows and loyalty credits due up to and including `now`, each exactly once.
        `horizon` (rules.schedule.no_show_horizon): how far no-shows may be settled now
        (default: every booking `no_show_after` past its end); `unheard(ends_at)`: the
        site's daemons not heard past that instant, named in a no-show settled without
        them. Two bounds of the ledger's own narrow it further: the classes that ended
        before this daemon began the site's time-driven work are not its to settle
        (FROM_KEY), and while its own lost events are wanted, it is itself a daemon not
        heard (LostPart). `settled_by_site`: how far the daemon that did the work before
        had settled, as its heartbeat said (gated/knowledge.py) — at the first run, where
        this one begins instead of its own due time (the classes that fell due between
        the two were settled by neither), never more than HANDOVER_LIMIT before it."""
        horizon = horizon or NoShowHorizon(now - policy.no_show_after)
        through = ts(horizon.ends_by)
        cursor = self.cursor()
        began = self._meta_float(FROM_KEY)
        restored = self._meta_float(RESTORED_KEY)
        # the walk's lower bound: the cursor; without one (a snapshot switch can take it
        # back, sync/store/attach.py) where this daemon began; at its first run, `now`
        # less `no_show_after` — what fell due before it did the site's time-driven work
        # was the daemon's that did it then (settled again: a member fined twice, or one
        # who came through a turnstile this daemon has not heard from so far back; the
        # horizon, which an unheard peer holds back, is no measure of it). Except on a
        # ledger put back or a box replaced (RESTORED_KEY) that had not left the work
        # (LEFT_KEY): this daemon did it before, and what fell due since is walked to be
        # named for a person (_unsure_after_restore), not passed in silence.
        first_run = cursor is None and began is None
        ours = restored is not None and self._meta_float(LEFT_KEY) is None
        start = ts(now - policy.no_show_after)
        if settled_by_site is not None:  # the previous worker's word: from there, a day back at most
            start = max(ts(settled_by_site), ts(now - policy.no_show_after - HANDOVER_LIMIT))
        floor = began if began is not None else (start if first_run and not ours else None)
        lower = cursor if cursor is not None else floor
        c = self.conn
        open_rows: list[tuple[Any, ...]] = []
        if lower is None or through > lower:
            bound = "" if lower is None else "AND b.ends_at > ? "
            open_rows = c.execute(
                f"SELECT {BOOKING_READ} FROM {_BOOKINGS} WHERE b.status = 'booked' {bound}AND b.ends_at <= ? "
                "AND o.booking_id IS NULL ORDER BY b.ends_at, b.id",
                (through,) if lower is None else (lower, through),
            ).fetchall()
        # bookings a sync brought in behind the cursor, the ones the horizon reaches (a
        # class the site's other daemons are not heard past yet stays listed), and the
        # ones to drop: whose booking is gone, or ended before this daemon began the work
        rechecks = [
            (r[0], r[1] is not None and r[1] <= through, r[1] is None or (floor is not None and r[1] <= floor))
            for r in c.execute(
                "SELECT x.booking_id, b.ends_at FROM main.due_recheck x LEFT JOIN replica.bookings b ON b.id = x.booking_id"
            )
        ]
        rechecks = [r for r in rechecks if r[1] or r[2]]
        if any(due and not drop for _, due, drop in rechecks):
            seen = {r[0] for r in open_rows}
            open_rows += [
                r for r in c.execute(
                    f"SELECT {BOOKING_READ} FROM main.due_recheck x JOIN replica.bookings b ON b.id = x.booking_id "
                    "LEFT JOIN main.booking_outcomes o ON o.booking_id = b.id "
                    "WHERE b.status = 'booked' AND b.ends_at <= ? AND b.ends_at > ? AND o.booking_id IS NULL",
                    (through, floor if floor is not None else float("-inf")),
                )
                if r[0] not in seen
            ]
        # the classes this daemon's own lost events may bear on wait for them, listed for a
        # recheck at every run (the walk goes on past them: the next day's classes do not)
        lost = LostPart.of(c, self.site, policy, now, restored)
        bookings = [booking_from_row(r) for r in open_rows]
        history = _History.of(c, now)
        # and, while the lost events are wanted, the no-shows that fell due before the restore
        held = {b.id for b in bookings if (lost is not None and lost.holds(b))
                or (history.wanted and restored is not None and ts(b.ends_at + policy.no_show_after) <= restored)}
        credit, settle = self._loyalty_due(policy, now)
        no_shows, unsure_no_shows, credit, unsure_credits = self._unsure_after_restore(
            [b for b in bookings if b.id not in held], credit, policy, history.back)
        settle += [b.id for b in unsure_credits]
        work = due_work(no_shows, credit, policy, now)
        rechecked = {r[0] for r in rechecks}
        # the cursor is written with work, or every CURSOR_IDLE of clock (else a quiet
        # day's attended bookings would be walked again at every run)
        move = cursor is None or through - cursor >= CURSOR_IDLE.total_seconds()
        if not work and not settle and not (rechecked ^ held) and not move:
            return Committed()
        with self.transactions.open() as tx:
            # named once: when the walk passes them (a sync that lists them again for a
            # recheck, at every snapshot, drops them quietly)
            # — and those held for the lost events that never came back, once
            named = [b for b in unsure_no_shows if b.id not in rechecked or (history.given_up and not history.named)]
            if named or unsure_credits:
                tx.emit("alarm", now, gate=None, kind="ledger_restored", detail=_unsure_detail(named, unsure_credits))
                if history.given_up:
                    tx.set_meta(UNSURE_NAMED_KEY, "1")
            for item in work:
                b = item.booking
                if item.kind == WorkKind.NO_SHOW:
                    missing = unheard(b.ends_at) if horizon.forced and unheard is not None else []
                    if lost is not None and lost.unheard(b) and self.daemon_id not in missing:
                        missing = [*missing, self.daemon_id]
                    self._no_show(tx, b, policy, now, missing)
                else:
                    ev = tx.emit("loyalty", now, member=b.member, points=b.loyalty_points, booking=b.id)
                    c.execute(
                        "INSERT INTO loyalty(member_id, points, booking_id, reason, operator, at, seq) VALUES (?,?,?,?,?,?,?)",
                        (b.member, b.loyalty_points, b.id, None, None, ts(now), ev["seq"]),
                    )
                    c.execute("UPDATE main.booking_outcomes SET loyalty_settled = 1 WHERE booking_id = ?", (b.id,))
            c.executemany(
                "UPDATE main.booking_outcomes SET loyalty_settled = 1 WHERE booking_id = ?", ((i,) for i in settle)
            )
            c.executemany("DELETE FROM main.due_recheck WHERE booking_id = ?", ((i,) for i in rechecked - held))
            c.executemany("INSERT OR IGNORE INTO main.due_recheck(booking_id) VALUES (?)", ((i,) for i in held))
            walked = through if lower is None else max(through, lower)
            if cursor is None or walked > cursor:
                tx.set_meta(CURSOR_KEY, repr(walked))
            if first_run and floor is not None:  # where this daemon began (none after a restore)
                tx.set_meta(FROM_KEY, repr(floor))
            if first_run:
                tx.delete_meta(LEFT_KEY)
                tx.delete_meta(LEFT_THROUGH_KEY)
            c.execute("DELETE FROM qr_used WHERE expires_at < ?", (ts(now - timedelta(hours=1)),))
        return tx.committed

    def _unsure_after_restore(
        self, no_shows: list[Booking], credit: list[Booking], policy: Policy, history_back: bool,
    ) -> tuple[list[Booking], list[Booking], list[Booking], list[Booking]]:
        """After the ledger was put back from a copy (or the box replaced), a no-show or a
        loyalty credit that fell due by the instant of the last event sent before
        (RESTORED_KEY) may have been settled in the part that was lost: settling it again
        could fine a member twice, or one who came. Once the lost part is back from the
        central system whole (`history_back`: what it holds of this daemon is in the
        ledger again, and nothing of it was heard only by the site's other daemons), a
        no-show is known settled or not — a no-show of the lost part the central system
        does not hold never reached it, and the one settled now is the only one it gets —
        so only then are those no-shows settled as usual (until then they wait, held in
        run_due). Otherwise, and always for a loyalty credit (the lost part's credits are
        not put back: crediting again would credit twice), they are left to a person (the
        alarm names them). Returns (no-shows to settle, unsure ones, credits to make,
        unsure ones)."""
        row = self.conn.execute("SELECT value FROM main.meta WHERE key = ?", (RESTORED_KEY,)).fetchone()
        if row is None:
            return no_shows, [], credit, []
        restored = datetime.fromtimestamp(float(row[0]), UTC)
        def after(bs: list[Booking], delay: timedelta) -> tuple[list[Booking], list[Booking]]:
            return [b for b in bs if b.ends_at + delay > restored], [b for b in bs if b.ends_at + delay <= restored]

        sure, unsure = (no_shows, []) if history_back else after(no_shows, policy.no_show_after)
        sure_credit, unsure_credit = after(credit, policy.loyalty_delay)
        return sure, unsure, sure_credit, unsure_credit

    def _loyalty_due(self, policy: Policy, now: datetime) -> tuple[list[Booking], list[str]]:
        """Attended bookings whose points fall due (to credit), and those to settle
        without credit: no points, cancelled by then, or never in the replica for
        OUTCOME_WAIT after the attendance. A booking the replica does not hold is not gone:
        a booking the central system removes takes its outcome with it (forget_outcomes, a
        snapshot's switch_clear). It is one another daemon attended before this one's copy
        came: a delta on its way, or a new box whose replica is not in yet while it hears
        the site's catch-up. Its points wait for it."""
        rows = self.conn.execute(
            "SELECT o.booking_id, b.id, b.member_id, b.pass_id, b.class_name, b.zone, b.starts_at, b.ends_at, "
            "b.status, o.outcome, b.deducted, b.cost, b.loyalty_points, o.attended_at FROM main.booking_outcomes o "
            "LEFT JOIN replica.bookings b ON b.id = o.booking_id WHERE o.outcome = 'attended' AND o.loyalty_settled = 0"
        ).fetchall()
        due = ts(now - policy.loyalty_delay)
        credit: list[Booking] = []
        settle: list[str] = []
        for r in rows:
            if r[1] is None:
                if r[13] is None or float(r[13]) <= ts(now - OUTCOME_WAIT):
                    settle.append(r[0])
            elif r[7] <= due:
                # cancelled when its points fall due: none. Not before — a cancellation the
                # central system undoes before then leaves the booking attended, owed its points
                if r[12] and r[8] != "cancelled":
                    credit.append(booking_from_row(r[1:]))
                else:
                    settle.append(r[0])
        return credit, settle

    def _no_show(self, tx: Transaction, b: Booking, policy: Policy, now: datetime, unheard: list[str]) -> None:
        self.conn.execute(
            "INSERT INTO main.booking_outcomes(booking_id, outcome, attended_at, loyalty_settled) "
            "VALUES (?, 'no_show', NULL, 1) ON CONFLICT(booking_id) DO UPDATE SET outcome = 'no_show'",
            (b.id,),
        )
        p = self.replica.get_pass(b.pass_id)
        fee = Decimal(0)
        day_start = start_of_local_day(local_date(b.starts_at, self.site.timezone), self.site.timezone)
        # entries that day whose passage nobody saw (here or at another daemon of the site):
        # the member may have been on site, or in this very class
        maybe = unconfirmed.for_booking(self.conn, b.member, b.zone, b.id, day_start, b.ends_at)
        if policy.no_show_fee > 0 and p is not None:
            on_site = bool(maybe) or self.conn.execute(
                "SELECT 1 FROM passages WHERE member_id = ? AND zone = ? AND direction = 'in' AND at >= ? AND at < ? LIMIT 1",
                (b.member, b.zone, ts(day_start), ts(b.ends_at)),
            ).fetchone() is not None
            fee = no_show_fee(b, p, policy, on_site, evacuation.spans_of(self.conn))
        if fee > 0:
            self.deduct(
                tx, now, pass_id=b.pass_id, member_id=b.member, amount=fee, booking_id=b.id,
                cause="no_show_fee", zone=b.zone, gate=None,
            )
        extra: dict[str, Any] = {"unheard": unheard} if unheard else {}
        if maybe:  # for the person who settles those grants: mark it attended if the member came
            extra["unconfirmed"] = [u.as_json() for u in maybe[:UNCONFIRMED_NAMED]]
        tx.emit("attendance", now, member=b.member, booking=b.id, status="no_show", by="gate", **extra)

    # -- the gate's own reads -----------------------------------------------------------------

    def points(self, member_id: str) -> int:
        row = self.conn.execute("SELECT COALESCE(SUM(points), 0) FROM loyalty WHERE member_id = ?", (member_id,)).fetchone()
        return int(row[0])

    def clamp_own_passages(self, now: datetime) -> int:
        """NTP stepped the clock back to `now` (gated/daemon.py): this daemon's passages
        stamped after it were stamped by the clock that was ahead — left there, a member's
        entry would stay "the last passage" after she went out, and her re-entry grace
        would not have begun. They are brought back to `now`, in their order (ties are
        read by id); their events, sent as stamped, are left as they are. How many moved."""
        with self.transactions.open():
            cur = self.conn.execute("UPDATE passages SET at = ? WHERE origin = 'local' AND at > ?",
                                    (ts(now), ts(now)))
        return int(cur.rowcount)

    def stamp_marks(self) -> StampMarks:
        """Where this run's rows begin: what a correction of the clock may move (a previous
        run's rows were stamped on another run's anchored time, by an offset not known)."""
        def top(sql: str) -> int:
            return int(self.conn.execute(sql).fetchone()[0] or 0)

        return StampMarks(
            passages=top("SELECT max(id) FROM passages"),
            seq=top("SELECT max(seq) FROM events"),
            unconfirmed=top("SELECT max(rowid) FROM unconfirmed_grants"),
        )

    def correct_stamps(self, since: datetime, delta: float, marks: StampMarks) -> dict[str, int]:
        """The clock was trusted again `delta` seconds off the time this gate acted at
        since `since` (gated/clock.py `Correction`): what this run stamped since then — its
        passages, charges and grants whose passage nobody saw — is moved by it, to
        when it happened (the attendance times it keeps for the desk stay: the site's other
        daemons' are in the same table). Its events keep the time they were sent with. How
        many of each."""
        s = ts(since) - 0.001
        moved: dict[str, int] = {}
        with self.transactions.open():
            for name, sql, args in (
                ("passages", "UPDATE passages SET at = at + ? WHERE origin = 'local' AND id > ? AND at >= ?",
                 (delta, marks.passages, s)),
                ("charges", "UPDATE deductions SET at = at + ? WHERE seq > ? AND at >= ?", (delta, marks.seq, s)),
                ("unconfirmed", "UPDATE OR IGNORE unconfirmed_grants SET at = at + ? "
                 "WHERE daemon = ? AND rowid > ? AND at >= ?", (delta, self.daemon_id, marks.unconfirmed, s)),
            ):
                moved[name] = int(self.conn.execute(sql, args).rowcount)
        return moved

    def zone_presence(self, member_id: str, zone: str) -> ZonePresence:
        last = self.conn.execute(
            "SELECT at, direction FROM passages WHERE member_id = ? AND zone = ? ORDER BY at DESC, id DESC LIMIT 1",
            (member_id, zone),
        ).fetchone()
        if last is None:
            return ZonePresence()
        # the site's last evacuation and the zone's exits let out unrecorded read with it:
        # only a visit can be cut short by one, or ended unseen by the other
        entry = self.conn.execute(
            f"SELECT at, {evacuation.SELECT}, (SELECT value FROM main.meta WHERE key = ?) FROM passages "
            "WHERE member_id = ? AND zone = ? AND direction = 'in' ORDER BY at DESC, id DESC LIMIT 1",
            (unrecorded_exits.key(zone), member_id, zone),
        ).fetchone()
        return ZonePresence(
            last_at=dt(last[0]),
            last_direction=Direction(last[1]),
            last_entry_at=dt(entry[0]) if entry else None,
            evacuated_at=evacuation.parse(entry[1]) if entry else None,
            exit_unrecorded_at=unrecorded_exits.last_at(entry[2]) if entry else None,
        )

    def qr_seen(self, token_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM qr_used WHERE token_id = ?", (token_id,)).fetchone() is not None


@dataclass(frozen=True, slots=True)
class _History:
    """Where the lost part of this daemon's ledger stands, for the no-shows that fell due
    before it was put back (Ledger._unsure_after_restore)."""

    wanted: bool  # asked for from the central system, not back yet: they wait
    given_up: bool  # never came back, or only the site's other daemons heard some of it
    named: bool  # those that waited for it were named for a person already

    @property
    def back(self) -> bool:
        return not self.wanted and not self.given_up

    @classmethod
    def of(cls, conn: sqlite3.Connection, now: datetime) -> _History:
        named = conn.execute("SELECT 1 FROM main.meta WHERE key = ?", (UNSURE_NAMED_KEY,)).fetchone() is not None
        wanted = own_history.wanted(conn)
        waiting = wanted is not None and now < wanted.expires  # past it, given up (as LostPart.of)
        gone = own_history.given_up(conn) is not None or (wanted is not None and not waiting)
        return cls(waiting, gone, named)


def unconfirmed_fields(intent: dict[str, Any]) -> dict[str, Any]:
    """A grant intent's fields as its `passage_unconfirmed` event says them."""
    fields = {k: v for k, v in intent.items() if k not in ("id", "zone")}  # the gate's zone: ours alone
    fields["not_deducted"] = fields.pop("amount", 0)
    return fields


def _unsure_detail(no_shows: list[Booking], credits: list[Booking], most: int = 10) -> str:
    def some(bs: list[Booking]) -> str:
        names = ", ".join(f"{b.id} ({b.member})" for b in bs[:most])
        return names + (f" and {len(bs) - most} more" if len(bs) > most else "")

    parts = []
    if no_shows:
        parts.append(f"{len(no_shows)} no-show(s) not settled: {some(no_shows)}")
    if credits:
        parts.append(f"{len(credits)} loyalty credit(s) not made: {some(credits)}")
    return ("due before the ledger was put back from a copy, they may have been settled in the part that was "
            "lost (the central system has what it received): " + "; ".join(parts))
