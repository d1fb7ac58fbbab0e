"""The MQTT contract between a gate daemon and the central system: topics and payloads.

Every payload is a JSON object with `"v": 1` and is validated with the pydantic models
below (unknown keys are rejected, except inside an uplink event, whose body is open: see
`EventIn`). `docs/protocol.md` describes them for integrators; `docs/schemas/` holds the
JSON Schemas generated from these models (`python -m sync.protocol` rewrites them, a test
checks they match).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sync.records import BookingIn, MemberIn, PassIn, PassRecord

VERSION = 1
V = Literal[1]

# a topic level: no MQTT wildcards or separators, no leading '$'
_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,99}$")
Level = Annotated[str, Field(pattern=_LEVEL.pattern)]
Seq = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- uplink ----------------------------------------------------------------------------


class EventIn(BaseModel):
    """One event of the daemon's log, exactly as the Store wrote it (see SCENARIOS.md,
    "Events"). The common fields are checked; type-specific fields are open (the daemon
    may add some, such as `message` or `balance`): consumers ignore what they do not know.
    """

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    id: Annotated[str, Field(min_length=1, max_length=100)]
    seq: Annotated[int, Field(ge=1)]
    type: Annotated[str, Field(min_length=1, max_length=50)]
    at: Annotated[str, Field(min_length=1, max_length=50)]
    gate: str | None = None
    member: str | None = None


class EventBatch(_Strict):
    """Topic `{prefix}/{site}/{daemon}/events`, QoS 1. Events in increasing, gap-free seq
    order (a batch may repeat events already sent: the `id` makes a repeat harmless)."""

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


class Status(_Strict):
    """Topic `{prefix}/{site}/{daemon}/status` (and `{prefix}/central/status`), retained.
    The broker publishes the last will (`offline`) when the connection is lost."""

    v: V = 1
    daemon: Level
    state: Literal["online", "offline"]
    at: str | None = None
    version: str | None = None


class Health(_Strict):
    """Topic `{prefix}/{site}/{daemon}/health`, QoS 0, periodic and on demand."""

    v: V = 1
    daemon: Level
    at: str
    connected: bool
    outbox_depth: Seq
    last_seq: Seq
    acked_seq: Seq
    delta_seq: Seq
    last_sync_at: str | None = None
    readers: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    stats: dict[str, int] = {}
    extra: dict[str, Any] = {}


class ResyncRequest(_Strict):
    """Topic `{prefix}/{site}/resync`, QoS 1: the daemon asks for a snapshot (or, when
    `since_delta_seq` is given and the reason allows it, a replay of later deltas)."""

    v: V = 1
    daemon: Level
    request_id: Annotated[str, Field(min_length=1, max_length=100)]
    reason: Literal["startup", "gap", "reconnect", "reconcile", "snapshot_failed", "manual"]
    since_delta_seq: Seq | None = None


class LookupRequest(_Strict):
    """Topic `{prefix}/{site}/lookup/request`, QoS 0, MQTT v5 `ResponseTopic` and
    `CorrelationData` properties set: an unknown card, asked live before the decision.
    `card` is the card's typed key (`em:0A00BC614E`; docs/protocol.md, "Cards")."""

    v: V = 1
    daemon: Level
    card: Annotated[str, Field(min_length=1, max_length=200)]


# -- downlink --------------------------------------------------------------------------


class PassOut(PassIn):
    """A pass as the central system sends it: `applied` maps each daemon of the site to
    the highest seq of *its* events the central system had applied when it computed
    `balance`. A daemon missing from the map: none of its events were applied. The gate
    turns this into `PassIn.applied_seq` for itself."""

    applied: dict[str, Seq] = {}

    def for_daemon(self, daemon: str) -> PassIn:
        data = self.model_dump(by_alias=True, exclude={"applied"})
        data["applied_seq"] = self.applied.get(daemon, 0)
        return PassIn.model_validate(data)

    def record_for(self, daemon: str) -> PassRecord:
        """The store's record for this daemon, without validating again."""
        return PassRecord(self.to_domain().pass_, self.applied.get(daemon, 0))


