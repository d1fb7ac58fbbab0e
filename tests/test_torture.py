"""Crash torture: the real daemon (`gated run`) is SIGKILLed at random instants, over and
over, while members tap a pty serial reader, a simulated turnstile on a real Modbus server
lets them through, and the reference central system on a real mosquitto applies what the
gate sends and pushes large snapshots that the kills often land in.

Kill instants vary: before READY (start-up, first snapshot), while taps are decided,
while the turnstile turns (between release and commit), while the link publishes, and in
the middle of a snapshot import (chunks spooled, the worker process building the new
replica file, the switch to it).

After every kill: the database is sound, the replica is whole (no or every member), the
ledger is gap-free and no deduction is without its access event with a passage, and
never more deductions than rotations. Every rotation of the turnstile is a committed
entry or a `passage_unconfirmed` event (a grant whose commit a kill cut off, reported at
the next start): none unexplained. At the end, after a last restart and a
reconciliation: every event at the central system exactly once (seq 1..N, unique ids),
its balances = its initial balances minus the deductions it received, and the gate's
balance = the central balance for every pass.

CI runs `CYCLES` (100) cycles; `make torture` (GATED_TORTURE=1) runs 1,000. Figures are
printed (pytest -s) as one `TORTURE ...` line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.central import Central, generate
from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import Person, SimTurnstile
from sync.store import StoreError, open_reader
from tests.broker import (
    WAIT_S,
    Mosquitto,
    central_settings,
)

ROOT = Path(__file__).resolve().parent.parent
TORTURE = bool(os.environ.get("GATED_TORTURE"))
CYCLES = int(os.environ.get("GATED_TORTURE_CYCLES", "1000" if TORTURE else "100"))
SITE = "t1"
CARDS = {f"04A1B2C3D{i}": (f"tm{i}", f"tp{i}") for i in range(4)}
START_BALANCE = 1_000_000
FILLER = 2500  # members in every snapshot besides ours: an import takes a few hundred ms


def gate_config(tmp: Path, daemon: str, reader: str, modbus_port: int, broker_port: int) -> dict[str, Any]:
    return {
        "site": {"id": SITE, "timezone": "Europe/Madrid"},
        "daemon_id": daemon,
        "stale_cache": {"max_age": None, "policy": "keep"},
        "lookup_unknown_cards": False,
        "gates": [
            {
                "id": "turnstile-1",
                "zone": "main",
                "readers": [{"type": "serial", "id": "r1", "device": reader, "format": "hex", "debounce": 0}],
                "output": {
                    "transport": "tcp", "host": "127.0.0.1", "port": modbus_port, "unit": 1, "coil": 0,
                    "pulse": 0.3, "passage_input": 0, "door_contact": 1, "passage_timeout": 3,
                },
            }
        ],
        "mqtt": {
            "host": "127.0.0.1", "port": broker_port, "ack_timeout": 1.0, "backoff_initial": 0.05,
            "backoff_max": 0.3, "resync_retry": 2.0, "keepalive": 5,
        },
        "store": {"path": str(tmp / "gate.db")},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
        "control": {"socket": str(tmp / "control.sock")},
        "logging": {"format": "json", "level": "warning"},
    }


def seed_central(central: Central) -> None:
    members = [{"id": m, "name": f"Torture {m}", "cards": [card]} for card, (m, _) in CARDS.items()]
    passes = [
        {"id": p, "member": m, "kind": "visits", "balance": START_BALANCE, "deduct_on": "access",
         "access_windows": {"mon-sun": "00:00-24:00"}}
        for m, p in CARDS.values()
    ]
    central.load(SITE, members, passes, [])
    big = generate(FILLER, passes_per_member=1.0, bookings_per_member=1.0, prefix="g", day="2036-01-07")
    central.load(SITE, big["members"], big["passes"], big["bookings"])


class Gate:
    """Read-only looks into the gate's database while the daemon runs (WAL readers)."""

    def __init__(self, db: Path):
        self.db = db

    def connect(self) -> sqlite3.Connection:
        """The store's read contract (ledger + the replica it names), or the bare ledger
        when killed before the replica was made."""
        try:
            return open_reader(self.db)
        except (StoreError, sqlite3.Error):
            return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)

    def q(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        with contextlib.closing(self.connect()) as c:
            try:
                return c.execute(sql, args).fetchall()
            except sqlite3.OperationalError as e:  # a table not created yet
                if "no such table" in str(e):
                    return []
                raise

    def meta(self, key: str, default: str = "0") -> str:
        rows = self.q("SELECT value FROM main.meta WHERE key = ?", (key,))
        if not rows:  # the replica's own keys (sync.delta_seq, sync.snapshot_id)
            rows = self.q("SELECT value FROM replica.meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else default

    def leftovers(self) -> tuple[bool, bool]:
        """(a snapshot's spool: killed mid-import; a replica file the ledger does not
        name: killed while the worker built it, or after the switch before the old one
        was deleted)."""
        current = self.meta("replica.file", "")
        names = [p.name for p in self.db.parent.iterdir() if p.name.startswith(self.db.stem + ".")]
        spool = any(n.endswith(".spool") for n in names)
        orphan = any(".replica-" in n and not (current and n.startswith(current)) for n in names)
        return spool, orphan


def check_after_kill(gate: Gate, members_full: int) -> tuple[int, bool, bool]:
    """What must hold whatever the instant of the kill. Returns (deductions, mid-import,
    orphan replica file)."""
    stage, old = gate.leftovers()
    if not gate.db.exists():
        return 0, stage, old  # killed before the database was made
    with contextlib.closing(gate.connect()) as c:
        assert c.execute("PRAGMA main.quick_check").fetchone()[0] == "ok"
        if not c.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'booking_outcomes'").fetchone():
            return 0, stage, old  # killed before the schema was made
        assert c.execute("PRAGMA replica.quick_check").fetchone()[0] == "ok"
        n_members = c.execute("SELECT COUNT(*) FROM members").fetchone()[0]
        assert n_members in (0, members_full), n_members  # old replica or new, whole
        next_seq = int((c.execute("SELECT value FROM main.meta WHERE key='next_seq'").fetchone() or ("1",))[0])
        seqs = [r[0] for r in c.execute("SELECT seq FROM events ORDER BY seq")]
        if seqs:  # gap-free, ending at the last seq handed out
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[-1] == next_seq - 1
        # every deduction is the second half of a tap whose access event says passed
        bad = c.execute(
            "SELECT d.seq FROM deductions d LEFT JOIN events e ON e.seq = d.seq - 1 "
            "WHERE e.seq IS NOT NULL AND NOT (e.type = 'access' AND json_extract(e.body, '$.passed') = 1 "
            "AND json_extract(e.body, '$.pass') = d.pass_id)"
        ).fetchall()
        assert not bad, bad
        deductions = c.execute("SELECT COUNT(*) FROM deductions").fetchone()[0]
    return int(deductions), stage, old


def children_of(pid: int) -> list[str]:
    """The command lines of a process's children (Linux /proc)."""
    out = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as c:
                        out.append(c.read().replace(b"\0", b" ").decode(errors="replace"))
    return out


async def wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Notify:
    """systemd's notify socket: READY=1 tells a cycle the daemon is up."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def ready(self) -> bool:
        seen = False
        with contextlib.suppress(BlockingIOError):
            while True:
                seen |= b"READY=1" in self.sock.recv(4096)
        return seen

    def close(self) -> None:
        self.sock.close()


class Rig:
    """One gate daemon with its own pty reader, simulated turnstile, database and notify
    socket; `cycles()` starts it, lets members tap, SIGKILLs it, checks, again."""

    def __init__(self, name: str, tmp: Path, broker_port: int, central: Central, rnd: random.Random,
                 figures: Counter[str]):
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir()
        self.broker_port = broker_port
        self.central = central
        self.rnd = rnd
        self.figures = figures
        self.gate = Gate(self.dir / "gate.db")
        self.proc: subprocess.Popen[bytes] | None = None
        self.tapping = asyncio.Event()
        self.deductions = 0
        self.passages = 0

    async def __aenter__(self) -> Rig:
        self._sim_cm = SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=Person(delay=0.02),
                                    passage_pulse=0.05)
        self.sim = await self._sim_cm.__aenter__()
        self.sim.rotation_gap = 0.05
        self.reader = VirtualSerialReader(self.dir / "reader-1")
        self.notify = Notify(self.dir / "notify.sock")
        self.cfg = self.dir / "gated.yaml"
        cfg = gate_config(self.dir, self.name, self.reader.path, self.sim.port, self.broker_port)
        self.cfg.write_text(yaml.safe_dump(cfg))
        self.log = open(self.dir / "daemon.log", "ab")  # noqa: SIM115
        self.env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path)}
        self._tap_task = asyncio.create_task(self._tapper())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self._tap_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._tap_task
        self.log.close()
        self.notify.close()
        self.reader.close()
        await self._sim_cm.__aexit__(None, None, None)

    async def _tapper(self) -> None:
        cards = list(CARDS)
        i = self.rnd.randrange(len(cards))
        while True:
            await self.tapping.wait()
            with contextlib.suppress(OSError, RuntimeError):
                self.reader.tap(cards[i % len(cards)])
                self.figures["taps_written"] += 1
            i += 1
            await asyncio.sleep(self.rnd.uniform(0.03, 0.12))

    def spawn(self) -> None:
        self.notify.ready()  # forget a previous run's messages
        self.proc = subprocess.Popen([sys.executable, "-m", "gated.cli", "run", "-c", str(self.cfg)], cwd=ROOT,
                                     env=self.env, stdout=self.log, stderr=self.log)

    async def wait_ready(self) -> None:
        proc = self.proc
        assert proc is not None

        def up() -> bool:
            assert proc.poll() is None, f"the daemon exited: {(self.dir / 'daemon.log').read_text()[-3000:]}"
            return self.notify.ready()
        await wait_for(up, WAIT_S, f"READY=1 from {self.name}")

    def kill(self) -> bool:
        """SIGKILL the daemon; whether a snapshot worker of its was running then (the kill
        lands mid-import: the worker, in a process group of its own, outlives it and takes
        its spool and half-built file away when its input ends)."""
        assert self.proc is not None
        importing = any("sync.snapshot.worker" in c for c in children_of(self.proc.pid))
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return importing

    async def cycles(self, n: int) -> None:
        rnd, gate, f = self.rnd, self.gate, self.figures
        for cycle in range(n):
            self.spawn()
            kind = rnd.choices(["startup", "taps", "snapshot"], weights=[1, 5, 3])[0]
            if cycle < 2:
                kind = "startup"  # the first snapshot itself, into an empty replica
            if kind == "startup":
                await asyncio.sleep(rnd.uniform(0.3, 1.6))
            else:
                await self.wait_ready()
                self.tapping.set()
                if gate.meta("sync.snapshot_id", "") == "":
                    # Nothing to replace and nobody to let in yet: on a slow machine the
                    # start-up kills can cut off every first import, so wait for one here
                    # (kills during it are the "startup" kind's business).
                    kind = "taps"
                    await wait_for(lambda: gate.meta("sync.snapshot_id", "") != "", WAIT_S, "the first snapshot")
                if kind == "snapshot":
                    await self.central.publish_snapshot(SITE)  # pushed to every gate of the site
                    await asyncio.sleep(rnd.uniform(0.0, 0.7))
                else:
                    await asyncio.sleep(rnd.uniform(0.0, 0.9))
            importing = self.kill()
            self.tapping.clear()
            f[f"kills_{kind}"] += 1
            deductions, stage, old = check_after_kill(gate, FILLER + len(CARDS))
            f["kills_mid_snapshot_import"] += stage or importing
            f["kills_with_orphan_replica"] += old
            await asyncio.sleep(0.15)  # the last person still in the turnstile comes out
            passages = len(self.sim.passages)
            assert deductions <= passages, (self.name, deductions, passages)  # no deduction without passage
            if passages - self.passages > deductions - self.deductions:
                f["kills_between_release_and_commit"] += 1
            self.deductions, self.passages = deductions, passages
            f["cycles"] += 1

    def drained(self) -> bool:
        g = self.gate
        last = int(g.meta("next_seq", "1")) - 1
        return (
            g.meta("sync.snapshot_id", "") != ""
            and int(g.meta("acked_seq")) == last
            and self.central.applied_seq(SITE, self.name) == last
            and int(g.meta("sync.delta_seq")) == self.central.delta_seq(SITE)
            and g.leftovers() == (False, False)
        )

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(self.proc.wait, 30) == 0


@pytest.mark.slow
@pytest.mark.timeout(600 + 4 * CYCLES)
async def test_sigkill_torture(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Two daemons of one site, tapping the same members' passes, each killed CYCLES/2
    times; both daemons' deductions meet in the central balances and come back to both
    gates through the `applied` maps."""
    rnd = random.Random(int(os.environ.get("GATED_TORTURE_SEED", "20261118")))
    central = Central(central_settings(mosquitto, chunk_rows=500), tmp_path / "central.db")
    seed_central(central)
    central_task = asyncio.create_task(central.run())
    await central.wait_connected(WAIT_S)
    figures: Counter[str] = Counter()
    t_start = time.monotonic()
    names = ("gate-t1", "gate-t2")
    try:
        async with contextlib.AsyncExitStack() as stack:
            rigs = [
                await stack.enter_async_context(
                    Rig(n, tmp_path, mosquitto.port, central, random.Random(rnd.random()), figures))
                for n in names
            ]
            await asyncio.gather(*(r.cycles((CYCLES + 1) // 2) for r in rigs))
            # the last start: no taps; everything sent, acknowledged, and a reconciliation
            for r in rigs:
                r.spawn()
            for r in rigs:
                await r.wait_ready()
            await wait_for(lambda: all(r.drained() for r in rigs), 90, "the outboxes to drain, the replicas to catch up")
            before = [r.gate.meta("sync.snapshot_id") for r in rigs]
            await central.publish_snapshot(SITE)  # the reconciliation
            await wait_for(
                lambda: all(r.gate.meta("sync.snapshot_id") != b and r.drained() for r, b in zip(rigs, before, strict=True)),
                90, "the reconciliation snapshot")
            for r in rigs:
                await r.stop()
            passages = {r.name: len(r.sim.passages) for r in rigs}
    finally:
        central_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await central_task

    # -- the whole run, at the central system -------------------------------------------------
    taken: Counter[str] = Counter()
    for r in rigs:
        events = central.events(SITE, r.name)
        last_seq = int(r.gate.meta("next_seq")) - 1
        assert [e["seq"] for e in events] == list(range(1, last_seq + 1))  # gap-free, each once
        assert len({e["id"] for e in events}) == len(events)
        by_seq = {e["seq"]: e for e in events}
        deductions = [e for e in events if e["type"] == "deduction"]
        passed = [e for e in events if e["type"] == "access" and e.get("passed")]
        for d in deductions:  # each deduction belongs to one confirmed passage, in one transaction
            a = by_seq[d["seq"] - 1]
            assert a["type"] == "access" and a.get("passed") is True and a["pass"] == d["pass"], (a, d)
            taken[d["pass"]] += int(d["amount"])
        assert len(deductions) == len(passed)  # every pass here deducts on access
        assert len(passed) <= passages[r.name]
        # every rotation of the turnstile is a committed entry or, when a kill cut its
        # commit, a passage_unconfirmed event reported at the next start: 0 unexplained
        # (an unconfirmed grant may also be one the kill cut before the relay was pulsed)
        unconfirmed = [e for e in events if e["type"] == "passage_unconfirmed"]
        unexplained = passages[r.name] - len(passed) - len(unconfirmed)
        assert unexplained <= 0, (r.name, passages[r.name], len(passed), len(unconfirmed))
        assert all(u["gate"] == "turnstile-1" and u["member"] and u["pass"] for u in unconfirmed)
        assert not r.gate.q("SELECT id FROM grant_intents")  # every intent resolved or reported
        figures["unconfirmed"] += len(unconfirmed)
        figures["committed_entries"] += len(passed)
        local_deductions = r.gate.q("SELECT COUNT(*) FROM deductions")[0][0]
        assert local_deductions == len(deductions)
        figures["events_checked"] += len(events)
        figures["deductions"] += len(deductions)
        figures["passages_turnstile"] += passages[r.name]
    for _, p in CARDS.values():
        assert central.balance(SITE, p) == START_BALANCE - taken[p]
    for r in rigs:
        local = {row[0]: Decimal(row[1]) for row in r.gate.q("SELECT id, balance FROM passes WHERE balance IS NOT NULL")}
        assert len(local) > FILLER // 2
        for pid, bal in local.items():
            assert central.balance(SITE, pid) == bal, (r.name, pid, bal, central.balance(SITE, pid))
            figures["balances_compared"] += 1
    figures["seconds"] = round(time.monotonic() - t_start)
    print("TORTURE", json.dumps(dict(sorted(figures.items()))))
    assert figures["kills_mid_snapshot_import"] + figures["kills_with_orphan_replica"] >= 1
    assert figures["deductions"] > CYCLES  # it did tap
