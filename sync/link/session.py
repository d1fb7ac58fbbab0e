"""The link's protocol as a state machine, without I/O (docs/protocol.md is its contract).

Like h11's `Connection`: no socket, no clock, no database. The shell (sync/link/link.py) feeds
it what happened — a connection made or lost, an MQTT message, the time, the store's new
events, the outcome of an action — and performs the actions it returns, in order:
publish, subscribe, acknowledge in the store, apply a delta, stage / commit / abort a
snapshot, apply a look-up answer, record another gate's passage, raise an alarm.

Time is `now`, monotonic seconds, always passed in. Every inbound message is size-checked
and validated here; a bad one is counted in `stats` and dropped (logged by the shell).

What it guarantees (docs/protocol.md has the why):
- uplink: events go out in seq order from the last acknowledged one; after a reconnect,
  a `gap` ack, `ack_timeout` without progress (not while the central system is known
  offline: nobody would ack, and its return rewinds), or the central system coming back,
  from there again. An ack beyond the last seq is refused and alarmed; a replay request
  resends from what the gate still holds.
- downlink: the replica changes only by whole deltas, in `delta_seq` order (a gap holds
  later ones and asks for a snapshot), and whole snapshots not older than the replica;
  a snapshot that would remove most members is held unless marked a full replacement.
- one resync request per connection, sent once the central system is known to be online
  (or after `central_status_wait` without news of it), and one more each time the
  central system itself comes back.
- the central's latest `delta_seq` (its retained `delta/head`) is checked against the
  replica's: behind it for `head_grace` (a delta lost on the way, a bridge that kept no
  session) asks for the deltas missed (resync `behind`), at most every `resync_retry`.

One module of ~1,170 lines, like h11's `_connection.py`: one state machine whose parts
(uplink and acks, resyncs, deltas and snapshots, look-ups, the site's other daemons)
read and change the same connection state — the seqs, the connection and the central
system's status, the stats, the notes for the shell; split, each part would reach into
the others. What has state of its own is apart: the actions it returns in
sync/link/actions.py, its configuration and starting state in
sync/link/session_config.py, the peers' high-water marks in sync/link/peer_marks.py.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ValidationError

from sync.link.actions import (
    AbortSnapshot,
    Action,
    ApplyDelta,
    ApplyLookup,
    CheckOwnEvents,
    CommitSnapshot,
    PruneAcked,
    Publish,
    PublishHealth,
    RaiseAlarm,
    ReadReplay,
    RecordOwnHistory,
    RecordPeerEvents,
    ServeCatchUp,
    SettleNumbering,
    StageChunk,
    StoreAck,
    StorePeerMark,
    Subscribe,
    WakeUplink,
)
from sync.link.own_history import OwnHistory, Wanted
from sync.link.peer_marks import PeerMarks, WorkClaim
from sync.link.session_config import SessionConfig, StoreState
from sync.protocol import (
    MAJOR,
    MAX_SITE_DAEMONS,
    PROTOCOL,
    Ack,
    CatchUpAnswer,
    CatchUpRequest,
    Delta,
    DeltaHead,
    EventBatch,
    HistoryAnswer,
    LookupRequest,
    LookupResponse,
    ReplayAnswer,
    ReplayRequest,
    ResyncRequest,
    SnapshotHeader,
    Status,
    TimeDrivenWork,
)
from sync.topics import Topics

__all__ = [
    "AbortSnapshot",
    "Action",
    "ApplyDelta",
    "ApplyLookup",
    "CheckOwnEvents",
    "CommitSnapshot",
    "PruneAcked",
    "Publish",
    "PublishHealth",
    "RaiseAlarm",
    "ReadReplay",
    "RecordOwnHistory",
    "RecordPeerEvents",
    "ServeCatchUp",
    "Session",
    "SessionConfig",
    "StageChunk",
    "StoreAck",
    "StorePeerMark",
    "StoreState",
    "Subscribe",
    "WakeUplink",
]

M = TypeVar("M", bound=BaseModel)
_UTC = ZoneInfo("UTC")
MAX_BUFFERED_DELTAS = 10_000
# and at most about this much memory: a flood of deltas during an import held 10,000 parsed
# deltas of any size (issue 22); what is not kept is asked for again. A parsed delta costs
# about 1 KB plus 8 times its JSON (measured: 2.4 KB for one of 300 bytes).
MAX_BUFFERED_DELTA_BYTES = 2 * 1024 * 1024
MAX_PENDING_LOOKUPS = 1_000
# a heartbeat's heard_through is written at most this often (an older one after a restart
# only makes the ledger wait a little longer); a new heard_seq always is
MARK_SAVE_STEP = 60.0
# a second daemon under our id (a cloned SD card): the uplink is held TWIN_HOLD (the
# default of `twin_hold`) after the last sign of it; the takeovers between its MQTT
# connection and ours (the same client id) count once this many come within TWIN_WINDOW.
# While it holds, a connection taken from us is tried again after a quarter of the hold:
# two boxes with one client id take the connection from each other at every attempt, and
# at 0.1 s they did so about 6 times a second each, forever (tests/test_twin_boxes.py)
TWIN_HOLD = 60.0
TWIN_TAKEOVERS = 2
TWIN_WINDOW = 600.0
TWIN_SEEN_KEEP = 1_000  # the other connections' `at`s remembered (each counted once)


@dataclass(slots=True)
class _Import:
    snapshot_id: str
    chunks: int
    delta_seq: int
    full_replacement: bool
    last_chunk_at: float  # monotonic
    next_chunk: int = 0


@dataclass(slots=True)
class _Lookup:
    card: str
    asked_at: float


@dataclass(slots=True)
class _Uplink:
    """Where the publisher is. `published`: the last seq sent on this connection; `floor`:
    what the central system is known to hold (the acked seq, or lower during a replay);
    `progress_at`: when the central system last showed progress."""

    published: int = 0
    floor: int = 0
    progress_at: float = 0.0
    gap_rewind_at: float = float("-inf")
    replaying: bool = False
    waiting_since: float | None = None  # events wait and the central's ack has not moved since
    last_gap_ack: int | None = None  # the last ack said `gap` at this applied_seq
    acked_while_offline: bool = False  # an ack came since the central's last `offline`


@dataclass(slots=True)
class _Resync:
    """The resync of this connection: due once the central system is known online."""

    sent: bool = False
    due_at: float | None = None  # send then, even without news of the central system
    last_request_at: float = float("-inf")
    last_reconcile_at: float = 0.0


@dataclass(slots=True)
class _Head:
    """The central's latest delta_seq as last heard, and since when the replica is behind it."""

    delta_seq: int = 0
    behind_since: float | None = None
    asked_at: float = float("-inf")


