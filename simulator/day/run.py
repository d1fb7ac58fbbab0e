"""`gated sim day`: a whole day at a two-site chain, with chaos, then the books checked.

    gated sim day [--members 2000] [--seed 1] [--speed 72] [--hours 15] [--short]
                  [--dir DIR] [--json FILE] [--no-chaos] [--no-bridge]
    gated sim day --check DIR [--json FILE]      re-check a finished run's data

The run directory keeps everything the check reads (the central's and every gate's
database, the daemons' logs, the population, the plan and what the harness saw), so a
finished day can be checked again. Exit status: 0 when every invariant held, 1 when one
did not (the report names it, with the events around it), 2 for a run that could not be
made (a process that would not start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import date
from datetime import time as dtime
from pathlib import Path
from typing import Any

from simulator.day import procfs
from simulator.day.args import add_arguments
from simulator.day.checks.invariants import check_run
from simulator.day.checks.report import render_text
from simulator.day.harness.chaos import ChaosRunner
from simulator.day.harness.rig import Chain, Settings
from simulator.day.harness.traffic import Records, Traffic
from simulator.day.plan import POWER_CUT, Plan, make_plan
from simulator.day.population import Population, default_sites, generate
from simulator.power_cut import FUSERMOUNT
from sync.store import open_reader

ROOT = Path(__file__).resolve().parents[2]  # simulator/day/run.py: the checkout (var/simday/)


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _meta(db: Path) -> dict[str, str]:
    """A gate's ledger meta with its current replica's (`sync.delta_seq` lives there)."""
    with contextlib.closing(open_reader(db)) as c:
        meta = {k: v for k, v in c.execute("SELECT key, value FROM replica.meta")}
        meta.update({k: v for k, v in c.execute("SELECT key, value FROM main.meta")})
        return meta


class Sampler:
    """RSS, descriptors and CPU of every process, every `interval` real seconds; and every
    `memory_every` where each gate daemon's memory is (`gated status` → `memory`:
    gated/memory.py), so that the resources check tells a leak from a cache filling up."""

    def __init__(self, chain: Chain, records: Records, interval: float, memory_every: float = 20.0):
        self.chain = chain
        self.records = records
        self.interval = interval
        self.memory_every = memory_every
        self.series: dict[str, list[procfs.Sample]] = {}  # "name#pid" -> samples
        self.memory: dict[str, list[dict[str, Any]]] = {}  # "name#pid" -> {"real", the parts}
        self.lag: list[float] = []  # the harness's own event-loop lag, ms

    async def run(self) -> None:
        procs = self.chain.processes()
        memory_due = 0.0
        while True:
            t = time.monotonic()
            await asyncio.sleep(self.interval)
            self.lag.append(round((time.monotonic() - t - self.interval) * 1000, 2))
            real = self.records.real()
            for name, pid_of in procs.items():
                pid = pid_of()
                if pid is None:
                    continue
                s = procfs.sample(pid, real)
                if s is not None:
                    self.series.setdefault(f"{name}#{pid}", []).append(s)
            if time.monotonic() >= memory_due:
                memory_due = time.monotonic() + self.memory_every
                for rig in self.chain.gates.values():
                    pid = rig.proc.pid
                    parts = await _memory_of(self.chain.dir / "gates" / f"{rig.daemon}.sock")
                    if pid is not None and parts is not None and pid == rig.proc.pid:
                        self.memory.setdefault(f"{rig.daemon}#{pid}", []).append({"real": self.records.real(), **parts})


async def _memory_of(sock: Path) -> dict[str, Any] | None:
    """A gate daemon's `memory` from its control socket (None: not answering now)."""
    try:
        async with asyncio.timeout(2.0):
            reader, writer = await asyncio.open_unix_connection(str(sock), limit=4 * 1024 * 1024)
            try:
                writer.write(b'{"cmd": "status"}\n')
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        parts = json.loads(line).get("memory")
    except (OSError, TimeoutError, ValueError, AttributeError):
        return None
    return parts if isinstance(parts, dict) else None


