"""The taps this daemon decided while its own history of the day was missing, read from the
ledger for rules.recheck once the history is back (sync/store/own_history.py; the repairs
are repairs.recheck_gap's, in the transaction that records the last chunk).

Which taps: this daemon's access events numbered after the lost range (`Wanted.to_seq`).
Every event of the new box is above it — those it took while its numbering was unsure too
(sync/store/numbering.py moves them past what the central system holds before the range is
written), and a copy put back numbers on after its mark — and the range is in the ledger's
meta until the last chunk is recorded: a restart between a tap and the answer leaves both
as they were, and the answer rechecks them. The recheck is done in the transaction that
deletes the range, so it is done once: a second answer finds nothing wanted, a restart after
it nothing to recheck. Taps after that transaction were decided knowing the history — but
a grant decided before it and not committed yet (its member still in the turnstile: its
intent open, sync/store/intents.py) is not in the ledger then: its intent is written down
in that transaction (own_history.LATE_KEY, by id and the instant it was written: ids are
reused) and the tap is rechecked in the transaction of its commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from rules.model import Direction
from rules.recheck import Charge, GapTap, KnownDay, Passage
from rules.timeutil import parse_instant_once
from sync.store import evacuation, own_history
from sync.store.own_history import Wanted
from sync.store.rows import dt, ts

_UTC = ZoneInfo("UTC")
# a passage or QR use further back than this before the gap's first tap bears on none of
# it (anti-passback and a QR code's single use are of one local day; a grace is hours)
_LOOK_BACK = timedelta(hours=36)


def _instant(v: object) -> datetime | None:
    try:
        return parse_instant_once(str(v), _UTC)
    except ValueError:
        return None


def gap_taps(conn: sqlite3.Connection, daemon: str, w: Wanted, only: int | None = None) -> list[GapTap]:
    """The members' entries granted and passed since the loss, each with its charge if it
    took one nobody has given back (the desk may have): the charge of a tap is the
    deduction its commit wrote right after its access event (Ledger.commit_tap). `only`:
    that access event alone (a grant committed after the history came back, decided before)."""
    out = []
    rows = conn.execute(
        "SELECT e.seq, e.at, e.gate, e.member_id, e.body, d.pass_id, d.amount, d.cause, "
        "d.refunded_by IS NULL AND NOT EXISTS (SELECT 1 FROM main.site_refunds r WHERE r.daemon = ? AND r.seq = d.seq) "
        "FROM main.events e LEFT JOIN main.events de ON de.seq = e.seq + 1 AND de.type = 'deduction' AND de.at = e.at "
        "LEFT JOIN main.deductions d ON d.seq = de.seq AND d.member_id = e.member_id "
        "WHERE e.type = 'access' AND e.seq > ? AND e.member_id IS NOT NULL AND e.gate IS NOT NULL "
        "AND (? IS NULL OR e.seq = ?) ORDER BY e.seq",
        (daemon, w.to_seq, only, only),
    ).fetchall()
    for seq, at, gate, member, body, pass_id, amount, cause, open_charge in rows:
        charge = (Charge(int(seq) + 1, str(pass_id), Decimal(str(amount)), str(cause))
                  if pass_id is not None and open_charge else None)
        tap = _entry(int(seq), at, gate, str(member), body, charge)
        if tap is not None:
            out.append(tap)
    return out


def _entry(seq: int, at: str, gate: str | None, member: str, body: str, charge: Charge | None) -> GapTap | None:
    """A member's entry granted and passed, from its access event; None for anything else."""
    try:
        b = json.loads(body)
    except ValueError:
        return None
    if not isinstance(b, dict) or b.get("decision") != "granted" or b.get("passed") is not True or gate is None:
        return None
    decided = _instant(b.get("decided_at") or at) or _instant(at)
    if decided is None:
        return None
    token = b.get("token") if isinstance(b.get("token"), str) else None
    booking = b.get("booking") if isinstance(b.get("booking"), str) else None
    return GapTap(seq, str(gate), member, decided, token, charge, booking)


def _passages(conn: sqlite3.Connection, taps: list[GapTap]) -> tuple[list[Passage], datetime]:
    """The passages of the taps' members (every daemon's) that may bear on them, and from when."""
    members = sorted({t.member for t in taps})
    start = min(t.decided_at for t in taps) - _LOOK_BACK
    passages: list[Passage] = []
    for i in range(0, len(members), 500):
        part = members[i:i + 500]
        marks = ",".join("?" * len(part))
        passages += [
            Passage(str(m), str(z), Direction(d), dt(a)) for m, z, d, a in conn.execute(
                f"SELECT member_id, zone, direction, at FROM main.passages WHERE member_id IN ({marks}) AND at >= ? "
                "ORDER BY at, id", (*part, ts(start)))
        ]
    return passages, start


