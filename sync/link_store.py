"""The sync link's only door into the store and the snapshot importer: every read and
write the protocol causes is one method here (their interfaces change under the link
while the store is reworked; the link changes in this one place)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sync.batch import SyncBatch
from sync.protocol import Delta, LookupResponse, SnapshotChunk
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
        )

    def _batch(self, members: Sequence[Any], passes: Sequence[Any], bookings: Sequence[Any], remove: Any = None) -> SyncBatch:
        tz = self.store.site.timezone
        return SyncBatch(
            members=[m.to_domain() for m in members],
            passes=[p.record_for(self.daemon) for p in passes],
            bookings=[b.to_domain(tz) for b in bookings],
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

    async def stage(self, chunk: SnapshotChunk, first: bool, now: datetime) -> None:
        if first:
            await self.importer.begin(chunk)
        await self.importer.add(chunk, now)

    async def commit(self, now: datetime) -> None:
        await self.importer.finish(now)

    async def abort(self) -> None:
        await self.importer.abort()

    async def cleanup(self) -> None:
        await self.importer.cleanup()
