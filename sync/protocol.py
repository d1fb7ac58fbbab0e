"""The MQTT contract between a gate daemon and the central system: payloads.

Every payload is a JSON object with `"v": 1`, the protocol's major version, and is
validated with the pydantic models below. Within a major version a payload may gain
optional keys: receivers ignore keys they do not know (forward compatibility, see
docs/protocol.md "Versioning"); a payload with another major version is dropped and
counted. `docs/schemas/` holds the JSON Schemas generated from these models
(`python -m sync.protocol` rewrites them, a test checks they match).

Topics are in sync/topics.py; the event bodies inside an event batch in sync/events.py.

About 520 lines: the whole wire contract in one file, each payload's model with its
field descriptions (the generated schemas' text) — what a central system's author reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from sync.events import event_schema
from sync.records import MAX_INT, BookingIn, MemberIn, PassIn, PassRecord, SitePassIn
from sync.topics import LEVEL, Topics, central_status_topic, valid_level

MAJOR = 1
# the minor version: what a gate of this major understands (docs/protocol.md "Versioning")
MINOR = 10
PROTOCOL = f"{MAJOR}.{MINOR}"
def _not_a_bool(v: object) -> object:
    if isinstance(v, bool):  # True == 1 to Python, and to a Literal[1]
        raise ValueError("v is the number 1")
    return v


V = Annotated[Literal[1], BeforeValidator(_not_a_bool)]

Level = Annotated[str, Field(pattern=LEVEL.pattern)]
MAX_SITE_DAEMONS = 256  # a status's `heard` names at most this many of the site's daemons
Seq = Annotated[int, Field(ge=0, le=MAX_INT)]
SeqFrom1 = Annotated[int, Field(ge=1, le=MAX_INT)]
RequestId = Annotated[str, Field(min_length=1, max_length=100)]


class _Wire(BaseModel):
    """A message on the wire: unknown keys are ignored (a later minor version may add
    optional ones), everything known is checked."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


# -- records the central system sends (forward-compatible versions of sync/records.py) --


class MemberOut(MemberIn):
    """A member as the central system sends it. `cards`: the member's cards as typed keys
    (`uid:04A1B2C3D4`, `em:0A00BC614E`, `w26:123:45678`, ...; docs/protocol.md "Cards"),
    or untyped strings as gates before typed cards sent them, read by their shape.
    `photo`, `note`, `status_reason` (1.3): for the desk's eyes, never used to decide."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class BookingOut(BookingIn):
    """A booking as the central system sends it. `starts_at`/`ends_at`: ISO 8601; with an
    offset or `Z` an instant, without one the site's local wall time."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class PassOut(PassIn):
    """A pass as the central system sends it. `applied` (required) maps each daemon of the
    site to the highest seq of *its* events the central system had applied when it
    computed `balance`; a daemon missing from the map: none of its events were applied
    (an empty map says so for every daemon). `valid_from`/`valid_until` are local dates of
    the site, inclusive."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    applied: dict[Annotated[str, Field(pattern=LEVEL.pattern)], Seq]

    def for_daemon(self, daemon: str) -> SitePassIn:
        data = self.model_dump(by_alias=True, exclude={"applied"})
        data["applied_seq"] = self.applied.get(daemon, 0)
        data["applied_peers"] = self.peers_applied(daemon)
        return SitePassIn.model_validate(data)

    def peers_applied(self, daemon: str) -> dict[str, int]:
        """The other daemons' entries of `applied`: their charges above these seqs are not
        in `balance` yet (sync/store/peer_events.py)."""
        return {d: s for d, s in self.applied.items() if d != daemon}

    def record_for(self, daemon: str) -> PassRecord:
        """The store's record for this daemon, without validating again."""
        return PassRecord(self.to_domain().pass_, self.applied.get(daemon, 0))


# -- uplink ----------------------------------------------------------------------------


