"""The snapshot worker's fast path (sync/snapshot/chunk_rows.py) against the canonical one (the
SnapshotChunk model, then sync/store/rows.py): the same rows whenever it decides, and never a
chunk the model rejects."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.generate import chunk_payloads, generate
from rules.credential import TenDigits
from sync.protocol import BookingOut, MemberOut, PassOut, SnapshotChunk
from sync.snapshot.chunk_rows import NotFast, _Booking, _fields, _Member, _Pass, chunk_rows
from sync.snapshot.parse import BuildError, Parser
from tests.photos import ANA_URL

DAEMON = "gate-a"


def parser(chunks: int, ten_digits: TenDigits = TenDigits.EM32, snapshot_id: str = "s") -> Parser:
    return Parser({
        "timezone": "Europe/Madrid", "daemon": DAEMON, "snapshot_id": snapshot_id, "chunks": chunks,
        "synced_at": 1700000000.0, "spool": "/dev/null", "ten_digits": ten_digits.value,
    })


def fast(p: Parser, number: int, payload: bytes) -> Any:
    return chunk_rows(
        payload, snapshot_id=p.snapshot_id, number=number, chunks=p.chunks, daemon=p.daemon, tz=p.tz,
        synced_at=p.synced_at, ten_digits=p.ten_digits,
    ).tables()


@pytest.mark.parametrize("ten_digits", list(TenDigits))
def test_a_generated_site_gives_the_same_rows_both_ways(ten_digits: TenDigits) -> None:
    data = generate(400, seed=9)
    payloads = list(chunk_payloads(data, daemon=DAEMON, snapshot_id="s", records_per_chunk=97))
    p = parser(len(payloads), ten_digits)
    for i, payload in enumerate(payloads):
        assert fast(p, i, payload) == p.parse_canonical(i, payload)
        assert p.parse(i, payload) == p.parse_canonical(i, payload)


def test_the_structs_have_the_models_fields() -> None:
    """Same wire names, same required ones, same defaults (amounts and the fields read
    raw are compared as the JSON they default to)."""
    for struct, model in ((_Member, MemberOut), (_Pass, PassOut), (_Booking, BookingOut)):
        ours = {k: (req, bytes(d) if isinstance(d, msgspec.Raw) else d) for k, (req, d) in _fields(struct).items()}
        # keys the booking model also reads by field name: there only to be refused
        for by_name in ("pass_", "class_"):
            if struct is _Booking:
                assert ours.pop(by_name) == (False, b"")
        theirs = {}
        for name, f in model.model_fields.items():
            d = None if f.is_required() else f.get_default(call_default_factory=True)
            if isinstance(ours.get(f.alias or name, (None, None))[1], bytes):
                d = json.dumps(str(d) if isinstance(d, Decimal) else d).replace('"', "").encode()
            theirs[f.alias or name] = (f.is_required(), d)
        assert ours == theirs, struct


MEMBER = {"id": "m1", "name": "Ana López", "status": "active", "cards": ["04A1B2C3", "em:0A00BC614E"],
          "email": "a@example.com", "phone": "+34 600 000 000", "photo": ANA_URL, "note": "pays  in cash\n",
          "status_reason": "card payment failed"}
PASS = {"id": "p1", "member": "m1", "name": "10 visits", "kind": "credits", "balance": 12.5, "deduct_on": "access",
        "walk_in_cost": 8, "valid_from": "2026-01-01", "valid_until": "2026-12-31", "zones": ["main", "pool"],
        "access_windows": {"mon-fri": ["06:00-12:00", "14:00-17:00"], "sat": "08:00-20:00"},
        "applied": {DAEMON: 3, "gate-b": 7}}
BOOKING = {"id": "b1", "member": "m1", "pass": "p1", "class": "Yoga", "zone": "main",
           "starts_at": "2026-11-18T10:00", "ends_at": "2026-11-18T11:00Z", "status": "booked", "deducted": True,
           "cost": 1.5, "loyalty_points": 10}
RECORDS = {"members": MEMBER, "passes": PASS, "bookings": BOOKING}

# values that are right somewhere and wrong elsewhere, and those the two libraries might
# read differently (numbers as text, floats for ints, trailing newlines, lengths, ...)
TRICKY: list[Any] = [
    None, True, False, 0, 1, -1, 1.0, 1.5, 1e2, 1.10, 1e400, 0.30000000000000001, 10**20, -0.0, "1", "1.5", "-1",
    "NaN", "Infinity", "1e2", "", " ", "x", "x" * 50, "x" * 51, "x" * 100, "x" * 101, "x" * 200, "x" * 201,
    "é" * 200, "é" * 201, "gate-b\n", "a\u0000", "2026-01-01", "2026-1-1", "2026-01-01T00:00:00", "2026-02-30",
    "0000-01-01", "9999-12-31", "2026-11-18T10:00", "2026-11-18T09:00+05:00", "2026-11-18T25:00", "20261118",
    "0001-01-01T00:00", "9999-12-31T23:59", "time", "visits", "marketplace", "booking", "access", "booked",
    "cancelled", "blocked", "uid:zz", "uid:04A1", "w26:1:2", "em32:123", "  01234567  ", "0012345678", "raw:x",
    [], [""], ["main"], ["main", "main"], ["x" * 201], ["gate-b"], [1], {}, {"mon-sun": "06:00-12:00"},
    {"mon-sun": ["06:00-12:00", "bad"]}, {"x": "06:00-12:00"}, {"mon": "22:00-02:00"}, {DAEMON: 1}, {"gate-b": 1},
    {"gate-b\n": 1}, {"gate b": 1}, {"": 1}, {DAEMON: -1}, {DAEMON: 1.0}, {DAEMON: "1"}, {DAEMON: 10**20},
    # the bounds of what SQLite and exact decimal arithmetic hold (sync/records.py)
    2**63 - 1, 2**63, {DAEMON: 2**63 - 1}, {DAEMON: 2**63}, 1_000_000, 1_000_001, -1_000_001, "9e999999",
    "1e12", "1000000000001", -1000000000001, 1e13,
    # photos (kept, or dropped: never the member) and desk text (cut, one line)
    ANA_URL, ANA_URL + "=", ANA_URL.replace("jpeg", "png"), "data:image/jpeg;base64,AAAA", "https://cdn.example/a.jpg",
    "data:image/jpeg;base64," + "A" * 50_000, " a \t b \n", "x" * 501, "é" * 600,
]


@st.composite
def chunk_json(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(RECORDS)))
    record: dict[str, Any] = dict(RECORDS[kind])
    keys = sorted({*record, "pass_", "class_", "applied_seq", "photo", "note", "status_reason", "extra"})
    for key in draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            record.pop(key, None)
        else:
            record[key] = draw(st.sampled_from(TRICKY))
    body = {"v": 1, "snapshot_id": "s", "chunk": 0, "chunks": 1, "delta_seq": 1, kind: [RECORDS[kind], record]}
    text = json.dumps(body)
    if draw(st.booleans()):  # a key twice: the later one counts, in both
        field = draw(st.sampled_from(sorted(RECORDS[kind])))
        text = text.replace(f'"{field}": ', f'"{field}": {json.dumps(draw(st.sampled_from(TRICKY)))}, "{field}": ', 1)
    return kind, text.encode()


@settings(max_examples=1500, deadline=None, database=None)
@given(chunk=chunk_json())
def test_the_fast_path_never_accepts_what_the_model_rejects(chunk: tuple[str, bytes]) -> None:
    _, payload = chunk
    p = parser(1)
    try:
        canonical = p.parse_canonical(0, payload)
    except BuildError:
        canonical = None
    try:
        rows = fast(p, 0, payload)
    except NotFast:
        return  # the canonical path decides: nothing to compare
    assert canonical is not None, f"accepted a chunk the model rejects: {payload!r}"
    assert rows == canonical


def test_the_fast_path_takes_the_common_case() -> None:
    """It is the fast path only if it decides the chunks the central system sends."""
    payload = json.dumps({"v": 1, "snapshot_id": "s", "chunk": 0, "chunks": 1, "delta_seq": 1,
                          **{k: [r] for k, r in RECORDS.items()}}).encode()
    p = parser(1)
    assert fast(p, 0, payload) == p.parse_canonical(0, payload)
    # the desk's fields as the gate keeps them: one line, the photo as sent
    assert fast(p, 0, payload)[0][0][-3:] == ("pays in cash", "card payment failed", ANA_URL)
    SnapshotChunk.model_validate_json(payload)
    with pytest.raises(NotFast):  # not the chunk the worker expects
        chunk_rows(payload, snapshot_id="s", number=1, chunks=2, daemon=DAEMON, tz=p.tz, synced_at=1.0,
                   ten_digits=TenDigits.EM32)


@pytest.mark.parametrize("bad", [
    {"applied": {DAEMON: "5"}},  # a string for an integer
    {"applied": {DAEMON: True}},  # a boolean for one
])
def test_a_chunk_off_its_schemas_types_is_refused_both_ways(bad: dict[str, Any]) -> None:
    """The canonical path read `"5"` as 5 and `true` as 1 (a central written from the docs
    found the link's messages did; the snapshot's records are held as the link's are)."""
    pass_ = {"id": "p1", "member": "m1", "kind": "visits", "balance": 5, **bad}
    payload = json.dumps({"v": 1, "snapshot_id": "s", "chunk": 0, "chunks": 1, "delta_seq": 1,
                          "members": [{"id": "m1"}], "passes": [pass_]}).encode()
    p = parser(1)
    with pytest.raises(NotFast):
        fast(p, 0, payload)
    with pytest.raises(BuildError):
        p.parse(0, payload)
