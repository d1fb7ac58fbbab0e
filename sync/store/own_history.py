"""What a lost ledger knew, got back from the central system. A gate whose box was
replaced (or whose ledger was put back without its mark) numbers on after what the
central system holds of it (sync/store/numbering.py) — but the events under those numbers
were the old box's record of today: who went in and is still inside, who paid a walk-in
an hour ago (a re-entry within the grace is free), which QR codes were used, which
bookings were attended, an evacuation. Without them the new box decides as if nobody
had come through it today: it charges a re-entry again, lets a used QR code in again,
refuses a member who left under hard anti-passback.

So the settle that finds the central system holding more writes what is wanted (this
daemon's events `from_seq`..`to_seq`, those of the last `HORIZON` before the settle) in
the same transaction, and the link asks the central system for them (`history/request`,
docs/protocol.md) until it has them; each chunk of the answer is recorded here, in one
transaction, as the facts a site's other daemon's events are recorded (passages, booking
outcomes, used QR codes, evacuations: sync/store/peer_events.py) — except the charges,
which are this daemon's own under their own numbers: they go back into `deductions`,
where the local balances, the desk's refund of a walk-in and the overdraft check find
them as any charge of ours (their numbers are `void` events in the ledger, never
another charge's). Recording is idempotent: a chunk that comes twice changes nothing.
Each event also takes its number's place in the ledger again (the `void` there goes), so
that the ledger is what it was: catch-up answers to the site's other daemons and replays
for the central system carry it. While it is wanted the gate says so (gated/knowledge.py,
`own_history_missing`), and the no-shows of the classes it may bear on wait for it, as for
a daemon of the site not heard; a day after the loss (`WAIT`) nothing more is asked, and
those no-shows are settled naming this daemon (`GIVEN_UP_KEY`, Ledger.run_due).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rules.timeutil import parse_instant_once
from sync.store import peer_events
from sync.store.rows import ts

KEY = "own_history_wanted"
HORIZON = timedelta(hours=24)  # what a lost ledger knew that a decision today rests on
# how long after the loss its events are waited for (then nothing of them is today's)
WAIT = HORIZON
# written when the wait ran out (POSIX seconds: when the loss was found): the no-shows of
# the classes the lost part may hold an attendance of are settled without it, naming this
# daemon as not heard (Ledger.run_due)
GIVEN_UP_KEY = "own_history_given_up"
# our no-show fees up to this seq may have been given back in a lost part of the ledger
# that never came back (only the site heard it, or the central system never sent it): for
# a person, not given back again by the gate (Ledger.give_back_no_show_fees)
FEES_UNSURE_KEY = "fees.unsure_through"

# the grants decided while our lost events were missing and not yet committed when they came
# back (a member still in the turnstile): rechecked at their commit (Ledger.commit_tap). JSON:
# the range and `intents`, [[intent id, when it was written (POSIX)], ...]
LATE_KEY = "own_history.recheck_at_commit"

_UTC = ZoneInfo("UTC")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Wanted:
    """This daemon's events the central system holds and the ledger lost."""

    from_seq: int
    to_seq: int
    since: datetime  # those before are no longer wanted

    def as_json(self) -> str:
        return json.dumps({"from_seq": self.from_seq, "to_seq": self.to_seq, "since": self.since.timestamp()})

    @property
    def found_at(self) -> datetime:
        """When the loss was found (the settle, the open that found the mark ahead): the
        lost part is all from before."""
        return self.since + HORIZON

    @property
    def expires(self) -> datetime:
        """No longer waited for from then (sync/link/own_history.py)."""
        return self.found_at + WAIT


def want(set_meta: Any, from_seq: int, to_seq: int, now: datetime) -> Wanted:
    """Inside the settle's transaction (`set_meta`: the transaction's)."""
    w = Wanted(from_seq, to_seq, now - HORIZON)
    set_meta(KEY, w.as_json())
    return w


def wanted(conn: sqlite3.Connection) -> Wanted | None:
    row = conn.execute("SELECT value FROM main.meta WHERE key = ?", (KEY,)).fetchone()
    if row is None:
        return None
    try:
        d = json.loads(row[0])
        return Wanted(int(d["from_seq"]), int(d["to_seq"]), datetime.fromtimestamp(float(d["since"]), _UTC))
    except (ValueError, KeyError, TypeError, OverflowError):
        # unreadable (written by hand?): taken as nothing wanted, else the gap would never close
        log.warning("meta %s unreadable (%r): the lost ledger's events are not asked for", KEY, row[0][:100])
        return None


