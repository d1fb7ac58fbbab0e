"""The daemon's local data: the replica of the central system's data and the ledger of
what happened at this gate, in two kinds of SQLite file (WAL). `Store` is the one object
the daemon, the engine, the scenario runner and the sync link hold; it is a façade over
small modules, one concern each (the table is in sync/store/__init__.py).

Why this module is over 500 lines (~880, a seventh of it this docstring): it is the whole
public surface, and nothing else — each method is a documented delegation of a few
lines to the module that does the work (or, for a change that spans the ledger and the
replica, the steps that order them), kept in one place so a newcomer reads what the
store offers on one page. The work is in the modules: opening, switching and rescuing
the files in attach.py, the member's view the rules decide on in member_view.py.

## Two files

The **ledger** is the configured path (`gated.db`): events (the outbox), deductions,
passages, booking outcomes, loyalty, used QR tokens, audit, meta. The **replica** is a
file beside it (`gated.replica-<generation>-<random>.db`, named in the ledger's meta),
attached to the store's connection AS `replica`: members, cards, passes with their
central balance and `applied_seq`, bookings, and its own meta (`sync.delta_seq`,
`sync.snapshot_id`, `last_sync_at`). Nothing the gate changes lives in the replica, so a
snapshot builds a whole new replica file off the event loop and a switch of a few
milliseconds puts it in place (Store.switch_replica); deltas change the replica file in
one transaction of its own, with their `delta_seq`.

The rules of the ledger:
- Every state change and the events that report it are written in one transaction; a
  crash leaves all of it or none of it. A transaction on the ledger never writes the
  replica and vice versa (SQLite does not make a transaction across two WAL files
  atomic).
- `seq` numbers this daemon's events 1, 2, 3, ... with no gap, whatever is pruned later.
- A pass's local balance is the central balance (as of `applied_seq`, the highest of our
  events the central system had applied) minus our own deductions with a higher seq,
  derived at every read (sync/store/replica.py): never a deduction lost or counted twice,
  whichever replica generation a tap was decided on.

## The public surface

Everything outside `sync/` uses the methods of `Store` below (and `store.transaction()`
to write events of its own); nothing outside `sync/` imports a `_private` name.

## Reading tables directly (console, tests)

`store.conn` is the daemon's connection, owned by the event loop. These names can be
read through it, with these columns (more may be added, none removed):

- `members(id, name, status, email, photo, synced_at, phone, search, note, status_reason)`
  — `search` is the desk's search text (sync/store/search_text.py), `photo` the central
  system's (a `data:` URL, sync/photos.py); `cards(card, member_id)` — `card` is the
  canonical typed key (`em:0A00BC614E`, `uid:04A1B2C3`, see rules/credential.py);
  `card_keys(key, card)` holds what readers that read less of a card see of it;
- `passes(id, member_id, name, kind, central_balance, applied_seq, balance, deduct_on,
  walk_in_cost, valid_from, valid_until, zones, access_windows)` — `balance` is the
  local balance (decimal text);
- `bookings(id, member_id, pass_id, class_name, zone, starts_at, ends_at, status,
  outcome, deducted, cost, loyalty_points, attended_at, loyalty_settled)` — times are
  POSIX seconds; `outcome` is the gate's (attended / no_show), NULL when cancelled;
- `deductions`, `passages`, `loyalty`, `booking_outcomes`, `card_enrolments`,
  `member_photos`, `events`, `audit`, `meta` — the ledger's tables.

The first five are TEMP views over `replica.*` (sync/store/read_contract.py). A reader in another
thread must not open `store.path` alone (it would not see the replica): it calls
`store.open_reader()` — a read-only connection with the current replica attached and the
same names.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from rules.credential import Card, Resolution, TenDigits, card_from_text
from rules.decide import MemberView, ZonePresence
from rules.model import Booking, BookingStatus, Gate, Member, Pass, Policy
from rules.model import Site as SiteModel
from rules.schedule import NoShowHorizon
from rules.tap import Tap
from rules.timeutil import iso_utc, parse_instant_once
from sync.errors import StoreError
from sync.records import PassRecord
from sync.store import (
    attach,
    desk_requests,
    enrolment,
    history_recheck,
    numbering,
    own_history,
    photos,
    qr_claims,
    read_contract,
    refunds_wanted,
    retention,
)
from sync.store.attach import REPLICA_FILE_KEY, REPLICA_GENERATION_KEY, open_reader
from sync.store.batch import SyncBatch
from sync.store.db import Checkpointer, connect
from sync.store.desk_requests import DeskRequest
from sync.store.durability import WalSync
from sync.store.intents import Intents
from sync.store.ledger import RESTORED_KEY, Ledger, amount_json
from sync.store.member_view import VIEW_HORIZON, member_view
from sync.store.meta import CLOCK_FLOOR_KEY, Meta
from sync.store.outbox import Event, Outbox
from sync.store.replica import Replica
from sync.store.replica_file import ReplicaFiles
from sync.store.retention import Cutoffs, Sweep
from sync.store.rows import dt, instant_ts
from sync.store.schema import CARDS_TYPED_AS, SCHEMA_VERSION, migrate
from sync.store.sent_mark import SentMark
from sync.store.transaction import Committed, Listener, Transaction, Transactions

log = logging.getLogger(__name__)
_UTC = ZoneInfo("UTC")
# SQL true for a refund (the deduction aliased `r`) that gave back one of our no-show fees
_FEE_REFUND = "EXISTS (SELECT 1 FROM main.deductions f WHERE f.refunded_by = r.seq AND f.cause = 'no_show_fee')"

# in the replica's meta: its position in the central system's stream of changes
DELTA_SEQ_KEY = "sync.delta_seq"
SNAPSHOT_ID_KEY = "sync.snapshot_id"
LAST_SYNC_KEY = "last_sync_at"


class Store:
    """The daemon's only writer to its database. Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        path: str | Path,
        site: SiteModel,
        *,
        daemon_id: str = "gate",
        durable: bool = True,
        background_checkpoints: bool = True,
        ten_digits: TenDigits = TenDigits.EM32,
    ):
        self.path = Path(path)
        # How this site reads untyped 10-digit card strings (gated.config.Config.ten_digits)
        self.ten_digits = ten_digits
        self._opened_with = ten_digits  # the rule of a replica that predates CARDS_TYPED_AS
        self.site = site
        self.daemon_id = daemon_id
        self.durable = durable
        self.background_checkpoints = background_checkpoints
        self.files = ReplicaFiles(self.path)
        self.site_wide_qr = False  # set_site_wide_qr
        self.gates: dict[str, Gate] = {}  # set_gates
        # what rides on every commit that writes events (Transactions.riders), kept across reopen
        self.riders: list[Callable[[Transaction], None]] = []
        # the ledger's log flushed off the event loop (sync/store/durability.py); None: not durable
        self.wal_sync = WalSync(self.path) if durable else None
        self.conn = connect(self.path, durable=durable)
        self.numbering = numbering.Numbering(None)  # until the ledger is read, below
        try:
            opened_at_version = migrate(self.conn, self.path, ten_digits)
            self.replica_path = attach.open_current(self.conn, self.path, self.files, ten_digits)
            self._wire([])
            self.sent = SentMark(self.path)
            self._fill_holes()
            missing_after: int | None = None  # no mark: what a sync link holds after (numbering.py)
            if self.sent.found:
                self._number_after_sent()
            elif opened_at_version < numbering.MARK_VERSION and self.last_seq > 0:
                try:  # numbered as ever; the first send writes the mark if this cannot
                    self.sent.advance(self.last_seq, self._open_now().timestamp())
                except OSError as e:
                    log.warning("%s cannot be written yet (%s)", self.sent.path, e)
            else:
                # a hold that began at an earlier start is still the hold (numbering.HELD_KEY)
                held = self._meta.get(numbering.HELD_KEY)
                missing_after = min(int(held), self.last_seq) if held is not None and held.isdigit() else self.last_seq
            self.numbering = numbering.Numbering(missing_after)
        except BaseException:
            self.conn.close()
            raise
        self._checkpointer = self._checkpoints()
        self.run_marks = self.ledger.stamp_marks()  # where this run's rows begin (correct_stamps)

    def _open_now(self) -> datetime:
        """The time the open stamps what it finds (void events, a loss and how long its
        events are waited for): the wall clock, but never before the last instant the
        daemon's clock trusted (CLOCK_FLOOR_KEY) nor the last event sent. The open comes
        before the daemon builds its guarded clock (gated/clock.py), at a boot whose clock
        may not be set yet: a flat RTC cell reads 2000, and a wait for a lost part begun
        then is over before it begins."""
        known = [datetime.now(UTC).timestamp()]
        try:
            known.append(float(self._meta.get(CLOCK_FLOOR_KEY) or "nan"))
        except ValueError:
            pass
        sent = getattr(self, "sent", None)
        if sent is not None and sent.at is not None:
            known.append(sent.at)
        return datetime.fromtimestamp(max(t for t in known if math.isfinite(t)), UTC)

    def _fill_holes(self) -> None:
        """Numbers an earlier version lost (sync/store/outbox.py) get `void` events, so the
        central system can apply what follows them."""
        holes = self.outbox.holes()
        if holes:
            now = self._open_now()
            with self.transaction() as tx:
                for seq in holes:
                    tx.committed.events.append(self.outbox.fill(seq, now, "seq_lost"))

    def hold_unsure(self) -> None:
        """A sync link is to send our events (sync/link/port.py): if the ledger opened
        without its mark of what was sent, hold those after its last one at open until the
        central system says how far it got (sync/store/numbering.py). A store no link sends
        from (tests, tools, a gate without MQTT) holds nothing: nothing of it leaves."""
        self.numbering.hold(self)

    @property
    def unsure_after(self) -> int | None:
        """Our events after this one are held; None: the numbering is known."""
        return self.numbering.unsure_after

    def _number_after_sent(self) -> None:
        """A ledger that ends below the last event that left the gate was put back from a
        copy (sync/store/sent_mark.py): number on after what the others hold."""
        last, sent = self.outbox.last_seq, self.sent.value
        if sent <= last:
            return
        now = self._open_now()
        # what the lost part did that the others know of was sent, so stamped by then
        lost_until = self.sent.at if self.sent.at is not None else now.timestamp()
        with self.transaction() as tx:
            tx.committed.events += self.outbox.fill_range(last + 1, sent, now, "restored")
            tx.set_meta(RESTORED_KEY, repr(lost_until))
            own_history.want(tx.set_meta, last + 1, sent, now)  # what the lost part knew of today
            tx.emit("alarm", now, gate=None, kind="ledger_restored",
                     detail=f"the ledger ends at event {last}, but events up to {sent} had been sent: it was put "
                     f"back from a copy; {last + 1}..{sent} are void here (the central system keeps those it has)")
        log.warning("ledger_restored: events %d..%d sent before the ledger was put back; numbering on from %d",
                    last + 1, sent, sent + 2)

    @property
    def sendable_seq(self) -> int:
        """Our last event that may leave: all of them, unless the numbering is unsure."""
        return self.numbering.sendable(self.last_seq)

    def settle_numbering(self, central_seq: int, now: datetime, site_seq: int | None = None) -> None:
        """The central system has applied this daemon's events up to `central_seq` (an ack,
        its passes' `applied`), and the site's other daemons heard them up to `site_seq`:
        the held events go on after both (sync/store/numbering.py). Raises OSError or
        sqlite3.Error when it cannot be done: the events stay held."""
        self.numbering.settle(self, central_seq, now, RESTORED_KEY, site_seq)

    def own_history_wanted(self) -> own_history.Wanted | None:
        """Our own events the ledger lost that the central system holds, still wanted
        (sync/store/own_history.py); None: nothing is missing."""
        return own_history.wanted(self.conn)

    def record_own_history(
        self, wanted: own_history.Wanted, events: list[dict[str, Any]], zones: dict[str, str], done: bool,
        *, expired: bool = False, now: datetime | None = None,
    ) -> dict[str, int]:
        """A chunk of them from the central system; `done`: the last one (`expired`: given
        up on, a day after the loss)."""
        return self.ledger.record_own_history(wanted, events, zones, done, expired=expired, now=now)

    async def sent_through(self, last: Event) -> None:
        """Before events up to `last` leave the gate: that they did, on disk beside the
        ledger (off the event loop). Raises OSError when it cannot be written."""
        seq = int(last["seq"])
        if seq > self.sent.value:
            at = parse_instant_once(str(last["at"]), _UTC).timestamp()
            await asyncio.to_thread(self.sent.advance, seq, at)

    def _checkpoints(self) -> Checkpointer | None:
        return Checkpointer(lambda: [self.path, self.replica_path]) if self.background_checkpoints else None

    def _wire(self, listeners: list[Listener]) -> None:
        """The parts, each on the current connection (again after reopen/rescue)."""
        self.db = sqlite_utils.Database(self.conn)
        self._meta = Meta(self.conn)
        read_contract.install(self.conn)
        self.outbox = Outbox(self.conn, self._meta)
        self._transactions = Transactions(
            self.conn, self.outbox, self._meta, self.wal_sync.committed if self.wal_sync is not None else None
        )
        self._transactions.listeners.extend(listeners)
        self._transactions.riders = self.riders
        self._transactions.before_commit = lambda tx: self.numbering.keep_hold(tx, self._meta)
        self.replica = Replica(self.conn, self.site, self.ten_digits)
        self.ledger = Ledger(self.conn, self._transactions, self.replica, self.site, self.daemon_id)
        self.ledger.site_wide_qr = self.site_wide_qr
        self.ledger.gates = self.gates
        self.intents = Intents(self.conn, self._transactions, self.ledger)

    def _switch(self, conn: sqlite3.Connection) -> None:
        """Carry on with `conn` (the ledger, the replica attached)."""
        old, old_checkpointer = self.conn, self._checkpointer
        if old_checkpointer is not None:
            old_checkpointer.stop()
        self.conn = conn
        self._wire(self.listeners)
        self._checkpointer = self._checkpoints()
        old.close()

    def reopen(self) -> None:
        """Open the files again: a connection opened read-only stays read-only after the
        file's owner or mode is fixed. The old connection stays if this raises."""
        conn = connect(self.path, durable=self.durable)
        try:
            migrate(conn, self.path, self.ten_digits)
            attach.attach(conn, self.replica_path)
        except BaseException:
            conn.close()
            raise
        self._switch(conn)

    def rescue(self) -> None:
        """The files are gone (their directory deleted while the daemon ran, or the `-wal`
        or `-shm` deleted) but this connection still holds them, ledger and unsent events
        included: write them back to their paths, whole, and carry on there. Raises if a
        path cannot be written (the store then stays on the old files, unusable for
        entries, and this is tried again).

        Why a copy, not a checkpoint: with the `-wal` gone, a checkpoint into the file at
        the path would leave it half written if the process died during it, with no WAL
        left to finish it; the copy appears whole or not at all. The old connection,
        closed last, no longer writes or deletes anything at the path: SQLite sees its
        file was replaced (SQLITE_FCNTL_HAS_MOVED) and skips the checkpoint and the
        deletion of the side files that a last connection does at close."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.replica_path.exists():  # the replica went with the directory: it too
            attach.write_back(self.conn, "replica", self.replica_path, self.files)
        attach.write_back(self.conn, "main", self.path, self.files)
        conn = connect(self.path, durable=self.durable)
        try:
            attach.attach(conn, self.replica_path)
        except BaseException:
            conn.close()
            raise
        self._switch(conn)

    # -- plumbing ---------------------------------------------------------------------

    @property
    def listeners(self) -> list[Listener]:
        """Called with the events of every committed transaction that wrote some."""
        return self._transactions.listeners

    def transaction(self) -> AbstractContextManager[Transaction]:
        """One atomic change: `with store.transaction() as tx: tx.emit(...)` (see
        sync/store/transaction.py)."""
        return self._transactions.open()

    async def flushed(self) -> None:
        """Until every commit so far is on disk — off the event loop (sync/store/durability.py).
        Raises OSError when the log cannot be flushed (a storage fault)."""
        if self.wal_sync is not None:
            await self.wal_sync.flushed()

    def flush_now(self) -> None:
        """The same, on this thread: for code off the tap path (start-up, tools, probes)."""
        if self.wal_sync is not None:
            self.wal_sync.flush_now()

    def close(self) -> None:
        if self.wal_sync is not None:
            self.wal_sync.close()
        if self._checkpointer is not None:
            self._checkpointer.stop()
        try:
            self.conn.execute("PRAGMA main.wal_checkpoint(TRUNCATE)")
            self.conn.execute("PRAGMA replica.wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # a store that cannot be written still closes; what was committed is in the WAL
        finally:
            self.conn.close()

    def open_reader(self) -> sqlite3.Connection:
        """A read-only connection for another thread: the ledger with the current replica
        attached, and the names of the read contract (module doc). Close it after use;
        it keeps reading the replica it opened even if a switch happens meanwhile."""
        return attach.open_reader(self.path, self.replica_path)

    def meta(self, key: str, default: str | None = None) -> str | None:
        return self._meta.get(key, default)

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as tx:
            tx.set_meta(key, value)

    # -- the outbox -------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self.outbox.last_seq

    @property
    def acked_seq(self) -> int:
        return self.outbox.acked_seq

    def outbox_depth(self) -> int:
        return self.outbox.depth()

    def first_seq_since(self, at: datetime) -> int | None:
        """The first of this daemon's events still kept whose `at` is at or after `at`."""
        row = self.conn.execute("SELECT MIN(seq) FROM events WHERE at >= ?", (iso_utc(at),)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def events_after(self, seq: int, limit: int = 500) -> list[Event]:
        return self.outbox.events_after(seq, limit)

    def recent_events(self, limit: int = 100, types: Iterable[str] | None = None) -> list[Event]:
        return self.outbox.recent_events(limit, types)

    def ack(self, applied_seq: int) -> None:
        """The central system has applied every event up to `applied_seq` (never beyond
        the last one: the sync session refuses such an ack before it gets here)."""
        applied_seq = min(applied_seq, self.last_seq)
        if applied_seq <= self.acked_seq:
            return
        with self.transaction():
            self.outbox.record_ack(applied_seq)

    @property
    def first_seq(self) -> int:
        """The oldest event still held (acknowledged ones stay for a retention period)."""
        return self.outbox.first_seq

    def prune_acked(self, before: datetime, keep_max: int) -> int:
        """Delete acknowledged events older than `before` or beyond the newest `keep_max`
        acknowledged ones; unacknowledged events are never deleted. Returns how many."""
        with self.transaction():
            return self.outbox.prune(before, keep_max)

    def retention_cutoffs(
        self, now: datetime, keep: timedelta | None, keep_audit: timedelta | None, *, no_show_work: bool = True
    ) -> Cutoffs:
        """Before when the ledger's old rows may go (sync/store/retention.py)."""
        return retention.cutoffs(self.conn, now, keep, keep_audit, self.acked_seq, no_show_work=no_show_work)

    def prune_ledger(self, sweep: Sweep, cut: Cutoffs, batch: int) -> int:
        """One batch of the ledger's retention, in a transaction of its own: at most `batch`
        rows looked at, those old enough that the central system has deleted. Returns how
        many; `sweep` says how far it got and when it is done."""
        with self.transaction():
            return retention.sweep_batch(self.conn, cut, self.acked_seq, sweep, batch, self.daemon_id)

    def emit(self, type_: str, now: datetime, **fields: Any) -> Event:
        """An event outside the tap path (alarms, health changes): still numbered and kept."""
        with self.transaction() as tx:
            ev = tx.emit(type_, now, **fields)
        return ev

    def audit(self, now: datetime, operator: str, action: str, detail: dict[str, Any]) -> None:
        with self.transaction() as tx:
            tx.audit(now, operator, action, detail)

    # -- the replica: reads -------------------------------------------------------------

    def member_for_card(self, card: str | Card) -> str | None:
        """The member a card read belongs to, by the typed match rule (rules/credential.py);
        None when no enrolled card matches, or when cards of several members do."""
        return self.replica.member_for_card(card)

    def resolve_card(self, card: Card) -> Resolution:
        """What member_for_card decides, with the enrolled cards that matched."""
        return self.replica.resolve_card(card)

    def card_key(self, text: str) -> str:
        """The key a card string is stored under at this site: a typed key as it is, an
        untyped string by its shape (rules.credential.card_from_text, with this site's
        rule for 10 digits). ValueError when the text is no card. For enrolment."""
        return card_from_text(text, self.ten_digits).key

    @property
    def cards_typed_as(self) -> TenDigits:
        """The rule for 10-digit card strings the replica's cards were typed under."""
        try:
            return TenDigits(self.replica.meta(CARDS_TYPED_AS) or "")
        except ValueError:  # absent (a replica from before the key) or not a rule
            return self._opened_with

    @property
    def card_rule_changed(self) -> bool:
        """The site's rule is not the one the cards were typed under (its EM readers were
        swapped between decimal and hex): a member's 10-digit card would not match what
        the new readers read until a snapshot types the cards again. The link asks for
        one (resync `card_rule`); cards read meanwhile are looked up at the central."""
        return self.cards_typed_as != self.ten_digits

    def set_ten_digits(self, rule: TenDigits) -> None:
        """A reload changed the site's rule: cards written from now on use it. The rule
        the stored cards have is written down first, so a restart before the snapshot
        still knows they must be typed again."""
        if rule == self.ten_digits:
            return
        if self.replica.meta(CARDS_TYPED_AS) is None:
            with self.transaction():
                self.replica.set_meta(CARDS_TYPED_AS, self.cards_typed_as.value)
        self.ten_digits = rule
        self.replica.ten_digits = rule

    def read_card(self, text: str) -> Card:
        """A card typed in by hand (`gated tap`, the console) as this site reads it."""
        return card_from_text(text, self.ten_digits)

    def member(self, member_id: str) -> Member | None:
        return self.replica.member(member_id)

    def passes_of(self, member_id: str) -> list[Pass]:
        return self.replica.passes_of(member_id)

    def get_pass(self, pass_id: str) -> Pass | None:
        return self.replica.get_pass(pass_id)

    def balance(self, pass_id: str) -> Decimal | None:
        return self.replica.balance(pass_id)

    def get_booking(self, booking_id: str) -> Booking | None:
        return self.replica.get_booking(booking_id)

    def booking_status(self, booking_id: str) -> BookingStatus | None:
        b = self.get_booking(booking_id)
        return None if b is None else b.status

    def bookings_of(self, member_id: str, start: datetime, end: datetime) -> list[Booking]:
        return self.replica.bookings_of(member_id, start, end)

    def bookings_between(self, start: datetime, end: datetime) -> list[Booking]:
        return self.replica.bookings_between(start, end)

    def counts(self) -> dict[str, int]:
        out = self.replica.counts()
        out["events"] = int(self.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return out

    def view(self, member_id: str | None, gate: Gate, now: datetime) -> MemberView:
        """What decide() needs for this member at this gate: indexed look-ups only
        (sync/store/member_view.py)."""
        return member_view(self.replica, self.ledger, member_id, gate, now)

    # -- the replica: what the central system sends ---------------------------------------

    def apply_sync(self, batch: SyncBatch, now: datetime, *, snapshot: bool = False, synced: bool = True) -> None:
        """Members, passes and bookings replace by id, whole. A snapshot also removes
        everything it does not list (in one transaction that holds the loop: tests,
        seeding; the link imports snapshots with sync/snapshot/importer.py). Our own outcomes and
        deductions are kept (module doc). `synced=False`: one member's records (a look-up
        answer), which say nothing of how current the rest is: the replica's age stands."""
        self._apply(batch, now, snapshot=snapshot, delta_seq=None, synced=synced)

    def apply_delta(self, batch: SyncBatch, delta_seq: int, now: datetime) -> None:
        """One numbered delta, whole, with the replica's new position, atomically."""
        self._apply(batch, now, snapshot=False, delta_seq=delta_seq)

    def _apply(self, batch: SyncBatch, now: datetime, *, snapshot: bool, delta_seq: int | None,
               synced: bool = True) -> None:
        # three steps, in this order, each safe to be the last before a crash (Ledger)
        tz = self.site.timezone
        self.ledger.recheck_late((b.id, instant_ts(b.ends_at, tz)) for b in batch.bookings if b.status == "booked")
        with self.transaction():
            self.replica.apply(batch, now, snapshot=snapshot, synced=synced)
            if delta_seq is not None:
                self.replica.set_meta(DELTA_SEQ_KEY, str(delta_seq))
            if snapshot:  # every card typed again, under today's rule
                self.replica.set_meta(CARDS_TYPED_AS, self.ten_digits.value)
        self._settle_enrolments()
        # a cancelled booking keeps its outcome (Ledger.forget_outcomes): only those gone go
        gone = list(batch.remove_bookings)
        if snapshot:
            gone += [
                r[0]
                for r in self.conn.execute(
                    "SELECT o.booking_id FROM main.booking_outcomes o LEFT JOIN replica.bookings b "
                    "ON b.id = o.booking_id WHERE b.id IS NULL"
                )
            ]
        self.ledger.forget_outcomes(gone)

    def _settle_enrolments(self) -> None:
        """After a sync: the desk's card enrolments the central system has dealt with go
        (sync/store/enrolment.py) — a ledger transaction of its own, after the replica's."""
        if self.conn.execute("SELECT 1 FROM main.card_enrolments LIMIT 1").fetchone() is not None:
            with self.transaction():
                enrolment.settle(self.conn, self.acked_seq)

    def switch_replica(self, new: Path) -> Path:
        """Make `new` — a complete replica file on disk, built by the snapshot worker —
        the replica, in a few milliseconds on the loop:

        1. DETACH the current replica, ATTACH the new one AS `replica` (in memory only);
        2. one ledger transaction: the bookings the worker found behind the no-show
           cursor go to `due_recheck`, the outcomes of bookings the new replica lacks
           go (a cancelled one keeps its outcome: Ledger.forget_outcomes), the cursor steps back to where the worker looked, the pointer
           names the new file;
        Returns the old file, for the caller to delete off the loop (unlinking a large
        file takes tens of milliseconds; `ReplicaFiles.remove`).

        A crash before 2's COMMIT leaves the old replica current (the new file is an
        orphan, deleted at the next start); after it, the new one. On an error the old
        replica is attached again and the error raised.
        """
        old = self.replica_path
        attach.switch(self.conn, new, old, replica=self.replica, ledger=self.ledger,
                      transaction=self.transaction, acked_seq=self.acked_seq)
        self.replica_path = new
        # how far the central system got, as the new replica's passes say; marked down at
        # once while our events are held: a tap in the moments before the link settles the
        # numbering must count the held charges
        self.numbering.switched(self)
        return old

    @property
    def replica_generation(self) -> int:
        """Counts the replica files this store has had; a switch moves it on."""
        return int(self._meta.get(REPLICA_GENERATION_KEY, "0") or 0)

    @property
    def delta_seq(self) -> int:
        """The last delta (or the snapshot's) the replica reflects; 0 before any."""
        return int(self.replica.meta(DELTA_SEQ_KEY, "0") or 0)

    @property
    def snapshot_id(self) -> str | None:
        """The snapshot the replica was last rebuilt from; None before the first."""
        return self.replica.meta(SNAPSHOT_ID_KEY)

    def last_sync_at(self) -> datetime | None:
        v = self.replica.meta(LAST_SYNC_KEY)
        return None if v is None else dt(float(v))

    # -- the ledger -------------------------------------------------------------------

    def commit_tap(
        self, tap: Tap, *, passed: bool, now: datetime, unconfirmed: str | None = None,
        request: DeskRequest | None = None,
    ) -> Committed:
        """One tap, whole: the access event, and on a confirmed passage the deduction,
        attendance and presence. No passage, no deduction, no attendance. The tap's intent
        (open_intent) is resolved in the same transaction; `unconfirmed` (a cause) reports
        it as `passage_unconfirmed` in that transaction. `request`: the desk's check-in it
        is, done (a grant) or forgotten (a denial) in that transaction."""
        return self.ledger.commit_tap(tap, passed=passed, now=now, unconfirmed=unconfirmed, request=request)

    # -- grant intents (sync/store/intents.py) ------------------------------------------------

    def open_intent(self, tap: Tap, now: datetime, request: DeskRequest | None = None) -> Tap:
        """Write that the tap's gate is about to open for its grant (and use up its QR
        token): the tap with its intent. Called before the relay is pulsed: if this raises,
        an entry must not open (sync.store.intents.TokenUsed: the token was used up meanwhile,
        `qr_replayed`). `request`: the desk's check-in it is, begun with the intent."""
        return tap.with_intent(self.intents.open(tap, now, request), now)

    def set_gates(self, gates: Mapping[str, Gate]) -> None:
        """The gates' rules: the taps decided while this daemon's own history of the day
        was missing are decided again by them when it comes back (sync/store/repairs.py)."""
        self.gates = dict(gates)
        self.ledger.gates = self.gates

    def own_history_gap(self) -> tuple[int, int] | None:
        """While our lost events are wanted: the entries and walk-in charges decided since
        the loss, rechecked when they come (sync/store/history_recheck.py); None: none wanted."""
        w = own_history.wanted(self.conn)
        return None if w is None else history_recheck.counts(self.conn, w)

    def set_site_wide_qr(self, on: bool) -> None:
        """A QR code's first use becomes a `qr_used` event for the site's other daemons
        (the daemon turns it on when it shares with them, sync/store/peer_events.py)."""
        self.site_wide_qr = on
        self.ledger.site_wide_qr = on

    def open_intents(self) -> list[dict[str, Any]]:
        return self.intents.pending()

    def report_unconfirmed(self, now: datetime) -> Committed:
        """Intents a previous run left (a crash cut their commit) → passage_unconfirmed events."""
        return self.intents.report_unconfirmed(now)

    def probe(self, now: datetime) -> None:
        """One small durable write: proves the store can record a tap right now (raises
        sqlite3.Error / OSError as a tap's commit would)."""
        self.set_meta("storage.probed_at", str(now.timestamp()))
        self.flush_now()

    def commit_override(
        self, gate: Gate, operator: str, reason: str, now: datetime, *, passed: bool = True,
        request: DeskRequest | None = None,
    ) -> Committed:
        return self.ledger.commit_override(gate, operator, reason, now, passed=passed, request=request)

    def mark_attended(
        self, booking_id: str, operator: str, *, refund: bool, now: datetime, waiting: Sequence[str] = (),
        request: DeskRequest | None = None,
    ) -> Committed:
        """`waiting`: the daemons not heard up to now; a refund not found while they are
        waits for them (Ledger.mark_attended). `request`: the desk's, done with it."""
        return self.ledger.mark_attended(booking_id, operator, refund=refund, now=now, waiting=waiting,
                                         request=request)

    def correct_stamps(self, since: datetime, delta: float) -> dict[str, int]:
        """The clock trusted again `delta` seconds off the time acted at since `since`: this
        run's stamps since then moved by it (Ledger.correct_stamps)."""
        return self.ledger.correct_stamps(since, delta, self.run_marks)

    def clamp_own_passages(self, now: datetime) -> int:
        """The clock stepped back to `now`: our passages stamped after it brought back to
        it (Ledger.clamp_own_passages)."""
        return self.ledger.clamp_own_passages(now)

    def settle_refunds(
        self, now: datetime, waiting: Callable[[datetime], list[str]], *, give_up: bool = True,
    ) -> Committed:
        """The desk's refunds that wait to hear the site, settled where they can be
        (Ledger.settle_refunds; `give_up`: a day's wait may end by `now`)."""
        return self.ledger.settle_refunds(now, waiting, give_up=give_up)

    def refund_wanted(self, booking_id: str) -> refunds_wanted.RefundWanted | None:
        """The refund the desk asked for with this booking, if it still waits."""
        return refunds_wanted.get(self.conn, booking_id)

    def refund_given(self, booking_id: str) -> dict[str, Any] | None:
        """The walk-in given back with this booking, if any: its pass, the amount and the
        pass's balance now (a no-show fee given back, when a gate's attendance came late, is not it)."""
        r = self.conn.execute(
            "SELECT pass_id, amount FROM deductions r WHERE booking_id = ? AND cause = 'refund' "
            f"AND NOT {_FEE_REFUND} ORDER BY seq DESC LIMIT 1",
            (booking_id,),
        ).fetchone()
        if r is None:
            return None
        balance = self.balance(str(r[0]))
        return {"pass": str(r[0]), "amount": amount_json(-Decimal(r[1])),
                "balance": None if balance is None else amount_json(balance)}

    def refunds_waiting(self) -> int:
        return refunds_wanted.count(self.conn)

    def enrol_card(self, card: str, member_id: str, operator: str, now: datetime) -> Committed:
        """The desk gives `card` to a member: it works at once and goes upstream as a
        `card_enrolled` event (sync/store/enrolment.py), under its typed key (`card` is a typed
        key, as an unknown card's access event carries it, or text this site's readers
        would send). ValueError when it is no card."""
        key = self.card_key(card)
        with self.transaction() as tx:
            enrolment.enrol(tx, key, member_id, operator, now)
        return tx.committed

    def set_member_photo(self, member_id: str, jpeg: bytes, operator: str, now: datetime) -> Committed:
        """A photo the desk took: kept in the ledger (a snapshot does not take it away),
        sent upstream as a `member_photo` event (sync/store/photos.py). ValueError when the bytes
        are not a JPEG within the bound."""
        if not photos.jpeg(jpeg):
            raise ValueError(f"a JPEG of at most {photos.PHOTO_MAX_BYTES} bytes")
        with self.transaction() as tx:
            photos.save(tx, member_id, jpeg, operator, now)
        return tx.committed

    def adjust_points(
        self, member_id: str, points: int, operator: str, reason: str, now: datetime, request: DeskRequest | None = None,
    ) -> Committed:
        return self.ledger.adjust_points(member_id, points, operator, reason, now, request)

    # -- the desk's requests, each done once (sync/store/desk_requests.py) ---------------------

    def desk_request(self, req: DeskRequest) -> desk_requests.Seen | None:
        """The request as made before (this run or an earlier one), None if never (or forgotten)."""
        return desk_requests.find(self.conn, req)

    def begin_desk_request(self, req: DeskRequest, now: datetime) -> None:
        """About to open a gate for it (before the pulse; flushed() before pulsing)."""
        with self.transaction():
            desk_requests.begin(self.conn, req, now)

    def forget_desk_request(self, req: DeskRequest) -> None:
        """A begun request the gate did not act on after all: its retry does it."""
        with self.transaction():
            desk_requests.forget(self.conn, req)

    def save_desk_answer(self, req: DeskRequest, answer: dict[str, Any]) -> None:
        """The answer the desk was given for a done request, for its retry to get again."""
        with self.transaction():
            desk_requests.save_answer(self.conn, req, answer)

    def record_peer_events(
        self, sender: str, events: list[dict[str, Any]], zones: dict[str, str],
        mark: tuple[int | None, float | None] | None = None, now: datetime | None = None,
    ) -> dict[str, int]:
        """Another daemon of the site's events: passages, booking outcomes, charges,
        refunds, used QR codes (sync/store/peer_events.py), with how far that daemon is now heard
        (`mark`: heard_seq, heard_through; sync/link/peer_marks.py), in one transaction.
        Returns counts by kind."""
        return self.ledger.record_peer_events(sender, events, zones, mark, now)

    def save_peer_mark(self, peer: str, heard_seq: int | None, heard_through: float | None) -> None:
        """How far another daemon of the site is heard; (None, None) forgets it."""
        self.ledger.save_peer_mark(peer, heard_seq, heard_through)

    def peer_marks(self) -> dict[str, tuple[int | None, float | None]]:
        """Each other daemon of the site: (heard_seq, heard_through) as last written."""
        return self.ledger.peer_marks()

    def run_due(
        self, policy: Policy, now: datetime, horizon: NoShowHorizon | None = None,
        unheard: Callable[[datetime], list[str]] | None = None, settled_by_site: datetime | None = None,
    ) -> Committed:
        """No-shows and loyalty credits due up to and including `now`, each exactly once
        (no-shows only up to `horizon`; at the first run, from where the site's previous
        worker had settled, `settled_by_site`: Ledger.run_due). Nothing while the numbering is
        unsure: the part of the ledger that was lost may have settled them; and then, while
        its events are wanted back, no no-show of a class they may bear on (Ledger.run_due,
        here whether or not a link asks for them)."""
        if self.unsure_after is not None:
            return Committed()
        return self.ledger.run_due(policy, now, horizon, unheard, settled_by_site)

    def leave_time_driven_work(self) -> None:
        """This daemon does not do the site's time-driven work (`time_driven_work: false`):
        should it come back to it, it settles what falls due from then on, not from where
        it left off (Ledger.leave_no_shows). Called by the scheduler; a write only once."""
        self.ledger.leave_no_shows()

    def time_driven_work(self) -> tuple[datetime | None, datetime | None]:
        """For the heartbeat: where this daemon began the site's time-driven work (None:
        it does not do it now), and how far it has settled (Ledger.work_claim)."""
        began, through = self.ledger.work_claim()
        return (None if began is None else dt(began)), (None if through is None else dt(through))

    def unsettled_ending(self, after: datetime, until: datetime) -> int:
        """Booked bookings without an outcome here that ended after `after`, by `until`:
        the no-shows a wait for the site's other daemons holds (gated/knowledge.py)."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM replica.bookings b LEFT JOIN main.booking_outcomes o ON o.booking_id = b.id "
            "WHERE b.status = 'booked' AND b.ends_at > ? AND b.ends_at <= ? AND o.booking_id IS NULL",
            (after.timestamp(), until.timestamp()),
        ).fetchone()
        return int(row[0])

    def points(self, member_id: str) -> int:
        return self.ledger.points(member_id)

    def zone_presence(self, member_id: str, zone: str) -> ZonePresence:
        return self.ledger.zone_presence(member_id, zone)

    def qr_seen(self, token_id: str) -> bool:
        return self.ledger.qr_seen(token_id)

    def events_not_ours(self, events: Sequence[dict[str, Any]]) -> list[int]:
        """Of events heard under our own daemon id, the seqs this ledger holds another
        event under, or has not reached yet: another daemon numbers under our id. An event
        we no longer hold (pruned) says nothing."""
        differ = []
        for ev in events:
            seq, eid = ev.get("seq"), ev.get("id")
            if not isinstance(seq, int):
                continue
            row = self.conn.execute("SELECT id FROM main.events WHERE seq = ?", (seq,)).fetchone()
            if (row is None and seq > self.last_seq) or (row is not None and row[0] != eid):
                differ.append(seq)
        return differ

    def own_qr_claims(self, tokens: Sequence[str]) -> dict[str, tuple[datetime, bool]]:
        """Our claims on these QR codes as the ledger holds them: token -> (when, whether
        the gate opened on it) (sync/store/qr_claims.py)."""
        return qr_claims.own_claims(self.conn, tokens)


__all__ = [
    "SCHEMA_VERSION",
    "Committed",
    "Event",
    "PassRecord",
    "REPLICA_FILE_KEY",
    "Store",
    "StoreError",
    "SyncBatch",
    "Transaction",
    "VIEW_HORIZON",
    "open_reader",
]