class EventIn(BaseModel):
    """One event of the daemon's log, exactly as the store wrote it. The common fields are
    checked here; the body of each type is described in sync/events.py (schema `event`).
    Receivers ignore fields they do not know."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    id: Annotated[str, Field(min_length=1, max_length=100)]
    seq: SeqFrom1
    type: Annotated[str, Field(min_length=1, max_length=50)]
    at: Annotated[str, Field(min_length=1, max_length=50)]
    gate: str | None = None
    member: str | None = None


class EventBatch(_Wire):
    """Topic `{prefix}/{site}/{daemon}/events`, QoS 1. Events in increasing, gap-free seq
    order (a batch may repeat events already sent: the seq and `id` make a repeat
    harmless)."""

    v: V = 1
    daemon: Level
    events: Annotated[list[EventIn], Field(min_length=1)]
    # zone of each gate named in `events`: lets other daemons of the site keep site-wide
    # anti-passback and occupancy
    zones: dict[str, str] = {}

    @model_validator(mode="after")
    def _ordered(self) -> EventBatch:
        seqs = [e.seq for e in self.events]
        if any(b != a + 1 for a, b in zip(seqs, seqs[1:], strict=False)):
            raise ValueError("events must be consecutive by seq")
        return self


class TimeDrivenWork(_Wire):
    """What a gate says in its status of the site's time-driven work (no-shows and their
    fees, loyalty credits; 1.6). `on`: it is configured to do it (`time_driven_work`);
    `since`: with `on`, it does it, settling the no-shows of the classes that ended after
    this instant (absent: it does not do it yet — it waits for the site's word, or for
    another daemon that does it); `through`: every no-show of a class that ended by then
    was settled by it — its no-show cursor, or, once it no longer does the work, where it
    had got to when it stopped. A daemon that begins the work begins from the furthest
    `through` it heard, so a class that fell due in between is settled by exactly one."""

    on: bool
    since: Annotated[str, Field(max_length=50)] | None = None
    through: Annotated[str, Field(max_length=50)] | None = None


class Status(_Wire):
    """Topic `{prefix}/{site}/{daemon}/status` (and `{prefix}/central/status`), QoS 1,
    retained. The broker publishes the last will (`offline`) when the connection is lost.
    `at`: when the sender connected (the same in every status of one connection);
    `version`: the sender's software; `protocol`: the protocol version it speaks
    (`major.minor`). A gate republishes its status every few seconds as a heartbeat for
    the site's other daemons: `last_seq` was its last event at `as_of` (its clock) —
    whoever has heard its events up to `last_seq` knows everything it did up to `as_of`;
    `heard`: how far it has heard each other daemon of the site (a new box under one of
    those ids numbers on after what the site heard of its old one, not only after what
    the central system holds); `time_driven_work`: whether it does the site's time-driven
    work and how far it has settled (TimeDrivenWork, 1.6; absent from a gate before it)."""

    v: V = 1
    daemon: Level
    state: Literal["online", "offline"]
    at: str | None = None
    version: str | None = None
    protocol: str | None = None
    last_seq: Seq | None = None
    as_of: Annotated[str, Field(max_length=50)] | None = None
    heard: Annotated[dict[Level, Seq], Field(max_length=MAX_SITE_DAEMONS)] | None = None
    time_driven_work: TimeDrivenWork | None = None


class CatchUpRequest(_Wire):
    """Topic `{prefix}/{site}/catchup`, QoS 1: daemon `daemon` asks daemon `peer` of the
    same site for its events again — from `from_seq` (what it has heard is up to the seq
    before), or, when it has heard nothing of it yet, those since the instant `since`.
    Between the site's daemons only; the central system ignores it."""

    v: V = 1
    daemon: Level
    peer: Level
    request_id: RequestId
    from_seq: SeqFrom1 | None = None
    since: Annotated[str, Field(max_length=50)] | None = None

    @model_validator(mode="after")
    def _one_start(self) -> CatchUpRequest:
        if (self.from_seq is None) == (self.since is None):
            raise ValueError("exactly one of from_seq and since")
        return self


class CatchUpAnswer(_Wire):
    """Topic `{prefix}/{site}/{daemon}/catchup/answer`, QoS 1: daemon `daemon`'s events for
    the daemon `to`, in chunks: `events` are consecutive from `first_seq` (none when it
    holds nothing from there: then `first_seq` is `last_seq + 1`); `last_seq` was its last
    event when it answered; `more`: further chunks follow. A `first_seq` above what was
    asked for means the events in between were pruned (gone for good)."""

    v: V = 1
    daemon: Level
    to: Level
    request_id: RequestId
    first_seq: SeqFrom1
    last_seq: Seq
    events: list[EventIn] = []
    more: bool = False
    zones: dict[str, str] = {}

    @model_validator(mode="after")
    def _consecutive(self) -> CatchUpAnswer:
        seqs = [e.seq for e in self.events]
        if seqs and seqs[0] != self.first_seq:
            raise ValueError("the first event must be first_seq")
        if any(b != a + 1 for a, b in zip(seqs, seqs[1:], strict=False)):
            raise ValueError("events must be consecutive by seq")
        return self


class HistoryRequest(_Wire):
    """Topic `{prefix}/{site}/{daemon}/history/request`, QoS 1: a daemon whose ledger was
    lost (its box replaced, a copy put back without its mark) asks the central system for
    its own events the central holds, numbered `from_seq`…`to_seq`, whose `at` is at or
    after `since` — what the lost ledger knew of today (who is inside, the walk-ins, the
    QR codes used, the classes attended). Answered by `history` chunks."""

    v: V = 1
    daemon: Level
    request_id: RequestId
    from_seq: SeqFrom1
    to_seq: SeqFrom1
    since: Annotated[str, Field(max_length=50)]


