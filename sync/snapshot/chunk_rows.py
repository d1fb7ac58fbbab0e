"""A snapshot chunk's JSON straight to table rows, for the snapshot worker: the fast path
beside the canonical one (SnapshotChunk, then sync/store/rows.py).

The canonical path validates the chunk with pydantic into model instances and builds the
rows from them; at 550,000 records that was most of an import's CPU (profile in
docs/performance.md, "Where the time goes"). Here msgspec decodes the JSON into slotted
structs with the same field names, defaults and bounds (types, lengths, literals, dates,
non-negative seqs), and one Python pass per record makes the checks pydantic runs in
Python (card formats, instants, weekly windows, a pass's balance against its kind, a
booking's end after its start, amounts) and the row at once.

The contract with the canonical path, which stays the definition of a valid chunk:
- `chunk_rows` returns the rows the canonical path would build, or raises `NotFast`;
- it never accepts a chunk the canonical path rejects. It may refuse one the canonical
  path accepts; the worker then runs the canonical path, which also writes every error
  message. (Both hold the schema's types — no `"5"` for an int, no `1` for a bool — as
  the link does with every message.)
tests/test_chunk_rows.py holds the two paths to that, on generated sites and on records
with every field made wrong. Where the two libraries read a value differently, the value
is not decoded here: an amount is kept as its raw JSON and read by pydantic's own
validator (once per distinct spelling: a snapshot has a few hundred), an `applied` key
is checked with the same pattern as a full match.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

import msgspec
from pydantic import TypeAdapter

from rules.credential import Card, TenDigits, card_from_text
from rules.model import PassKind
from rules.timeutil import parse_instant
from sync.photos import photo_or_none
from sync.protocol import MAX_CHUNKS
from sync.records import LOYALTY_LIMIT, MAX_INT, NOTE_MAX, STATUS_REASON_MAX, Amount, clean_text
from sync.store.rows import Row, instant_ts, keys_of, windows_json
from sync.store.search_text import search_text
from sync.topics import LEVEL

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
NULL = msgspec.Raw(b"null")


class NotFast(Exception):
    """Not decided here: the canonical path decides (and words the error, if any)."""


class _Member(msgspec.Struct):
    id: Id
    name: str = ""
    status: Literal["active", "blocked"] = "active"
    cards: list[Id] = []
    email: str | None = None
    photo: str | None = None  # photo_or_none: the model's reading
    phone: Annotated[str, msgspec.Meta(max_length=50)] | None = None
    note: str | None = None  # clean_text: the model's reading
    status_reason: str | None = None


class _Pass(msgspec.Struct):
    # msgspec.Raw: read by `_Repeated`, once per spelling (module doc)
    id: Id
    member: Id
    kind: Literal["time", "visits", "credits", "marketplace"]
    applied: msgspec.Raw  # dict[str, Seq], keys LEVEL
    name: str = ""
    balance: msgspec.Raw = NULL  # Amount | None
    deduct_on: Literal["booking", "access"] = "booking"
    walk_in_cost: msgspec.Raw = NULL  # Amount | None, not negative
    valid_from: msgspec.Raw = NULL  # date | None
    valid_until: msgspec.Raw = NULL  # date | None
    zones: msgspec.Raw = NULL  # list[Id] | None
    access_windows: msgspec.Raw = NULL  # a WeekSchedule's spec | None
    applied_seq: Seq | None = None


ABSENT = msgspec.Raw(b"")  # the default of a key that must not be there


class _Booking(
    msgspec.Struct,
    rename={"pass_": "pass", "class_": "class", "pass_by_name": "pass_", "class_by_name": "class_"},
):
    id: Id
    member: Id
    pass_: Id
    zone: Id
    starts_at: str
    ends_at: str
    class_: str = ""
    status: Literal["booked", "cancelled"] = "booked"
    deducted: bool = False
    cost: msgspec.Raw = msgspec.Raw(b"1")  # an Amount, not negative
    loyalty_points: Annotated[int, msgspec.Meta(ge=-LOYALTY_LIMIT, le=LOYALTY_LIMIT)] = 0
    # the model also reads `pass_` and `class_` (populate_by_name): left to it
    pass_by_name: msgspec.Raw = ABSENT
    class_by_name: msgspec.Raw = ABSENT


class _Chunk(msgspec.Struct):
    snapshot_id: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    chunk: Seq
    chunks: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNKS)]
    delta_seq: Seq
    v: Literal[1] = 1
    requested_by: list[str] = []
    full_replacement: bool = False
    at: str | None = None
    members: list[_Member] = []
    passes: list[_Pass] = []
    bookings: list[_Booking] = []


_decoder = msgspec.json.Decoder(_Chunk)
_UTC = ZoneInfo("UTC")
_HAS_BALANCE = {k.value: k.has_balance for k in PassKind}
_T = TypeVar("_T")


class _Repeated(Generic[_T]):
    """A field whose values repeat across a snapshot (amounts, dates, zones, windows, the
    `applied` maps), read from its raw JSON once per distinct spelling. `read` raises on
    a value that is not valid. Bounded: a site whose values never repeat only pays for
    the look-up."""

    def __init__(self, read: Callable[[bytes], _T], size: int = 20_000):
        self.read = read
        self.size = size
        self.seen: dict[bytes, _T] = {}

    def __call__(self, raw: msgspec.Raw) -> _T:
        key = bytes(raw)
        try:
            return self.seen[key]
        except KeyError:
            if len(self.seen) >= self.size:
                self.seen.clear()
            v = self.seen[key] = self.read(key)
            return v


_AMOUNT = TypeAdapter(Amount | None)  # pydantic's own reading (module doc)
_DATE = msgspec.json.Decoder(date | None)
_ZONES = msgspec.json.Decoder(list[Id] | None)
_WINDOWS = msgspec.json.Decoder(dict[str, str | list[str]] | None)
_APPLIED = msgspec.json.Decoder(dict[str, Seq])


def _read_date(raw: bytes) -> tuple[date | None, str | None]:
    d = _DATE.decode(raw)
    return d, d.isoformat() if d else None


def _read_zones(raw: bytes) -> str | None:
    zones = _ZONES.decode(raw)
    return json.dumps(sorted(set(zones))) if zones is not None else None


def _read_windows(raw: bytes) -> str | None:
    spec = _WINDOWS.decode(raw)
    return windows_json(spec) if spec is not None else None  # parses them: ValueError if bad


def _read_applied(daemon: str) -> Callable[[bytes], tuple[int, str | None]]:
    def read(raw: bytes) -> tuple[int, str | None]:
        """(this daemon's applied seq, the other daemons' entries as stored)."""
        applied = _APPLIED.decode(raw)
        if any(LEVEL.fullmatch(d) is None for d in applied):
            raise ValueError("not a daemon id")
        peers = {d: s for d, s in applied.items() if d != daemon}
        return applied.get(daemon, 0), json.dumps(peers, sort_keys=True, separators=(",", ":")) if peers else None

    return read


_amount = _Repeated(_AMOUNT.validate_json)
_date = _Repeated(_read_date)
_zones = _Repeated(_read_zones)
_windows = _Repeated(_read_windows)
_applied: dict[str, _Repeated[tuple[int, str | None]]] = {}  # by daemon
_times: dict[tuple[str, str, str], tuple[float, float]] = {}


class ChunkRows:
    """What one chunk adds to each table, in insert order (sync/store/rows.py's tuples)."""

    __slots__ = ("bookings", "card_keys", "cards", "members", "passes")

    def __init__(self) -> None:
        self.members: list[Row] = []
        self.cards: list[tuple[str, str]] = []
        self.card_keys: list[tuple[str, str]] = []
        self.passes: list[Row] = []
        self.bookings: list[Row] = []

    def tables(self) -> tuple[list[Row], list[tuple[str, str]], list[tuple[str, str]], list[Row], list[Row]]:
        return self.members, self.cards, self.card_keys, self.passes, self.bookings


def chunk_rows(
    payload: bytes, *, snapshot_id: str, number: int, chunks: int, daemon: str, tz: ZoneInfo,
    synced_at: float, ten_digits: TenDigits,
) -> ChunkRows:
    """The rows of chunk `number` of `chunks` of `snapshot_id`, or NotFast."""
    try:
        c = _decoder.decode(payload)
        if c.chunk >= c.chunks or (c.snapshot_id, c.chunk, c.chunks) != (snapshot_id, number, chunks):
            raise NotFast
        out = ChunkRows()
        _members(c.members, out, synced_at, ten_digits)
        _passes(c.passes, out.passes, daemon)
        _bookings(c.bookings, out.bookings, tz)
        return out
    except NotFast:
        raise
    except Exception as e:  # anything at all: the canonical path decides
        raise NotFast from e


def _members(members: list[_Member], out: ChunkRows, synced_at: float, ten_digits: TenDigits) -> None:
    rows, cards, card_keys = out.members, out.cards, out.card_keys
    em32 = ten_digits is TenDigits.EM32
    for m in members:
        texts = m.cards
        typed: list[Card] = []
        if texts:
            stripped = []
            for text in texts:
                card = card_from_text(text)  # the model's check (ValueError: not a card)
                s = text.strip()
                stripped.append(s)
                # the store types what the model kept, by the site's rule
                typed.append(card if em32 and s == text else card_from_text(s, ten_digits))
            texts = stripped
            mid = m.id
            cards += [(t.key, mid) for t in typed]
            card_keys += keys_of(typed)
        rows.append((
            m.id, m.name, m.status, m.email, synced_at, m.phone, search_text(m.name, m.email, m.phone, texts),
            clean_text(m.note, NOTE_MAX), clean_text(m.status_reason, STATUS_REASON_MAX),
            photo_or_none(m.photo) if m.photo is not None else None,
        ))


def _passes(passes: list[_Pass], rows: list[Row], daemon: str) -> None:
    applied = _applied.get(daemon)
    if applied is None:
        applied = _applied[daemon] = _Repeated(_read_applied(daemon))
    for p in passes:
        kind = p.kind
        balance = _amount(p.balance)
        walk_in = _amount(p.walk_in_cost)
        if (balance is None) == _HAS_BALANCE[kind] or (kind == "credits" and walk_in is None):
            raise NotFast
        if walk_in is not None and walk_in < 0:
            raise NotFast
        vf, vf_text = _date(p.valid_from)
        vu, vu_text = _date(p.valid_until)
        if vf and vu and vf > vu:
            raise NotFast
        applied_seq, peers = applied(p.applied)
        rows.append((
            p.id,
            p.member,
            p.name,
            kind,
            str(balance) if balance is not None else None,
            applied_seq,
            p.deduct_on,
            str(walk_in) if walk_in is not None else None,
            vf_text,
            vu_text,
            _zones(p.zones),
            _windows(p.access_windows),
            peers,
        ))


def _bookings(bookings: list[_Booking], rows: list[Row], tz: ZoneInfo) -> None:
    zone = tz.key
    for b in bookings:
        if b.pass_by_name is not ABSENT or b.class_by_name is not ABSENT:
            raise NotFast
        starts, ends = b.starts_at, b.ends_at
        key = (starts, ends, zone)
        times = _times.get(key)
        if times is None:
            # the model's checks, on its terms: each an instant, the end not before the start
            if parse_instant(ends, _UTC) < parse_instant(starts, _UTC):
                raise NotFast
            if len(_times) >= 20_000:
                _times.clear()
            times = _times[key] = (instant_ts(starts, tz), instant_ts(ends, tz))
        cost = _amount(b.cost)
        if cost is None or cost < 0:
            raise NotFast
        rows.append((
            b.id, b.member, b.pass_, b.class_, b.zone, times[0], times[1], b.status, int(b.deducted), str(cost),
            b.loyalty_points,
        ))


def _fields(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """{wire name: (required, default)} of a struct (for the test that holds the structs
    to the models' fields)."""
    out: dict[str, Any] = {}
    for f in msgspec.structs.fields(struct):
        default = f.default_factory() if f.default is msgspec.NODEFAULT and not f.required else f.default
        out[f.encode_name] = (f.required, None if f.required else default)
    return out


__all__ = ["ChunkRows", "NotFast", "chunk_rows"]
