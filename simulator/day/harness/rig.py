"""The simulated chain, wired: per site a mosquitto bridged to the central broker through a
WAN link, three gates (two turnstiles in, one out), each a `gated run` process with a
serial reader on a pty and a turnstile on a real Modbus TCP server; the reference central
system in its own process. All on one simulated clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher

from rules.clock import SimulatedTime
from simulator.day.harness.procs import (
    Broker,
    CentralProc,
    GateProc,
    LogTail,
    WanLink,
    bridge_block,
    free_port,
)
from simulator.day.plan import DESK_GATE, EXIT_GATE, GATES, daemon_id
from simulator.day.population import ZONE, Population, SiteSpec
from simulator.power_cut import PowerCutDisk
from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import Person, SimTurnstile
from sync.qrtoken import generate_private_key, private_key_pem, public_key_text

DESK_USER, DESK_PASSWORD = "desk", "simday-desk"  # a throwaway password for a throwaway site
# The daemon's switch for the `simulation:` section (gated/clock.py): without it `gated run`
# refuses a simulated clock. Only this harness sets it.
SIMULATION_ENV = "GATED_SIMULATION"
PERSON = Person(delay=0.08)  # people push the arm at once: a busy turnstile


EXIT_COUNTER = 0  # the input register where a board counts its passage pulses
# the boards that count them: the exit's, and one entry's — a site has both kinds of entry
# board, one that tells what went through while its daemon was down and one that cannot
COUNTING = ("out-1", "in-2")


@dataclass
class Settings:
    speed: float
    bridged: bool = True
    setup_seconds: float = 25.0  # real seconds before the clock reaches its start
    reconcile_interval: float = 300.0  # real seconds
    ack_timeout: float = 3.0
    trace_memory: bool = False  # daemons under tracemalloc (simulator/day/harness/traced.py)


class Clock:
    """The run's simulated clock (the daemons' and the central's formula, each reading the
    real clock), and sleeping until simulated instants."""

    def __init__(self, start: datetime, speed: float, epoch: float):
        self.sim = SimulatedTime(start, speed, epoch)
        self.speed = speed

    def now(self) -> datetime:
        return self.sim.at(time.time())

    async def sleep_until(self, t: datetime) -> None:
        while True:
            left = (t - self.now()).total_seconds() / self.speed
            if left <= 0:
                return
            await asyncio.sleep(min(left, 5.0))

    async def sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(max(0.0, sim_seconds / self.speed))


@dataclass
class GateRig:
    site: str
    gate: str
    direction: str
    daemon: str
    reader: VirtualSerialReader
    turnstile: SimTurnstile
    proc: GateProc
    db: Path
    console_port: int | None = None
    disk: PowerCutDisk | None = None  # its store's file system, when a power cut is planned for it
    lines: list[dict[str, Any]] = field(default_factory=list)  # `tap` lines not yet claimed
    events: dict[str, int] = field(default_factory=dict)  # log events seen, by name
    warnings: list[dict[str, Any]] = field(default_factory=list)
    unplugged: bool = False
    reader_online: bool = False  # as the daemon says (it reopens a replugged reader after a back-off)
    relay_offline: bool = False
    never_turns: bool = False
    new_line: asyncio.Event = field(default_factory=asyncio.Event)
    ready_at: list[float] = field(default_factory=list)  # monotonic time each incarnation was ready
    started_at: list[float] = field(default_factory=list)

    def on_line(self, line: dict[str, Any]) -> None:
        ev = str(line.get("event", ""))
        self.events[ev] = self.events.get(ev, 0) + 1
        if ev == "tap":
            self.lines.append(line)
            self.new_line.set()
        elif ev == "ready":
            self.proc.ready = True
            self.ready_at.append(time.monotonic())
        elif ev.startswith("reader ") and ev.endswith((" is online", " is offline")):
            self.reader_online = ev.endswith(" is online")
        if line.get("level") in ("warning", "error", "critical") and len(self.warnings) < 2000:
            self.warnings.append(line)

    @property
    def available(self) -> bool:
        """What a member sees: the gate's display is on and its reader reads."""
        return self.proc.alive and self.proc.ready and not self.unplugged and self.reader_online

    def state(self) -> dict[str, bool]:
        return {"daemon": self.proc.alive and self.proc.ready, "reader": not self.unplugged and self.reader_online,
                "relay": not self.relay_offline, "turns": not self.never_turns}


