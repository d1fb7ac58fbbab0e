"""SIGKILL the gate's process at random points, many times: nothing lost, nothing applied
twice at the central system; and the same while a snapshot is being imported."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from simulator.central import Central, generate
from sync.store import Store, open_reader
from tests.broker import (
    SITE,
    Mosquitto,
    make_store,
    site,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
CYCLES = int(os.environ.get("GATED_KILL_CYCLES", "10"))


def spawn(db: Path, port: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sync_gate_proc", str(db), str(port), "gate-k", mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def kill_after(proc: subprocess.Popen[str], delay: float, after: str = "READY") -> str:
    """Once the process printed `after` (READY: connected; STAGING: a snapshot import
    began), wait `delay`, SIGKILL. What it printed after `after`."""
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert line, "the gate process died"
        if line.startswith(after):
            break
    await asyncio.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.to_thread(proc.wait)
    return await asyncio.to_thread(proc.stdout.read)


async def drain(db: Path, port: int) -> None:
    proc = spawn(db, port, "drain")
    try:
        out, _ = await asyncio.wait_for(asyncio.to_thread(proc.communicate), 60)
    finally:
        if proc.poll() is None:  # timed out: a gate that never drains fails the test, not the suite
            proc.kill()
    assert proc.returncode == 0 and "DRAINED" in out, out


def check_exactly_once(db: Path, central: Central) -> Store:
    store = make_store(db, "gate-k")
    events = central.events(SITE, "gate-k")
    assert [e["seq"] for e in events] == list(range(1, store.last_seq + 1))
    assert len({e["id"] for e in events}) == len(events)
    assert central.applied_seq(SITE, "gate-k") == store.last_seq == store.acked_seq
    for p in ("p1", "p2"):
        taken = sum(Decimal(str(e["amount"])) for e in events if e["type"] == "deduction" and e["pass"] == p)
        assert central.balance(SITE, p) == 1000 - taken
    local = sqlite3.connect(db).execute("SELECT COUNT(*) FROM deductions").fetchone()[0]
    assert local == sum(1 for e in events if e["type"] == "deduction")
    return store


async def test_sigkill_while_tapping_and_publishing(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    rnd = random.Random(7)
    db = tmp_path / "gate.db"
    for _ in range(CYCLES):
        proc = spawn(db, mosquitto.port, "tap")
        await kill_after(proc, rnd.uniform(0.0, 0.6))
    await drain(db, mosquitto.port)
    store = check_exactly_once(db, central)
    assert store.last_seq > CYCLES  # it did tap
    await wait_until(lambda: central.balance(SITE, "p1") is not None)


async def test_sigkill_while_importing_a_snapshot(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    big = generate(6000, bookings_per_member=1.0, prefix="g")
    central.load(SITE, big["members"], big["passes"], big["bookings"])
    rnd = random.Random(11)
    db = tmp_path / "gate.db"
    mid_import = 0
    for n in range(max(4, CYCLES // 2)):
        proc = spawn(db, mosquitto.port, "resync")
        said = await kill_after(proc, 0.0 if n == 0 else rnd.uniform(0.0, 1.0), after="STAGING")
        # whatever the instant: the replica is the old one or the new one, whole
        conn = open_reader(db)
        try:
            assert conn.execute("PRAGMA main.integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA replica.integrity_check").fetchone()[0] == "ok"
            n_members = conn.execute("SELECT COUNT(*) FROM members").fetchone()[0]
            assert n_members in (0, 3 + 6000), n_members
            if n_members:
                assert conn.execute("SELECT COUNT(*) FROM bookings").fetchone()[0] == 6000
        finally:
            conn.close()
        # killed before the process saw its import end. (Not the spool left behind: the
        # orphaned worker deletes it when its input ends, maybe before this look.)
        mid_import += "IMPORTED" not in said
    assert mid_import >= 1  # at least one kill landed in the middle of an import
    await drain(db, mosquitto.port)
    store = check_exactly_once(db, central)
    counts = store.counts()
    assert counts["members"] == 6003 and counts["passes"] == 9003 and counts["bookings"] == 6000
    # no spool, no half-built or old replica left: the ledger, the replica, their side files
    # (and the ledger's mark of the events sent: sync/store/sent_mark.py)
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith("gate.")} <= {
        "gate.db", "gate.db-wal", "gate.db-shm", "gate.db.sent",
        *(store.replica_path.name + s for s in ("", "-wal", "-shm")),
    }
    # local balances = central balance - deductions the central system has not applied (none)
    for p in ("p1", "p2"):
        assert store.balance(p) == central.balance(SITE, p)


def switch_proc(db: Path, members: int, step: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.replica_switch_proc", str(db), str(members), step],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_sigkill_mid_switch_leaves_one_replica_whole(tmp_path: Path) -> None:
    """Killed at each step of the switch, with a tap committed while the worker built:
    the old replica or the new one, whole; the ledger keeps the tap; a restart cleans up."""
    for step, survivor in (("attached", 300), ("in_tx", 300), ("committed", 2000)):
        db = tmp_path / step / "gate.db"
        db.parent.mkdir()
        first = switch_proc(db, 300, "none")
        assert first.returncode == 0, first.stderr[-2000:]
        killed = switch_proc(db, 2000, step)
        assert killed.returncode == -signal.SIGKILL, (step, killed.returncode, killed.stderr[-2000:])
        assert "TAPPED" in killed.stdout
        with contextlib.closing(open_reader(db)) as conn:
            assert conn.execute("PRAGMA main.integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA replica.integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT COUNT(*) FROM members").fetchone()[0] == survivor, step
            assert conn.execute("SELECT COUNT(*) FROM passes").fetchone()[0] == survivor, step
            # the taps are in the ledger whichever replica survived: the first one (an
            # unknown card, the store was empty) and the walk-in on p1 during the build
            assert [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")] == [1, 2, 3]
            assert conn.execute("SELECT balance FROM passes WHERE id = 'p1'").fetchone()[0] == "9"
        store = Store(db, site(), daemon_id="gate-k")
        try:
            assert store.counts()["members"] == survivor
            assert store.balance("p1") == Decimal(9)
            left = {p.name for p in db.parent.iterdir()} - {"gate.db", "gate.db-wal", "gate.db-shm", "gate.db.sent"}
            assert left <= {store.replica_path.name + s for s in ("", "-wal", "-shm")}, left
        finally:
            store.close()
