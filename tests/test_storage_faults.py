"""A store that cannot record never opens the gate for free (issue: fail closed).

Each fault is real, against a `gated run` process: a tmpfs filled to the last byte, a
database file the daemon may not write (root without CAP_DAC_OVERRIDE, so the file's mode
bits apply as they would to the `gated` user), the state directory deleted while running,
pages overwritten, a truncated file and a zeroed header at start. The turnstile is the
simulator on a real Modbus TCP server: its `unlocks` count is the truth of how often the
relay was pulsed. Taps come through a pty serial reader, the path a member's card takes.

For every fault: entries are refused with `storage_fault` and the relay is pulsed 0 times
for them; exits still open; the daemon stays up and says why (`gated status`, the
`gated_storage_ok` metric, an `alarm` event once it can be written); when the storage
works again, it recovers by itself and the next entry is granted and recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from gated.config import load_config
from simulator.turnstile import Person, SimTurnstile
from sync.store import Store
from tests.gate_process import IN_CARD, OUT_CARD, Gate, gate_process, site_config
from tests.test_daemon import GATED, SEED, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a tmpfs and dropping capabilities need root (CI runs as root)"
)


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)


def umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path) -> Path:
    """Write until the file system says no space is left."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):
            while True:  # the last few bytes, one at a time
                f.write(b"\0")
    return filler


def drop_dac_override() -> None:  # pragma: no cover - runs in the child before exec
    """Root, but subject to file permission bits: as the unprivileged `gated` user is."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


async def storage_problem(gate: Gate) -> str | None:
    st = await gate.status()
    storage = st["storage"]
    return None if storage["ok"] else str(storage["problem"])


async def test_disk_full_denies_entries_without_pulsing_and_recovers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mount_tmpfs(state, "3m")
    try:
        async with gate_process(tmp_path, state) as gate:
            t = await gate.tap(IN_CARD)
            assert (t["decision"], t["reason"]) == ("granted", "walk_in")
            await wait_for(lambda: len(gate.turnstile.passages) == 1, 10, "the first member through")
            filler = fill(state)
            unlocks = gate.turnstile.unlocks
            for _ in range(3):
                t = await gate.tap(IN_CARD)
                assert (t["decision"], t["reason"]) == ("denied", "storage_fault"), t
            assert gate.turnstile.unlocks == unlocks  # not one pulse for an entry
            assert await storage_problem(gate) in ("low_space", "disk_full")
            # nobody is locked in: the exit opens though nothing can be written
            t = await gate.tap(OUT_CARD, exit_gate=True)
            assert (t["decision"], t["reason"]) == ("granted", "exit"), t
            assert gate.exit_turnstile.unlocks == 1
            assert gate.alive()
            filler.unlink()
            await wait_for(lambda: gate.alive(), 1)
            for _ in range(100):
                if await storage_problem(gate) is None:
                    break
                await asyncio.sleep(0.1)
            assert await storage_problem(gate) is None
            t = await gate.tap(IN_CARD)
            assert (t["decision"], t["reason"], t["passed"]) == ("granted", "walk_in", True), t
            await wait_for(lambda: len(gate.turnstile.passages) == 2, 10, "the second member through")
        events = gate.events()
        alarms = [e["kind"] for e in events if e["type"] == "alarm"]
        assert "storage_fault" in alarms and "storage_recovered" in alarms
        deductions = [e for e in events if e["type"] == "deduction" and e["pass"] == "p1"]
        assert len(deductions) == len(gate.turnstile.passages) == 2  # each rotation charged once
        denied = [e for e in events if e["type"] == "access" and e["reason"] == "storage_fault"]
        assert denied == []  # they could not be written: the log and the metric say them
    finally:
        umount(state)


async def test_disk_full_at_the_write_itself_denies(tmp_path: Path) -> None:
    """No reserve at all: the intent's own write fails with 'database or disk is full'."""
    state = tmp_path / "state"
    mount_tmpfs(state, "3m")
    try:
        async with gate_process(tmp_path, state, min_free_mb=0) as gate:
            filler = fill(state)
            t = await gate.tap(IN_CARD)
            assert (t["decision"], t["reason"]) == ("denied", "storage_fault"), t
            assert gate.turnstile.unlocks == 0
            assert await storage_problem(gate) == "disk_full"
            filler.unlink()
            await wait_for_recovery(gate)
            t = await gate.tap(IN_CARD)
            assert (t["decision"], t["passed"]) == ("granted", True), t
    finally:
        umount(state)


