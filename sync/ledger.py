"""The ledger: what happened at this gate, each change with the events that report it in
one transaction — taps (access, deduction, attendance, passage), overrides, attendance
marked by staff with refunds, loyalty points, and the time-driven work (no-shows,
loyalty credits). Also the gate's own reads of it: presence in a zone, points, used QR
tokens.

A deduction's event carries the balance it left; the pass's local balance moves with it
in the same transaction (see sync/replica.py for how a sync recomputes it).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from rules.credential import CredentialKind
from rules.decide import Decision, ZonePresence
from rules.model import Booking, Direction, Gate, Policy
from rules.model import Site as SiteModel
from rules.reasons import Reason
from rules.schedule import WorkKind, due_work, no_show_fee
from rules.timeutil import local_date, start_of_local_day
from sync.errors import StoreError
from sync.outbox import Event
from sync.replica import Replica
from sync.rows import BOOKING_READ, booking_from_row, dt, ts
from sync.transaction import Committed, Transaction, Transactions


def amount_json(d: Decimal) -> int | float:
    """Amounts travel as JSON numbers: whole numbers as integers."""
    return int(d) if d == d.to_integral_value() else float(d)


class Ledger:
    def __init__(self, conn: sqlite3.Connection, transactions: Transactions, replica: Replica, site: SiteModel):
        self.conn = conn
        self.transactions = transactions
        self.replica = replica
        self.site = site

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
    ) -> Event:
        balance = self.replica.balance(pass_id)
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
        event = tx.emit("deduction", now, **fields)
        self.conn.execute(
            "INSERT INTO deductions(seq, pass_id, member_id, booking_id, amount, cause, zone, at, refunded_by) "
            "VALUES (?,?,?,?,?,?,?,?,NULL)",
            (event["seq"], pass_id, member_id, booking_id, str(amount), cause, zone, ts(now)),
        )
        if refunded_seq is not None:
            self.conn.execute("UPDATE deductions SET refunded_by = ? WHERE seq = ?", (event["seq"], refunded_seq))
        if after is not None:
            self.replica.set_balance(pass_id, after)
        return event

    def attend(self, tx: Transaction, now: datetime, booking: Booking, by: str, gate: str | None) -> None:
        self.conn.execute(
            "UPDATE bookings SET outcome = 'attended', attended_at = ? WHERE id = ?", (ts(now), booking.id)
        )
        fields: dict[str, Any] = {"member": booking.member, "booking": booking.id, "status": "attended", "by": by}
        if gate:
            fields = {"gate": gate, **fields}
        tx.emit("attendance", now, **fields)

    def record_passage(
        self, member_id: str | None, zone: str, direction: Direction, now: datetime, gate: str, origin: str = "local"
    ) -> None:
        self.conn.execute(
            "INSERT INTO passages(member_id, zone, direction, at, gate, origin) VALUES (?,?,?,?,?,?)",
            (member_id, zone, direction.value, ts(now), gate, origin),
        )

    # -- commits --------------------------------------------------------------------------

    def commit_tap(
        self,
        gate: Gate,
        decision: Decision,
        *,
        credential: CredentialKind,
        passed: bool,
        now: datetime,
        qr_token: tuple[str, datetime] | None = None,
        message: str | None = None,
        extra: dict[str, Any] | None = None,
        intent: int | None = None,
    ) -> Committed:
        """One tap, whole: the access event, and on a confirmed passage the deduction,
        attendance and presence. No passage, no deduction, no attendance. `intent`, the
        grant's intent (sync/intents.py), is resolved in the same transaction."""
        with self.transactions.open() as tx:
            if intent is not None:
                self.conn.execute("DELETE FROM grant_intents WHERE id = ?", (intent,))
            if qr_token is not None:
                # used up on its first verified read, whatever the decision
                self.conn.execute(
                    "INSERT OR IGNORE INTO qr_used(token_id, expires_at) VALUES (?, ?)",
                    (qr_token[0], ts(qr_token[1])),
                )
            went_through = decision.granted and passed
            access: dict[str, Any] = {
                "gate": gate.id,
                "member": decision.member,
                "decision": "granted" if decision.granted else "denied",
                "reason": decision.reason.value,
                "booking": decision.booking,
                "pass": decision.pass_id,
                "credential": credential.value,
            }
            if decision.granted:
                access["passed"] = passed
            if decision.anti_passback is not None:
                access["anti_passback"] = decision.anti_passback
            if message:
                access["message"] = message
            if extra:
                access.update(extra)
            tx.emit("access", now, **access)
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
                if decision.attends_booking and decision.booking:
                    booking = self.replica.get_booking(decision.booking)
                    if booking is not None:
                        self.attend(tx, now, booking, "gate", gate.id)
                direction = Direction.OUT if decision.reason == Reason.EXIT else Direction.IN
                self.record_passage(decision.member, gate.zone, direction, now, gate.id)
        return tx.committed

    def commit_override(self, gate: Gate, operator: str, reason: str, now: datetime, *, passed: bool = True) -> Committed:
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
        return tx.committed

    def mark_attended(self, booking_id: str, operator: str, *, refund: bool, now: datetime) -> Committed:
        """Staff say the member was there. With refund, give back the extra walk-in
        credit they paid that day in the class's zone (SPORTRICK's early-arrival case)."""
        booking = self.replica.get_booking(booking_id)
        if booking is None:
            raise StoreError(f"unknown booking {booking_id!r}")
        with self.transactions.open() as tx:
            if refund:
                day = local_date(booking.starts_at, self.site.timezone)
                start = start_of_local_day(day, self.site.timezone)
                end = start_of_local_day(day + timedelta(days=1), self.site.timezone)
                charge = self.conn.execute(
                    "SELECT seq, pass_id, amount FROM deductions WHERE member_id = ? AND cause = 'walk_in' "
                    "AND zone = ? AND at >= ? AND at < ? AND at < ? AND refunded_by IS NULL "
                    "ORDER BY at DESC, seq DESC LIMIT 1",
                    (booking.member, booking.zone, ts(start), ts(end), ts(now)),
                ).fetchone()
                if charge is not None:
                    self.deduct(
                        tx,
                        now,
                        pass_id=charge[1],
                        member_id=booking.member,
                        amount=-Decimal(charge[2]),
                        booking_id=booking.id,
                        cause="refund",
                        zone=booking.zone,
                        gate=None,
                        refunded_seq=charge[0],
                    )
            self.attend(tx, now, booking, operator, None)
            tx.audit(now, operator, "mark_attended", {"booking": booking_id, "refund": refund})
        return tx.committed

    def adjust_points(self, member_id: str, points: int, operator: str, reason: str, now: datetime) -> Committed:
        with self.transactions.open() as tx:
            ev = tx.emit("loyalty", now, member=member_id, points=points, reason=reason, operator=operator)
            self.conn.execute(
                "INSERT INTO loyalty(member_id, points, booking_id, reason, operator, at, seq) VALUES (?,?,?,?,?,?,?)",
                (member_id, points, None, reason, operator, ts(now), ev["seq"]),
            )
            tx.audit(now, operator, "adjust_points", {"member": member_id, "points": points, "reason": reason})
        return tx.committed

    def record_remote_passage(
        self, member_id: str, zone: str, direction: Direction, at: datetime, gate: str, origin: str
    ) -> None:
        """Another daemon of the site let this member through (site-wide anti-passback)."""
        with self.transactions.open():
            self.record_passage(member_id, zone, direction, at, gate, origin)

    # -- time-driven work -------------------------------------------------------------------

    def run_due(self, policy: Policy, now: datetime) -> Committed:
        """No-shows and loyalty credits due up to and including `now`, each exactly once."""
        ts_no_show = ts(now - policy.no_show_after)
        ts_loyalty = ts(now - policy.loyalty_delay)
        open_rows = self.conn.execute(
            f"SELECT {BOOKING_READ} FROM bookings WHERE outcome IS NULL AND status = 'booked' AND ends_at <= ?",
            (ts_no_show,),
        ).fetchall()
        credit_rows = self.conn.execute(
            f"SELECT {BOOKING_READ} FROM bookings WHERE outcome = 'attended' AND loyalty_credited = 0 "
            "AND loyalty_points > 0 AND ends_at <= ?",
            (ts_loyalty,),
        ).fetchall()
        if not open_rows and not credit_rows:
            return Committed()
        work = due_work(
            [booking_from_row(r) for r in open_rows], [booking_from_row(r) for r in credit_rows], policy, now
        )
        with self.transactions.open() as tx:
            for item in work:
                b = item.booking
                if item.kind == WorkKind.NO_SHOW:
                    self._no_show(tx, b, policy, now)
                else:
                    ev = tx.emit("loyalty", now, member=b.member, points=b.loyalty_points, booking=b.id)
                    self.conn.execute(
                        "INSERT INTO loyalty(member_id, points, booking_id, reason, operator, at, seq) VALUES (?,?,?,?,?,?,?)",
                        (b.member, b.loyalty_points, b.id, None, None, ts(now), ev["seq"]),
                    )
                    self.conn.execute("UPDATE bookings SET loyalty_credited = 1 WHERE id = ?", (b.id,))
            self.conn.execute("DELETE FROM qr_used WHERE expires_at < ?", (ts(now - timedelta(hours=1)),))
        return tx.committed

    def _no_show(self, tx: Transaction, b: Booking, policy: Policy, now: datetime) -> None:
        self.conn.execute("UPDATE bookings SET outcome = 'no_show' WHERE id = ?", (b.id,))
        p = self.replica.get_pass(b.pass_id)
        fee = Decimal(0)
        if policy.no_show_fee > 0 and p is not None:
            day = local_date(b.starts_at, self.site.timezone)
            on_site = self.conn.execute(
                "SELECT 1 FROM passages WHERE member_id = ? AND zone = ? AND direction = 'in' AND at >= ? AND at < ? LIMIT 1",
                (b.member, b.zone, ts(start_of_local_day(day, self.site.timezone)), ts(b.ends_at)),
            ).fetchone()
            fee = no_show_fee(b, p, policy, on_site is not None)
        if fee > 0:
            self.deduct(
                tx, now, pass_id=b.pass_id, member_id=b.member, amount=fee, booking_id=b.id,
                cause="no_show_fee", zone=b.zone, gate=None,
            )
        tx.emit("attendance", now, member=b.member, booking=b.id, status="no_show", by="gate")

    # -- the gate's own reads -----------------------------------------------------------------

    def points(self, member_id: str) -> int:
        row = self.conn.execute("SELECT COALESCE(SUM(points), 0) FROM loyalty WHERE member_id = ?", (member_id,)).fetchone()
        return int(row[0])

    def zone_presence(self, member_id: str, zone: str) -> ZonePresence:
        last = self.conn.execute(
            "SELECT at, direction FROM passages WHERE member_id = ? AND zone = ? ORDER BY at DESC, id DESC LIMIT 1",
            (member_id, zone),
        ).fetchone()
        if last is None:
            return ZonePresence()
        entry = self.conn.execute(
            "SELECT at FROM passages WHERE member_id = ? AND zone = ? AND direction = 'in' ORDER BY at DESC LIMIT 1",
            (member_id, zone),
        ).fetchone()
        return ZonePresence(
            last_at=dt(last[0]),
            last_direction=Direction(last[1]),
            last_entry_at=dt(entry[0]) if entry else None,
        )

    def qr_seen(self, token_id: str) -> bool:
        return self.conn.execute("SELECT 1 FROM qr_used WHERE token_id = ?", (token_id,)).fetchone() is not None

