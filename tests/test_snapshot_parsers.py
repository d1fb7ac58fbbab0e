"""The snapshot worker's parser processes (sync/snapshot/parsers.py): results in chunk
order, a parser that dies is an error rather than a wait for ever, and no thread of
their own spinning beside the builder (as multiprocessing.Pool's did)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sync.snapshot import payload_of
from sync.snapshot.parse import BuildError, Task
from sync.snapshot.parsers import Parsers
from tests.snapshot_fixtures import chunks


def spooled(tmp_path: Path, n_members: int) -> tuple[dict[str, Any], list[Task]]:
    """A spool file holding a snapshot's chunks, the worker's params for it, and the
    chunks' parse tasks."""
    parts = chunks(n_members, balance=5, applied=0, per_chunk=30)
    spool = tmp_path / "spool"
    tasks: list[Task] = []
    with open(spool, "wb") as f:
        for number, part in enumerate(parts):
            payload = payload_of(part)
            tasks.append((number, f.tell(), len(payload)))
            f.write(payload)
    params = {
        "spool": str(spool), "timezone": "Europe/Berlin", "daemon": "gate-a", "snapshot_id": "snap",
        "chunks": len(parts), "synced_at": 1_800_000_000.0,
    }
    return params, tasks


@pytest.mark.parametrize("n", [1, 2, 3])
def test_results_come_back_in_chunk_order(tmp_path: Path, n: int) -> None:
    params, tasks = spooled(tmp_path, 40)  # 120 records: 4 chunks
    pool = Parsers(n, params)
    try:
        results = list(pool.map(tasks))
    finally:
        pool.close()
    assert [r[0] for r in results] == [t[0] for t in tasks]
    assert [r[3] for r in results] == [None] * len(tasks)  # no error
    assert sum(r[2][0] for r in results) == 40  # members
    assert [r[5] for r in results] == [offset + length for _, offset, length in tasks]
    assert all(not p.is_alive() for p in pool.processes)


def test_a_parser_that_dies_is_an_error_not_a_wait(tmp_path: Path) -> None:
    params, tasks = spooled(tmp_path, 40)
    pool = Parsers(2, params)
    try:
        victim = pool.processes[1]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)  # as the OOM killer would
        victim.join(5)
        t0 = time.monotonic()
        with pytest.raises(BuildError, match="parser process ended unexpectedly"):
            list(pool.map(tasks))
        assert time.monotonic() - t0 < 5
    finally:
        pool.kill()


def test_no_thread_of_its_own_but_the_feeder(tmp_path: Path) -> None:
    """multiprocessing.Pool's three threads included one that woke whenever a result was
    in its pipe and looped until another thread had read it: with large results coming
    from parsers at the lowest CPU priority, a quarter of the builder's CPU at a million
    members. The builder reads the results itself."""
    params, tasks = spooled(tmp_path, 40)
    before = threading.active_count()
    pool = Parsers(2, params)
    try:
        assert threading.active_count() == before
        results = pool.map(tasks)
        first = next(results)
        assert threading.active_count() <= before + 1  # the feeder, if not done yet
        rest = list(results)
        assert [first[0], *(r[0] for r in rest)] == [t[0] for t in tasks]
    finally:
        pool.close()


ROOT = Path(__file__).resolve().parent.parent
HOLDER = """
import json, sys, time
from sync.snapshot.parsers import Parsers
params, tasks = json.loads(sys.argv[1])
pool = Parsers(2, params)
results = pool.map([tuple(t) for t in tasks])
next(results)  # all handed out; the rest of the results left unread
print(json.dumps([p.pid for p in pool.processes]), flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


def test_parsers_end_when_the_builder_is_killed(tmp_path: Path) -> None:
    """The OOM killer takes the builder first (the largest process): its parsers must see
    it go and end, not wait for ever with their memory and the spool held."""
    params, tasks = spooled(tmp_path, 40)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, json.dumps([params, tasks])], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        pids = json.loads(holder.stdout.readline())
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 10
        while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(p) for p in pids), [p for p in pids if not _gone(p)]
    finally:
        holder.kill()
        holder.wait()
