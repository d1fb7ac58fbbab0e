"""The site's other daemons, as this daemon learns of them from their events (MQTT
`{prefix}/{site}/+/events` and their answers to catch-up requests, docs/protocol.md): who
went in or out (site-wide anti-passback, occupancy, the no-show fee's "on site" test), the
booking outcomes they recorded, their charges and the refunds anyone gave, the QR codes
they used up, their grants whose passage nobody saw (sync/store/unconfirmed.py) — and how
far each of them is heard (`peer_marks`, sync/link/peer_marks.py), written in the same
transaction as what was heard.

Why each matters on a site whose gates are separate daemons (one per turnstile):
- a booking attended at another turnstile is not matched again here (a second entry in
  its arrival window is a re-entry, not a second use of the booking), and the daemon
  doing the site's time-driven work does not make it a no-show (nor charge its fee) —
  nor fine the no-show of a member another turnstile may have let in unseen
  (`passage_unconfirmed`);
- the desk refunds the walk-in charge a member paid at *any* turnstile of the site
  (SPORTRICK's early arrival), once, whichever daemon took it;
- a pass charged at another turnstile and not yet applied by the central system (it may
  be unreachable) is charged here too: its local balance is the central balance minus
  every daemon's charges the central had not applied (the `applied` map, per daemon);
- a QR code used at one turnstile is used at all of them;
- a fire alarm or an emergency release at one daemon evacuates the whole site: nobody's
  earlier entry counts as inside anywhere (sync/store/evacuation.py);
- exits one of them let out unrecorded (a storage fault) leave who is inside its zone
  unknown here too (sync/store/unrecorded_exits.py).

Nothing here emits an event: each charge or refund is counted at the central system
once, from the daemon that made it.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from rules.model import Direction
from rules.timeutil import parse_instant_once
from sync.records import MAX_INT, check_amount_range
from sync.store import evacuation, unconfirmed, unrecorded_exits
from sync.store.rows import ts

_UTC = ZoneInfo("UTC")



def _record_unrecorded_exits(conn: sqlite3.Connection, sender: str, ev: Mapping[str, Any], zones: Mapping[str, str]) -> bool:
    gates = ev.get("gates")
    if not isinstance(gates, dict) or len(gates) > 1000:
        return False
    try:
        first = parse_instant_once(str(ev.get("since")), _UTC)
        last = parse_instant_once(str(ev.get("until")), _UTC)
    except ValueError:
        return False
    counts = {str(g): n for g, n in gates.items() if isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_INT}
    return unrecorded_exits.record(conn, sender, counts, zones, first, last) > 0


def create_tables_v8(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS peer_marks (daemon TEXT PRIMARY KEY, heard_seq INTEGER, heard_through REAL)")
    # charges of ours that took a pass below zero with another daemon's, reported once
    conn.execute("CREATE TABLE IF NOT EXISTS overdrafts (seq INTEGER PRIMARY KEY, pass_id TEXT NOT NULL)")
    conn.execute("ALTER TABLE site_charges ADD COLUMN cause TEXT NOT NULL DEFAULT 'walk_in'")
    conn.execute("CREATE INDEX IF NOT EXISTS site_charges_pass ON site_charges(pass_id)")


def create_tables(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS site_charges (daemon TEXT NOT NULL, seq INTEGER NOT NULL, pass_id TEXT, "
        "member_id TEXT, amount TEXT, zone TEXT, at REAL, PRIMARY KEY (daemon, seq))"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS site_charges_member ON site_charges(member_id, at)")
    # charges (of any daemon, this one included) a refund event of any daemon gave back
    conn.execute(
        "CREATE TABLE IF NOT EXISTS site_refunds (daemon TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (daemon, seq))"
    )


def add_refund_givers(conn: sqlite3.Connection) -> None:
    """Which refund gave each charge back — its daemon, seq and instant (NULL in marks
    written before schema 13) — so that a second refund of the same charge is seen."""
    have = {str(r[1]) for r in conn.execute("PRAGMA main.table_info(site_refunds)")}
    for column in ("by_daemon TEXT", "by_seq INTEGER", "by_at REAL"):
        if column.split()[0] not in have:  # as every migration may be: run twice, the same
            conn.execute(f"ALTER TABLE site_refunds ADD COLUMN {column}")


def create_refund_asks(conn: sqlite3.Connection) -> None:
    """Refunds another daemon's desk asked for (its `attendance` with `refund`) and that
    daemon has not given yet: an earlier request takes the day's walk-in before a later
    one, whichever daemon settles it (Ledger's refunds)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS site_refund_asks (daemon TEXT NOT NULL, booking_id TEXT NOT NULL, "
        "member_id TEXT NOT NULL, at REAL NOT NULL, settled INTEGER NOT NULL DEFAULT 0, "
        "PRIMARY KEY (daemon, booking_id))"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS site_refund_asks_member ON site_refund_asks(member_id, at)")


@dataclass(frozen=True, slots=True)
class RefundAsk:
    daemon: str
    booking_id: str
    at: datetime


def refund_asks_before(conn: sqlite3.Connection, member: str, own_daemon: str, before: datetime) -> list[RefundAsk]:
    """Other daemons' refund requests for `member` not given yet that come before ours at
    `before` — by time, then daemon id — in that order."""
    rows = conn.execute(
        "SELECT daemon, booking_id, at FROM main.site_refund_asks WHERE member_id = ? AND settled = 0 "
        "AND (at < ? OR (at = ? AND daemon < ?)) ORDER BY at, daemon",
        (member, ts(before), ts(before), own_daemon),
    ).fetchall()
    return [RefundAsk(str(r[0]), str(r[1]), datetime.fromtimestamp(float(r[2]), _UTC)) for r in rows]


@dataclass(frozen=True, slots=True)
class Charge:
    """A walk-in charge of the site: which daemon took it (its event's seq), on what."""

    daemon: str
    seq: int
    pass_id: str
    amount: Decimal
    at: float
    own: bool


@dataclass(frozen=True, slots=True)
class DoubleRefund:
    """One charge given back by two refunds: the gym paid the member back twice. The
    desk's requests are taken in one order at every daemon (site_refund_asks), so this
    comes only from a daemon that did not take part in it: one of an older version (its
    requests carry no `refund`), or one left out of the site's configuration while it
    refunded. `refunds`: (daemon, seq, instant) of each, in the order (instant, daemon,
    seq); `amount`: the charge's."""

    charge: tuple[str, int]
    member: str
    pass_id: str
    amount: Decimal
    refunds: tuple[tuple[str, int, float], tuple[str, int, float]]


@dataclass(frozen=True, slots=True)
class ChargeFields:
    """A `deduction` event's fields, checked (sync/events.py has the body)."""

    member: str
    pass_id: str
    amount: Decimal
    cause: str
    booking: str | None
    refunds: tuple[str, int] | None  # a refund: the charge (daemon, seq) it gives back


@dataclass(frozen=True, slots=True)
class Collision:
    """Two different charges under one (daemon, seq): the one held here, and one heard
    now — a new box under that daemon id that numbered past what the site held of the
    old one, or two daemons configured with one id. The second is not recorded
    (site_charges keeps one per seq): its pass's balance here is off by it."""

    daemon: str
    seq: int
    held_at: float
    member: str
    pass_id: str
    amount: Decimal
    at: float


def _collision(conn: sqlite3.Connection, sender: str, seq: int, c: ChargeFields, at: float) -> Collision | None:
    """The charge held under (sender, seq), when it is not this one (a resend is the same
    in every field)."""
    row = conn.execute("SELECT pass_id, member_id, amount, at, cause FROM main.site_charges WHERE daemon = ? AND seq = ?",
                       (sender, seq)).fetchone()
    if row is None or row[3] is None:  # none, or written before `at` was kept: nothing to tell
        return None
    try:
        same = (row[0], row[1], Decimal(str(row[2])), float(row[3]), row[4]) == (c.pass_id, c.member, c.amount, at,
                                                                                  c.cause)
    except (InvalidOperation, TypeError, ValueError):
        same = False
    return None if same else Collision(sender, seq, float(row[3] or 0.0), c.member, c.pass_id, c.amount, at)


def charge_of(ev: Mapping[str, Any]) -> ChargeFields | None:
    """The charge a `deduction` event carries; None when a field is missing or out of bounds."""
    member, pass_id, booking = ev.get("member"), ev.get("pass"), ev.get("booking")
    try:
        amount = Decimal(str(ev.get("amount")))
        in_range = check_amount_range(amount) == amount
    except (InvalidOperation, ValueError):
        in_range = False
    cause = str(ev.get("cause") or "")
    if (not in_range or not isinstance(member, str) or not isinstance(pass_id, str) or len(member) > 200
            or len(pass_id) > 200 or len(cause) > 50 or not (booking is None or isinstance(booking, str))):
        return None
    ref = ev.get("refunds")
    refunds = None
    if cause == "refund" and isinstance(ref, Mapping) and isinstance(ref.get("daemon"), str) \
            and isinstance(ref.get("seq"), int) and 0 < ref["seq"] <= MAX_INT:
        refunds = (str(ref["daemon"]), int(ref["seq"]))
    return ChargeFields(member, pass_id, amount, cause, booking, refunds)


def apply(
    conn: sqlite3.Connection,
    sender: str,
    events: Sequence[Mapping[str, Any]],
    zones: Mapping[str, str],
    record_passage: Any,
    doubles: list[DoubleRefund] | None = None,
    collisions: list[Collision] | None = None,
) -> Counter[str]:
    """Inside a transaction: what `sender`'s events tell this daemon. `record_passage`
    is the ledger's (member, zone, direction, at, gate, origin); a refund of a charge
    that another refund had given back already goes into `doubles`; a charge under a seq
    of `sender` held here for another charge goes into `collisions` (not recorded)."""
    seen: Counter[str] = Counter()
    for ev in events:
        try:
            at = parse_instant_once(str(ev.get("at")), _UTC)  # unique: not for the cache
        except ValueError:
            seen["invalid"] += 1
            continue
        kind = ev.get("type")
        gate = ev.get("gate") if isinstance(ev.get("gate"), str) else None  # anything else names no gate
        member = ev.get("member")
        if kind == "access":
            if ev.get("decision") != "granted" or not ev.get("passed") or not member or gate not in zones:
                continue
            direction = Direction.OUT if ev.get("reason") == "exit" else Direction.IN
            zone = zones[str(gate)]
            if conn.execute(  # the same event again (a resend, a catch-up): recorded once
                "SELECT 1 FROM passages WHERE member_id = ? AND zone = ? AND at = ? AND gate = ? AND origin = ? LIMIT 1",
                (str(member), zone, ts(at), str(gate), sender),
            ).fetchone():
                continue
            record_passage(str(member), zone, direction, at, str(gate), sender)
            seen["remote_passages"] += 1
        elif kind == "attendance" and ev.get("booking") and ev.get("status") in ("attended", "no_show"):
            if _outcome(conn, str(ev["booking"]), str(ev["status"]), at):
                seen[f"remote_{ev['status']}"] += 1
            if ev.get("refund") is True and member:
                conn.execute(  # a repeat (a resend, a catch-up) keeps what is known of it
                    "INSERT OR IGNORE INTO main.site_refund_asks(daemon, booking_id, member_id, at) VALUES (?,?,?,?)",
                    (sender, str(ev["booking"]), str(member), ts(at)),
                )
        elif kind == "deduction" and member and ev.get("pass"):
            c = charge_of(ev)
            if c is None:
                seen["invalid"] += 1
                continue
            first_time = conn.execute(
                "INSERT OR IGNORE INTO site_charges(daemon, seq, pass_id, member_id, amount, zone, at, cause) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (sender, int(ev["seq"]), c.pass_id, c.member, str(c.amount), zones.get(str(gate)), ts(at), c.cause),
            ).rowcount
            if not first_time:
                held = _collision(conn, sender, int(ev["seq"]), c, ts(at))
                if held is not None:  # the rest goes on as for any charge heard (a refund it gives)
                    seen["peer_seq_collisions"] += 1
                    if collisions is not None:
                        collisions.append(held)
            seen["remote_charges"] += 1
            if c.refunds is not None:
                by = (sender, int(ev["seq"]), ts(at))
                double = _second_refund(conn, c, by) if first_time else None  # not a resend of the same
                if double is not None and doubles is not None:
                    doubles.append(double)
                conn.execute("INSERT OR IGNORE INTO site_refunds(daemon, seq, by_daemon, by_seq, by_at) "
                             "VALUES (?,?,?,?,?)", (*c.refunds, *by))
                seen["remote_refunds"] += 1
                # a no-show fee given back is no walk-in: its desk's request may still wait (the
                # refund says what it gave back; from an older version, the charge if heard)
                said = ev["refunds"].get("cause") if isinstance(ev.get("refunds"), Mapping) else None
                fee = said == "no_show_fee" or (said is None and conn.execute(
                    "SELECT 1 FROM main.site_charges WHERE daemon = ? AND seq = ? AND cause = 'no_show_fee'", c.refunds
                ).fetchone() is not None)
                if ev.get("booking") and not fee:  # its request, given: no longer ahead of anyone's
                    # the refund comes before its request's `attendance` in one desk action
                    # (SCENARIOS.md's order: deduction, then attendance): kept settled for it
                    conn.execute(
                        "INSERT INTO main.site_refund_asks(daemon, booking_id, member_id, at, settled) "
                        "VALUES (?,?,?,?,1) ON CONFLICT(daemon, booking_id) DO UPDATE SET settled = 1",
                        (sender, str(ev["booking"]), str(member), ts(at)))
        elif kind == "passage_unconfirmed":
            # their grant the member may have gone through: no no-show fee for it here
            if unconfirmed.record(conn, sender, ev, zones.get(gate) if gate else None):
                seen["remote_unconfirmed"] += 1
        elif kind == "fire_alarm" and ev.get("active") is True:
            # the site evacuated, whichever daemon saw it (sync/store/evacuation.py)
            if evacuation.record(conn, at):
                seen["remote_evacuations"] += 1
        elif kind == "fire_alarm" and ev.get("active") is False:
            if evacuation.record_end(conn, at):  # the earliest all-clear ends it
                seen["remote_all_clears"] += 1
        elif kind == "alarm" and ev.get("kind") == "exits_not_recorded":
            # its exits that opened unrecorded: who went out is not known here either
            if _record_unrecorded_exits(conn, sender, ev, zones):
                seen["remote_unrecorded_exits"] += 1
        elif kind == "alarm" and ev.get("kind") == "rotations_while_down" and ev.get("direction") == "out" and gate:
            # its exit turned while its daemon was down: people left, unrecorded (gated/while_down.py)
            if _record_unrecorded_exits(conn, sender, {**ev, "gates": {gate: ev.get("count")}}, zones):
                seen["remote_unrecorded_exits"] += 1
        elif kind == "qr_used" and isinstance(ev.get("token"), str) and len(ev["token"]) <= 200:
            try:
                expires = parse_instant_once(str(ev.get("expires")), _UTC)
            except ValueError:
                seen["invalid"] += 1
                continue
            conn.execute("INSERT OR IGNORE INTO qr_used(token_id, expires_at) VALUES (?, ?)", (ev["token"], ts(expires)))
            seen["remote_qr_used"] += 1
    return seen


def _second_refund(conn: sqlite3.Connection, c: ChargeFields, by: tuple[str, int, float]) -> DoubleRefund | None:
    """The refund `by` of a charge that a refund heard or given before had given back."""
    assert c.refunds is not None
    row = conn.execute(
        "SELECT by_daemon, by_seq, by_at FROM main.site_refunds WHERE daemon = ? AND seq = ?", c.refunds
    ).fetchone()
    if row is None or row[0] is None or (row[0], row[1]) == by[:2]:
        return None  # given back once so far (or by a mark that does not say by whom)
    first = (str(row[0]), int(row[1]), float(row[2] or 0))
    a, b = sorted((first, by), key=lambda r: (r[2], r[0], r[1]))
    return DoubleRefund(c.refunds, c.member, c.pass_id, -c.amount, (a, b))


def _outcome(conn: sqlite3.Connection, booking: str, status: str, at: datetime) -> int:
    """A booking's outcome recorded by another daemon. Attended wins over a no-show (staff
    may mark a no-show attended, never the other way); a cancellation here stands. An
    attended booking's loyalty is left to the daemon doing the site's time-driven work
    (as for one attended here); a no-show earns none. Kept for a booking the replica does
    not hold yet (a delta on its way, a booking the peer had from a look-up, a catch-up
    heard before the deltas after a restart): when it arrives, its outcome is here —
    else the booking would be matched, and charged, a second time."""
    return conn.execute(
        "INSERT INTO main.booking_outcomes(booking_id, outcome, attended_at, loyalty_settled) "
        "SELECT ?, ?, CASE WHEN ? = 'attended' THEN ? END, CASE WHEN ? = 'attended' THEN 0 ELSE 1 END "
        "WHERE NOT EXISTS (SELECT 1 FROM replica.bookings WHERE id = ? AND status != 'booked') "
        "ON CONFLICT(booking_id) DO UPDATE SET outcome = 'attended', attended_at = excluded.attended_at, "
        "loyalty_settled = 0 WHERE booking_outcomes.outcome = 'no_show' AND excluded.outcome = 'attended'",
        (booking, status, status, ts(at), status, booking),
    ).rowcount


def attendances(events: Iterable[Mapping[str, Any]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (member, booking) of the `attended` attendances among these events: those a gate
    recorded (the member was on site: a no-show fee taken without them goes back) and those
    staff marked (the fee stands: Ledger.keep_no_show_fees)."""
    at_gate: list[tuple[str, str]] = []
    by_staff: list[tuple[str, str]] = []
    for e in events:
        member, booking = e.get("member"), e.get("booking")
        if e.get("type") == "attendance" and e.get("status") == "attended" and isinstance(member, str) \
                and isinstance(booking, str):
            (at_gate if e.get("by") == "gate" else by_staff).append((member, booking))
    return at_gate, by_staff


def walk_in_charges(
    conn: sqlite3.Connection, own_daemon: str, member: str, zone: str, start: datetime, end: datetime,
    before: datetime,
) -> list[Charge]:
    """The member's walk-in charges in `zone` between `start` and `end`, at or before
    `before`, that nobody refunded yet — taken by this daemon or another of the site —
    latest first. At counts: a charge recorded at the instant the desk asks was there when
    it asked (a scenario's walk-in and mark_attended at one `at`, two steps in order)."""
    args = (member, zone, ts(start), ts(end), ts(before))
    own = conn.execute(
        "SELECT seq, pass_id, amount, at FROM deductions d WHERE member_id = ? AND cause = 'walk_in' AND zone = ? "
        "AND at >= ? AND at < ? AND at <= ? AND refunded_by IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM site_refunds r WHERE r.daemon = ? AND r.seq = d.seq)",
        (*args, own_daemon),
    ).fetchall()
    peer = conn.execute(
        "SELECT daemon, seq, pass_id, amount, at FROM site_charges c WHERE cause = 'walk_in' AND member_id = ? AND zone = ? "
        "AND at >= ? AND at < ? AND at <= ? "
        "AND NOT EXISTS (SELECT 1 FROM site_refunds r WHERE r.daemon = c.daemon AND r.seq = c.seq)",
        args,
    ).fetchall()
    found = [Charge(own_daemon, int(r[0]), str(r[1]), Decimal(r[2]), float(r[3]), True) for r in own]
    found += [Charge(str(r[0]), int(r[1]), str(r[2]), Decimal(r[3]), float(r[4]), False) for r in peer]
    return sorted(found, key=lambda c: (c.at, c.seq), reverse=True)


def latest_charge(
    conn: sqlite3.Connection, own_daemon: str, member: str, zone: str, start: datetime, end: datetime,
    before: datetime,
) -> Charge | None:
    """The latest of walk_in_charges, or None."""
    charges = walk_in_charges(conn, own_daemon, member, zone, start, end, before)
    return charges[0] if charges else None


@dataclass(frozen=True, slots=True)
class Overdraft:
    """Charges of several daemons the central system had not applied took a pass below
    zero (two turnstiles charged the last visit at the same instant, neither having heard
    the other yet). `seq`: our charge that went below zero — reported by us; every
    daemon of the site applies the same order (time, daemon, seq), so exactly one
    reports each overdraft."""

    pass_id: str
    balance: Decimal
    seq: int
    charges: tuple[tuple[str, int], ...]


def overdraft(conn: sqlite3.Connection, own_daemon: str, pass_id: str) -> Overdraft | None:
    """Our charge on `pass_id` that the site's unapplied charges, in order, put below
    zero — when another daemon's charge is among them and it was not reported yet."""
    if conn.execute("SELECT 1 FROM main.site_charges WHERE pass_id = ? LIMIT 1", (pass_id,)).fetchone() is None:
        return None  # the common case, on the tap path: nobody else charged this pass lately
    row = conn.execute(
        "SELECT central_balance, applied_seq, applied_peers FROM replica.passes WHERE id = ?", (pass_id,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    applied: dict[str, int] = json.loads(row[2]) if row[2] else {}
    charges = [
        (float(at), own_daemon, int(seq), Decimal(amount))
        for seq, amount, at in conn.execute(
            "SELECT seq, amount, at FROM main.deductions WHERE pass_id = ? AND seq > ?", (pass_id, int(row[1]))
        )
    ]
    charges += [
        (float(at or 0), str(d), int(seq), Decimal(amount))
        for d, seq, amount, at in conn.execute(
            "SELECT daemon, seq, amount, at FROM main.site_charges WHERE pass_id = ?", (pass_id,)
        )
        if int(seq) > int(applied.get(str(d), 0))
    ]
    if len({c[1] for c in charges}) < 2:
        return None  # one daemon's charges alone: its own decisions saw every one of them
    charges.sort(key=lambda c: (c[0], c[1], c[2]))
    balance = Decimal(row[0])
    for _at, daemon, seq, amount in charges:
        before, balance = balance, balance - amount
        if balance < 0 <= before and amount > 0:
            if daemon != own_daemon or conn.execute("SELECT 1 FROM overdrafts WHERE seq = ?", (seq,)).fetchone():
                return None
            return Overdraft(pass_id, Decimal(row[0]) - sum((c[3] for c in charges), Decimal(0)), seq,
                             tuple((c[1], c[2]) for c in charges))
    return None


def report_overdraft(conn: sqlite3.Connection, o: Overdraft) -> None:
    conn.execute("INSERT OR IGNORE INTO overdrafts(seq, pass_id) VALUES (?, ?)", (o.seq, o.pass_id))


def marks(conn: sqlite3.Connection) -> dict[str, tuple[int | None, float | None]]:
    """How far each other daemon of the site was heard (peer -> heard_seq, heard_through)."""
    return {
        str(r[0]): (None if r[1] is None else int(r[1]), None if r[2] is None else float(r[2]))
        for r in conn.execute("SELECT daemon, heard_seq, heard_through FROM peer_marks")
    }


def save_mark(conn: sqlite3.Connection, peer: str, heard_seq: int | None, heard_through: float | None) -> None:
    """Inside a transaction. (None, None): the peer is no longer of the site."""
    if heard_seq is None and heard_through is None:
        conn.execute("DELETE FROM peer_marks WHERE daemon = ?", (peer,))
        return
    conn.execute(
        "INSERT INTO peer_marks(daemon, heard_seq, heard_through) VALUES (?,?,?) ON CONFLICT(daemon) DO UPDATE SET "
        "heard_seq = excluded.heard_seq, heard_through = excluded.heard_through",
        (peer, heard_seq, heard_through),
    )


def mark_refunded(conn: sqlite3.Connection, charge: Charge, by: tuple[str, int, float]) -> None:
    """`charge` given back by the refund `by` (daemon, seq, instant)."""
    conn.execute("INSERT OR IGNORE INTO site_refunds(daemon, seq, by_daemon, by_seq, by_at) VALUES (?,?,?,?,?)",
                 (charge.daemon, charge.seq, *by))


__all__ = [
    "attendances",
    "Charge", "ChargeFields", "DoubleRefund", "Overdraft", "RefundAsk", "add_refund_givers", "apply", "charge_of",
    "create_refund_asks", "create_tables", "create_tables_v8", "latest_charge", "mark_refunded", "marks", "overdraft",
    "refund_asks_before", "report_overdraft", "save_mark", "walk_in_charges",
]