async def wait_for_recovery(gate: Gate, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await storage_problem(gate) is not None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"storage did not recover: {(await gate.status())['storage']}")
        await asyncio.sleep(0.2)


async def test_read_only_database_is_a_fault_from_the_start_and_recovers(tmp_path: Path) -> None:
    state = tmp_path / "state"

    def read_only(db: Path) -> None:
        db.chmod(0o444)

    async with gate_process(tmp_path, state, preexec=drop_dac_override, before_start=read_only) as gate:
        st = await gate.status()
        assert st["ready"] is True and st["storage"]["problem"] == "read_only", st["storage"]
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"]) == ("denied", "storage_fault"), t
        assert gate.turnstile.unlocks == 0
        (state / "gated.db").chmod(0o644)  # the installer fixes the owner
        await wait_for_recovery(gate)
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["passed"]) == ("granted", True), t
        assert gate.turnstile.unlocks == 1


async def test_state_directory_deleted_is_rescued_with_its_ledger(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with gate_process(tmp_path, state) as gate:
        t = await gate.tap(IN_CARD)
        assert t["decision"] == "granted"
        await wait_for(lambda: len(gate.turnstile.passages) == 1, 10, "the member through")
        shutil.rmtree(state)
        # found within a second or two; the open file is written back to its path
        await wait_for(lambda: (state / "gated.db").exists(), 15, "the store written back")
        await wait_for_recovery(gate)
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["passed"]) == ("granted", True), t
        await wait_for(lambda: len(gate.turnstile.passages) == 2, 10, "the second member through")
    # after a restart (the daemon stopped above), the ledger and the outbox are all there
    events = gate.events()
    deductions = [e for e in events if e["type"] == "deduction"]
    assert len(deductions) == 2
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    alarms = [(e["kind"], e.get("problem")) for e in events if e["type"] == "alarm"]
    assert ("storage_fault", "file_gone") in alarms


async def test_a_deleted_file_while_taps_are_refused_pulses_nothing(tmp_path: Path) -> None:
    """Between the deletion and the rescue, entries are refused: the inode check runs on
    every entry, not only in the once-a-second round."""
    state = tmp_path / "state"
    async with gate_process(tmp_path, state) as gate:
        os.rename(state / "gated.db", state / "moved.db")  # replaced behind the daemon's back
        (state / "gated.db").write_bytes(b"")
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"]) == ("denied", "storage_fault"), t
        assert gate.turnstile.unlocks == 0


