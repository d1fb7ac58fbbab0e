"""The faults of the day, each at its planned simulated instant, recorded on a timeline
(start, end, what it touched) for the report and for "the events around a violation"."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulator.day import plan as P
from simulator.day.harness.rig import PERSON, Chain, GateRig
from simulator.day.harness.traffic import Records, Traffic
from simulator.power_cut import PowerCutDisk

# A fault at one gate: the rig's flag (what the traffic and the report read), how it starts,
# how it ends.
GATE_FAULTS: dict[str, tuple[str, Callable[[GateRig], None], Callable[[GateRig], None]]] = {
    P.UNPLUG_READER: ("unplugged", lambda r: r.reader.unplug(), lambda r: r.reader.replug()),
    P.RELAY_OFFLINE: ("relay_offline", lambda r: r.turnstile.inject("no_answer"), lambda r: r.turnstile.inject("none")),
    P.NEVER_TURNS: ("never_turns", lambda r: r.turnstile.set_person(turns=False, delay=PERSON.delay),
                    lambda r: r.turnstile.set_person(turns=True, delay=PERSON.delay)),
}


def _gate_of(c: P.Chaos) -> tuple[str, str]:
    assert c.site and c.gate
    return c.site, c.gate


class ChaosRunner:
    def __init__(self, chain: Chain, plan: P.Plan, records: Records, seed: int, traffic: Traffic):
        self.chain = chain
        self.traffic = traffic  # a fire drill sends the people inside out
        self.plan = plan
        self.records = records
        self.seed = seed
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []
        # stops of the central system in progress: overlapping ones make one longer outage,
        # and it starts again when the last of them ends (else the first to end started it
        # while another still held it down, and the other started a second one beside it)
        self._central_stops = 0
        # gates whose daemon a fault holds down (a kill, a power cut, a replaced box): another
        # such fault there meanwhile is skipped. Seed 44 had a power cut a simulated minute into
        # a kill of the same gate (the killed process not yet reaped, still "alive"): each
        # started the daemon again, and two ran on one ledger for the rest of the day
        self._down: set[tuple[str, str]] = set()

    def start(self) -> None:
        for i, c in enumerate(self.plan.chaos):
            self.tasks.append(asyncio.create_task(self._run(i, c), name=f"chaos-{c.kind}"))

    async def finish(self, timeout: float) -> None:
        if self.tasks:
            done, pending = await asyncio.wait(self.tasks, timeout=timeout)
            for t in pending:
                t.cancel()
                self.errors.append(f"{t.get_name()} did not end")
            for t in done:
                if not t.cancelled() and t.exception() is not None:
                    self.errors.append(f"{t.get_name()}: {t.exception()!r}")

    def _log(self, i: int, c: P.Chaos, phase: str, **detail: Any) -> None:
        self.records.chaos.append({"n": i, "kind": c.kind, "site": c.site, "gate": c.gate, "phase": phase,
                                   "sim": self.chain.clock.now().isoformat(), "real": self.records.real(), **detail})

    async def _lasting(self, i: int, c: P.Chaos, end: Callable[[], object], **detail: Any) -> None:
        """A fault that has just started: logged, left for `c.duration` of the day, ended
        (`end` may return an awaitable), logged."""
        self._log(i, c, "start", **detail)
        await self.chain.clock.sleep(c.duration)
        ended = end()
        if inspect.isawaitable(ended):
            await ended
        self._log(i, c, "end")

    async def _back(self, i: int, c: P.Chaos, rig: GateRig) -> None:
        """A gate daemon started again after a kill or a power cut, and logged once ready."""
        self._down.discard(_gate_of(c))
        self.chain.start_gate(rig)
        t = time.monotonic()
        while not rig.proc.ready and rig.proc.alive and time.monotonic() - t < 60:
            await asyncio.sleep(0.05)
        self._log(i, c, "end", ready_after_s=round(time.monotonic() - t, 3), alive=rig.proc.alive)

    def _running_gate(self, i: int, c: P.Chaos) -> GateRig | None:
        """The gate a fault is for; None (logged as skipped) when its daemon is already down."""
        rig = self.chain.gates[_gate_of(c)]
        if not rig.proc.alive or _gate_of(c) in self._down:
            self._log(i, c, "skipped", why="already down")
            return None
        return rig

    async def _run(self, i: int, c: P.Chaos) -> None:
        clock = self.chain.clock
        await clock.sleep_until(c.at)
        ch = self.chain
        if c.kind == P.KILL_GATE:
            rig = self._running_gate(i, c)
            if rig is None:
                return
            self._down.add(_gate_of(c))
            rig.proc.kill9()
            self._log(i, c, "start", pid_killed=True)
            await asyncio.sleep(c.duration)  # systemd's RestartSec, in real seconds
            await self._back(i, c, rig)
        elif c.kind == P.POWER_CUT:
            if ch.gates[_gate_of(c)].disk is None:
                self._log(i, c, "skipped", why=f"no power-cut file system: {PowerCutDisk.missing()}")
                return
            rig = self._running_gate(i, c)
            if rig is None or rig.disk is None:
                return
            self._down.add(_gate_of(c))
            # at the worst moment if one comes soon: a member in the turnstile, the grant's
            # intent on disk, its commit not yet (within 10 real seconds, else as it is)
            deadline = time.monotonic() + 10
            while not rig.turnstile.unlocked and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            released = rig.turnstile.unlocked
            await asyncio.sleep(random.Random(self.seed * 31 + i).uniform(0, 0.25))
            # one instant: the daemon stops, what its disk held unsynced is gone, it dies
            rig.proc.freeze()
            rig.disk.cut()
            rig.proc.kill9()
            self._log(i, c, "start", released=released)
            await asyncio.sleep(c.duration)
            await asyncio.to_thread(rig.disk.mount)
            await self._back(i, c, rig)
        elif c.kind == P.REPLACE_BOX:
            rig = self._running_gate(i, c)
            if rig is None:
                return
            # the box dies at rest: frozen, it records nothing more while the harness sees
            # that everything it recorded reached the central system, no grant is open and
            # nobody is on the way through its turnstile (a turn it would have seen: the new
            # box's counter starts from what it reads first)
            deadline = time.monotonic() + 60
            while True:
                rig.proc.freeze()
                busy = rig.turnstile.unlocked or rig.turnstile.people_moving > 0
                sent = None if busy else await asyncio.to_thread(_at_rest, rig.db)
                if sent is not None:
                    break
                rig.proc.thaw()
                if time.monotonic() > deadline:
                    self._log(i, c, "skipped", why="never at rest within a minute")
                    return
                await asyncio.sleep(0.1)
            if _gate_of(c) in self._down:  # another fault took it down meanwhile
                rig.proc.thaw()
                self._log(i, c, "skipped", why="already down")
                return
            self._down.add(_gate_of(c))
            rig.proc.kill9()
            gone = _wipe(rig.db)
            self._log(i, c, "start", removed=gone, central_holds=sent)
            await asyncio.sleep(c.duration)
            await self._back(i, c, rig)
        elif c.kind == P.RESTART_SITE_BROKER:
            assert c.site
            b = ch.site_brokers[c.site]
            b.kill()
            await self._lasting(i, c, lambda: asyncio.to_thread(b.start), broker=b.name)
        elif c.kind == P.CUT_WAN:
            assert c.site
            wan = ch.wan.get(c.site)
            if wan is None:
                self._log(i, c, "skipped", why="no bridge in this topology")
                return
            wan.cut()
            await self._lasting(i, c, wan.restore)
        elif c.kind == P.STOP_CENTRAL:
            assert ch.central is not None
            ch.central.kill9()
            self._central_stops += 1
            self._log(i, c, "start")
            await clock.sleep(c.duration)
            self._central_stops -= 1
            if self._central_stops:
                self._log(i, c, "end", still_stopped_by_another=True)
                return
            ch.central.start()
            try:
                await ch.central.wait_ready(60)
                self._log(i, c, "end")
            except (TimeoutError, RuntimeError) as e:
                self._log(i, c, "end", error=repr(e))
                self.errors.append(f"central did not come back: {e!r}")
        elif c.kind in (P.PUSH_SNAPSHOT, P.RESEND_DELTAS):
            assert c.site and ch.central is not None
            cmd: dict[str, Any] = (
                {"cmd": "snapshot", "site": c.site} if c.kind == P.PUSH_SNAPSHOT
                else {"cmd": "resend_deltas", "site": c.site, "count": 40, "seed": self.seed + i}
            )
            for _ in range(20):  # the central may be down right now (another fault)
                try:
                    out = await ch.central.request(cmd, 30)
                except (OSError, TimeoutError, ValueError) as e:
                    out = {"error": repr(e)}
                if "error" not in out:
                    break
                await clock.sleep(60)
            self._log(i, c, "done", result=out)
        elif c.kind == P.FIRE_DRILL:
            assert c.site
            site = c.site
            boards = [r.turnstile for (s, _), r in sorted(ch.gates.items()) if s == site]
            for board in boards:  # the panel's contact on every turnstile's board
                board.set_fire_alarm(True)
            evacuees = self.traffic.evacuate(site, self.seed + i)

            def all_clear() -> None:
                for board in boards:
                    board.set_fire_alarm(False)
                self.traffic.end_drill(site)

            await self._lasting(i, c, all_clear, evacuees=evacuees)
        elif c.kind in GATE_FAULTS:
            assert c.site and c.gate
            rig = ch.gates[(c.site, c.gate)]
            flag, on, off = GATE_FAULTS[c.kind]
            setattr(rig, flag, True)
            on(rig)

            def end() -> None:
                off(rig)
                setattr(rig, flag, False)

            await self._lasting(i, c, end)
        else:  # pragma: no cover - the plan only holds known kinds
            self._log(i, c, "skipped", why="unknown kind")


def _at_rest(db: Path) -> int | None:
    """The gate's last seq when every event of its ledger is acknowledged by the central
    system and no grant is open; None while not."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as c:
            meta = dict(c.execute("SELECT key, value FROM meta WHERE key IN ('next_seq', 'acked_seq')").fetchall())
            intents = c.execute("SELECT COUNT(*) FROM grant_intents").fetchone()[0]
    except sqlite3.Error:
        return None
    last = int(meta.get("next_seq") or 1) - 1
    return last if int(meta.get("acked_seq") or 0) == last and intents == 0 else None


def _wipe(db: Path) -> list[str]:
    """The gate's files gone as with its disk: the ledger and its log, the mark of what it
    sent, the replica files. Their names."""
    patterns = (db.name, f"{db.name}-*", f"{db.name}.*", f"{db.stem}.replica-*")  # not its config, log, socket
    gone = sorted({p.name for pattern in patterns for p in db.parent.glob(pattern) if p.is_file()})
    for name in gone:
        (db.parent / name).unlink(missing_ok=True)
    return gone


__all__ = ["ChaosRunner"]