async def _drained(chain: Chain, timeout: float) -> dict[str, Any]:
    """Until every gate's events are applied at the central system and acknowledged, and
    every gate has the central's last delta. Returns what was seen last."""
    central_db = chain.dir / "central" / "central.db"
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while True:
        ok = True
        with contextlib.closing(_ro(central_db)) as c:
            applied = {(s, d): int(a) for s, d, a in c.execute("SELECT site, daemon, applied_seq FROM applied")}
            delta = {s: int(d) for s, d in c.execute("SELECT site, delta_seq FROM sites")}
        for (site, _), rig in chain.gates.items():
            db = rig.db
            try:
                meta = _meta(db)
            except sqlite3.Error:
                ok = False
                continue
            last = int(meta.get("next_seq", "1")) - 1
            state = {"last_seq": last, "acked_seq": int(meta.get("acked_seq", "0")),
                     "applied_seq": applied.get((site, rig.daemon), 0),
                     "delta_seq": int(meta.get("sync.delta_seq", "0")), "central_delta_seq": delta.get(site, 0)}
            seen[rig.daemon] = state
            if not (state["acked_seq"] == last == state["applied_seq"] and state["delta_seq"] == state["central_delta_seq"]):
                ok = False
        if ok:
            return seen
        if time.monotonic() > deadline:
            seen["timed_out"] = True
            return seen
        await asyncio.sleep(0.25)


