"""The sync link's only door into the store and the snapshot importer: every read and
write the protocol causes is one method here (their interfaces change under the link
while the store is reworked; the link changes in this one place)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sync.batch import SyncBatch
from sync.protocol import Delta, LookupResponse, SnapshotHeader
from sync.session_config import Replica
from sync.snapshot import SnapshotImporter
from sync.store import Store


class LinkStore:
    def __init__(self, store: Store, daemon: str, batch_rows: int):
        self.store = store
        self.daemon = daemon
        self.importer = SnapshotImporter(store, daemon, batch_rows=batch_rows)

    def state(self) -> Replica:
        s = self.store
        return Replica(
            acked_seq=s.acked_seq,
            last_seq=s.last_seq,
            delta_seq=s.delta_seq,
            has_snapshot=s.snapshot_id is not None,
            snapshot_reason="card_rule" if s.card_rule_changed else None,
            peer_marks=s.peer_marks(),
        )

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

    def apply_lookup(self, resp: LookupResponse, now: datetime) -> None:
        self.store.apply_sync(self._batch(resp.members, resp.passes, resp.bookings), now)

    def ack(self, applied_seq: int) -> None:
        self.store.ack(applied_seq)

    def first_held_seq(self) -> int:
        return self.store.first_seq

    def prune(self, before: datetime, keep_max: int) -> int:
        return self.store.prune_acked(before, keep_max)

    def member_count(self) -> int:
        return int(self.store.conn.execute("SELECT COUNT(*) FROM members").fetchone()[0])

    @property
    def importing(self) -> bool:
        return self.importer.active

    async def stage(self, header: SnapshotHeader, payload: bytes, first: bool, now: datetime) -> None:
        """One chunk to the snapshot worker (sync/snapshot.py)."""
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

    async def abort(self) -> None:
        await self.importer.abort()

    async def cleanup(self) -> None:
        await self.importer.cleanup()