def known_day(conn: sqlite3.Connection, w: Wanted, taps: list[GapTap]) -> KnownDay:
    """What the ledger knows now of the day of those taps: the members' passages (every
    daemon's, the lost part's back among them), the QR codes the lost part used (its
    `qr_used` events, or its access events naming their code), the site's evacuations."""
    if not taps:
        return KnownDay()
    passages, start = _passages(conn, taps)
    used: dict[str, datetime] = {}
    for at, body in conn.execute(
        "SELECT at, body FROM main.events WHERE seq BETWEEN ? AND ? AND type IN ('qr_used', 'access')",
        (w.from_seq, w.to_seq),
    ):
        try:
            token = json.loads(body).get("token")
        except (ValueError, AttributeError):
            continue
        when = _instant(at)
        if isinstance(token, str) and when is not None and (token not in used or when < used[token]):
            used[token] = when
    # the bookings the lost part let members in on: one let in on again here paid twice
    attended: dict[str, datetime] = {}
    for at, body in conn.execute(
        "SELECT at, body FROM main.events WHERE seq BETWEEN ? AND ? AND type = 'attendance'", (w.from_seq, w.to_seq),
    ):
        try:
            b = json.loads(body)
        except ValueError:
            continue
        when = _instant(at)
        if isinstance(b, dict) and b.get("status") == "attended" and isinstance(b.get("booking"), str) and when:
            attended[b["booking"]] = min(attended.get(b["booking"], when), when)
    evacuations = tuple(s for s, _ in evacuation.spans_of(conn) if s >= start)
    return KnownDay(tuple(passages), used, evacuations, attended)


def charged_since(conn: sqlite3.Connection, daemon: str, since: Mapping[str, datetime],
                  everyone_after: datetime | None = None) -> list[GapTap]:
    """This daemon's entries that charged the member after `since[member]` — what another
    daemon of the site did then was not heard here when they were decided (it is being
    recorded now) — each with its charge, if nobody has given it back (the desk may have).
    Through the deductions' index by member: a peer's batch costs a look-up per member.
    `everyone_after`: every member charged after it too (an evacuation heard late, which
    bears on everyone inside: a scan of the charges since, once per fire alarm heard)."""
    since = dict(since)
    if everyone_after is not None:
        for (member,) in conn.execute(
            "SELECT DISTINCT member_id FROM main.deductions WHERE cause IN ('walk_in', 'booking') AND at > ? "
            "AND refunded_by IS NULL AND member_id IS NOT NULL", (ts(everyone_after),),
        ):
            since[str(member)] = min(since.get(str(member), everyone_after), everyone_after)
    out = []
    for member, after in sorted(since.items()):
        rows = conn.execute(
            "SELECT e.seq, e.at, e.gate, e.body, d.seq, d.pass_id, d.amount, d.cause "
            # a tap's charge follows its access event at once (Ledger.commit_tap): seq - 1,
            # never further back — that would be another tap of the member's (a free one)
            "FROM main.deductions d JOIN main.events e ON e.seq = d.seq - 1 "
            "AND e.type = 'access' AND e.member_id = d.member_id "
            "WHERE d.member_id = ? AND d.cause IN ('walk_in', 'booking') AND d.at > ? AND d.refunded_by IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM main.site_refunds r WHERE r.daemon = ? AND r.seq = d.seq) ORDER BY d.seq",
            (member, ts(after), daemon),
        ).fetchall()
        for seq, at, gate, body, charge_seq, pass_id, amount, cause in rows:
            tap = _entry(int(seq), at, gate, member, body,
                         Charge(int(charge_seq), str(pass_id), Decimal(str(amount)), str(cause)))
            if tap is not None and tap.decided_at > after:
                out.append(tap)
    return out


def heard_day(conn: sqlite3.Connection, taps: list[GapTap], attended: Mapping[str, datetime]) -> KnownDay:
    """What the ledger knows now of those taps' day, with what another daemon just said:
    the members' passages (its among them), the evacuations, the bookings it let in on."""
    if not taps:
        return KnownDay()
    passages, start = _passages(conn, taps)
    evacuations = tuple(s for s, _ in evacuation.spans_of(conn) if s >= start)
    return KnownDay(tuple(passages), {}, evacuations, attended)


def open_grants(conn: sqlite3.Connection) -> list[list[float]]:
    """The grants decided and not committed yet: [intent id, when it was written]."""
    return [[int(i), float(a)] for i, a in conn.execute("SELECT id, at FROM main.grant_intents ORDER BY id")]


def late(conn: sqlite3.Connection) -> tuple[Wanted, list[list[float]]] | None:
    """The grants to recheck at their commit (own_history.LATE_KEY), with the range; None: none."""
    row = conn.execute("SELECT value FROM main.meta WHERE key = ?", (own_history.LATE_KEY,)).fetchone()
    if row is None:
        return None
    try:
        d = json.loads(row[0])
        w = Wanted(int(d["from_seq"]), int(d["to_seq"]), datetime.fromtimestamp(float(d["since"]), _UTC))
        return w, [[int(i), float(a)] for i, a in d["intents"]]
    except (ValueError, KeyError, TypeError, OverflowError):
        return None


def late_json(w: Wanted, intents: list[list[float]]) -> str:
    return json.dumps({"from_seq": w.from_seq, "to_seq": w.to_seq, "since": w.since.timestamp(), "intents": intents})


def counts(conn: sqlite3.Connection, w: Wanted) -> tuple[int, int]:
    """For the status: (entries, walk-in charges) decided since the loss, to be rechecked."""
    row = conn.execute(
        "SELECT (SELECT COUNT(*) FROM main.events WHERE seq > ? AND type = 'access' AND member_id IS NOT NULL "
        "AND json_extract(body, '$.decision') = 'granted' AND json_extract(body, '$.reason') != 'exit'), "
        "(SELECT COUNT(*) FROM main.deductions WHERE seq > ? AND cause = 'walk_in' AND refunded_by IS NULL)",
        (w.to_seq, w.to_seq),
    ).fetchone()
    return int(row[0]), int(row[1])


__all__ = ["charged_since", "counts", "gap_taps", "heard_day", "known_day", "late", "late_json", "open_grants"]
