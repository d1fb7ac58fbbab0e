"""What the protocol session (sync/link/session.py) asks its shell to do: plain, immutable
records, performed in order by sync/link/link.py. Tests compare them by value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sync.protocol import Ack, CatchUpRequest, Delta, LookupResponse, ReplayRequest, SnapshotHeader
from sync.store.own_history import Wanted


@dataclass(frozen=True, slots=True)
class Subscribe:
    topic: str
    qos: int
    no_local: bool = False


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True, slots=True)
class StoreAck:
    """Mark every event up to `applied_seq` acknowledged in the store."""

    applied_seq: int


@dataclass(frozen=True, slots=True)
class SettleNumbering:
    """The store's numbering is unsure (sync/store/numbering.py) and the central system's
    ack says how far it got: settle it, then hand the session the ack again."""

    ack: Ack


@dataclass(frozen=True, slots=True)
class ApplyDelta:
    """Apply the delta in one transaction with its `delta_seq`."""

    delta: Delta


@dataclass(frozen=True, slots=True)
class StageChunk:
    """Stage a snapshot chunk: its header (read on arrival) and its payload as received,
    for the snapshot worker to validate and build from (`first`: start a new import
    first). After the `last` one, once the worker has built it, call `snapshot_staged`
    with the members it holds; on an import error, `snapshot_failed` (invalid records:
    `snapshot_rejected`)."""

    header: SnapshotHeader
    payload: bytes
    first: bool
    last: bool


@dataclass(frozen=True, slots=True)
class CommitSnapshot:
    """Switch the built snapshot in (a few ms); then call `snapshot_committed` (or
    `snapshot_failed`)."""

    snapshot_id: str
    delta_seq: int


@dataclass(frozen=True, slots=True)
class AbortSnapshot:
    reason: str


@dataclass(frozen=True, slots=True)
class ApplyLookup:
    """Apply a look-up answer's records; wake whoever waits on `correlation` (nobody when
    it came after `lookup_timeout`: applied all the same, the next tap finds the card)."""

    correlation: bytes
    response: LookupResponse


@dataclass(frozen=True, slots=True)
class RecordPeerEvents:
    """Another daemon of the site's events that this daemon must know (sync/store/peer_events.py):
    passages, booking outcomes, charges, refunds, used QR codes — and, in the same
    transaction, how far this daemon has now heard that daemon (`mark`: heard_seq,
    heard_through; sync/link/peer_marks.py), or None when it did not move. Repeats come
    (resends, catch-ups): recording is idempotent."""

    sender: str
    events: tuple[dict[str, Any], ...]
    zones: dict[str, str]
    mark: tuple[int | None, float | None] | None = None


@dataclass(frozen=True, slots=True)
class StorePeerMark:
    """Write how far this daemon has heard `peer` (a heartbeat moved it)."""

    peer: str
    heard_seq: int | None
    heard_through: float | None


@dataclass(frozen=True, slots=True)
class ServeCatchUp:
    """Another daemon of the site asks for this daemon's events again: read them from the
    store (from `request.from_seq`, or since `request.since`) and publish
    `Session.catch_up_answer` chunks."""

    request: CatchUpRequest


@dataclass(frozen=True, slots=True)
class RaiseAlarm:
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class CheckOwnEvents:
    """A batch under our own daemon id on the site's events topic, which we subscribe to
    with noLocal: our own come back only through a bridge. Compare them with the ledger's
    (same seq, same id: ours); any other is a second daemon under our id — call
    `Session.twin_seen` (sync/link/session.py)."""

    events: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class ReadReplay:
    """Find the oldest event the store still holds, then call `replay_ready`."""

    request: ReplayRequest


@dataclass(frozen=True, slots=True)
class PublishHealth:
    pass


@dataclass(frozen=True, slots=True)
class PruneAcked:
    """Delete acknowledged events older than `older_than` seconds, or beyond the newest
    `keep_max` acknowledged ones (the retention for replays is over)."""

    older_than: float
    keep_max: int


@dataclass(frozen=True, slots=True)
class RecordOwnHistory:
    """A chunk of our own events the ledger lost, from the central system
    (sync/store/own_history.py); `done`: the last one. `wanted`: what was asked for — wanted
    again (Session.want_history) when the store cannot record the chunk."""

    events: tuple[dict[str, Any], ...]
    zones: dict[str, str]
    done: bool
    wanted: Wanted
    expired: bool = False  # a day passed without them: no longer wanted, never come back


@dataclass(frozen=True, slots=True)
class WakeUplink:
    """There may be events to send (again): ask `uplink_after`."""


Action = (
    Subscribe
    | Publish
    | StoreAck
    | SettleNumbering
    | ApplyDelta
    | StageChunk
    | CommitSnapshot
    | AbortSnapshot
    | ApplyLookup
    | RecordPeerEvents
    | RecordOwnHistory
    | StorePeerMark
    | ServeCatchUp
    | RaiseAlarm
    | CheckOwnEvents
    | ReadReplay
    | PublishHealth
    | PruneAcked
    | WakeUplink
)