class Ack(_Strict):
    """Topic `{prefix}/{site}/{daemon}/ack`, QoS 1: every event of this daemon up to
    `applied_seq` is applied at the central system. `gap`: an event after a missing one
    was received and not applied (the daemon resends from `applied_seq + 1`)."""

    v: V = 1
    applied_seq: Seq
    gap: bool = False


class Removals(_Strict):
    members: list[str] = []
    passes: list[str] = []
    bookings: list[str] = []


class Delta(_Strict):
    """Topic `{prefix}/{site}/delta`, QoS 1: changes, numbered by the site's own gap-free
    `delta_seq` (1, 2, 3, ...). Entries replace by id, whole."""

    v: V = 1
    delta_seq: Annotated[int, Field(ge=1)]
    at: str | None = None
    members: list[MemberIn] = []
    passes: list[PassOut] = []
    bookings: list[BookingIn] = []
    remove: Removals = Removals()


class SnapshotChunk(_Strict):
    """Topic `{prefix}/{site}/snapshot`, QoS 1: one of `chunks` parts (numbered from 0,
    published in order) of the site's whole state as of delta `delta_seq`. A daemon
    applies a snapshot when it asked for it (`requested_by` names it), when it is waiting
    for one, or when `requested_by` is empty (pushed to everyone)."""

    v: V = 1
    snapshot_id: Annotated[str, Field(min_length=1, max_length=100)]
    chunk: Seq
    chunks: Annotated[int, Field(ge=1)]
    delta_seq: Seq
    requested_by: list[str] = []
    at: str | None = None
    members: list[MemberIn] = []
    passes: list[PassOut] = []
    bookings: list[BookingIn] = []

    @model_validator(mode="after")
    def _chunk_in_range(self) -> SnapshotChunk:
        if self.chunk >= self.chunks:
            raise ValueError("chunk must be below chunks")
        return self


class LookupResponse(_Strict):
    """Published on the request's `ResponseTopic` with its `CorrelationData`."""

    v: V = 1
    found: bool
    members: list[MemberIn] = []
    passes: list[PassOut] = []
    bookings: list[BookingIn] = []


PAYLOADS: dict[str, type[BaseModel]] = {
    "event-batch": EventBatch,
    "status": Status,
    "health": Health,
    "resync-request": ResyncRequest,
    "lookup-request": LookupRequest,
    "ack": Ack,
    "delta": Delta,
    "snapshot-chunk": SnapshotChunk,
    "lookup-response": LookupResponse,
}


# -- topics ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic one daemon uses. `prefix` may contain '/', `site` and `daemon` may not."""

    prefix: str
    site: str
    daemon: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}"

    @property
    def events(self) -> str:
        return f"{self.base}/{self.daemon}/events"

    @property
    def site_events(self) -> str:
        return f"{self.base}/+/events"

    @property
    def status(self) -> str:
        return f"{self.base}/{self.daemon}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/{self.daemon}/health"

    @property
    def ack(self) -> str:
        return f"{self.base}/{self.daemon}/ack"

    @property
    def lookup_response(self) -> str:
        return f"{self.base}/{self.daemon}/lookup/response"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def delta(self) -> str:
        return f"{self.base}/delta"

    @property
    def resync(self) -> str:
        return f"{self.base}/resync"

    @property
    def lookup_request(self) -> str:
        return f"{self.base}/lookup/request"

    @property
    def central_status(self) -> str:
        return central_status_topic(self.prefix)


def central_status_topic(prefix: str) -> str:
    return f"{prefix}/central/status"


def valid_level(text: str) -> bool:
    return bool(_LEVEL.match(text)) and text != "central"


# -- JSON Schemas ----------------------------------------------------------------------


def schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, model in PAYLOADS.items():
        schema = model.model_json_schema(by_alias=True)
        schema["$id"] = f"https://gated.example/schemas/{name}.schema.json"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[name] = schema
    return out


def schema_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    """Write `<name>.schema.json` for every payload into `directory` (docs/schemas/)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = d / f"{name}.schema.json"
        path.write_text(schema_text(schema), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent / "docs" / "schemas")
    for p in write_schemas(target):
        print(p)