class Chain:
    """Everything of one run; `async with Chain(...)` starts it and takes it all down."""

    def __init__(self, pop: Population, workdir: Path, settings: Settings, clock_start: datetime,
                 power_cuts: frozenset[tuple[str, str]] = frozenset()):
        self.pop = pop
        self.power_cuts = power_cuts  # (site, gate) whose store goes on a power-cut file system
        self.dir = workdir
        self.settings = settings
        self.epoch = time.time() + settings.setup_seconds
        self.clock = Clock(clock_start, settings.speed, self.epoch)
        self.central_broker = Broker("central", workdir / "brokers")
        self.site_brokers: dict[str, Broker] = {}
        self.wan: dict[str, WanLink] = {}
        self.gates: dict[tuple[str, str], GateRig] = {}
        self.tails: list[LogTail] = []
        self.qr_key = generate_private_key()
        self.other_key = generate_private_key()  # a key no gate trusts (forged codes)
        self.central: CentralProc | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tail_task: asyncio.Task[None] | None = None
        self.env = {**os.environ, SIMULATION_ENV: "1"}
        self.env.pop("NOTIFY_SOCKET", None)

    # -- configuration -----------------------------------------------------------------------

    def simulation(self) -> dict[str, Any]:
        return {"clock_start": self.clock.sim.start.isoformat(), "clock_speed": self.settings.speed,
                "clock_epoch": self.epoch}

    def gate_config(self, spec: SiteSpec, gate: str, reader: str, modbus_port: int, broker_port: int,
                    console_port: int | None, store: Path) -> dict[str, Any]:
        direction = "out" if gate == EXIT_GATE else "in"
        g: dict[str, Any] = {
            "id": gate, "zone": ZONE, "direction": direction,
            # one reader for cards and the app's QR codes (a combined reader in serial mode)
            "readers": [{"type": "serial", "id": f"{spec.id}-{gate}-reader", "device": reader, "format": "auto",
                         "debounce": 0.3, "max_frame_length": 512}],
            "output": {"transport": "tcp", "host": "127.0.0.1", "port": modbus_port, "unit": 1, "coil": 0,
                       "pulse": 0.3, "passage_input": 0, "door_contact": 1, "passage_timeout": 3, "timeout": 0.3},
        }
        if direction == "in":
            g.update(anti_passback=spec.anti_passback, reentry_grace=spec.reentry_grace)
        if gate in COUNTING:
            # the board counts its passage pulses (a DI counter): a fire drill sends the
            # people inside through the exit back to back, a pulse every 0.15 s, and a reading
            # held back that long on a loaded machine would lose one from the level alone (the
            # documented limit, docs/hardware-outputs.md); and what went through while the
            # daemon was down is told at its start (gated/while_down.py). in-1 reads the level
            g["output"]["passage_counter"] = EXIT_COUNTER
        mqtt: dict[str, Any] = {
            "host": "127.0.0.1", "port": broker_port, "ack_timeout": self.settings.ack_timeout,
            "backoff_initial": 0.1, "backoff_max": 2.0, "resync_retry": 5.0, "keepalive": 10,
            "reconcile_interval": self.settings.reconcile_interval, "health_interval": 30.0,
            # the site's daemons hear how far each other has got every real second (a couple of
            # simulated minutes): no-shows due 15 simulated minutes after a class are not held long
            "heartbeat_interval": 1.0,
        }
        wan = self.wan.get(spec.id)
        if wan is not None:  # the site broker, else the central broker over the WAN (failover)
            mqtt["hosts"] = [f"127.0.0.1:{broker_port}", f"127.0.0.1:{wan.port}"]
        d = daemon_id(spec.id, gate)
        # argon2, as `gated hash-password` makes it (the hash carries its parameters)
        hashed = getattr(self, "_hash", None) or PasswordHasher().hash(DESK_PASSWORD)
        self._hash = hashed
        cfg: dict[str, Any] = {
            "site": {"id": spec.id, "name": f"Gym {spec.id.title()}", "timezone": self.pop.timezone,
                     "opening_hours": {"mon-sun": f"{spec.opens:%H:%M}-{spec.closes:%H:%M}"}},
            "daemon_id": d,
            "policy": {"early_entry": spec.early_entry, "no_show_fee": spec.no_show_fee, "no_show_after": "15m",
                       "loyalty_delay": "30m"},
            "gates": [g],
            # the fire panel's contact, wired to every turnstile's board (its input 2): each
            # daemon sees the alarm itself, as a site's fail-safe gates must
            "fire_alarm": {"transport": "tcp", "host": "127.0.0.1", "port": modbus_port, "unit": 1, "input": 2,
                           "active_low": False, "poll_interval": 0.2, "timeout": 0.3},
            "mqtt": mqtt,
            # one daemon of the site (the desk's) finalises no-shows and credits loyalty; it
            # learns the other gates' attendance from their events
            "time_driven_work": gate == DESK_GATE,
            "store": {"path": str(store), "backup_interval": None, "min_free_mb": 1},
            "console": {"enabled": console_port is not None, "port": console_port or 8080,
                        "users": [{"name": DESK_USER, "role": "staff", "password_hash": hashed}]},
            "metrics": {"enabled": False},
            "control": {"socket": str(self.dir / "gates" / f"{d}.sock")},
            "qr": {"public_keys": [public_key_text(self.qr_key.public_key())]},
            "logging": {"format": "json", "level": "info"},
            "simulation": self.simulation(),
        }
        return cfg

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Chain:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _start(self) -> None:
        (self.dir / "gates").mkdir(parents=True, exist_ok=True)
        (self.dir / "readers").mkdir(parents=True, exist_ok=True)
        (self.dir / "central").mkdir(parents=True, exist_ok=True)
        (self.dir / "qr-site.pem").write_bytes(private_key_pem(self.qr_key))
        self.central_broker.start()
        self._stack.callback(self.central_broker.kill)
        for spec in self.pop.sites:
            if self.settings.bridged:
                wan = WanLink(spec.id, self.central_broker.port)
                await wan.start()
                self._stack.push_async_callback(wan.stop)
                self.wan[spec.id] = wan
                broker = Broker(spec.id, self.dir / "brokers", extra=bridge_block(spec.id, wan.port))
                broker.start()
                self._stack.callback(broker.kill)
                self.site_brokers[spec.id] = broker
            else:
                self.site_brokers[spec.id] = self.central_broker
        self._start_central()
        for spec in self.pop.sites:
            for gate in GATES:
                await self._start_gate(spec, gate)
        self._tail_task = asyncio.create_task(self._tail())

    def _start_central(self) -> None:
        db = self.dir / "central" / "central.db"
        from simulator.central import Central, CentralSettings

        seed = Central(CentralSettings(port=self.central_broker.port), db, clock=self.clock.now)
        for site, recs in self.pop.records.items():
            seed.load(site, recs["members"], recs["passes"], recs["bookings"])
        seed.conn.close()
        args = ["--db", str(db), "--port", str(self.central_broker.port), "--control",
                str(self.dir / "central" / "control.sock"), "--clock-start", self.clock.sim.start.isoformat(),
                "--clock-speed", str(self.settings.speed), "--clock-epoch", str(self.epoch)]
        self.central = CentralProc(args, self.dir / "central" / "control.sock", self.dir / "central" / "central.log",
                                   self.env)
        self.central.start()

    async def _start_gate(self, spec: SiteSpec, gate: str) -> None:
        d = daemon_id(spec.id, gate)
        sim = await self._stack.enter_async_context(
            SimTurnstile(transport="tcp", host="127.0.0.1", port=0, person=PERSON, passage_pulse=0.1,
                         passage_counter=EXIT_COUNTER if gate in COUNTING else None))
        sim.rotation_gap = 0.05
        reader = VirtualSerialReader(self.dir / "readers" / d)
        self._stack.callback(reader.close)
        console = free_port() if gate == DESK_GATE else None
        store, disk = self.dir / "gates" / f"{d}.db", None
        if (spec.id, gate) in self.power_cuts and PowerCutDisk.missing() is None:
            disk = PowerCutDisk(self.dir / "gates" / d)  # simulator.day.plan.gate_store finds it there
            await asyncio.to_thread(disk.mount)
            self._stack.callback(disk.unmount)  # after the daemon has stopped (Chain.stop)
            store = disk.directory / f"{d}.db"
        cfg = self.gate_config(spec, gate, reader.path, sim.port, self.site_brokers[spec.id].port, console, store)
        path = self.dir / "gates" / f"{d}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        trace = self.dir / "gates" / f"{d}.tracemalloc.json" if self.settings.trace_memory else None
        proc = GateProc(d, path, self.dir / "gates" / f"{d}.log", self.env, trace)
        rig = GateRig(spec.id, gate, "out" if gate == EXIT_GATE else "in", d, reader, sim, proc, store, console, disk)
        self.gates[(spec.id, gate)] = rig
        self.tails.append(LogTail(proc.log, rig.on_line))
        self.start_gate(rig)

    def start_gate(self, rig: GateRig) -> None:
        rig.reader_online = False
        rig.proc.start()
        rig.started_at.append(time.monotonic())

    async def _tail(self) -> None:
        while True:
            for t in self.tails:
                t.poll()
            await asyncio.sleep(0.02)

    async def wait_ready(self, timeout: float = 120.0) -> None:
        assert self.central is not None
        await self.central.wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while not all(r.proc.ready for r in self.gates.values()):
            for r in self.gates.values():
                if not r.proc.alive:
                    raise RuntimeError(f"{r.daemon} exited at start: {r.proc.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("gates not ready: " + ", ".join(r.daemon for r in self.gates.values()
                                                                   if not r.proc.ready))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._tail_task is not None:
            self._tail_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail_task
            self._tail_task = None
        for t in self.tails:
            t.poll()
        await asyncio.gather(*(r.proc.terminate() for r in self.gates.values()))
        for t in self.tails:
            t.poll()
        if self.central is not None:
            await self.central.terminate()
        await self._stack.aclose()

    def processes(self) -> dict[str, Callable[[], int | None]]:
        """Name -> current pid, for the sampler."""
        out: dict[str, Callable[[], int | None]] = {}
        for r in self.gates.values():
            out[r.daemon] = _pid_of(r.proc)
        out["central"] = lambda: self.central.pid if self.central else None
        out["broker-central"] = lambda: self.central_broker.pid
        for site, b in self.site_brokers.items():
            if b is not self.central_broker:
                out[f"broker-{site}"] = _pid_of(b)
        out["harness"] = os.getpid
        return out


def _pid_of(proc: GateProc | Broker) -> Callable[[], int | None]:
    return lambda: proc.pid


__all__ = ["DESK_PASSWORD", "DESK_USER", "Chain", "Clock", "GateRig", "Settings"]