async def run_day(
    pop: Population, plan: Plan, workdir: Path, settings: Settings, seed: int, log: Any = print
) -> dict[str, Any]:
    records = Records()
    harness: dict[str, Any] = {"settings": asdict(settings), "seed": seed}
    t_start = time.monotonic()
    # a SIGTERM (a CI timeout, `kill`) takes the chain down as Ctrl-C does: no daemon,
    # broker or mounted file system outlives the run
    main = asyncio.current_task()
    if main is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    power_cuts = frozenset((c.site, c.gate) for c in plan.chaos if c.kind == POWER_CUT and c.site and c.gate)
    async with Chain(pop, workdir, settings, plan.start, power_cuts) as chain:
        log(f"day: {len(chain.gates)} gates at {len(pop.sites)} sites, central, "
            f"{'bridged site brokers' if settings.bridged else 'one broker'}; clock x{settings.speed:g}")
        await chain.wait_ready()
        log(f"day: ready after {time.monotonic() - t_start:.1f} s; opening at {plan.opens:%H:%M} UTC "
            f"(simulated now {chain.clock.now():%H:%M:%S})")
        harness["ready_s"] = round(time.monotonic() - t_start, 1)
        sampler = Sampler(chain, records, interval=2.0)
        sampler_task = asyncio.create_task(sampler.run())
        traffic = Traffic(chain, pop, plan, records, seed)
        chaos = ChaosRunner(chain, plan, records, seed, traffic)
        traffic.start()
        chaos.start()
        t_day = time.monotonic()
        last = -1
        while chain.clock.now() < plan.end:
            await asyncio.sleep(1.0)
            hour = chain.clock.now().hour
            if hour != last:
                last = hour
                log(f"day: {chain.clock.now():%H:%M} UTC, {len(records.taps)} taps, "
                    f"{len(traffic.tasks)} people to come or inside, {len(records.chaos)} chaos steps")
        harness["day_s"] = round(time.monotonic() - t_day, 1)
        await traffic.finish(timeout=60)
        await chaos.finish(timeout=90)
        for rig in chain.gates.values():  # every fault is over: all up for the accounts
            if not rig.proc.alive:
                chain.start_gate(rig)
        t_drain = time.monotonic()
        drained = await _drained(chain, 180)
        # the reconciliation: a snapshot to every gate, then everything settled again
        assert chain.central is not None
        for spec in pop.sites:
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                await chain.central.request({"cmd": "snapshot", "site": spec.id}, 60)
        await asyncio.sleep(2.0)
        drained = await _drained(chain, 120)
        harness["drain_s"] = round(time.monotonic() - t_drain, 1)
        harness["drained"] = drained
        harness["end_sim"] = chain.clock.now().isoformat()
        sampler_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler_task
        harness["turnstiles"] = {
            rig.daemon: {"unlocks": rig.turnstile.unlocks, "rotations": len(rig.turnstile.passages),
                         "rotation_real": [round(t - records.t0, 3) for t in rig.turnstile.passages],
                         "coil_writes": len(rig.turnstile.coil_history)}
            for rig in chain.gates.values()
        }
        harness["gates"] = {
            rig.daemon: {"site": rig.site, "gate": rig.gate, "direction": rig.direction,
                         "incarnations": rig.proc.incarnation, "kills": rig.proc.kills,
                         "log_events": rig.events, "warnings": rig.warnings[-200:]}
            for rig in chain.gates.values()
        }
        harness["errors"] = traffic.errors + chaos.errors
        harness["people_inside_at_end"] = sorted(f"{s}:{m}" for s, m in traffic.inside)
    # the processes are down: none may be left (a process the harness lost track of — two
    # central systems after overlapping stops was one — would outlive the day unseen)
    left = procfs.descendants(os.getpid())
    for pid in sorted(left):
        harness.setdefault("errors", []).append(f"left running after the day: {procfs.command_of(pid)}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # their last samples and exits
    harness["samples"] = {k: [asdict(s) for s in v] for k, v in sampler.series.items()}
    harness["memory"] = sampler.memory
    harness["harness_loop_lag_ms"] = sorted(sampler.lag)[-5:] if sampler.lag else []
    harness["wall_s"] = round(time.monotonic() - t_start, 1)
    harness.update(records.to_json())
    (workdir / "harness.json").write_text(json.dumps(harness))
    return harness


def _short_sites() -> Any:
    return default_sites(dtime(6, 0), dtime(8, 0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gated sim day", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if args.check:
        return _report(Path(args.check), args.json)
    members = args.members or (300 if args.short else 2000)
    speed = args.speed or (120.0 if args.short else 72.0)
    workdir = Path(args.dir) if args.dir else ROOT / "var" / "simday" / f"seed-{args.seed}{'-short' if args.short else ''}"
    if workdir.exists():
        for d in (workdir / "gates").glob("*"):
            if d.is_dir() and os.path.ismount(d):  # a run killed outright left its power-cut mount
                subprocess.run([FUSERMOUNT, "-u", "-z", str(d)], capture_output=True)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    sites = _short_sites() if args.short else default_sites()
    pop = generate(members, seed=args.seed, day=date(2026, 11, 18), sites=sites)
    plan = make_plan(pop, seed=args.seed, chaos=not args.no_chaos, bridged=not args.no_bridge,
                     chaos_scale=0.5 if args.short else 1.0)
    (workdir / "population.json").write_text(json.dumps(_pop_json(pop)))
    (workdir / "plan.json").write_text(json.dumps(plan.to_json()))
    # a daemon under tracemalloc takes a minute to start (its first snapshot, traced)
    setup = (20.0 if args.short else 25.0) + (100.0 if args.trace_memory else 0.0)
    settings = Settings(speed=speed, bridged=not args.no_bridge, setup_seconds=setup, trace_memory=args.trace_memory)
    print(f"gated sim day: {pop.counts()}; plan {plan.counts()}; {len(plan.chaos)} faults; run in {workdir}",
          flush=True)
    try:
        asyncio.run(run_day(pop, plan, workdir, settings, args.seed, log=lambda s: print(s, flush=True)))
    except (RuntimeError, TimeoutError) as e:
        print(f"gated sim day: the run could not be made: {e}", file=sys.stderr, flush=True)
        return 2
    except asyncio.CancelledError:
        print("gated sim day: stopped (SIGTERM); everything it started is down", file=sys.stderr, flush=True)
        return 143
    return _report(workdir, args.json)


def _report(workdir: Path, json_path: str | None) -> int:
    report = check_run(workdir)
    text = render_text(report)
    print(text, flush=True)
    (workdir / "report.txt").write_text(text)
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1, default=str))
    return 0 if not report["violations"] else 1


def _pop_json(pop: Population) -> dict[str, Any]:
    return {
        "day": pop.day.isoformat(), "timezone": pop.timezone,
        "sites": [{"id": s.id, "opens": s.opens.strftime("%H:%M"), "closes": s.closes.strftime("%H:%M"),
                   "early_entry": s.early_entry, "anti_passback": s.anti_passback, "no_show_fee": s.no_show_fee,
                   "reentry_grace": s.reentry_grace} for s in pop.sites],
        "records": pop.records, "home": pop.home, "cards": pop.cards,
    }


if __name__ == "__main__":
    raise SystemExit(main())