@dataclass(slots=True)
class _Alarms:
    last: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Twin:
    """Signs of another daemon running under our daemon id: its events and statuses on
    the site's topics, its takeovers of our connection. `seen_at`: the last sign."""

    seen_at: float | None = None
    detail: str = ""
    takeovers: list[float] = field(default_factory=list)
    # the `at` of each other connection under our id whose `offline` came (each counted once)
    others: set[str] = field(default_factory=set)
    # the `at` of every status this run published, and when it began (POSIX): a retained
    # status under our id from before it is our own last run's
    ours: set[str] = field(default_factory=set)
    run_began: float | None = None


class Session:
    """One gate's side of the protocol. See the module doc; `stats` counts everything."""

    def __init__(self, config: SessionConfig, state: StoreState, zones: Mapping[str, str] | None = None):
        self.config = config
        self.topics = Topics(config.prefix, config.site, config.daemon)
        self.zones = dict(zones or {})
        self.stats: Counter[str] = Counter()
        self.connected = False
        self.central_online: bool | None = None
        self._central_online_at: float | None = None  # when the central was last heard coming online
        self._head_heard = False  # the central's delta head, heard on this connection
        self.acked_seq = state.acked_seq
        self.last_seq = state.last_seq
        # the store holds its later events until the central system says how far it got
        # (sync/store/numbering.py): the first ack settles that before it counts
        self.numbering_unsure = state.numbering_unsure
        self.delta_seq = state.delta_seq
        self.has_snapshot = state.has_snapshot
        self.snapshot_id = state.snapshot_id
        self.awaiting_snapshot = not state.has_snapshot
        # A snapshot wanted while deltas still apply (the card rule changed): asked for at
        # each connection and every resync_retry until one is committed.
        self.snapshot_reason = state.snapshot_reason
        self._import: _Import | None = None
        self._deltas: dict[int, Delta] = {}
        self._deltas_bytes = 0
        self._lookups: dict[bytes, _Lookup] = {}
        self._up = _Uplink(published=state.acked_seq, floor=state.acked_seq)
        self._resync = _Resync()
        self._head = _Head()
        self.peers = PeerMarks(state.peer_marks, grace=config.catch_up_grace, retry=config.catch_up_retry)
        self._heard_of_us: dict[str, int] = {}  # peer -> the last seq of ours it says it heard
        self._heartbeat_from: set[str] = set()  # peers whose heartbeat (with `heard`) came this run
        self._settle_wait_from: float | None = None  # a settle first waited for peers' `heard` then
        # what a lost ledger knew, asked of the central system (sync/link/own_history.py)
        self.own_history = OwnHistory(config.daemon, state.own_history)
        self._online_at: str | None = None  # the `at` of this connection's statuses
        self._connected_at: float | None = None  # monotonic: when this connection was made
        # what this daemon does of the site's time-driven work, for its statuses (the daemon
        # sets it: gated/knowledge.py)
        self.work: WorkClaim | None = None
        self._next_mark_at = 0.0
        self._alarms = _Alarms()
        self._twin = _Twin()
        self._next_health_at = 0.0
        self._next_prune_at = 0.0
        self._central_at: str | None = None
        self.notes: list[str] = []

    # -- state ------------------------------------------------------------------------------

    @property
    def importing(self) -> bool:
        return self._import is not None

    @property
    def replaying(self) -> bool:
        return self._up.replaying

    def status(self, state: str, at: str | None = None, *, as_of: str | None = None) -> Publish:
        """Our retained status (`offline` without `at` is also the last will). With
        `as_of`, a heartbeat for the site's other daemons: our last seq at that instant —
        none while the numbering is unsure: events after it are held, and a claim would
        tell the others they know everything we did up to now (the daemon settling
        no-shows would settle a class a held attendance belongs to)."""
        beat = as_of is not None
        if self.numbering_unsure:
            as_of = None
        w = self.work if at is not None else None  # not in the last will: it would go stale
        body = Status(
            daemon=self.config.daemon,
            state="online" if state == "online" else "offline",
            at=at,
            version=self.config.software,
            protocol=PROTOCOL,
            last_seq=self.last_seq if as_of is not None else None,
            as_of=as_of,
            # how far we heard the others is ours to say, sure of our numbering or not (a new
            # box settling waits for it: settle_unheard)
            heard=self._heard() if beat else None,
            time_driven_work=None if w is None else TimeDrivenWork(
                on=w.on, since=None if w.since is None else _iso(w.since),
                through=None if w.through is None else _iso(w.through)),
        )
        return Publish(self.topics.status, _dump(body), qos=1, retain=True)

    def will(self, at: str) -> Publish:
        """The last will of the connection about to be made at `at` (its statuses' `at`):
        `offline`, with that `at`. A broker publishes a connection's will when another
        client connects with its client id (mosquitto 2.0 closes the old connection without
        MQTT 5's reason 142): an `offline` under our id with an `at` this run never used is
        the will of another daemon's connection under our id that ours just took over."""
        self._twin.ours.add(at)
        if self._twin.run_began is None:
            self._twin.run_began = _instant(at)
        return self.status("offline", at)

    def _heard(self) -> dict[str, int] | None:
        """How far we have heard each other daemon, for a heartbeat (Status.heard)."""
        heard = {p: m.heard_seq for p, m in sorted(self.peers.marks.items()) if m.heard_seq is not None}
        return dict(list(heard.items())[:MAX_SITE_DAEMONS]) or None

    def heard_the_site(self, now: float) -> bool:
        """Connected for a heartbeat interval: the site's retained statuses (at subscribing)
        and a heartbeat of every daemon online have come (`now`: monotonic)."""
        return self._connected_at is not None and now - self._connected_at >= self.config.mark_interval

    @property
    def site_heard_of_us(self) -> int | None:
        """The furthest the site's other daemons say they heard of this daemon id (their
        heartbeats' `heard`): on a new box, events of the old one the central system may
        never have had (numbering.py numbers on after them too)."""
        return max(self._heard_of_us.values(), default=None)

    def settle_unheard(self, now: float) -> tuple[list[str], bool]:
        """Before a new box settles its numbering: the daemons of the site it knows of
        (their retained statuses, their marks) whose online status — and so their word on
        how far they heard the old box, `heard` — has not come this run (an offline one's
        last will says nothing of it), and whether to wait on for them (for `settle_peer_wait` from the
        first time asked). The settle then goes ahead naming them (numbering_peers_unheard)."""
        missing = sorted(p for p in self.peers.marks if p not in self._heartbeat_from and p != self.config.daemon)
        if not missing:
            return [], False
        if self._settle_wait_from is None:
            self._settle_wait_from = now
        return missing, now - self._settle_wait_from < self.config.settle_peer_wait

    # -- the connection -----------------------------------------------------------------------

    def connect(self, now: float, at: str) -> list[Action]:
        """Connected (and the broker accepted us): subscribe, say we are online, resend
        from the last acknowledged event; the resync waits for the central's status."""
        t = self.topics
        self.connected = True
        self.stats["connects"] += 1
        self.central_online = None
        self._head_heard = False
        self._central_at = None
        actions: list[Action] = [
            Subscribe(t.central_status, 1),
            Subscribe(t.ack, 1),
            Subscribe(t.replay, 1),
            Subscribe(t.lookup_response, 0),
            Subscribe(t.snapshot, 1),
            Subscribe(t.delta, 1),
            Subscribe(t.delta_head, 1),
            Subscribe(t.history, 1),
        ]
        if self.config.share_access:
            # the site's other daemons: their events, their heartbeats (how far they have
            # got), their requests for ours and their answers to ours (sync/link/peer_marks.py)
            actions.append(Subscribe(t.site_events, 1, no_local=True))
            actions.append(Subscribe(t.site_status, 1, no_local=True))
            actions.append(Subscribe(t.catch_up, 1, no_local=True))
            actions.append(Subscribe(t.site_catch_up_answers, 1, no_local=True))
        self._online_at = at
        self._twin.ours.add(at)
        if self._twin.run_began is None:
            self._twin.run_began = _instant(at)
        self._connected_at = now
        self._next_mark_at = now + self.config.mark_interval
        actions.append(self.status("online", at, as_of=at))
        self._resync.sent = False
        self._resync.due_at = now + self.config.central_status_wait
        self._next_health_at = now
        if not self._up.replaying:  # a replay goes on from what the central system acked
            self._up.floor = self.acked_seq
        actions += self._rewind("connect", now)
        return actions

    def disconnect(self, now: float) -> list[Action]:
        """The connection is gone: what was on its way is lost with it."""
        if not self.connected:
            return []
        self.connected = False
        self._connected_at = None
        self.stats["disconnects"] += 1
        self._lookups.clear()
        self._resync.due_at = None
        if self._import is not None:  # its remaining chunks were lost with the connection
            self._import = None
            self.awaiting_snapshot = True
            return [AbortSnapshot("connection lost")]
        return []

    # -- time ---------------------------------------------------------------------------------------

    def tick(self, now: float, at: str | None = None) -> list[Action]:
        """Timers: the deferred resync, snapshot re-requests, reconciliation, health,
        acks overdue, forgotten look-ups, and (given `at`, the wall clock) the heartbeat
        and catch-up requests to the site's other daemons. Call about every second while
        connected."""
        if not self.connected:
            return []
        c = self.config
        out: list[Action] = []
        if c.share_access and at is not None:
            out += self._peers_tick(now, at)
        r = self._resync
        if not r.sent and r.due_at is not None and now >= r.due_at:
            self.stats["resync_without_central_status"] += 1
            out += self._connection_resync(now)
        elif (r.sent and (self.awaiting_snapshot or self.snapshot_reason) and self._import is None
              and now - r.last_request_at >= c.resync_retry):
            out.append(self._resync_request(self._reason(), now))
        elif r.sent and now - r.last_reconcile_at >= c.reconcile_interval:
            r.last_reconcile_at = now
            out.append(self._resync_request("reconcile", now))
        if now >= self._next_health_at:
            self._next_health_at = now + c.health_interval
            out.append(PublishHealth())
        if now >= self._next_prune_at:
            self._next_prune_at = now + c.prune_interval
            out.append(PruneAcked(c.retain_acked, c.retain_acked_max))
        imp = self._import
        if imp is not None and imp.next_chunk < imp.chunks and now - imp.last_chunk_at >= c.snapshot_stall:
            out += self.snapshot_failed(
                f"no chunk for {now - imp.last_chunk_at:.0f} s after chunk {imp.next_chunk - 1} of {imp.chunks}", now)
        out += self._behind_head(now)
        out += self._history_tick(now, at)
        tw = self._twin
        if tw.seen_at is not None and now - tw.seen_at >= c.twin_hold:
            tw.seen_at = None  # no sign of it for a while: events leave again
            self._note(f"no sign of a second daemon under this id for {c.twin_hold:.0f} s: events leave again")
            out.append(WakeUplink())
        up = self._up
        if up.published > up.floor and now - up.progress_at > c.ack_timeout:
            if self._central_away():
                # nobody is there to ack: a resend would only pile up at the broker for the
                # central's session (the whole backlog again every ack_timeout: 20 GB a day
                # for 7,500 events, and the central woke to 16 copies of each); its `online`
                # rewinds once when it is back (_on_central_status)
                up.progress_at = now
                self.stats["resend_held_central_offline"] += 1
            else:
                out += self._rewind("timeout", now)
        for corr in [k for k, v in self._lookups.items() if now - v.asked_at > c.lookup_keep]:
            del self._lookups[corr]
            self.stats["lookup_expired"] += 1
        return out

    # -- uplink -------------------------------------------------------------------------------------

    def events_committed(self, last_seq: int) -> list[Action]:
        """The store committed events up to `last_seq`."""
        if last_seq > self.last_seq:
            self.last_seq = last_seq
            return [WakeUplink()]
        return []

    def uplink_stall(self, now: float) -> tuple[float, str] | None:
        """How long events have been waiting without the central's `applied_seq` moving,
        and why, as far as this side can tell; None when nothing waits."""
        up = self._up
        if self.acked_seq >= self.last_seq:
            up.waiting_since = None
            return None
        if up.waiting_since is None:
            up.waiting_since = now
        if self._twin.seen_at is not None:
            why = "held: another daemon runs under this daemon id (daemon_id_in_use)"
        elif not self.connected:
            why = "not connected to any broker"
        elif self.central_online is False:
            why = "the central system is offline"
        elif up.last_gap_ack is not None:
            why = f"the central system reports a gap after seq {up.last_gap_ack}"
        else:
            why = "the central system does not acknowledge"
        return now - up.waiting_since, why

    def uplink_after(self, now: float) -> int | None:
        """The seq after which to read events to send next; None when there is nothing
        (not connected, or everything sent and not yet due again)."""
        if not self.connected or self._up.published >= self.last_seq or self.twin_holds(now):
            return None
        return self._up.published

    def uplink(self, events: Sequence[Mapping[str, Any]], now: float) -> Publish | None:
        """Events read from the store after `uplink_after()`, in seq order: the message to
        publish (as many as fit `batch_events` and `max_payload`); marked sent."""
        events = list(events[: self.config.batch_events])
        if not events or not self.connected:
            return None
        payload = self._encode(events)
        while len(payload) > self.config.max_payload and len(events) > 1:
            events = events[: len(events) // 2]
            payload = self._encode(events)
        up = self._up
        if up.published == up.floor:  # the ack timeout counts from the first unacknowledged send
            up.progress_at = now
        up.published = int(events[-1]["seq"])
        self.stats["events_published"] += len(events)
        self.stats["messages_published"] += 1
        return Publish(self.topics.events, payload, qos=1)

    def _encode(self, events: Sequence[Mapping[str, Any]]) -> bytes:
        zones = {e["gate"]: self.zones[e["gate"]] for e in events if e.get("gate") in self.zones}
        body = {"v": MAJOR, "daemon": self.config.daemon, "events": list(events), "zones": zones}
        return json.dumps(body, separators=(",", ":")).encode()

    def _central_away(self) -> bool:
        """The central system is known offline (its status, or its last will, says so) and
        has not acknowledged anything since: no one to resend to. Unknown (None: no status,
        an old central) is not away; an ack is a sign of it whatever its status says."""
        return self.central_online is False and not self._up.acked_while_offline

    def _rewind(self, why: str, now: float) -> list[Action]:
        up = self._up
        # unsure of the numbering, the last event that may leave goes again: it was
        # acknowledged, maybe, but its ack says how far the central system got
        start = min(up.floor, self.last_seq - 1) if self.numbering_unsure else up.floor
        if up.published != start:
            self.stats[f"rewind_{why}"] += 1
        up.published = start
        up.progress_at = now
        return [WakeUplink()]

    # -- resync requests ------------------------------------------------------------------------------

    def _reason(self) -> str:
        if not self.has_snapshot:
            return "startup"
        if self.numbering_unsure and self.last_seq == 0:
            # nothing of ours may leave whose ack would say how far the central system got
            # (a new box that held nothing at its start): only a snapshot's passes say it
            # — a restart after the last one's switch and before its settle waited for good
            return "startup"
        if self.awaiting_snapshot:
            return "gap"
        return self.snapshot_reason or "reconnect"

    def _resync_request(self, reason: str, now: float) -> Publish:
        self._resync.last_request_at = now
        if reason in ("reconnect", "reconcile"):
            self._resync.last_reconcile_at = now
        self.stats[f"resync_{reason}"] += 1
        self.stats["resync_requests"] += 1
        req = ResyncRequest(
            daemon=self.config.daemon,
            request_id=f"{self.config.daemon}-{self.stats['resync_requests']}-{now:.6f}",
            reason=reason,
            since_delta_seq=self.delta_seq if reason in ("reconnect", "reconcile", "behind") else None,
        )
        return Publish(self.topics.resync, _dump(req), qos=1)

    def _connection_resync(self, now: float) -> list[Action]:
        self._resync.sent = True
        self._resync.due_at = None
        self._resync.last_reconcile_at = now
        return [self._resync_request(self._reason(), now)]

    def request_resync(self, reason: str, now: float) -> list[Action]:
        """Ask for a snapshot now (the console's "resync" button: `manual`)."""
        if not self.connected:
            return []
        if reason in ("manual", "gap", "snapshot_failed"):
            self.awaiting_snapshot = True
        return [self._resync_request(reason, now)]

    def want_snapshot(self, reason: str, now: float) -> list[Action]:
        """The store needs a fresh copy though deltas still apply (`card_rule`): ask now if
        connected, and at each connection and every resync_retry until one is committed."""
        asked = self.snapshot_reason == reason and now - self._resync.last_request_at < self.config.resync_retry
        self.snapshot_reason = reason
        if asked or not (self.connected and self._resync.sent):
            return []  # just asked (a reload racing a commit), or asked at the connection
        return [self._resync_request(reason, now)]

    # -- inbound messages -----------------------------------------------------------------------

    def receive(
        self, topic: str, payload: bytes, now: float, *, retained: bool = False, correlation: bytes | None = None
    ) -> list[Action]:
        """One MQTT message on a subscribed topic."""
        self.stats["received"] += 1
        if len(payload) > self.config.max_payload:
            self.stats["oversized"] += 1
            self.stats["dropped"] += 1
            return []
        t = self.topics
        if topic == t.ack:
            ack = self._parse(Ack, payload)
            return [] if ack is None else self._on_ack(ack, now)
        if topic == t.delta:
            delta = self._parse(Delta, payload)
            return [] if delta is None else self._on_delta(delta, now, len(payload))
        if topic == t.delta_head:
            head = self._parse(DeltaHead, payload)
            return [] if head is None else self._on_head(head, now)
        if topic == t.snapshot:
            # the header only: the records are validated by the snapshot worker, off the loop
            header = self._parse(SnapshotHeader, payload)
            return [] if header is None else self._on_chunk(header, payload, now)
        if topic == t.lookup_response:
            return self._on_lookup_response(payload, correlation)
        if topic == t.central_status:
            status = self._parse(Status, payload)
            return [] if status is None else self._on_central_status(status, retained, now)
        if topic == t.replay:
            req = self._parse(ReplayRequest, payload)
            if req is None:
                return []
            self.stats["replay_requests"] += 1
            return [ReadReplay(req)]
        if topic == t.history:
            chunk = self._parse(HistoryAnswer, payload)
            return [] if chunk is None else self._on_history(chunk, now)
        if topic == t.catch_up:
            ask = self._parse(CatchUpRequest, payload)
            return [] if ask is None else self._on_catch_up_request(ask)
        sender = t.sender_of_events(topic)
        if sender is not None:
            return self._on_site_events(sender, payload)
        sender = t.sender_of_catch_up_answer(topic)
        if sender is not None:
            answer = self._parse(CatchUpAnswer, payload)
            return [] if answer is None else self._on_catch_up_answer(sender, answer)
        sender = t.sender_of_status(topic)
        if sender is not None:
            if not payload:  # its retained status cleared: taken out of the site
                return self._forget_peer(sender)
            peer = self._parse(Status, payload)
            return [] if peer is None else self._on_peer_status(sender, peer, now, retained)
        self.stats["unexpected_topic"] += 1
        return []

    def _parse(self, model: type[M], payload: bytes) -> M | None:
        try:
            # strict: the schema's types, as docs/schemas/ give them — `"5"` or `true` for an
            # integer is a central system's bug to be told of (`invalid`), not read as 5 or 1
            return model.model_validate_json(payload, strict=True)
        except ValidationError as e:
            errors = e.errors()
            if any(err["type"] == "json_invalid" for err in errors):
                kind = "malformed"
            elif any(tuple(err["loc"]) == ("v",) for err in errors):
                kind = "unsupported_version"
            else:
                kind = "invalid"
            self.stats[kind] += 1
            self.stats["dropped"] += 1
            self._note(f"dropped a {kind} {model.__name__}: {errors[0].get('msg') if errors else e}")
            return None

    def _note(self, text: str) -> None:
        if len(self.notes) < 100:
            self.notes.append(text)

    def take_notes(self) -> list[str]:
        """What happened that a person may want to read (the shell logs it)."""
        out, self.notes = self.notes, []
        return out

    # -- acks and replays ---------------------------------------------------------------------

    def numbering_settled(self, last_seq: int, ack: Ack | None, now: float) -> list[Action]:
        """The store's numbering is known now (SettleNumbering, or the central system's
        passes): its events up to `last_seq` may leave; the ack that settled it counts."""
        self.numbering_unsure = False
        out = self.events_committed(last_seq)
        return out + (self._on_ack(ack, now) if ack is not None else [])

    def _on_ack(self, ack: Ack, now: float) -> list[Action]:
        if self.numbering_unsure:
            return [SettleNumbering(ack)]
        self.stats["acks"] += 1
        up = self._up
        up.acked_while_offline = self.central_online is False
        out: list[Action] = []
        if ack.applied_seq > self.last_seq:
            # "applied" events nobody sent: believing it would prune real ones unsent
            self.stats["ack_beyond_last_seq"] += 1
            self.stats["dropped"] += 1
            return self._alarm(
                "ack_beyond_last_seq",
                f"the central system acknowledged seq {ack.applied_seq}; the last event is {self.last_seq}",
                now,
            )
        if ack.applied_seq > self.acked_seq:
            self.acked_seq = ack.applied_seq
            up.waiting_since = now if self.acked_seq < self.last_seq else None
            out.append(StoreAck(ack.applied_seq))
        up.last_gap_ack = ack.applied_seq if ack.gap else None
        if ack.applied_seq > up.floor:
            up.floor = ack.applied_seq
            up.progress_at = now
            if up.replaying and up.floor >= self.acked_seq:
                up.replaying = False
                self.stats["replays_done"] += 1
        if up.published < up.floor:
            up.published = up.floor
        if ack.gap and ack.applied_seq < up.published and now - up.gap_rewind_at > self.config.gap_rewind_interval:
            # the central system missed one: everything after what it is known to hold, again
            up.gap_rewind_at = now
            out += self._rewind("gap", now)
        else:
            out.append(WakeUplink())
        return out

    def replay_ready(self, request: ReplayRequest, first_held: int, now: float) -> list[Action]:
        """Answer a replay request: `first_held` is the oldest seq the store still holds
        (last_seq + 1 when it holds none). Resends from max(from_seq, first_held)."""
        start = max(request.from_seq, first_held, 1)
        answer = ReplayAnswer(
            daemon=self.config.daemon,
            request_id=request.request_id,
            from_seq=request.from_seq,
            first_seq=start,
            last_seq=self.last_seq,
        )
        out: list[Action] = [Publish(self.topics.replay_answer, _dump(answer), qos=1)]
        if start > self.last_seq:
            return out
        self.stats["replays"] += 1
        up = self._up
        # until the central system acknowledges its way back up to acked_seq, resends start
        # from what it holds, not from what it had acknowledged before its restore
        up.floor = min(up.floor, start - 1)
        up.replaying = up.floor < self.acked_seq
        return out + self._rewind("replay", now)

    # -- the central system's status --------------------------------------------------------------

    def _on_central_status(self, status: Status, retained: bool, now: float) -> list[Action]:
        if status.daemon != "central":
            self.stats["invalid"] += 1
            self.stats["dropped"] += 1
            return []
        was = self.central_online
        self.central_online = status.state == "online"
        if self.central_online and was is not True:
            self._central_online_at = now
        self._up.acked_while_offline = False
        if not self.central_online:
            if not self._resync.sent:
                # wait for it to come (back) online; a retained `offline` that is never
                # followed by `online` must not silence the gate for good
                self._resync.due_at = now + self.config.resync_retry
            return []
        # a live `online` is the central system (re)connecting, unless it repeats the
        # last one (a QoS 1 duplicate); a retained one is its state as the broker kept it
        repeat = was is True and status.at is not None and status.at == self._central_at
        back = not retained and not repeat
        self._central_at = status.at
        out: list[Action] = []
        if back:
            # what we sent while it was away is lost with its old session: again
            self.stats["central_back"] += 1
            out += self._rewind("central_online", now)
        if not self._resync.sent:
            return out + self._connection_resync(now)
        if back:
            out.append(self._resync_request(self._reason(), now))
        return out

    # -- deltas --------------------------------------------------------------------------------------

    def _on_delta(self, delta: Delta, now: float, size: int = 0) -> list[Action]:
        if delta.delta_seq <= self.delta_seq:
            self.stats["deltas_old"] += 1
            return []
        if self._import is not None or self.awaiting_snapshot:
            self._buffer(delta, size)
            self.stats["deltas_buffered"] += 1
            return []
        if delta.delta_seq > self.delta_seq + 1:
            self.stats["delta_gaps"] += 1
            self.awaiting_snapshot = True
            self._buffer(delta, size)
            self._note(f"delta gap: have {self.delta_seq}, got {delta.delta_seq}; asking for a snapshot")
            return [self._resync_request("gap", now)]
        return [self._apply(delta)]

    def _buffer(self, delta: Delta, size: int) -> None:
        """Kept for after the snapshot, within MAX_BUFFERED_DELTAS and _BYTES."""
        cost = 1024 + 8 * size
        if len(self._deltas) >= MAX_BUFFERED_DELTAS or self._deltas_bytes + cost > MAX_BUFFERED_DELTA_BYTES:
            self.stats["deltas_not_buffered"] += 1
            return
        self._deltas[delta.delta_seq] = delta
        self._deltas_bytes += cost

    def _on_head(self, head: DeltaHead, now: float) -> list[Action]:
        self.stats["delta_heads"] += 1
        self._head_heard = True
        if head.delta_seq > self._head.delta_seq:
            self._head.delta_seq = head.delta_seq
        return self._behind_head(now)

    def replica_current(self, now: float) -> bool:
        """As far as the gate can tell, the replica is the central system's latest: connected,
        the central system not offline, nothing numbered past the replica (its delta head), no
        snapshot awaited or under way — and for `head_grace` since the connection and since the
        central came (back) online: its retained head, and a delta or an answer to the resync
        on its way, arrive by then. A gate cut off cannot know what changed meanwhile (a booking
        cancelled): knowledge.py holds the no-shows of classes that ended since."""
        if not self.connected or self._connected_at is None or self._central_away():
            return False
        since = max(self._connected_at, self._central_online_at or self._connected_at)
        return (now - since >= self.config.head_grace and self.deltas_behind == 0 and not self.awaiting_snapshot
                and self._import is None)

    @property
    def head_heard(self) -> bool:
        """The central's delta head heard on this connection: its word that nothing newer was
        numbered (a central that publishes none leaves the replica's age to its syncs)."""
        return self._head_heard

    @property
    def deltas_behind(self) -> int:
        """How many deltas the central has numbered that the replica does not reflect yet
        (0 when up to date or when the central's head is not known)."""
        return max(0, self._head.delta_seq - self.delta_seq)

    def behind_for(self, now: float) -> float | None:
        """How long the replica has been behind the central's head; None when it is not."""
        since = self._head.behind_since
        return None if since is None or self.deltas_behind == 0 else now - since

    def _behind_head(self, now: float) -> list[Action]:
        """Behind the central's head for longer than a delta takes to arrive: ask for the
        missed deltas (`behind`: the central answers with them, or a snapshot)."""
        h = self._head
        if self.deltas_behind == 0:
            h.behind_since = None
            return []
        if h.behind_since is None:
            h.behind_since = now
        if (
            not self.connected
            or self._import is not None
            or self.awaiting_snapshot  # a snapshot is already asked for
            or now - h.behind_since < self.config.head_grace
            or now - h.asked_at < self.config.resync_retry
        ):
            return []
        h.asked_at = now
        self.stats["deltas_missed"] += 1
        self._note(f"behind the central: have delta {self.delta_seq}, the central is at {h.delta_seq}")
        return [self._resync_request("behind", now)]

    def delta_failed(self, store_delta_seq: int, reason: str, now: float) -> list[Action]:
        """The store could not apply a delta: the replica is still at `store_delta_seq`;
        what follows waits for a snapshot."""
        self.delta_seq = store_delta_seq
        self.stats["deltas_failed"] += 1
        self._note(f"delta not applied: {reason}")
        self.awaiting_snapshot = True
        return [self._resync_request("gap", now)] if self.connected else []

    def _apply(self, delta: Delta) -> ApplyDelta:
        self.delta_seq = delta.delta_seq
        self.stats["deltas_applied"] += 1
        return ApplyDelta(delta)

    # -- snapshots -----------------------------------------------------------------------------------

    def _on_chunk(self, chunk: SnapshotHeader, payload: bytes, now: float) -> list[Action]:
        mine = not chunk.requested_by or self.config.daemon in chunk.requested_by or self.awaiting_snapshot
        imp = self._import
        if chunk.chunk == 0 and mine:
            if chunk.delta_seq < self.delta_seq:
                # older than the replica (resent, or a late answer): importing it would undo
                # the newer deltas (back-office changes), and nothing would ask again
                self.stats["snapshots_stale"] += 1
                return []
            if (chunk.snapshot_id == self.snapshot_id and chunk.delta_seq == self.delta_seq
                    and not self.awaiting_snapshot and not self.snapshot_reason):
                # the one the replica is (a retained snapshot, delivered at every connection):
                # imported again it would change nothing and cost an import's CPU each time
                self.stats["snapshots_repeated"] += 1
                return []
            if imp is not None:
                self.stats["snapshots_abandoned"] += 1
            imp = self._import = _Import(chunk.snapshot_id, chunk.chunks, chunk.delta_seq, chunk.full_replacement, now)
        elif imp is None or chunk.snapshot_id != imp.snapshot_id:
            self.stats["snapshot_chunks_ignored"] += 1
            return []
        if chunk.chunk != imp.next_chunk or chunk.chunks != imp.chunks or chunk.delta_seq != imp.delta_seq:
            return self.snapshot_failed(
                f"expected chunk {imp.next_chunk}/{imp.chunks}, got {chunk.chunk}/{chunk.chunks}", now
            )
        imp.next_chunk += 1
        imp.last_chunk_at = now
        self.stats["snapshot_chunks"] += 1
        return [StageChunk(chunk, payload, first=chunk.chunk == 0, last=imp.next_chunk == imp.chunks)]

    def snapshot_staged(self, members_held: int, members_new: int, now: float) -> list[Action]:
        """Every chunk is staged and built; `members_held`: members in the replica now,
        `members_new`: in the snapshot. Commit, or hold a snapshot that would remove more
        than the guard's share of them."""
        imp = self._import
        if imp is None:
            return []
        keep = 1.0 - self.config.snapshot_guard
        if not imp.full_replacement and members_held > 0 and members_new < keep * members_held:
            self._import = None
            self.stats["snapshots_held"] += 1
            detail = (
                f"snapshot {imp.snapshot_id} has {members_new} members, the gate holds {members_held}: "
                "not applied (the central system must mark a full replacement)"
            )
            return [AbortSnapshot("held"), *self._alarm("snapshot_held", detail, now)]
        return [CommitSnapshot(imp.snapshot_id, imp.delta_seq)]

    def snapshot_committed(self, now: float) -> list[Action]:
        """The snapshot is the replica now: deltas that came meanwhile and follow it, in
        order (one from beyond a gap is dropped; a real gap shows at the next delta)."""
        imp = self._import
        if imp is None:
            return []
        self._import = None
        self.delta_seq = imp.delta_seq
        self.snapshot_id = imp.snapshot_id
        self.has_snapshot = True
        self.awaiting_snapshot = False
        self.snapshot_reason = None
        self._resync.last_reconcile_at = now
        self.stats["snapshots_applied"] += 1
        out: list[Action] = []
        buffered, self._deltas, self._deltas_bytes = self._deltas, {}, 0
        for seq in sorted(buffered):
            if seq == self.delta_seq + 1:
                out.append(self._apply(buffered[seq]))
            elif seq > self.delta_seq:
                self.stats["deltas_discarded"] += 1
        return out

    def snapshot_rejected(self, reason: str, now: float) -> list[Action]:
        """The snapshot worker found a chunk's records invalid: counted and dropped like
        any invalid message; the replica stays as it is and nothing is asked again (a
        forged chunk must not hold the deltas)."""
        if self._import is None:
            return []
        self._import = None
        self.stats["invalid"] += 1
        self.stats["dropped"] += 1
        self._note(f"dropped invalid snapshot: {reason}")
        return [AbortSnapshot(reason)]

    def snapshot_failed(self, reason: str, now: float) -> list[Action]:
        """The import failed (a chunk out of order, the store refused): ask again."""
        self._import = None
        self.stats["snapshots_failed"] += 1
        self._note(f"snapshot abandoned: {reason}")
        self.awaiting_snapshot = True
        out: list[Action] = [AbortSnapshot(reason)]
        if self.connected:
            out.append(self._resync_request("snapshot_failed", now))
        return out

    # -- look-ups ------------------------------------------------------------------------------------

    def lookup(self, card: str, correlation: bytes, now: float) -> Publish | None:
        """Ask the central system about an unknown card; None when not connected."""
        if not self.connected:
            self.stats["lookup_offline"] += 1
            return None
        if len(self._lookups) >= MAX_PENDING_LOOKUPS:
            oldest = min(self._lookups, key=lambda k: self._lookups[k].asked_at)
            del self._lookups[oldest]
            self.stats["lookup_expired"] += 1
        self._lookups[correlation] = _Lookup(card, now)
        self.stats["lookups"] += 1
        req = LookupRequest(daemon=self.config.daemon, card=card)
        return Publish(
            self.topics.lookup_request,
            _dump(req),
            qos=0,
            response_topic=self.topics.lookup_response,
            correlation=correlation,
        )

    def _on_lookup_response(self, payload: bytes, correlation: bytes | None) -> list[Action]:
        resp = self._parse(LookupResponse, payload)  # garbage is `malformed` whatever it answers
        if resp is None:
            return []
        pending = self._lookups.get(correlation) if correlation else None
        if pending is None or correlation is None:
            self.stats["lookup_unmatched"] += 1
            return []
        del self._lookups[correlation]
        self.stats["lookup_found" if resp.found else "lookup_unknown"] += 1
        return [ApplyLookup(correlation, resp)]

    # -- the site's other daemons -------------------------------------------------------------

    def _on_site_events(self, sender: str, payload: bytes) -> list[Action]:
        batch = self._parse(EventBatch, payload)
        if batch is None:
            return []
        if sender == self.config.daemon:
            # subscribed with noLocal: ours come back only through a bridge; the shell
            # compares them with the ledger (a twin's differ: twin_seen)
            self.stats["own_events_echo"] += 1
            if batch.daemon != sender:
                return []
            return [CheckOwnEvents(tuple(ev.model_dump(mode="json") for ev in batch.events))]
        if batch.daemon != sender:
            self.stats["invalid"] += 1
            self.stats["dropped"] += 1
            return []
        # every batch, repeats too: a peer's events come again (its resends, answers to
        # catch-ups) and out of order with what we saw; sync/store/peer_events.py records each once
        moved = self.peers.heard(sender, [ev.seq for ev in batch.events])
        return self._record(sender, batch.events, dict(batch.zones), moved)

    def _record(self, sender: str, events: Sequence[Any], zones: dict[str, str], moved: bool) -> list[Action]:
        keep = tuple(ev.model_dump(mode="json") for ev in events if _for_peers(ev))
        mark = self.peers.to_save(sender, min_step=MARK_SAVE_STEP) if moved else None
        if not keep and mark is None:
            return []
        self.stats["peer_events"] += len(keep)
        return [RecordPeerEvents(sender, keep, zones, mark)]

    def _on_peer_status(self, sender: str, status: Status, now: float, retained: bool = False) -> list[Action]:
        """Another daemon's status: its heartbeat says how far it has got (a claim this
        daemon checks its mark of it against), its last will that it went away."""
        if status.daemon != sender:
            return []
        if sender == self.config.daemon:
            return self._own_status(status, now)
        as_of = _instant(status.as_of)
        self.peers.claimed(sender, status.last_seq, as_of, status.state == "online", now, retained=retained)
        ours = (status.heard or {}).get(self.config.daemon)
        if ours is not None:
            self._heard_of_us[sender] = ours
        if status.state == "online":  # its `heard` is its word on us (none: it heard nothing of us)
            self._heartbeat_from.add(sender)
        w = status.time_driven_work
        if w is not None:
            self.peers.announced(sender, WorkClaim(w.on, _instant(w.since), _instant(w.through)))
        self.stats["peer_heartbeats"] += 1
        return []

    def _own_status(self, status: Status, now: float) -> list[Action]:
        """A status under our own daemon id: ours (this run's `at`), our last run's (as of
        before this run began: retained), or another daemon's that runs under our id."""
        tw = self._twin
        if status.at is None or status.at in tw.ours:
            return []
        when = _instant(status.as_of) or _instant(status.at)
        if when is None or tw.run_began is None or when < tw.run_began:
            return []  # our own last run's, retained
        if status.state == "online":
            return self.twin_seen(
                f"a status under this daemon's id that this run did not publish (connected at {status.at}, "
                f"last_seq {status.last_seq}, as of {status.as_of})", now)
        # `offline` from a connection not ours: its last will, published by the broker as
        # ours took the client id over from it (or its clean stop) — counted once each
        if status.at in tw.others:
            return []
        if len(tw.others) >= TWIN_SEEN_KEEP:
            tw.others.clear()
        tw.others.add(status.at)
        self.stats["own_id_foreign_offline"] += 1
        return self._takeover(f"the last will of another connection under this client id (connected at "
                              f"{status.at}) came as ours took the client id over from it", now)

    def twin_seen(self, why: str, now: float) -> list[Action]:
        """A sign that another daemon runs under our daemon id (a cloned SD card, a copied
        /etc/gated): both number events 1, 2, ... and the central system keeps one of each
        seq, dropping the other's as repeats. An alarm (`daemon_id_in_use`); events are
        held here (they stay in the outbox) until no sign of it has come for `twin_hold`."""
        tw = self._twin
        first = tw.seen_at is None
        tw.seen_at = now
        tw.detail = why
        self.stats["daemon_id_in_use"] += 1
        if first:
            self._note(f"another daemon runs under this daemon id: {why}; events held")
        return self._alarm(
            "daemon_id_in_use",
            f"another daemon runs under this daemon id {self.config.daemon!r} ({why}): the central system keeps "
            "one event of each number, so the two boxes' events are lost there; this daemon holds its events "
            "until it is gone — give one box its own daemon_id",
            now,
        )

    def taken_over(self, now: float) -> list[Action]:
        """The broker ended our connection because another client connected with our
        client id (MQTT 5 `session taken over`): once is a blip, TWIN_TAKEOVERS within
        TWIN_WINDOW is a second daemon under our id."""
        self.stats["session_taken_over"] += 1
        return self._takeover("the broker handed our connection to another client with our client id", now)

    def _takeover(self, why: str, now: float) -> list[Action]:
        """One takeover between our connection and another client's with our client id,
        either way: TWIN_TAKEOVERS of them within TWIN_WINDOW is a second daemon under our
        id (one may be our own dead connection's, or a clock that jumped)."""
        tw = self._twin
        tw.takeovers = [t for t in tw.takeovers if now - t < TWIN_WINDOW] + [now]
        if len(tw.takeovers) < TWIN_TAKEOVERS:
            return []
        return self.twin_seen(f"{why}; {len(tw.takeovers)} takeovers of this client id in {TWIN_WINDOW:.0f} s", now)

    def twin_holds(self, now: float) -> bool:
        """Our events are held: a sign of another daemon under our id came lately."""
        seen = self._twin.seen_at
        return seen is not None and now - seen < self.config.twin_hold

    def reconnect_wait(self, now: float) -> float | None:
        """How long to wait before connecting again after a lost connection, when it is not
        the usual: while a twin holds, a quarter of the hold — each of the two boxes takes
        the connection from the other at every attempt, so each still sees a sign of the
        other at least every half hold (the hold goes on), but a few times a minute instead
        of several times a second (each connection a resync at the central system)."""
        return self.config.twin_hold / 4 if self.twin_holds(now) else None

    @property
    def twin(self) -> str | None:
        """Why we think another daemon runs under our id, while we hold for it."""
        return self._twin.detail if self._twin.seen_at is not None else None

    def _forget_peer(self, sender: str) -> list[Action]:
        if sender == self.config.daemon or sender not in self.peers.marks:
            return []
        self.peers.forget(sender)
        self.stats["peers_forgotten"] += 1
        self._note(f"{sender} is no longer a daemon of this site (its status was cleared)")
        return [StorePeerMark(sender, None, None)]

    def _peers_tick(self, now: float, at: str) -> list[Action]:
        out: list[Action] = []
        if now >= self._next_mark_at:
            self._next_mark_at = now + self.config.mark_interval
            out.append(self.status("online", self._online_at, as_of=at))
        wall = _instant(at)
        for due in self.peers.due(now):
            since = None
            if due.from_seq is None and wall is not None:
                since = _iso(wall - self.config.catch_up_horizon)
            elif due.from_seq is None:
                continue
            self.stats["catch_up_requests"] += 1
            req = CatchUpRequest(
                daemon=self.config.daemon,
                peer=due.peer,
                request_id=f"{self.config.daemon}-{self.stats['catch_up_requests']}-{now:.3f}",
                from_seq=due.from_seq,
                since=since,
            )
            out.append(Publish(self.topics.catch_up, _dump(req), qos=1))
        for peer in self.peers.known():
            mark = self.peers.to_save(peer, min_step=MARK_SAVE_STEP)
            if mark is not None:
                out.append(StorePeerMark(peer, *mark))
        return out

    def _on_catch_up_request(self, req: CatchUpRequest) -> list[Action]:
        if req.peer != self.config.daemon or req.daemon == self.config.daemon:
            return []  # another daemon's business
        self.stats["catch_up_requests_served"] += 1
        return [ServeCatchUp(req)]

    def catch_up_answer(
        self, request: CatchUpRequest, events: Sequence[Mapping[str, Any]], first_seq: int, *, more: bool
    ) -> Publish:
        """One chunk of our answer to a catch-up request (ServeCatchUp): `events`
        consecutive from `first_seq` (none when we hold nothing from there)."""
        zones = {e["gate"]: self.zones[e["gate"]] for e in events if e.get("gate") in self.zones}
        body = {
            "v": MAJOR, "daemon": self.config.daemon, "to": request.daemon, "request_id": request.request_id,
            "first_seq": first_seq, "last_seq": self.last_seq, "events": list(events), "more": more, "zones": zones,
        }
        self.stats["catch_up_events_sent"] += len(events)
        return Publish(self.topics.catch_up_answer, json.dumps(body, separators=(",", ":")).encode(), qos=1)

    def _on_catch_up_answer(self, sender: str, answer: CatchUpAnswer) -> list[Action]:
        if answer.to != self.config.daemon or answer.daemon != sender or sender == self.config.daemon:
            return []  # an answer to another daemon
        self.stats["catch_up_answers"] += 1
        lost = self.peers.answered(sender, answer.first_seq, answer.last_seq, [e.seq for e in answer.events],
                                   answer.request_id)
        if lost:
            self.stats["peer_events_lost"] += lost
            self._note(f"{sender} no longer holds {lost} event(s) this daemon had not heard (pruned)")
        return self._record(sender, answer.events, dict(answer.zones), True)

    # -- a lost ledger's events, back from the central system -------------------------------

    def want_history(self, wanted: Wanted | None) -> None:
        """The store says what it lost (after a settle, or a chunk it could not record)."""
        self.own_history.want(wanted)

    def _history_tick(self, now: float, at: str | None) -> list[Action]:
        wall = _instant(at)
        gone = self.own_history.expired(wall) if wall is not None else None
        if gone is not None:
            self.stats["history_expired"] += 1
            self._note("the central system did not send back this daemon's lost events within a day: no longer asked")
            return [RecordOwnHistory((), dict(self.zones), True, gone, expired=True)]
        # asked once our numbers are known (the range is the central system's word) and
        # while the central system is not known to be away
        if self.numbering_unsure or self.central_online is False:
            return []
        req = self.own_history.due(now)
        if req is None:
            return []
        self.stats["history_requests"] += 1
        return [Publish(self.topics.history_request, _dump(req), qos=1)]

    def _on_history(self, answer: HistoryAnswer, now: float) -> list[Action]:
        got = self.own_history.answered(answer, now)
        if got is None:
            self.stats["history_unasked"] += 1
            return []
        events, done, wanted = got
        self.stats["history_events"] += len(events)
        if done:
            self._note("the central system sent back this daemon's events its ledger had lost")
        return [RecordOwnHistory(tuple(events), dict(self.zones), done, wanted)]

    # -- alarms ------------------------------------------------------------------------------------

    def _alarm(self, kind: str, detail: str, now: float) -> list[Action]:
        self._note(f"alarm {kind}: {detail}")
        last = self._alarms.last.get(kind)
        if last is not None and now - last < self.config.alarm_interval:
            self.stats["alarms_repeated"] += 1
            return []
        self._alarms.last[kind] = now
        self.stats["alarms"] += 1
        return [RaiseAlarm(kind, detail)]


# the alarms whose facts the site's other daemons keep: exits let out unrecorded (who went
# out is not known anywhere)
PEER_ALARMS = frozenset({"exits_not_recorded", "rotations_while_down"})


def _for_peers(ev: Any) -> bool:
    """What the site's other daemons keep of an event: every kind sync/store/peer_events.py
    records (tests/test_sync_session.py holds the two to each other — the passages nobody
    saw, the evacuations and the exits unrecorded were once dropped here, and no daemon of
    the site ever heard another's)."""
    extra = ev.model_extra or {}
    if ev.type == "access":
        return bool(extra.get("decision") == "granted" and extra.get("passed") and ev.member and ev.gate)
    if ev.type == "attendance":
        return bool(extra.get("booking"))
    if ev.type == "deduction":
        return bool(extra.get("pass"))  # every charge and refund: the site's balances
    if ev.type == "qr_used":
        return bool(extra.get("token"))  # a QR code is used up at every gate of the site
    if ev.type == "passage_unconfirmed":
        return bool(ev.member)  # a grant the member may have used: no no-show fee for it
    if ev.type == "fire_alarm":
        return isinstance(extra.get("active"), bool)  # an evacuation of the whole site, and its end
    if ev.type == "alarm":
        return extra.get("kind") in PEER_ALARMS
    return False


def _instant(text: str | None) -> float | None:
    """An ISO instant on the wire as POSIX seconds; None when absent or not an instant."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.timestamp() if t.tzinfo is not None else None


def _iso(posix: float) -> str:
    return datetime.fromtimestamp(posix, _UTC).isoformat().replace("+00:00", "Z")


def _dump(model: BaseModel) -> bytes:
    return model.model_dump_json(by_alias=True, exclude_none=True).encode()