class HistoryAnswer(_Wire):
    """Topic `{prefix}/{site}/{daemon}/history`, QoS 1, from the central system: the
    daemon's own events for a history request, in chunks, ascending by seq (not
    consecutive: those before `since` are left out); `more`: further chunks follow."""

    v: V = 1
    daemon: Level
    request_id: RequestId
    events: list[EventIn] = []
    more: bool = False

    @model_validator(mode="after")
    def _ascending(self) -> HistoryAnswer:
        seqs = [e.seq for e in self.events]
        if any(b <= a for a, b in zip(seqs, seqs[1:], strict=False)):
            raise ValueError("events must be ascending by seq")
        return self


class Health(_Wire):
    """Topic `{prefix}/{site}/{daemon}/health`, QoS 0, periodic and on demand."""

    v: V = 1
    daemon: Level
    at: str
    connected: bool
    broker: str | None = None  # host:port of the broker in use
    outbox_depth: Seq
    last_seq: Seq
    acked_seq: Seq
    delta_seq: Seq
    last_sync_at: str | None = None
    readers: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    stats: dict[str, int] = {}
    extra: dict[str, Any] = {}


RESYNC_REASONS = ("startup", "gap", "reconnect", "reconcile", "snapshot_failed", "manual", "card_rule", "behind")


class ResyncRequest(_Wire):
    """Topic `{prefix}/{site}/resync`, QoS 1: the daemon asks for a snapshot (or, with
    `reason: reconnect` or `reconcile` and `since_delta_seq`, for the deltas after it).
    A reason the central system does not know: answer with a snapshot."""

    v: V = 1
    daemon: Level
    request_id: RequestId
    reason: (
        Literal["startup", "gap", "reconnect", "reconcile", "snapshot_failed", "manual", "card_rule", "behind"]
        | Annotated[str, Field(min_length=1, max_length=50)]
    )
    since_delta_seq: Seq | None = None


class LookupRequest(_Wire):
    """Topic `{prefix}/{site}/lookup/request`, QoS 0, MQTT v5 `ResponseTopic` and
    `CorrelationData` properties set: an unknown card, asked live before the decision.
    `card` is the card's typed key (`em:0A00BC614E`; docs/protocol.md, "Cards")."""

    v: V = 1
    daemon: Level
    card: Annotated[str, Field(min_length=1, max_length=200)]


class ReplayAnswer(_Wire):
    """Topic `{prefix}/{site}/{daemon}/replay/answer`, QoS 1: what the gate can send again
    for a replay request. Events `first_seq`…`last_seq` follow on the events topic (none
    when `first_seq > last_seq`); those below `first_seq` were pruned and are gone."""

    v: V = 1
    daemon: Level
    request_id: RequestId
    from_seq: SeqFrom1
    first_seq: SeqFrom1
    last_seq: Seq


# -- downlink --------------------------------------------------------------------------


class Ack(_Wire):
    """Topic `{prefix}/{site}/{daemon}/ack`, QoS 1: every event of this daemon up to
    `applied_seq` is applied at the central system. `gap`: an event after a missing one
    was received and not applied (the daemon resends from `applied_seq + 1`). An ack
    beyond the daemon's last seq is refused (and alarmed)."""

    v: V = 1
    applied_seq: Seq
    gap: bool = False


class ReplayRequest(_Wire):
    """Topic `{prefix}/{site}/{daemon}/replay`, QoS 1: send the events from `from_seq` again
    (after the central system restored a backup). Answered by a `replay-answer`."""

    v: V = 1
    request_id: RequestId
    from_seq: SeqFrom1


class Removals(_Wire):
    members: list[str] = []
    passes: list[str] = []
    bookings: list[str] = []


class Delta(_Wire):
    """Topic `{prefix}/{site}/delta`, QoS 1: changes, numbered by the site's own gap-free
    `delta_seq` (1, 2, 3, ...). Entries replace by id, whole."""

    v: V = 1
    delta_seq: SeqFrom1
    at: str | None = None
    members: list[MemberOut] = []
    passes: list[PassOut] = []
    bookings: list[BookingOut] = []
    remove: Removals = Removals()


class DeltaHead(_Wire):
    """Topic `{prefix}/{site}/delta/head`, QoS 1, retained: the site's latest `delta_seq`,
    published by the central system after every delta and again every 30 s or so. A gate
    whose replica is behind it for a few seconds lost a delta on the way (a bridge that
    kept no session across a WAN cut) and asks for what it missed (resync `behind`),
    instead of waiting for the next delta or the half-hourly reconciliation."""

    v: V = 1
    delta_seq: Seq
    at: str | None = None


