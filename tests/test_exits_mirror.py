"""The exits a storage fault left unrecorded, mirrored outside the store (gated/exits_mirror.py):
written whole, read back checked, and a file that is not ours never crashes a start."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gated.exits_mirror import MAX_BYTES, ExitsMirror, Mirrored, parse

T0 = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


def test_written_then_read_back_and_none_left_removes_it(tmp_path: Path) -> None:
    m = ExitsMirror(tmp_path / "run" / "exits.json", "gate-a")
    gates = {"out-1": Mirrored(3, T0, T0 + timedelta(seconds=40)), "out-2": Mirrored(1, T0, T0)}
    m.write(gates)
    assert ExitsMirror(m.path, "gate-a").read() == gates
    m.write({})
    assert not m.path.exists() and m.read() == {}


def test_a_write_that_fails_is_counted_not_raised(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    m = ExitsMirror(tmp_path / "file" / "exits.json", "gate-a")  # its directory is a file
    m.write({"out-1": Mirrored(1, T0, T0)})
    assert m.failures == 1


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b'{"gates": []}', b'{"gates": {"out-1": [0, 1, 2]}}', b'{"gates": {"out-1": [1, 5, 2]}}',
    b'{"gates": {"out-1": [true, 1, 2]}}', b'{"gates": {"out-1": [1, "x", 2]}}', b'{"gates": {"": [1, 1, 2]}}',
    b'{"gates": {"out-1": [1, 1e300, 1e301]}}', b"\xff\xfe", b" " * (MAX_BYTES + 1),
])
def test_a_damaged_file_is_set_aside_and_read_as_none(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "exits.json"
    path.write_bytes(body)
    assert ExitsMirror(path, "gate-a").read() == {}
    assert not path.exists() and path.with_name("exits.json.bad").read_bytes() == body


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
).map(lambda v: json.dumps({"gates": v}).encode()))
def test_any_bytes_are_read_or_refused_with_a_reason(raw: bytes) -> None:
    try:
        found = parse(raw)
    except ValueError:
        return
    for gate, m in found.items():
        assert isinstance(gate, str) and m.count > 0 and m.first <= m.last


def test_another_daemons_file_is_set_aside_not_taken_for_ours(tmp_path: Path) -> None:
    path = tmp_path / "exits.json"
    ExitsMirror(path, "door-1").write({"out-1": Mirrored(4, T0, T0)})
    assert ExitsMirror(path, "door-2").read() == {}
    assert not path.exists() and path.with_name("exits.json.bad").exists()
