"""Where this daemon's event numbers stand when the ledger cannot say: the gate's box was
replaced (a new, empty ledger under the same daemon id), or its ledger was put back from a
copy kept elsewhere without the mark of what had been sent (`gated.db.sent`,
sync/store/sent_mark.py). The central system may then hold events of this daemon under
numbers the ledger is about to hand out again; each new event — taps, deductions — would
be dropped there as a repeat, and the gate's own charges, numbered below the `applied`
the central system reports, would not count against the local balances either.

So a ledger that opens without its mark is *unsure* once a sync link is to send from it
(Store.hold_unsure, called by the link's port; a store no link sends from holds nothing):
it records and decides as always, but its events after the last one it held at open
(`after`) do not leave (sync/link/port.py caps the uplink and the catch-up answers there;
the heartbeat claims nothing) until the central system has said how far it got with this
daemon:

- an ack: its `applied_seq` exactly;
- any pass it sends (snapshot, delta, look-up answer): its `applied` lists every daemon of
  the site, and a daemon missing from it has had nothing applied (docs/protocol.md).

Then, if the central system holds numbers beyond `after`, the held events move up past
them — every column that holds one of our seqs, and the references inside event bodies —
and the numbers between become `void` events (`reason: restored`), with a
`ledger_restored` alarm; otherwise they are released as they are. Either way the mark is
written, and the next start is sure. Meanwhile the replica's passes are marked down to
`after` (their `applied` may name the lost part's numbers, which our held charges now
have: they must count; the settle that moves them puts the central system's word back),
and time-driven settling (no-shows, fees, loyalty) waits: the lost part may have settled
the same classes (Store.run_due). What the lost part knew of today is asked of the central
system after the settle (sync/store/own_history.py).

A ledger from before the mark existed (schema below MARK_VERSION, with events) is taken
as it is: its numbers are as good as they always were.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sync.store import own_history

if TYPE_CHECKING:
    from sync.store.meta import Meta
    from sync.store.store import Store
    from sync.store.transaction import Transaction

log = logging.getLogger(__name__)

MARK_VERSION = 10  # the first ledger schema whose daemon keeps gated.db.sent beside it
# in the ledger while its events are held: where the hold began. A restart before the
# central system's word (a power cut, a kill) must hold from there again — the events after
# it are this box's, numbered under the lost ones — not from the ledger's end at that open
HELD_KEY = "numbering.held_after"

# every column of the ledger holding a seq of this daemon's own events
OWN_SEQS: tuple[tuple[str, str], ...] = (
    ("events", "seq"),
    ("deductions", "seq"),
    ("deductions", "refunded_by"),
    ("loyalty", "seq"),
    ("audit", "seq"),
    ("card_enrolments", "seq"),
    ("member_photos", "seq"),
    ("overdrafts", "seq"),
    ("desk_requests", "seq"),  # the first event of the record a desk request produced
)
# columns whose names say seq that hold other numbers (tests/test_numbering.py checks that
# every such column of the ledger is in one list or the other)
OTHER_SEQS: frozenset[tuple[str, str]] = frozenset({
    ("site_charges", "seq"),  # the other daemons' charges
    ("peer_marks", "heard_seq"),  # how far the other daemons are heard
    # charges another daemon refunded: of ours, only ever the lost part's while the
    # numbering is unsure (nobody has heard of a held charge), so they stay where they are
    ("site_refunds", "seq"),
    # the refund that gave a charge back: ours are given only with the numbering known
    # (the desk's refunds wait while this daemon is unsure of it), so none is ever held
    ("site_refunds", "by_seq"),
})


class Numbering:
    """Where this daemon's numbering stands (Store.numbering). `unsure_after`: our events
    after it are held; None: the numbering is known."""

    def __init__(self, mark_missing_after: int | None):
        # without the mark, the ledger's last event at open: what a sync link holds after
        self._missing_after = mark_missing_after
        self.unsure_after: int | None = None
        self._hold_kept = False  # where the hold began is in the ledger (HELD_KEY)
        self._settling = False
        # how far the central system got, as the replica the last snapshot switch put in says
        self.switched_word: int | None = None

    def sendable(self, last_seq: int) -> int:
        return last_seq if self.unsure_after is None else self.unsure_after

    def hold(self, store: Store) -> None:
        """A sync link is to send our events: without the mark, hold those after the last
        one at open. The replica's passes may say the central system applied numbers beyond
        the ledger's end — the lost part's: our charges under those numbers are not in their
        balance, so until the numbering is settled they count as above it (marked down)."""
        after = self._missing_after
        if after is None or self.unsure_after is not None:
            return
        self.unsure_after = after
        try:
            with store.transaction() as tx:
                tx.set_meta(HELD_KEY, str(after))
            self._hold_kept = True
        except sqlite3.Error as e:  # written with the first held event instead (keep_hold)
            log.warning("where the hold began cannot be written yet (%s)", e)
        self.mark_down(store)
        log.warning("%s is missing: events after %d wait for the central system to say how far it got",
                    store.sent.path, after)

    def keep_hold(self, tx: Transaction, meta: Meta) -> None:
        """Before a transaction that writes events commits, while held: where the hold
        began goes into the ledger with them if it is not there yet (its own write failed:
        a full disk at start). Else a restart before the central system's word would take
        these held events for numbered right, as if the hold began after them."""
        if self.unsure_after is None or self._hold_kept or self._settling:
            return
        if meta.get(HELD_KEY) is not None:
            self._hold_kept = True
            return
        tx.set_meta(HELD_KEY, str(self.unsure_after))

    def mark_down(self, store: Store) -> None:
        """While held: no pass of the replica says the central system applied beyond the
        ledger's end (after a hold, a snapshot switch, a settle that failed)."""
        after = self.unsure_after
        if after is None:
            return
        try:
            with store.transaction():
                store.conn.execute("UPDATE replica.passes SET applied_seq = ? WHERE applied_seq > ?", (after, after))
        except sqlite3.Error as e:  # a store that cannot be written records no charge either
            log.warning("the replica's passes cannot be marked (%s)", e)

    def switched(self, store: Store) -> None:
        """A snapshot's replica is in: while held, read how far the central system got and
        mark it down (only then: a scan of every pass, on the loop, at a chain's scale)."""
        if self.unsure_after is None:
            self.switched_word = None
            return
        self.switched_word = central_applied(store.conn)
        self.mark_down(store)

    def settle(
        self, store: Store, central_seq: int, now: datetime, restored_key: str, site_seq: int | None = None,
    ) -> None:
        """The central system has applied our events up to `central_seq`, and the site's
        other daemons heard them up to `site_seq` (their heartbeats; None: none said): the
        held ones go on after both. Raises OSError or sqlite3.Error when it cannot be done:
        still held, the replica's passes marked down again (the sync that brought the word
        wrote them as the central system sent them)."""
        self._settling = True  # its transactions say where the hold stands themselves
        try:
            self._settle(store, central_seq, now, restored_key, site_seq)
        except (OSError, sqlite3.Error):
            self.mark_down(store)
            raise
        finally:
            self._settling = False

    def _settle(
        self, store: Store, central_seq: int, now: datetime, restored_key: str, site_seq: int | None,
    ) -> None:
        after = self.unsure_after
        if after is None:
            return
        # the site's daemons may have heard the old box beyond what the central system got
        # (its uplink cut, a broker of the site's own): numbers they hold are taken too, or
        # our new events under them would be dropped there as repeats
        target = max(central_seq, site_seq or 0)
        by = target - after
        if by > 0:
            held = store.last_seq - after
            with store.transaction() as tx:
                tx.delete_meta(HELD_KEY)  # numbered for good with the move
                shift(store.conn, store.daemon_id, after, by)
                store.outbox.next_seq += by
                tx.committed.events += store.outbox.fill_range(after + 1, target, now, "restored")
                tx.set_meta(restored_key, repr(now.timestamp()))  # the lost part may have settled anything due by now
                if central_seq > after:  # and knew today: asked for back (what the central system has of it)
                    own_history.want(tx.set_meta, after + 1, central_seq, now)
                    # the passes marked down (hold) say again what the central system applied: the
                    # held charges are above it now, and the lost part's come back under their numbers
                    store.conn.execute("UPDATE replica.passes SET applied_seq = ? WHERE applied_seq = ?",
                                       (central_seq, after))
                only_site = ""
                if target > central_seq:
                    only_site = (f"; {max(after, central_seq) + 1}..{target} only the site's other daemons heard (the "
                                 "central system never had them: lost with the old box)")
                    # nothing will bring them back: the no-shows of the day they may bear on
                    # (an attendance among them) are settled naming this daemon as not heard,
                    # and a fee of ours they may have given back is for a person
                    tx.set_meta(own_history.GIVEN_UP_KEY, repr(now.timestamp()))
                    tx.set_meta(own_history.FEES_UNSURE_KEY, str(target))
                tx.emit("alarm", now, gate=None, kind="ledger_restored",
                        detail=f"the ledger ends at event {after} but others hold this daemon's events up to {target} "
                        f"(the central system: {central_seq}, the site's daemons: {site_seq or 0}; a new box, or a "
                        f"copy without {store.sent.path.name}): {after + 1}..{target} are void here, the events since "
                        f"the start numbered on after them{only_site}")
            log.warning("ledger_restored: others hold this daemon's events up to %d (central %d, site %s), the ledger "
                        "ended at %d; the %d held event(s) numbered on after it", target, central_seq, site_seq,
                        after, held)
            self.unsure_after = after = target  # moved once: a failure below must not move them again
        else:
            with store.transaction() as tx:  # numbered right as they are
                tx.delete_meta(HELD_KEY)
        store.flush_now()
        store.sent.advance(after, now.timestamp())  # raises OSError: still held, settled again later
        if own_history.wanted(store.conn) is None:  # nothing to wait for: attendances heard meanwhile count
            with store.transaction() as tx:
                store.ledger.give_back_attended_fees(tx, now)
        self.unsure_after = self._missing_after = None