MAX_CHUNKS = 100_000


class _SnapshotFields(_Wire):
    """The fields every chunk of a snapshot carries besides its records: what a gate reads
    as a chunk arrives (SnapshotHeader) and the first part of the whole chunk
    (SnapshotChunk), one definition for both."""

    v: V = 1
    snapshot_id: Annotated[str, Field(min_length=1, max_length=100)]
    chunk: Seq
    chunks: Annotated[int, Field(ge=1, le=MAX_CHUNKS)]
    delta_seq: Seq
    requested_by: list[str] = []
    full_replacement: bool = False
    at: str | None = None

    @model_validator(mode="after")
    def _chunk_in_range(self) -> Self:
        if self.chunk >= self.chunks:
            raise ValueError("chunk must be below chunks")
        return self


class SnapshotChunk(_SnapshotFields):
    """Topic `{prefix}/{site}/snapshot`, QoS 1: one of `chunks` parts (numbered from 0,
    published in order) of the site's whole state as of delta `delta_seq`. A daemon
    applies a snapshot when it asked for it (`requested_by` names it), when it is waiting
    for one, or when `requested_by` is empty (pushed to everyone). `full_replacement`: the
    central system means it even if it removes most members (the gate's guard)."""

    members: list[MemberOut] = []
    passes: list[PassOut] = []
    bookings: list[BookingOut] = []


class SnapshotHeader(_SnapshotFields):
    """What a gate reads of a `SnapshotChunk` as it arrives: everything but the records,
    which the snapshot worker validates in full, off the event loop (sync/snapshot/importer.py).
    The records are skipped, not read."""

    @classmethod
    def of(cls, chunk: SnapshotChunk) -> SnapshotHeader:
        return cls.model_validate(chunk.model_dump(include=set(cls.model_fields)))


class LookupResponse(_Wire):
    """Published on the request's `ResponseTopic` with its `CorrelationData`."""

    v: V = 1
    found: bool
    members: list[MemberOut] = []
    passes: list[PassOut] = []
    bookings: list[BookingOut] = []


PAYLOADS: dict[str, type[BaseModel]] = {
    "event-batch": EventBatch,
    "status": Status,
    "health": Health,
    "history-request": HistoryRequest,
    "history-answer": HistoryAnswer,
    "catch-up-request": CatchUpRequest,
    "catch-up-answer": CatchUpAnswer,
    "resync-request": ResyncRequest,
    "lookup-request": LookupRequest,
    "replay-answer": ReplayAnswer,
    "ack": Ack,
    "replay-request": ReplayRequest,
    "delta": Delta,
    "delta-head": DeltaHead,
    "snapshot-chunk": SnapshotChunk,
    "lookup-response": LookupResponse,
}

__all__ = [
    "MAJOR",
    "PROTOCOL",
    "PAYLOADS",
    "Ack",
    "BookingOut",
    "CatchUpAnswer",
    "CatchUpRequest",
    "Delta",
    "DeltaHead",
    "EventBatch",
    "EventIn",
    "Health",
    "HistoryAnswer",
    "HistoryRequest",
    "LookupRequest",
    "LookupResponse",
    "MemberOut",
    "PassOut",
    "Removals",
    "ReplayAnswer",
    "ReplayRequest",
    "ResyncRequest",
    "SnapshotChunk",
    "SnapshotHeader",
    "Status",
    "TimeDrivenWork",
    "Topics",
    "central_status_topic",
    "valid_level",
]


# -- JSON Schemas ----------------------------------------------------------------------


def _finish(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    if "v" in schema.get("properties", {}):
        # every payload carries its major version: required on the wire (a gate reads a
        # payload without one as version 1, leniently; a central system must send it)
        schema["required"] = ["v", *[k for k in schema.get("required", []) if k != "v"]]
    schema["$id"] = f"https://gated.example/schemas/{name}.schema.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, model in PAYLOADS.items():
        out[name] = _finish(name, model.model_json_schema(by_alias=True))
    out["event"] = _finish("event", event_schema())
    return out


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    """Write `<name>.schema.json` for every payload into `directory` (docs/schemas/), and
    remove schemas of payloads that no longer exist."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    all_schemas = schemas()
    for name, schema in all_schemas.items():
        path = d / f"{name}.schema.json"
        path.write_text(schema_text(schema), encoding="utf-8")
        written.append(path)
    for old in d.glob("*.schema.json"):
        if old.name.removesuffix(".schema.json") not in all_schemas:
            old.unlink()
    return written


if __name__ == "__main__":  # pragma: no cover
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent / "docs" / "schemas")
    for p in write_schemas(target):
        print(p)