def record(
    conn: sqlite3.Connection, daemon: str, w: Wanted, events: Sequence[Mapping[str, Any]],
    zones: Mapping[str, str], record_passage: Any,
) -> Counter[str]:
    """Inside a transaction: our own events from the central system. Only those of the
    range wanted and not before `since` (anything else an answer carries is counted
    and left: above the range are the new box's own, already in the ledger)."""
    seen: Counter[str] = Counter()
    keep = []
    for ev in events:
        seq = ev.get("seq")
        if not isinstance(seq, int) or not w.from_seq <= seq <= w.to_seq:
            seen["outside"] += 1
            continue
        try:
            at = parse_instant_once(str(ev.get("at")), _UTC)
        except ValueError:
            seen["invalid"] += 1
            continue
        if at < w.since:
            seen["outside"] += 1
            continue
        seen[_put_back(conn, seq, ev)] += 1
        if ev.get("type") == "deduction":
            seen[_charge(conn, daemon, seq, at, ev, zones)] += 1
        else:
            keep.append(ev)
    # a lost request of our own desk is not another daemon's to take a walk-in before ours:
    # given, its refund is above (and marks its charge); not given, it died with the old box.
    # Its attendance stands (the booking was attended)
    keep = [{k: v for k, v in ev.items() if k != "refund"} if ev.get("type") == "attendance" else ev for ev in keep]
    seen.update(peer_events.apply(conn, daemon, keep, zones, record_passage))
    return seen


def _put_back(conn: sqlite3.Connection, seq: int, ev: Mapping[str, Any]) -> str:
    """The event itself in the ledger again, in place of the `void` its number holds: the
    site's other daemons asking this one to catch them up, and the central system asking
    for a replay after restoring a backup, get it — not a void that would tell them there
    was nothing under that number."""
    eid, kind = ev.get("id"), ev.get("type")
    if not isinstance(eid, str) or not isinstance(kind, str) or not 0 < len(eid) <= 100 or not 0 < len(kind) <= 50:
        return "invalid"
    gate, member = ev.get("gate"), ev.get("member")
    put = conn.execute(
        # OR IGNORE: an id the ledger holds already (never one of ours) leaves the void there
        "UPDATE OR IGNORE main.events SET id = ?, type = ?, at = ?, gate = ?, member_id = ?, body = ? "
        "WHERE seq = ? AND type = 'void' AND json_extract(body, '$.reason') = 'restored'",
        (eid, kind, str(ev.get("at")), gate if isinstance(gate, str) else None,
         member if isinstance(member, str) else None, json.dumps(dict(ev)), seq),
    ).rowcount
    return "put_back" if put else "kept"


def _charge(
    conn: sqlite3.Connection, daemon: str, seq: int, at: datetime, ev: Mapping[str, Any], zones: Mapping[str, str],
) -> str:
    """One of our charges (or refunds) back under its own number."""
    c = peer_events.charge_of(ev)
    if c is None:
        return "invalid"
    inserted = conn.execute(
        "INSERT OR IGNORE INTO main.deductions(seq, pass_id, member_id, booking_id, amount, cause, zone, at, refunded_by) "
        "VALUES (?,?,?,?,?,?,?,?,NULL)",
        (seq, c.pass_id, c.member, c.booking, str(c.amount), c.cause, zones.get(str(ev.get("gate"))), ts(at)),
    ).rowcount
    if c.refunds is not None and c.refunds[0] == daemon:  # a charge of ours given back: as the desk marks it
        conn.execute("UPDATE main.deductions SET refunded_by = ? WHERE seq = ? AND refunded_by IS NULL",
                     (seq, c.refunds[1]))
    if c.refunds is not None:  # as the desk marks it (peer_events.mark_refunded)
        conn.execute("INSERT OR IGNORE INTO main.site_refunds(daemon, seq, by_daemon, by_seq, by_at) VALUES (?,?,?,?,?)",
                     (*c.refunds, daemon, seq, ts(at)))
    return "charges" if inserted else "charges_again"


def done(delete_meta: Any) -> None:
    delete_meta(KEY)


def given_up(conn: sqlite3.Connection) -> datetime | None:
    """When the loss whose events never came back was found (GIVEN_UP_KEY); None: none."""
    row = conn.execute("SELECT value FROM main.meta WHERE key = ?", (GIVEN_UP_KEY,)).fetchone()
    try:
        return None if row is None else datetime.fromtimestamp(float(row[0]), _UTC)
    except (ValueError, OverflowError):
        return None


__all__ = ["FEES_UNSURE_KEY", "GIVEN_UP_KEY", "HORIZON", "KEY", "LATE_KEY", "WAIT", "Wanted", "done", "given_up", "record", "want", "wanted"]