def shift(conn: sqlite3.Connection, daemon: str, after: int, by: int) -> None:
    """Inside a transaction: every seq of ours above `after` moves up by `by`, in every
    column that holds one (OWN_SEQS) and in the event bodies (their own `seq`; a refund's
    or an overdraft's reference to a charge of ours)."""
    args = {"after": after, "by": by}
    for table, column in OWN_SEQS:
        # through negative numbers: a unique seq moved up in place would meet the next one
        conn.execute(f"UPDATE main.{table} SET {column} = -({column} + :by) WHERE {column} > :after", args)
        conn.execute(f"UPDATE main.{table} SET {column} = -{column} WHERE {column} < 0")
    rows = conn.execute("SELECT seq, body FROM main.events WHERE seq > ?", (after + by,)).fetchall()
    conn.executemany(
        "UPDATE main.events SET body = ? WHERE seq = ?",
        ((json.dumps(_moved(json.loads(body), seq, daemon, after, by)), seq) for seq, body in rows),
    )


def _moved(body: dict[str, Any], seq: int, daemon: str, after: int, by: int) -> dict[str, Any]:
    body["seq"] = seq

    def ref(r: Any) -> Any:
        if isinstance(r, dict) and r.get("daemon") == daemon and isinstance(r.get("seq"), int) and r["seq"] > after:
            return {**r, "seq": r["seq"] + by}
        return r

    if "refunds" in body:
        body["refunds"] = ref(body["refunds"])
    if isinstance(body.get("charges"), list):
        body["charges"] = [ref(c) for c in body["charges"]]
    return body


def central_applied(conn: sqlite3.Connection) -> int | None:
    """How far the central system had applied this daemon's events, as its passes in the
    replica say (the highest; None when the replica has no pass to say it)."""
    row = conn.execute("SELECT MAX(applied_seq), COUNT(*) FROM replica.passes").fetchone()
    return None if row is None or not row[1] else int(row[0] or 0)


__all__ = ["HELD_KEY", "MARK_VERSION", "OTHER_SEQS", "OWN_SEQS", "Numbering", "central_applied", "shift"]
