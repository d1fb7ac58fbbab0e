"""The snapshot wire between importer and worker (sync/snapshot/wire.py): what one side
frames the other reads back, however the pipe splits it; arbitrary bytes never make a
reader raise, hang or hold more than its bound."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from sync.snapshot.wire import (
    ABORT,
    END,
    MAX_COMMAND,
    Abort,
    Built,
    Chunk,
    Command,
    CommandReader,
    End,
    EventReader,
    Failed,
    Progress,
    WorkerEvent,
    chunk_header,
    event_line,
)


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def read_commands(parts: list[bytes], *, eof: bool = True, max_chunk: int = 1 << 20) -> tuple[list[Command], int]:
    r = CommandReader(max_chunk=max_chunk)
    out: list[Command] = []
    most = 0
    for p in parts:
        out += r.feed(p)
        most = max(most, r.buffered)
    if eof:
        out += r.feed_eof()
    return out, most


def test_a_snapshot_as_the_importer_frames_it() -> None:
    payloads = [b'{"v":1}', b"", b"chunk 3\nend\n\x00\xff" * 50]
    wire = b"".join(chunk_header(len(p)) + p for p in payloads) + END
    out, _ = read_commands([wire])
    assert out == [Chunk(p) for p in payloads] + [End()]
    # one byte at a time: the same
    out, _ = read_commands([wire[i : i + 1] for i in range(len(wire))])
    assert out == [Chunk(p) for p in payloads] + [End()]


def test_abort_eof_and_malformed_commands_close_the_reader() -> None:
    assert read_commands([chunk_header(2) + b"ab" + ABORT + END])[0] == [Chunk(b"ab"), Abort("abort")]
    out, _ = read_commands([chunk_header(5) + b"ab"])  # the importer died mid-chunk
    assert out == [Abort("input ended without end in a chunk")]
    assert read_commands([b""])[0] == [Abort("input ended without end")]
    for bad in (b"chunk -1\n", b"chunk +1\n", b"chunk 1 2\n", b"Chunk 1\n", b"\n", b"end \n", b"x" * MAX_COMMAND):
        out, _ = read_commands([bad + chunk_header(1) + b"a" + END])
        assert len(out) == 1 and isinstance(out[0], Abort) and out[0].reason != "abort", bad
    out, _ = read_commands([chunk_header(1 << 21)], max_chunk=1 << 20)
    assert out == [Abort(f"a chunk of {1 << 21} bytes (at most {1 << 20})")]


def test_worker_events_round_trip_and_junk_is_skipped() -> None:
    wire = (
        event_line("progress", chunks=50)
        + b"not json\n"
        + b"[1, 2]\n"
        + event_line("progress", chunks="50")
        + event_line("hello")
        + b"[" * 100_000 + b"\n"
        + event_line("built", counts={"members": 3}, seconds=1.5)
        + event_line("error", message="invalid chunk 3: x", chunk=3)
        + event_line("error", message="snapshot incomplete", chunk=None)
    )
    expected: list[WorkerEvent] = [
        Progress(50),
        Built({"event": "built", "counts": {"members": 3}, "seconds": 1.5}),
        Failed("invalid chunk 3: x", 3),
        Failed("snapshot incomplete", None),
    ]
    assert EventReader().feed(wire) == expected
    r = EventReader()
    assert [e for i in range(len(wire)) for e in r.feed(wire[i : i + 1])] == expected


def test_an_overlong_event_line_is_skipped_whole() -> None:
    r = EventReader(max_line=100)
    out = r.feed(b'{"event": "progress", "chunks": 1' + b" " * 200)
    assert out == [] and r.buffered == 0
    assert r.feed(b'}\n' + event_line("progress", chunks=2)) == [Progress(2)]


@settings(max_examples=300, deadline=2000)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_bytes_any_split_commands(data: bytes, cuts: list[int]) -> None:
    whole, _ = read_commands([data], max_chunk=64)
    split, most = read_commands(pieces(data, cuts), max_chunk=64)
    assert split == whole
    assert most <= max(MAX_COMMAND, 64) + 1  # a command line or one payload, and a byte
    assert whole and isinstance(whole[-1], (End, Abort))  # it always ends, one way or the other
    assert sum(isinstance(c, (End, Abort)) for c in whole) == 1


@settings(max_examples=300, deadline=2000)
@given(
    chunks=st.lists(st.binary(max_size=50), max_size=5),
    junk=st.binary(max_size=50),
    cuts=st.lists(st.integers(0, 400), max_size=8),
)
def test_framed_chunks_survive_any_split_and_trailing_junk(chunks: list[bytes], junk: bytes, cuts: list[int]) -> None:
    wire = b"".join(chunk_header(len(c)) + c for c in chunks) + END + junk
    out, _ = read_commands(pieces(wire, cuts))
    assert out == [Chunk(c) for c in chunks] + [End()]


@settings(max_examples=300, deadline=2000)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_any_bytes_any_split_events(data: bytes, cuts: list[int]) -> None:
    whole = EventReader(max_line=64).feed(data)
    r = EventReader(max_line=64)
    split: list[WorkerEvent] = []
    for p in pieces(data, cuts):
        split += r.feed(p)
        assert r.buffered <= 64
    assert split == whole


@settings(max_examples=200, deadline=2000)
@given(
    lines=st.lists(
        st.one_of(
            st.builds(lambda n: event_line("progress", chunks=n), st.integers(0, 10**6)),
            st.builds(lambda m, c: event_line("error", message=m, chunk=c), st.text(max_size=30), st.none() | st.integers(0, 99)),
            st.builds(lambda d: event_line("built", **d), st.dictionaries(st.text(max_size=5).filter(lambda k: k != "event"), st.integers(), max_size=3)),
            st.text(max_size=30).map(lambda t: b"#" + t.replace("\n", " ").encode() + b"\n"),
        ),
        max_size=6,
    ),
    cuts=st.lists(st.integers(0, 600), max_size=8),
)
def test_event_lines_read_back_as_written(lines: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(lines)
    r = EventReader()
    got = [e for p in pieces(wire, cuts) for e in r.feed(p)]
    expected = [e for line in lines for e in EventReader().feed(line)]
    assert got == expected
    written = [json.loads(line) for line in lines if line.startswith(b'{"event"')]
    assert len(got) == len(written)
