"""Damage the store can only see by looking (issue 21): the `-wal` file deleted under a
running daemon, pages overwritten where no tap reads them, and the recovery command an
installer runs on a damaged file (`gated store rebuild-replica`, docs/operations.md "A
damaged store").

Everything against real `gated run` processes (tests/gate_process.py: pty serial readers,
simulated Modbus TCP turnstiles whose `unlocks` count is the truth of how often a relay was
pulsed) and the `gated` command run as an installer runs it. No root needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from gated.config import load_config
from sync.store import Store
from tests.gate_process import IN_CARD, OUT_CARD, Gate, gate_process
from tests.test_daemon import GATED, wait_for
from tests.test_storage_faults import overwrite_pages, replica_of


def gated(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATED, *map(str, args)], capture_output=True, text=True, timeout=timeout)


# -- the -wal (or -shm) deleted under a running daemon ------------------------------------------


async def wait_for_recovery(gate: Gate, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not (await gate.status())["storage"]["ok"]:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"storage did not recover: {(await gate.status())['storage']}")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("side", ["-wal", "-shm"])
async def test_a_deleted_wal_is_seen_and_rescued_so_a_kill_loses_nothing(tmp_path: Path, side: str) -> None:
    """SQLite goes on writing into a `-wal` file deleted from the directory: every commit
    since the last checkpoint would go with the process. The gate refuses entries from the
    moment it sees it (before every entry, and every second), writes the open database
    back to its path, and carries on there: a kill -9 afterwards loses nothing. (A deleted
    `-shm` loses nothing by itself, but the next process to open the file builds another
    index of the same WAL: the same fault, the same rescue.)"""
    state = tmp_path / "state"
    async with gate_process(tmp_path, state) as gate:
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["passed"]) == ("granted", True), t
        (state / f"gated.db{side}").unlink()
        unlocks = gate.turnstile.unlocks
        t = await gate.tap(IN_CARD)
        rescued_first = any(ln.get("event") == "storage_rescued" for ln in gate.lines[: gate.lines.index(t)])
        if rescued_first:  # the once-a-second round came between the deletion and the tap: safe again
            second = ("in-1", "walk_in", True)
            assert (t["decision"], t["passed"]) == ("granted", True), t
        else:
            second = ("in-1", "storage_fault", None)
            assert (t["decision"], t["reason"]) == ("denied", "storage_fault"), t
            assert gate.turnstile.unlocks == unlocks  # not one pulse for an entry
        t = await gate.tap(OUT_CARD, exit_gate=True)  # exits stay free
        assert (t["decision"], t["reason"], t["passed"]) == ("granted", "exit", True), t
        await wait_for_recovery(gate)
        assert (state / f"gated.db{side}").exists()
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["passed"]) == ("granted", True), t
        await wait_for(lambda: len(gate.turnstile.passages) == 2 + rescued_first, 10, "the last member through")
        gate.proc.send_signal(signal.SIGKILL)
        gate.proc.wait(10)
    events = gate.events()
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    access = [(e["gate"], e["reason"], e.get("passed")) for e in events if e["type"] == "access"]
    # every tap, committed before and after the deletion (the refusal too), survived the kill
    assert access == [("in-1", "walk_in", True), second, ("out-1", "exit", True), ("in-1", "walk_in", True)], access
    deductions = [e for e in events if e["type"] == "deduction"]
    assert [d["balance"] for d in deductions] == ([8, 7, 6] if rescued_first else [8, 7])
    alarms = [(e["kind"], e.get("problem")) for e in events if e["type"] == "alarm"]
    assert ("storage_fault", "file_gone") in alarms and ("storage_recovered", None) in alarms, alarms
    fault = next(e for e in events if e["type"] == "alarm" and e["kind"] == "storage_fault")
    assert f"gated.db{side}" in str(fault["detail"])


# -- gated store rebuild-replica --------------------------------------------------------------


def checkpointed(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def killed(db: Path) -> None:
    """Nothing more: the daemon was killed, its WAL and shared memory are still there."""


def ledger_pages(db: Path) -> None:
    overwrite_pages(db, ("deductions",))


def zeroed_header(db: Path) -> None:
    checkpointed(db)
    with open(db, "r+b") as f:
        f.write(b"\0" * 100)


def truncated(db: Path) -> None:
    """Cut after the last page of the table list (with it cut too, nothing can be read:
    see test_rebuild_replica_of_a_file_nothing_can_be_read_from_changes_nothing)."""
    checkpointed(db)
    with contextlib.closing(sqlite3.connect(db)) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
        last_schema_page = c.execute("SELECT MAX(pageno) FROM dbstat WHERE name = 'sqlite_schema'").fetchone()[0]
        pages = c.execute("PRAGMA page_count").fetchone()[0]
    assert last_schema_page < pages, "nothing after the table list to cut"
    with open(db, "r+b") as f:
        f.truncate(last_schema_page * page)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "killed": killed,
    "ledger-pages": ledger_pages,
    "zeroed-header": zeroed_header,
    "truncated": truncated,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_rebuild_replica_after_a_kill_or_damage(tmp_path: Path, damage: str) -> None:
    """A store a daemon made and was killed on, then damaged: `gated store rebuild-replica`
    never shows a traceback, keeps every ledger row it can read (the event log's numbers
    above all), and leaves a file `gated store check` finds ok and a daemon starts on."""
    state = tmp_path / "state #1"  # SQLite URIs: a '#' or '?' in a path is no fragment or query
    async with gate_process(tmp_path, state) as gate:
        for card, exit_gate in ((IN_CARD, False), (OUT_CARD, True), (IN_CARD, False)):
            t = await gate.tap(card, exit_gate=exit_gate)
            assert t["decision"] == "granted", t
        await wait_for(lambda: len(gate.turnstile.passages) == 1, 10, "the member through")
        before = gate.events()
        gate.proc.send_signal(signal.SIGKILL)
        gate.proc.wait(10)
    db = state / "gated.db"
    last = max(int(str(e["seq"])) for e in before)
    DAMAGE[damage](db)
    out = gated("store", "rebuild-replica", "-c", gate.config)
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    # rows lost: exit 1 and which; a header written again loses nothing
    assert out.returncode == (0 if damage in ("killed", "zeroed-header") else 1), out.stdout + out.stderr
    assert "rebuilt" in out.stdout, out.stdout + out.stderr
    # this site has no central system: only the seed brings its members back
    assert "gated seed -c" in out.stdout, out.stdout
    kept = [p for p in state.iterdir() if p.name.startswith("gated.db.damaged-")]
    assert kept, "the old file is kept beside the new one"
    check = gated("store", "check", "-c", gate.config)
    assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr
    conf = load_config(gate.config)
    store = Store(db, conf.site_domain(), daemon_id=conf.daemon_id, background_checkpoints=False)
    try:
        assert store.counts()["members"] == 0 and store.snapshot_id is None  # the snapshot brings them back
        # the numbers go on where they were: never a seq handed out twice
        assert store.last_seq >= last
        seqs = [int(e["seq"]) for e in store.events_after(0, 1000)]
        assert seqs == list(range(1, store.last_seq + 1))  # what could not be read is a void event
        if damage in ("killed", "zeroed-header"):  # everything is there, as the WAL left it
            assert store.last_seq == last
            assert [e["id"] for e in store.events_after(0, 1000)] == [e["id"] for e in before]
            deductions = store.conn.execute("SELECT COUNT(*) FROM main.deductions").fetchone()[0]
            assert deductions == 2
        if damage == "ledger-pages":  # the event log was not hit: all of it kept
            assert [e["id"] for e in store.events_after(0, 1000)] == [e["id"] for e in before]
    finally:
        store.close()
    # the daemon starts on it (an empty replica, waiting for the central's snapshot)
    proc = subprocess.Popen([*GATED, "run", "-c", str(gate.config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if '"ready"' in line:
                break
        else:
            raise AssertionError(f"the daemon did not start: exit {proc.wait()}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


async def test_rebuild_replica_refuses_while_the_daemon_runs(tmp_path: Path) -> None:
    """The daemon holds the file: renaming it away would have it write the old one back."""
    async with gate_process(tmp_path, tmp_path / "state") as gate:
        out = await asyncio.to_thread(gated, "store", "rebuild-replica", "-c", gate.config)
        assert out.returncode == 2 and "running" in out.stderr, out.stdout + out.stderr
        assert not [p for p in (tmp_path / "state").iterdir() if "damaged" in p.name]
        t = await gate.tap(IN_CARD)
        assert t["decision"] == "granted"


def test_rebuild_replica_of_a_file_nothing_can_be_read_from_changes_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "gated.yaml"
    state = tmp_path / "state"
    state.mkdir()
    (state / "gated.db").write_bytes(os.urandom(64 * 1024))
    cfg.write_text(
        "site: {id: s, timezone: Europe/Madrid}\n"
        "gates: [{id: in-1, zone: main}]\n"
        f"store: {{path: '{state / 'gated.db'}'}}\n"
        f"control: {{socket: '{tmp_path / 'control.sock'}'}}\n"
    )
    before = (state / "gated.db").read_bytes()
    out = gated("store", "rebuild-replica", "-c", cfg)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert "backup" in out.stderr  # what to do instead
    assert (state / "gated.db").read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["gated.db"]


def test_rebuild_replica_reads_past_a_damaged_page(tmp_path: Path) -> None:
    """One leaf page in the middle of the event log overwritten: the events before it and
    after it are kept, the numbers go on, and the ones lost become void events at the
    daemon's next open (never a number handed out again)."""
    from datetime import UTC, datetime

    cfg = tmp_path / "gated.yaml"
    state = tmp_path / "state"
    db = state / "gated.db"
    cfg.write_text(
        "site: {id: s, timezone: Europe/Madrid}\n"
        "daemon_id: gate-a\n"
        "gates: [{id: in-1, zone: main}]\n"
        f"store: {{path: '{db}'}}\n"
        f"control: {{socket: '{tmp_path / 'control.sock'}'}}\n"
    )
    conf = load_config(cfg)
    store = Store(db, conf.site_domain(), daemon_id=conf.daemon_id, background_checkpoints=False)
    now = datetime.now(UTC)
    for i in range(2000):
        store.emit("alarm", now, kind="test", detail=f"event {i} " + "x" * 100)
    ids = {int(e["seq"]): e["id"] for e in store.events_after(0, 5000)}
    store.close()
    with contextlib.closing(sqlite3.connect(db)) as c:
        page = c.execute("PRAGMA page_size").fetchone()[0]
        leaves = [r[0] for r in c.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY pageno")]
    assert len(leaves) > 10
    victim = leaves[len(leaves) // 2]
    with open(db, "r+b") as f:
        f.seek((victim - 1) * page)
        f.write(os.urandom(page))
    out = gated("store", "rebuild-replica", "-c", cfg)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stdout + out.stderr
    assert "events: could not be read in full (rows after rowid" in out.stderr, out.stderr
    store = Store(db, conf.site_domain(), daemon_id=conf.daemon_id, background_checkpoints=False)
    try:
        events = store.events_after(0, 5000)
        assert store.last_seq == 2000
        assert [int(e["seq"]) for e in events] == list(range(1, 2001))
        kept = [int(e["seq"]) for e in events if e["type"] == "alarm"]
        void = [int(e["seq"]) for e in events if e["type"] == "void"]
        # one page's worth lost, in one run, and each kept event is the one that was there
        assert 0 < len(void) < 100 and void == list(range(void[0], void[-1] + 1)), void
        assert kept[0] == 1 and kept[-1] == 2000
        assert all(e["id"] == ids[int(e["seq"])] for e in events if e["type"] == "alarm")
        print(f"FIGURES {len(kept)} of 2000 events kept, {len(void)} lost (seq {void[0]}-{void[-1]}) with page {victim}")
    finally:
        store.close()


# -- pages overwritten where no tap reads: the periodic check ------------------------------------


def overwrite_root(db: Path, table: str) -> tuple[int, bytes]:
    """Random bytes over `table`'s root page (after a checkpoint, so the file holds it);
    returns where and what was there, to put it back."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = c.execute("PRAGMA page_size").fetchone()[0]
        root = c.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    with open(db, "r+b") as f:
        f.seek((root - 1) * page)
        was = f.read(page)
        f.seek((root - 1) * page)
        f.write(os.urandom(page))
        f.flush()
        os.fsync(f.fileno())
    return (root - 1) * page, was


def put_back(db: Path, at: int, data: bytes) -> None:
    with open(db, "r+b") as f:
        f.seek(at)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def free_port() -> int:
    import socket

    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def checks(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("gated_store_checks_total{"):
            result = line.split('result="')[1].split('"')[0]
            out[result] = float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.parametrize("where", ["ledger", "replica"])
async def test_pages_no_tap_reads_overwritten_are_found_by_the_periodic_check(tmp_path: Path, where: str) -> None:
    """Damage in a table no tap touches (the ledger's audit log, the replica's switch
    bookkeeping) is seen within `store.integrity_interval` by the quick_check the daemon
    runs in a worker thread: a `corrupt` fault, counted, entries refused, exits open.
    Put right, the next clean check clears it."""
    state = tmp_path / "state"
    port = free_port()
    interval = 2.0
    metrics = {"metrics": {"enabled": True, "bind": "127.0.0.1", "port": port}}
    async with gate_process(tmp_path, state, extra=metrics, integrity_interval=f"{interval:g}s") as gate:
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["passed"]) == ("granted", True), t
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while (await asyncio.to_thread(checks, port)).get("ok", 0) < 1:  # one clean check first
            assert loop.time() < deadline, "no check ran"
            await asyncio.sleep(0.2)
        st = await gate.status()
        assert st["storage"]["integrity"]["last"]["result"] == "ok", st["storage"]
        db = state / "gated.db"
        if where == "ledger":
            target, table = db, "audit"
        else:
            target, table = replica_of(db), "switch_recheck"
        at, was = overwrite_root(target, table)
        t0 = loop.time()
        # the next check is due within the interval; its result is read at the next
        # once-a-second round: a bounded wait, with room for a loaded machine
        while (await gate.status())["storage"]["problem"] != "corrupt":
            assert loop.time() - t0 < interval + 5, (await gate.status())["storage"]
            await asyncio.sleep(0.1)
        noticed = loop.time() - t0
        st = await gate.status()
        assert st["storage"]["integrity"]["last"]["result"] == "damaged", st["storage"]
        assert (await asyncio.to_thread(checks, port)).get("damaged", 0) >= 1
        unlocks = gate.turnstile.unlocks
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"]) == ("denied", "storage_fault"), t
        assert gate.turnstile.unlocks == unlocks
        t = await gate.tap(OUT_CARD, exit_gate=True)
        assert (t["decision"], t["reason"]) == ("granted", "exit"), t
        put_back(target, at, was)
        deadline = loop.time() + 15
        while not (await gate.status())["storage"]["ok"]:
            assert loop.time() < deadline, (await gate.status())["storage"]
            await asyncio.sleep(0.2)
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["passed"]) == ("granted", True), t
    alarms = [(e["kind"], e.get("problem")) for e in gate.events() if e["type"] == "alarm"]
    assert ("storage_fault", "corrupt") in alarms and ("storage_recovered", None) in alarms, alarms
    print(f"TIMING noticed {noticed:.2f} s after the overwrite, interval {interval} s")