def replica_of(db: Path) -> Path:
    """The replica file the ledger `db` names (members, cards, passes, bookings)."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        return db.parent / c.execute("SELECT value FROM meta WHERE key = 'replica.file'").fetchone()[0]


def overwrite_pages(db: Path, tables: tuple[str, ...]) -> None:
    """Garbage over the root pages of `tables` and their indexes: the header, the schema
    and the rest survive, so the daemon starts; the first read of those pages fails."""
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = c.execute("PRAGMA page_size").fetchone()[0]
        marks = ",".join("?" * len(tables))
        roots = [r[0] for r in c.execute(f"SELECT rootpage FROM sqlite_master WHERE tbl_name IN ({marks})", tables)]
    with open(db, "r+b") as f:
        for root in roots:
            f.seek((root - 1) * page)
            f.write(os.urandom(page))
        f.flush()
        os.fsync(f.fileno())


async def test_overwritten_pages_deny_with_storage_fault(tmp_path: Path) -> None:
    state = tmp_path / "state"

    def corrupt(db: Path) -> None:
        overwrite_pages(replica_of(db), ("cards", "members", "passes"))

    async with gate_process(tmp_path, state, before_start=corrupt) as gate:
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"]) == ("denied", "storage_fault"), t
        assert gate.turnstile.unlocks == 0
        assert await storage_problem(gate) == "corrupt"
        # nobody is locked in: the exit opens though nobody can say whose card it was, and
        # is counted as an exit not recorded (before: denied storage_fault, 0 pulses)
        t = await gate.tap(OUT_CARD, exit_gate=True)
        assert (t["decision"], t["reason"], t["passed"]) == ("granted", "exit", True), t
        assert gate.exit_turnstile.unlocks == 1
        assert (await gate.status())["storage"]["exits_not_recorded"] == {"out-1": 1}
        assert gate.alive()
    out = subprocess.run([*GATED, "store", "check", "-c", str(gate.config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "damaged" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("damage", ["truncated", "zeroed-header"])
def test_a_damaged_file_at_start_is_one_line_and_exit_3(tmp_path: Path, damage: str) -> None:
    cfg = tmp_path / "gated.yaml"
    state = tmp_path / "state"
    config = site_config(tmp_path, state, "/dev/null", "/dev/null", _FakeSim(), _FakeSim())
    for g in config["gates"]:
        g.pop("output")
        g["readers"] = []
    cfg.write_text(yaml.safe_dump(config))
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump(SEED, allow_unicode=True))
    subprocess.run([*GATED, "seed", "-c", str(cfg), str(seed)], check=True, capture_output=True)
    db = state / "gated.db"
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if damage == "truncated":
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size // 3)
    else:
        with open(db, "r+b") as f:
            f.write(b"\0" * 100)
    out = subprocess.run([*GATED, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    problem = [ln for ln in out.stderr.splitlines() if ln.startswith("gated: ")]
    assert len(problem) == 1 and "damaged" in problem[0] and "docs/operations.md" in problem[0], out.stderr
    check = subprocess.run([*GATED, "store", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "Traceback" not in check.stderr


@dataclass
class _FakeSim:
    port: int = 1


def _no_devices_config(tmp_path: Path, state: Path) -> Path:
    cfg = tmp_path / "gated.yaml"
    config = site_config(tmp_path, state, "/dev/null", "/dev/null", _FakeSim(), _FakeSim())
    for g in config["gates"]:
        g.pop("output")
        g["readers"] = []
    cfg.write_text(yaml.safe_dump(config))
    return cfg


@pytest.mark.parametrize("case", ["directory", "empty-file", "read-only-mount"])
def test_a_store_that_cannot_be_written_at_first_start_is_one_line_and_exit_3(tmp_path: Path, case: str) -> None:
    """A first start on a state directory or an empty database file the daemon may not
    write (root without CAP_DAC_OVERRIDE, as the `gated` user), or on a read-only mount:
    nothing to run on (no ledger, no replica can be made). One line naming the file and
    the cause, exit 3 (systemd does not restart it: RestartPreventExitStatus), no
    traceback. (A store that exists and only cannot be written starts, in a storage
    fault: test_read_only_database_is_a_fault_from_the_start_and_recovers.)"""
    state = tmp_path / "state"
    cfg = _no_devices_config(tmp_path, state)
    db = state / "gated.db"
    state.mkdir()
    if case == "directory":
        state.chmod(0o555)
        cause = f"the directory {state} cannot be written by this user (uid 0)"
    elif case == "empty-file":
        db.touch()
        db.chmod(0o444)
        cause = f"{db} cannot be written by this user (uid 0): owner uid 0, mode 0444"
    else:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state)], check=True)
        cause = f"{state} is on a read-only file system"
    try:
        out = subprocess.run([*GATED, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60,
                             preexec_fn=drop_dac_override)
    finally:
        if case == "read-only-mount":
            umount(state)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    said = [ln for ln in out.stderr.splitlines() if ln.strip() and not ln.startswith("{")]  # JSON: log lines
    assert len(said) == 1, out.stderr
    assert said[0].startswith(f"gated: the store cannot be used: {db}: "), said[0]
    assert cause in said[0], said[0]


def test_store_commands_check_backup_and_rebuild(tmp_path: Path) -> None:
    """The recovery the docs describe, run as an installer would."""
    cfg = tmp_path / "gated.yaml"
    state = tmp_path / "state"
    config = site_config(tmp_path, state, "/dev/null", "/dev/null", _FakeSim(), _FakeSim())
    for g in config["gates"]:
        g.pop("output")
        g["readers"] = []
    cfg.write_text(yaml.safe_dump(config))
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump(SEED, allow_unicode=True))
    subprocess.run([*GATED, "seed", "-c", str(cfg), str(seed)], check=True, capture_output=True)
    db = state / "gated.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:  # a ledger row to keep
        c.execute("INSERT INTO events(seq, id, type, at, body) VALUES (1, 'e1', 'access', 'x', '{\"seq\": 1}')")
        c.execute("INSERT INTO meta(key, value) VALUES ('next_seq', '2') "
                  "ON CONFLICT(key) DO UPDATE SET value = excluded.value")
    out = subprocess.run([*GATED, "store", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stdout + out.stderr
    backup = tmp_path / "copy.db"
    out = subprocess.run([*GATED, "store", "backup", "-c", str(cfg), str(backup)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with contextlib.closing(sqlite3.connect(backup)) as c:  # the ledger (the replica is the central's)
        assert c.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
    out = subprocess.run([*GATED, "store", "rebuild-replica", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    conf = load_config(cfg)
    store = Store(db, conf.site_domain(), daemon_id=conf.daemon_id)
    try:
        assert store.counts()["members"] == 0  # the snapshot brings them back
        assert store.snapshot_id is None  # so the link asks for one
        assert [e["seq"] for e in store.events_after(0)] == [1]  # the ledger is kept
        assert store.last_seq == 1
    finally:
        store.close()


async def test_store_compact_gives_the_freed_pages_back_and_a_full_disk_changes_nothing(tmp_path: Path) -> None:
    """`gated store compact` as an installer runs it (docs/operations.md): refused while the
    daemon runs; on a full disk it fails and the file is as it was; with room, a ledger
    whose old rows were deleted (as the retention deletes them) shrinks, every event kept."""
    state = tmp_path / "state"
    mount_tmpfs(state, "16m")
    try:
        async with gate_process(tmp_path, state) as gate:
            t = await gate.tap(IN_CARD)
            assert (t["decision"], t["passed"]) == ("granted", True), t
            out = await asyncio.to_thread(subprocess.run, [*GATED, "store", "compact", "-c", str(gate.config)],
                                          capture_output=True, text=True, timeout=60)
            assert out.returncode == 2 and "running" in out.stderr, out.stdout + out.stderr
        db = state / "gated.db"
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:  # years of the desk's audit, gone
            c.execute("BEGIN")
            c.executemany("INSERT INTO audit(at, operator, action, detail) VALUES (0, 'desk', 'open_gate', ?)",
                          (("x" * 1000,) for _ in range(2500)))
            c.execute("COMMIT")
            c.execute("DELETE FROM audit WHERE at = 0")
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        events = gate.events()
        grown = db.stat().st_size
        assert grown > 2_500_000

        filler = fill(state)
        out = subprocess.run([*GATED, "store", "compact", "-c", str(gate.config)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 1 and "not compacted" in out.stderr and "Traceback" not in out.stderr, out.stderr
        filler.unlink()
        check = subprocess.run([*GATED, "store", "check", "-c", str(gate.config)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr
        assert gate.events() == events

        out = subprocess.run([*GATED, "store", "compact", "-c", str(gate.config)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "compacted" in out.stdout, out.stdout + out.stderr
        assert db.stat().st_size < grown / 4
        assert gate.events() == events
        check = subprocess.run([*GATED, "store", "check", "-c", str(gate.config)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0 and "ok" in check.stdout, check.stdout + check.stderr
    finally:
        umount(state)


# -- the commit fails after the relay was pulsed (in-process daemon, store on a tmpfs) --------


@contextlib.asynccontextmanager
async def daemon_on_tmpfs(tmp: Path, person: Person) -> AsyncIterator[tuple[Any, SimTurnstile, Path, Any]]:
    from datetime import UTC, datetime

    from gated.config import Config
    from gated.daemon import Daemon
    from gated.seed import batch_from
    from sync import qrtoken
    from sync.store import Store

    state = tmp / "state"
    mount_tmpfs(state, "3m")
    key = qrtoken.generate_private_key()
    try:
        async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=person) as sim:
            raw = site_config(tmp, state, "/dev/null", "/dev/null", sim, sim)
            raw["gates"] = raw["gates"][:1]
            raw["gates"][0]["readers"] = []
            raw["qr"] = {"public_keys": [qrtoken.public_key_text(key.public_key())]}
            config = Config.model_validate(raw)
            store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id)
            store.apply_sync(batch_from(SEED, config), datetime.now(UTC))
            store.close()
            daemon = Daemon(config)
            await daemon.start()
            try:
                yield daemon, sim, state, key
            finally:
                await daemon.stop()
    finally:
        umount(state)


async def test_a_commit_cut_by_a_full_disk_after_the_pulse_is_held_and_recorded_once(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from rules.credential import Credential
    from sync import qrtoken

    async with daemon_on_tmpfs(tmp_path, Person(delay=1.0)) as (daemon, sim, state, key):
        now = datetime.now(UTC)
        token = qrtoken.mint(key, token_id="t-1", member="m1", issued=now, expires=now + timedelta(minutes=1))
        tap = asyncio.create_task(daemon.handle_credential("in-1", Credential.qr(token, "test")))
        await wait_for(lambda: sim.unlocks == 1, 10, "the relay pulsed")  # the intent is written
        filler = fill(state)  # the disk fills while the member walks through
        result = await tap
        assert (result["decision"], result["passed"]) == ("granted", True), result
        assert result["seq"] == []  # not recorded yet...
        assert daemon.storage.held and not daemon.storage.ok  # ...but held, and the gate says so
        # the same QR code again: used up with the intent, before the pulse
        again = await daemon.handle_credential("in-1", Credential.qr(token, "test"))
        assert again["decision"] == "denied" and sim.unlocks == 1, again
        filler.unlink()
        await wait_for(lambda: not daemon.storage.held and daemon.storage.ok, 15, "the held commit to go through")
        assert daemon.store is not None
        events = daemon.store.events_after(0, 1000)
        deductions = [e for e in events if e["type"] == "deduction"]
        assert len(deductions) == 1 and deductions[0]["pass"] == "p1" and deductions[0]["balance"] == 8
        granted = [e for e in events if e["type"] == "access" and e["decision"] == "granted"]
        assert len(granted) == 1 and granted[0]["passed"] is True
        assert daemon.store.open_intents() == []  # resolved by the commit
        third = await daemon.handle_credential("in-1", Credential.qr(token, "test"))
        assert third["reason"] == "qr_replayed" and sim.unlocks == 1


async def test_exits_held_during_a_long_fault_are_bounded_and_entries_never_dropped(tmp_path: Path) -> None:
    """A full disk with exits going on: each exit opens, and the ones that could not be
    written are held in memory up to `store.max_held_exits`; beyond it they are counted by
    gate (status, metric) and reported in one alarm once the disk has room. An entry whose
    commit failed after its pulse is held whatever the count, and written."""
    from datetime import UTC, datetime

    from prometheus_client import generate_latest

    from gated.config import Config
    from gated.daemon import Daemon
    from gated.seed import batch_from
    from rules.credential import Credential

    state = tmp_path / "state"
    mount_tmpfs(state, "3m")
    try:
        async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=2.0)) as sim, \
                SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.1)) as exit_sim:
            raw = site_config(tmp_path, state, "/dev/null", "/dev/null", sim, exit_sim, max_held_exits=3)
            for g in raw["gates"]:
                g["readers"] = []
            config = Config.model_validate(raw)
            store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id)
            store.apply_sync(batch_from(SEED, config), datetime.now(UTC))
            store.close()
            daemon = Daemon(config)
            await daemon.start()
            try:
                entry = asyncio.create_task(daemon.handle_credential("in-1", Credential.card(IN_CARD, "test")))
                await wait_for(lambda: sim.unlocks == 1, 10, "the entry's relay pulsed")  # its intent is written
                filler = fill(state)  # the disk fills while the member walks through (2 s)
                for i in range(5):
                    t = await daemon.handle_credential("out-1", Credential.card(OUT_CARD, "test"))
                    assert (t["decision"], t["reason"], t["passed"]) == ("granted", "exit", True), (i, t)
                assert exit_sim.unlocks == 5  # every exit opened
                assert daemon.storage is not None
                result = await entry
                assert (result["decision"], result["passed"], result["seq"]) == ("granted", True, []), result
                held = [(h.what["gate"], h.exit_tap) for h in daemon.storage.held]
                # three exits held, two counted; the entry held beyond the bound
                assert held == [("out-1", True)] * 3 + [("in-1", False)], held
                storage = daemon.health()["storage"]
                assert storage["held_commits"] == 4 and storage["exits_not_recorded"] == {"out-1": 2}, storage
                metrics = generate_latest(daemon.metrics.registry).decode()
                assert 'gated_exits_unrecorded_total{gate="out-1"} 2.0' in metrics
                filler.unlink()
                await wait_for(lambda: not daemon.storage.held and daemon.storage.ok and not daemon.storage.alarms_pending,
                               15, "the held commits and the report to be written")
                assert daemon.store is not None
                events = daemon.store.events_after(0, 1000)
            finally:
                await daemon.stop()
    finally:
        umount(state)
    access = [(e["gate"], e["reason"]) for e in events if e["type"] == "access"]
    assert access == [("out-1", "exit")] * 3 + [("in-1", "walk_in")], access
    deductions = [e for e in events if e["type"] == "deduction"]
    assert len(deductions) == 1 and deductions[0]["pass"] == "p1"
    reports = [e for e in events if e["type"] == "alarm" and e["kind"] == "exits_not_recorded"]
    assert len(reports) == 1, reports
    report = reports[0]
    assert (report["count"], report["gates"], report["gate"]) == (2, {"out-1": 2}, None), report
    assert report["detail"].endswith("not recorded: more than 3 were waiting to be written"), report
    from sync.events import BY_TYPE  # documented: the `event` schema names every field it has

    model = BY_TYPE["alarm"]
    model.model_validate(report)
    assert set(report) <= {f.alias or n for n, f in model.model_fields.items()}, report
    assert report["since"] <= report["until"]
    # after the held commits' own events, in the order they happened
    assert report["seq"] > max(e["seq"] for e in events if e["type"] in ("access", "deduction"))


async def test_exits_let_out_unrecorded_are_reported_after_a_restart_before_the_store_worked(tmp_path: Path) -> None:
    """The disk fills, exits go on (three held in memory, two counted beyond the bound), and
    the daemon is restarted before the disk has room. The next run still reports all five
    (`exits_not_recorded`, from the mirror in the runtime directory: gated/exits_mirror.py),
    and the zone knows somebody left unrecorded: the member who went out is not "inside"
    for hard anti-passback. Before, the restart forgot them: the member refused at the door."""
    from datetime import UTC, datetime

    from gated.config import Config
    from gated.daemon import Daemon
    from gated.seed import batch_from
    from rules.credential import Credential

    state = tmp_path / "state"
    mount_tmpfs(state, "3m")
    try:
        async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.1)) as sim, \
                SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.1)) as exit_sim:
            raw = site_config(tmp_path, state, "/dev/null", "/dev/null", sim, exit_sim, max_held_exits=3)
            raw["gates"][0]["anti_passback"] = "hard"
            for g in raw["gates"]:
                g["readers"] = []
            config = Config.model_validate(raw)
            store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id)
            store.apply_sync(batch_from(SEED, config), datetime.now(UTC))
            store.close()
            daemon = Daemon(config)
            await daemon.start()
            try:
                t = await daemon.handle_credential("in-1", Credential.card(OUT_CARD, "test"))
                assert (t["decision"], t["passed"]) == ("granted", True), t
                filler = fill(state)
                for i in range(5):
                    t = await daemon.handle_credential("out-1", Credential.card(OUT_CARD, "test"))
                    assert (t["decision"], t["reason"], t["passed"]) == ("granted", "exit", True), (i, t)
                assert daemon.storage is not None and len(daemon.storage.held) == 3
            finally:
                await daemon.stop()
            mirror = tmp_path / "exits-not-recorded.json"
            assert mirror.exists(), "the exits not in the store are kept outside it"
            filler.unlink()
            again = Daemon(config)
            await again.start()
            try:
                assert again.storage is not None
                await wait_for(lambda: again.storage is not None and not again.storage.alarms_pending, 15,
                               "the report to be written")
                assert again.store is not None
                events = again.store.events_after(0, 1000)
                back = await again.handle_credential("in-1", Credential.card(OUT_CARD, "test"))
            finally:
                await again.stop()
    finally:
        umount(state)
    # she went out (unrecorded): hard anti-passback does not hold her entry against her
    assert back["decision"] == "granted", back
    reports = [e for e in events if e["type"] == "alarm" and e["kind"] == "exits_not_recorded"]
    assert len(reports) == 1, reports
    assert (reports[0]["count"], reports[0]["gates"]) == (5, {"out-1": 5}), reports[0]
    assert "the daemon stopped before the store could record them" in reports[0]["detail"], reports[0]
    assert not mirror.exists(), "reported: nothing left to mirror"
