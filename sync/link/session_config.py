"""The protocol session's configuration (from the gate's `mqtt:` settings) and the state of
the gate's store a session starts from (`StoreState`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sync.link.own_history import Wanted
from sync.link.settings import MqttSettings


@dataclass(frozen=True, slots=True)
class SessionConfig:
    prefix: str
    site: str
    daemon: str
    ack_timeout: float = 10.0
    resync_retry: float = 60.0
    reconcile_interval: float = 1800.0
    health_interval: float = 60.0
    central_status_wait: float = 2.0
    lookup_timeout: float = 0.3
    max_payload: int = 4_000_000
    batch_events: int = 200
    share_access: bool = True
    snapshot_guard: float = 0.5
    retain_acked: float = 604_800.0
    retain_acked_max: int = 200_000
    prune_interval: float = 60.0
    software: str | None = None
    alarm_interval: float = 60.0  # the same alarm again at most this often (each is counted)
    gap_rewind_interval: float = 1.0  # acks with `gap` repeat while the resend is on its way
    # behind the central's delta head this long: a delta was lost, not just on its way
    head_grace: float = 5.0
    # no chunk of a snapshot under way for this long while more are due: the central system
    # stopped sending it (a crash mid-way) — the import is abandoned and asked for again,
    # or its deltas, held for after it, would wait for good
    snapshot_stall: float = 120.0
    # the site's other daemons (sync/link/peer_marks.py): our heartbeat, and how patiently a
    # gap in theirs is asked about; a daemon heard of for the first time is asked for its
    # events of this long ago on
    mark_interval: float = 5.0
    catch_up_grace: float = 3.0
    catch_up_retry: float = 10.0
    catch_up_horizon: float = 86_400.0
    # a new box settles its numbering once every daemon of the site it knows of has said how
    # far it heard the old one (a heartbeat's `heard`), or after this long: then naming those
    # not heard (they may hold the old box's events beyond what the central system got)
    settle_peer_wait: float = 30.0
    # another daemon under our id: our events are held this long after the last sign of it
    twin_hold: float = 60.0

    @property
    def lookup_keep(self) -> float:
        """How long an unanswered look-up is remembered: a late answer is still applied."""
        return max(30.0, 10 * self.lookup_timeout)

    @classmethod
    def from_settings(cls, s: MqttSettings, software: str | None = None) -> SessionConfig:
        return cls(
            prefix=s.prefix,
            site=s.site,
            daemon=s.daemon,
            ack_timeout=s.ack_timeout,
            resync_retry=s.resync_retry,
            reconcile_interval=s.reconcile_interval,
            health_interval=s.health_interval,
            central_status_wait=s.central_status_wait,
            lookup_timeout=s.lookup_timeout,
            max_payload=s.max_payload,
            batch_events=s.batch_events,
            share_access=s.share_access,
            mark_interval=s.heartbeat_interval,
            snapshot_guard=s.snapshot_guard,
            retain_acked=s.retain_acked,
            retain_acked_max=s.retain_acked_max,
            twin_hold=s.twin_hold,
            software=software,
        )


@dataclass(frozen=True, slots=True)
class StoreState:
    """Where the gate's store stands when the session is made (the link's port reads it:
    sync/link/port.py): its outbox, its replica's position, the peers heard."""

    acked_seq: int = 0
    last_seq: int = 0  # the last event that may leave (sync/store/numbering.py)
    numbering_unsure: bool = False  # later events wait for the central system's word
    delta_seq: int = 0
    has_snapshot: bool = False
    snapshot_id: str | None = None  # the snapshot the replica was last made from
    # the store wants a whole new copy though its replica is consistent (its cards were
    # typed under another rule for 10-digit numbers): the resync reason to ask with
    snapshot_reason: str | None = None
    # how far the site's other daemons were heard (peer -> heard_seq, heard_through)
    peer_marks: Mapping[str, tuple[int | None, float | None]] = field(default_factory=dict)
    # our own events the ledger lost, still to be asked of the central system
    own_history: Wanted | None = None
