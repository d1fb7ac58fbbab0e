"""The sync link's only door into the store and the snapshot importer: every read and
write the protocol causes is one method here (their interfaces change under the link
while the store is reworked; the link changes in this one place). sync/link/link.py and
its parts never hold the store itself, and reach the snapshot import only through it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from rules.model import Gate
from sync.link.session_config import StoreState
from sync.protocol import Delta, LookupResponse, SnapshotHeader
from sync.snapshot import SnapshotError, SnapshotImporter, SnapshotRejected
from sync.store import Event, Store, SyncBatch
from sync.store.own_history import Wanted

# what the snapshot steps below raise (SnapshotRejected: the worker found a chunk invalid)
__all__ = ["SnapshotError", "SnapshotRejected", "StorePort"]


class StorePort:
    def __init__(self, store: Store, daemon: str, batch_rows: int):
        self.store = store
        self.daemon = daemon
        self.importer = SnapshotImporter(store, daemon, batch_rows=batch_rows)
        store.hold_unsure()  # our events leave through here: none under a number in doubt
        # how far the central system had applied our events, as the passes of the last
        # sync said (None: it sent none); read once by central_applied
        self._word: int | None = None

    def state(self) -> StoreState:
        s = self.store
        return StoreState(
            acked_seq=s.acked_seq,
            last_seq=s.sendable_seq,
            numbering_unsure=s.unsure_after is not None,
            delta_seq=s.delta_seq,
            has_snapshot=s.snapshot_id is not None,
            snapshot_id=s.snapshot_id,
            snapshot_reason="card_rule" if s.card_rule_changed else None,
            peer_marks=s.peer_marks(),
            own_history=s.own_history_wanted(),
        )

    # -- where the store stands (health, the session's inputs) ---------------------------

    @property
    def last_seq(self) -> int:
        """Our last event that may leave (all, unless the numbering is unsure)."""
        return self.store.sendable_seq

    # -- the numbering, when the ledger's mark of what it sent is gone (sync/store/numbering.py)

    @property
    def numbering_unsure(self) -> bool:
        return self.store.unsure_after is not None

    def settle_numbering(self, central_seq: int, now: datetime, site_seq: int | None = None) -> None:
        """Raises OSError or sqlite3.Error when it cannot be done (the events stay held)."""
        self.store.settle_numbering(central_seq, now, site_seq)

    def own_history_wanted(self) -> Wanted | None:
        return self.store.own_history_wanted()

    def record_own_history(
        self, events: list[dict[str, Any]], zones: dict[str, str], done: bool, *, expired: bool = False,
        now: datetime | None = None,
    ) -> dict[str, int]:
        """A chunk of our lost events (sync/store/own_history.py); nothing once none is wanted."""
        wanted = self.store.own_history_wanted()
        if wanted is None:
            return {}
        return self.store.record_own_history(wanted, events, zones, done, expired=expired, now=now)

    def set_gates(self, gates: Mapping[str, Gate]) -> None:
        """The gates' rules, for the recheck of what was decided while our lost events
        were missing (sync/store/repairs.py)."""
        self.store.set_gates(gates)

    def own_history_gap(self) -> tuple[int, int] | None:
        """The entries and walk-in charges decided since the loss, rechecked when our lost
        events come (None: none wanted)."""
        return self.store.own_history_gap()

    def central_applied(self) -> int | None:
        """How far the central system had applied our events, as the passes of the sync
        just applied say (None: it sent none). Not the replica's: while unsure, the store
        marks its passes down to the ledger's end (Store.hold_unsure)."""
        word, self._word = self._word, None
        return word

    def _heard(self, passes: Sequence[Any]) -> None:
        if passes:
            self._word = max(p.applied.get(self.daemon, 0) for p in passes)

    @property
    def acked_seq(self) -> int:
        return self.store.acked_seq

    @property
    def delta_seq(self) -> int:
        return self.store.delta_seq

    def last_sync_at(self) -> datetime | None:
        return self.store.last_sync_at()

    def outbox_depth(self) -> int:
        return self.store.outbox_depth()

    @property
    def card_rule_changed(self) -> bool:
        """The replica's cards were typed under another rule (Store.card_rule_changed)."""
        return self.store.card_rule_changed

    # -- our events: the uplink, replays, catch-ups ----------------------------------------

    def listen(self, listener: Callable[[list[Event]], None]) -> None:
        """`listener` is called with the events of every committed transaction."""
        self.store.listeners.append(listener)

    def stop_listening(self, listener: Callable[[list[Event]], None]) -> None:
        if listener in self.store.listeners:
            self.store.listeners.remove(listener)

    async def durable_events_after(self, seq: int, limit: int) -> list[Event]:
        """Our events after `seq`, returned once they are on disk. The ledger commits
        without waiting for the disk (sync/store/durability.py); an event sent before its
        commit is flushed could be lost in a power cut, and its seq then given to another
        event, which the central system and the site's other daemons, holding the first,
        would ignore as a repeat. Raises OSError when the log cannot be flushed, or the
        mark of what was sent written (sync/store/sent_mark.py)."""
        events = [e for e in self.store.events_after(seq, limit=limit) if e["seq"] <= self.store.sendable_seq]
        if events:
            await self.store.flushed()  # every commit so far: the ones just read among them
            # and that they left: a ledger put back from a copy numbers on after them
            await self.store.sent_through(events[-1])
        return events

    def first_held_seq(self) -> int:
        return self.store.first_seq

    def first_seq_since(self, at: datetime) -> int | None:
        return self.store.first_seq_since(at)

    def ack(self, applied_seq: int) -> None:
        self.store.ack(applied_seq)

    def prune(self, before: datetime, keep_max: int) -> int:
        return self.store.prune_acked(before, keep_max)

    def alarm(self, kind: str, detail: str, now: datetime, **fields: Any) -> None:
        """An `alarm` event (the link's own: an ack beyond the last seq, a QR code used twice, ...)."""
        self.store.emit("alarm", now, gate=None, kind=kind, detail=detail, **fields)

    def events_not_ours(self, events: list[dict[str, Any]]) -> list[int]:
        """The seqs of these events (under our daemon id) that the ledger numbered otherwise."""
        return self.store.events_not_ours(events)

    def own_qr_claims(self, tokens: list[str]) -> dict[str, tuple[datetime, bool]]:
        """Our claims on these QR codes that the ledger holds: (when, the gate opened)."""
        return self.store.own_qr_claims(tokens)

    # -- the site's other daemons --------------------------------------------------------

    def record_peer_events(
        self, sender: str, events: list[dict[str, Any]], zones: dict[str, str],
        mark: tuple[int | None, float | None] | None, now: datetime,
    ) -> dict[str, int]:
        return self.store.record_peer_events(sender, events, zones, mark, now)

    def save_peer_mark(self, peer: str, heard_seq: int | None, heard_through: float | None) -> None:
        self.store.save_peer_mark(peer, heard_seq, heard_through)

    # -- the central system's data -------------------------------------------------------

    def _batch(self, members: Sequence[Any], passes: Sequence[Any], bookings: Sequence[Any], remove: Any = None) -> SyncBatch:
        return SyncBatch(
            members=list(members),
            passes=[p.for_daemon(self.daemon) for p in passes],
            bookings=list(bookings),
            remove_members=list(remove.members) if remove else [],
            remove_passes=list(remove.passes) if remove else [],
            remove_bookings=list(remove.bookings) if remove else [],
        )

    def apply_delta(self, delta: Delta, now: datetime) -> None:
        batch = self._batch(delta.members, delta.passes, delta.bookings, delta.remove)
        self.store.apply_delta(batch, delta.delta_seq, now)
        self._heard(delta.passes)

    def apply_lookup(self, resp: LookupResponse, now: datetime) -> None:
        # one member's records: a stale replica stays stale (a look-up made it "fresh" for
        # every member, and members the central had removed walked in)
        self.store.apply_sync(self._batch(resp.members, resp.passes, resp.bookings), now, synced=False)
        self._heard(resp.passes)

    def member_count(self) -> int:
        return int(self.store.conn.execute("SELECT COUNT(*) FROM members").fetchone()[0])

    # -- the snapshot import (sync/snapshot/) ----------------------------------------------

    @property
    def importing(self) -> bool:
        return self.importer.active

    @property
    def import_report(self) -> dict[str, Any]:
        """The last import's figures (bench, logs)."""
        return self.importer.report

    async def stage(self, header: SnapshotHeader, payload: bytes, first: bool, now: datetime) -> None:
        """One chunk to the snapshot worker (sync/snapshot/importer.py)."""
        if first:
            await self.importer.begin(header, now)
        await self.importer.add(header, payload)

    async def built(self) -> int:
        """Wait for the worker to build the replica (off the loop); the members it holds."""
        report = await self.importer.built()
        return int(report["counts"]["members"])

    async def commit(self) -> None:
        """Switch the built replica in (a few ms)."""
        await self.importer.switch()
        self._word = self.store.numbering.switched_word  # a whole new replica: every pass the central system's

    async def abort(self) -> None:
        await self.importer.abort()

    def abort_now(self) -> None:
        """`abort` without waiting (the link's task is being cancelled)."""
        self.importer.abort_now()

    async def cleanup(self) -> None:
        await self.importer.cleanup()
