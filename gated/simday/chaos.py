"""The faults of the day, each at its planned simulated instant, recorded on a timeline
(start, end, what it touched) for the report and for "the events around a violation"."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gated.simday.rig import PERSON, Chain
from gated.simday.traffic import Records
from simulator.day import plan as P


class ChaosRunner:
    def __init__(self, chain: Chain, plan: P.Plan, records: Records, seed: int):
        self.chain = chain
        self.plan = plan
        self.records = records
        self.seed = seed
        self.tasks: list[asyncio.Task[None]] = []
        self.errors: list[str] = []

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

    async def _run(self, i: int, c: P.Chaos) -> None:
        clock = self.chain.clock
        await clock.sleep_until(c.at)
        ch = self.chain
        if c.kind == P.KILL_GATE:
            assert c.site and c.gate
            rig = ch.gates[(c.site, c.gate)]
            if not rig.proc.alive:
                self._log(i, c, "skipped", why="already down")
                return
            rig.proc.kill9()
            self._log(i, c, "start", pid_killed=True)
            await asyncio.sleep(c.duration)  # systemd's RestartSec, in real seconds
            ch.start_gate(rig)
            t = time.monotonic()
            while not rig.proc.ready and rig.proc.alive and time.monotonic() - t < 60:
                await asyncio.sleep(0.05)
            self._log(i, c, "end", ready_after_s=round(time.monotonic() - t, 3), alive=rig.proc.alive)
        elif c.kind == P.RESTART_SITE_BROKER:
            assert c.site
            b = ch.site_brokers[c.site]
            b.kill()
            self._log(i, c, "start", broker=b.name)
            await clock.sleep(c.duration)
            await asyncio.to_thread(b.start)
            self._log(i, c, "end")
        elif c.kind == P.CUT_WAN:
            assert c.site
            wan = ch.wan.get(c.site)
            if wan is None:
                self._log(i, c, "skipped", why="no bridge in this topology")
                return
            wan.cut()
            self._log(i, c, "start")
            await clock.sleep(c.duration)
            wan.restore()
            self._log(i, c, "end")
        elif c.kind == P.STOP_CENTRAL:
            assert ch.central is not None
            ch.central.kill9()
            self._log(i, c, "start")
            await clock.sleep(c.duration)
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
        elif c.kind == P.UNPLUG_READER:
            assert c.site and c.gate
            rig = ch.gates[(c.site, c.gate)]
            rig.unplugged = True
            rig.reader.unplug()
            self._log(i, c, "start")
            await clock.sleep(c.duration)
            rig.reader.replug()
            rig.unplugged = False
            self._log(i, c, "end")
        elif c.kind == P.RELAY_OFFLINE:
            assert c.site and c.gate
            rig = ch.gates[(c.site, c.gate)]
            rig.relay_offline = True
            rig.turnstile.inject("no_answer")
            self._log(i, c, "start")
            await clock.sleep(c.duration)
            rig.turnstile.inject("none")
            rig.relay_offline = False
            self._log(i, c, "end")
        elif c.kind == P.NEVER_TURNS:
            assert c.site and c.gate
            rig = ch.gates[(c.site, c.gate)]
            rig.never_turns = True
            rig.turnstile.set_person(turns=False, delay=PERSON.delay)
            self._log(i, c, "start")
            await clock.sleep(c.duration)
            rig.turnstile.set_person(turns=True, delay=PERSON.delay)
            rig.never_turns = False
            self._log(i, c, "end")
        else:  # pragma: no cover - the plan only holds known kinds
            self._log(i, c, "skipped", why="unknown kind")


__all__ = ["ChaosRunner"]
