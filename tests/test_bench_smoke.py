"""Keeps the benchmark code from rotting: the generator and benchmark 1 at a tiny size.

No timing assertions: figures belong in `make bench` and docs/performance.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import common, decision
from bench.generate import chunk_payloads, generate
from rules.model import PassKind
from sync.protocol import SnapshotChunk

ROOT = Path(__file__).resolve().parent.parent


def test_generator_is_deterministic_and_complete() -> None:
    a = generate(200, seed=3)
    b = generate(200, seed=3)
    assert a.counts() == {"members": 200, "passes": 300, "bookings": 600}
    assert [m.cards for m in a.members] == [m.cards for m in b.members]
    assert [(p.pass_.id, p.pass_.kind, p.pass_.balance) for p in a.passes] == [
        (p.pass_.id, p.pass_.kind, p.pass_.balance) for p in b.passes
    ]
    assert {p.pass_.kind for p in a.passes} == set(PassKind)
    cards = a.cards
    assert len(cards) == len(set(cards))  # card identifiers are unique
    members = {m.id for m in a.members}
    passes = {p.pass_.id for p in a.passes}
    assert all(bk.member in members and bk.pass_id in passes for bk in a.bookings)


def test_snapshot_chunks_validate_as_the_link_reads_them() -> None:
    data = generate(50, seed=1)
    payloads = list(chunk_payloads(data, records_per_chunk=40))
    chunks = [SnapshotChunk.model_validate_json(p) for p in payloads]
    assert [c.chunk for c in chunks] == list(range(len(payloads)))
    assert sum(len(c.members) for c in chunks) == 50
    assert sum(len(c.passes) for c in chunks) == 75
    assert sum(len(c.bookings) for c in chunks) == 150


def test_decision_benchmark_runs_at_a_tiny_size(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(common, "WORK", tmp_path)
    res = decision.run([100], runs=2, taps=20, log=lambda _msg: None)
    r = res["100"]
    assert r["decide"]["n"] == 40 and r["tap"]["n"] == 40
    assert r["decide"]["runs"] == 2
    assert sum(r["reasons"].values()) == 40
    json.dumps(res)  # what `make bench` writes


def test_wire_times() -> None:
    w = common.wire_times()
    assert set(w) == {"modbus_rtu_write_coil_9600", "osdp_poll_9600", "wiegand_26", "serial_ascii_line_9600"}
    assert 0 < common.share_ours(1.0, w["wiegand_26"]) < 1


def test_bench_command_runs_the_snapshot_import_as_documented(tmp_path) -> None:
    """`python -m bench --only snapshot` (and `--scale 1m`, at a tiny size), as a user runs
    it: the import through the worker process, taps meanwhile, the table and the JSON."""
    for extra in ([], ["--scale", "1m"]):
        out = tmp_path / "results.json"
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "--only", "snapshot", "--members", "300", "--quick",
             "--work", str(tmp_path / "work"), "--out", str(out), *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "snapshot import (worker process, switched in), 300 members" in proc.stdout
        res = json.loads(out.read_text())["results"]["snapshot"]
        assert res["members"] == 300 and res["import_seconds"]["runs"] >= 1
        assert all(w["counts"]["bookings"] == 900 for w in res["worker"])
        assert res["disk"]["replica_mb"] > 0
        # the worker's CPU beside the wall time, one figure per run, in the table too
        assert res["worker_cpu_seconds"]["runs"] == res["import_seconds"]["runs"]
        assert res["worker_cpu_seconds"]["median"] > 0
        assert "snapshot import: the worker's CPU (builder + parsers)" in proc.stdout


def test_the_disk_floor_runs_quiet_and_beside_a_writer_that_really_writes(tmp_path: Path) -> None:
    """bench/endtoend.py's floor of a durable write, and its busy-disk writer: the writer
    was once handed the store's file as its directory, died at once, and the 'busy' runs
    were quiet; now a writer that dies is an error, and one that writes leaves its file."""
    from bench import endtoend

    quiet = endtoend.durable_write_floor(tmp_path, writes=5, busy=False)
    busy = endtoend.durable_write_floor(tmp_path, writes=5, busy=True)
    assert quiet["n"] == busy["n"] == 5 and quiet["median"] > 0
    assert not list(tmp_path.iterdir())  # the floor's file and the writer's are gone
    not_a_dir = tmp_path / "gated.db"
    not_a_dir.write_bytes(b"")
    with pytest.raises(RuntimeError, match="writer exited"), endtoend.busy_disk(not_a_dir):
        pass


def test_bench_command_runs_tap_to_coil_as_documented(tmp_path: Path) -> None:
    """`python -m bench --only endtoend` (docs/performance.md), at a tiny size: tap → coil
    through `gated run`, quiet and beside a writer, and the disk's floor, in the table."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "endtoend", "--members", "2000", "--quick",
         "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())["results"]["endtoend"]
    assert res["n"] > 0 and res["busy_disk"]["n"] > 0 and res["misses"] == 0
    assert res["disk_floor"]["n"] == res["busy_disk_floor"]["n"] == 60
    for row in ("tap → coil set, end to end, 2,000 members", "the same, another process writing to the same disk",
                "the disk's floor beside the same writer"):
        assert row in proc.stdout, row
