"""`gated run`: the daemon. Readers → rules → relays → store, the scheduler, the MQTT link,
the control socket and the console, in one asyncio loop.

This module wires the parts and owns their lifetimes. The path of a tap is in
gated/taps.py (decide, admit, durable intent, relay, commit: nothing opens that cannot be
recorded); lockdown, emergency release and the fire input in gated/safety.py; the health
of the store, its retries and backups in gated/storage_watch.py.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from drivers.outputs.gate import FireAlarmMonitor, GateController
from drivers.outputs.links import lines_in_use
from drivers.outputs.modbus import OutputFault, OutputHealth
from drivers.readers.base import Reader, ReaderHealth
from drivers.readers.config import build_reader
from gated import logs, sdnotify
from gated.clock import SIMULATION_ENV, Clock, SimulatedClock, utc_now
from gated.clock import allowed as simulation_allowed
from gated.config import Config, ConfigError, load_config
from gated.engine import Engine
from gated.metrics import Metrics
from gated.safety import Safety
from gated.storage_watch import StorageWatch
from gated.taps import TapPath
from rules.admission import FireInputPolicy
from rules.credential import Credential
from rules.timeutil import parse_duration
from sync.occupancy import occupancy
from sync.qrtoken import TrustedKeys
from sync.storage import STORAGE_ERRORS, describe_store_error
from sync.store import Event, Store, StoreError

log = structlog.get_logger("gated")

SCHEDULER_INTERVAL = 1.0
RELOAD_TIMEOUT = 10.0


class StoreUnusable(Exception):
    """The store cannot be opened at start (corrupt, unreadable): one line, exit code 3."""


EXIT_STORE_UNUSABLE = 3


class Daemon:
    def __init__(
        self,
        config: Config,
        config_path: str | Path | None = None,
        *,
        clock: Callable[[], datetime] = utc_now,
    ):
        self.config = config
        self.config_path = Path(config_path) if config_path else None
        self.clock = clock
        self.metrics = Metrics()
        self.store: Store | None = None
        self.engine: Engine | None = None
        self.taps: TapPath | None = None
        self.safety: Safety | None = None
        self.storage: StorageWatch | None = None
        self.controllers: dict[str, GateController] = {}
        self.readers: dict[str, tuple[str, Reader]] = {}  # reader id -> (gate id, reader)
        self.reader_tasks: dict[str, asyncio.Task[None]] = {}
        self.link: Any = None
        self.link_task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.started_at = time.monotonic()
        self.ready = False
        self.feed_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.last_tap: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self.console: Any = None
        self.control: Any = None  # gated.control.ControlServer, once started
        self.fire_monitor: FireAlarmMonitor | None = None
        self._relay_state: dict[str, str] = {}
        self._reader_state: dict[str, ReaderHealth] = {}
        self._readers_stopping: set[str] = set()  # stopped on purpose: going offline is no news
        self._reload_lock = asyncio.Lock()
        self._jobs: set[asyncio.Future[Any]] = set()

    # -- wiring -----------------------------------------------------------------------

    def _engine(self, config: Config, store: Store) -> Engine:
        return Engine(
            store,
            config.site_domain(),
            config.gates_domain(),
            config.policy.to_domain(),
            TrustedKeys.from_texts(config.qr.public_keys),
        )

    def _open_store(self) -> Store:
        cfg = self.config
        try:
            return Store(cfg.store.path, cfg.site_domain(), daemon_id=cfg.daemon_id, ten_digits=cfg.ten_digits())
        except (sqlite3.Error, OSError, StoreError) as e:
            raise StoreUnusable(f"{cfg.store.path}: {describe_store_error(e)}") from e

    async def start(self) -> None:
        cfg = self.config
        sdnotify.status("starting")
        loop = asyncio.get_running_loop()
        self.metrics.watch_devices(
            lambda: {rid: dict(r.stats) for rid, (_, r) in list(self.readers.items())},
            lambda: lines_in_use(loop),
        )
        store = self.store = self._open_store()
        store.listeners.append(self._on_events)
        self.engine = self._engine(cfg, store)
        backup_every = parse_duration(cfg.store.backup_interval) if cfg.store.backup_interval else None
        self.storage = StorageWatch(
            store, self.clock, self.metrics, min_free=int(cfg.store.min_free_mb * 1024 * 1024), backup_interval=backup_every
        )
        fire_policy = cfg.fire_alarm.on_unknown if cfg.fire_alarm is not None else FireInputPolicy.KEEP
        self.safety = Safety(store, self.controllers, self.clock, self._site_alarm, fire_policy)
        if cfg.fire_alarm is not None:
            self.safety.watch_fire_input()
        self._check_storage_at_start()
        # outputs first, each driven to its safe (locked) state before any reader is read;
        # then what a person decided before the restart (lockdown, emergency release)
        for g in cfg.gates:
            if g.output is not None:
                ctl = GateController(g.id, g.output, on_alarm=self._on_alarm)
                await ctl.start()
                self.controllers[g.id] = ctl
        await self.safety.restore()
        if cfg.fire_alarm is not None:
            await self._start_fire_monitor()  # its first read (or failure) before any reader
        self.taps = TapPath(
            self.engine, cfg, self.controllers, self.safety, self.storage, self.metrics, self.clock, self._cache_stale
        )
        for g in cfg.gates:
            for rc in g.readers:
                self._start_reader(g.id, build_reader(rc, on_health=self._reader_health))
        if cfg.mqtt is not None:
            from sync.link import SyncLink

            self.link = SyncLink(store, cfg.mqtt, now=self.clock, gates=cfg.gates_domain(), health=self._link_health)
            self.taps.link = self.link
            self.link_task = asyncio.create_task(self.link.run(), name="mqtt-link")
        from gated.console.backend import DaemonBackend
        from gated.control import ControlServer

        self.control = ControlServer(DaemonBackend(self), cfg.control.socket, self.metrics)
        await self.control.start()
        if cfg.metrics.enabled:
            try:
                self.metrics.serve(cfg.metrics.bind, cfg.metrics.port)
            except OSError as e:
                log.warning("metrics_unavailable", error=str(e))
        if cfg.console.enabled:
            from gated.console.server import start_console

            self.console = await start_console(DaemonBackend(self))
        self._tasks.append(asyncio.create_task(self._scheduler(), name="scheduler"))
        self._tasks.append(asyncio.create_task(self.storage.run(), name="storage-watch"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        self.ready = True
        # what start-up built lives as long as the daemon: keep the collector from walking
        # it again and again (full collections of a big heap stall taps for 100s of ms)
        gc.collect()
        gc.freeze()
        sdnotify.ready()
        sdnotify.status(self._status_line())
        log.info("ready", gates=len(cfg.gates), readers=len(self.readers), seconds=round(time.monotonic() - self.started_at, 3))

    def _check_storage_at_start(self) -> None:
        """Grants a crash cut off are reported first; then one durable write proves the
        store can record (a read-only file opens fine and only fails at the first write)."""
        assert self.store is not None and self.storage is not None
        now = self.clock()
        try:
            committed = self.store.report_unconfirmed(now)
            if committed.events:
                self.metrics.unconfirmed.inc(len(committed.events))
                log.warning("passage_unconfirmed", count=len(committed.events),
                            gates=sorted({str(e.get("gate")) for e in committed.events}))
            self.store.probe(now)
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "start")
            return
        self.storage.guard.precheck(now)

    def _status_line(self) -> str:
        problems = []
        if self.storage is not None and not self.storage.ok:
            problems.append(f"STORAGE FAULT ({self.storage.guard.problem}): entries refused")
        if self.safety is not None:
            if self.safety.lockdown.active:
                problems.append("LOCKDOWN")
            if self.safety.released:
                problems.append("DOORS RELEASED")
            if self.safety.fire_configured and not self.safety.fire.known:
                problems.append("FIRE INPUT UNREACHABLE")
        base = f"ready: {len(self.config.gates)} gates, {len(self.readers)} readers"
        if self.config.simulation is not None:
            base += " (SIMULATED CLOCK)"
        return base + ("; " + "; ".join(problems) if problems else "")

    def _start_reader(self, gate_id: str, reader: Reader) -> None:
        async def on_credential(cred: Credential) -> None:
            # a tap runs in its own task: stopping a reader (shutdown, reload, unplug)
            # must never cancel a tap that already released the turnstile
            task = asyncio.create_task(self.handle_credential(gate_id, cred, reader), name=f"tap-{gate_id}")
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

        self.readers[reader.id] = (gate_id, reader)
        self.reader_tasks[reader.id] = asyncio.create_task(reader.run(on_credential), name=f"reader-{reader.id}")

    async def stop(self) -> None:
        """Graceful: no new taps, finish the ones in progress, lock the doors, close the store.

        Every step is bounded: one part that hangs (a library waiting on a dead peer) must
        not keep the doors from being locked and the store from being closed.
        """
        sdnotify.stopping()
        self.stopping.set()  # also when stop() is called directly (tests, embedding)
        for ctl in self.controllers.values():
            ctl.wind_down()
        self._readers_stopping.update(self.reader_tasks)
        for task in self.reader_tasks.values():
            task.cancel()
        await self._bounded(self._settle(list(self.reader_tasks.values())), "readers")
        if self.in_flight:
            # a person already released is waited for (the tap is finished and committed);
            # a grant that lapses meanwhile, or is still pending after that, ends
            # unconfirmed and relocked, without a not_opened alarm: nobody failed to pass,
            # we are stopping to look
            await asyncio.wait(list(self.in_flight), timeout=15)
            for ctl in self.controllers.values():
                await self._bounded(ctl.abandon_grants(), "pending grants")
        for task in self._tasks:
            task.cancel()
        await self._bounded(self._settle(self._tasks), "background tasks")
        if self.storage is not None and (self.storage.held or self.storage.alarms_pending):
            await self._bounded(self.storage.check(), "held commits")  # one last try
        if self.fire_monitor is not None:
            await self._bounded(self.fire_monitor.stop(), "fire-alarm input")
        if self.console is not None:
            await self._bounded(self.console.stop(), "console")
        if self.control is not None:
            await self._bounded(self.control.stop(), "control socket")
        if self.link_task is not None:
            self.link_task.cancel()
            await self._bounded(self._settle([self.link_task]), "mqtt link")
        for gid, ctl in self.controllers.items():
            await self._bounded(ctl.stop(), f"gate {gid}")
        if self.store is not None:
            self.store.close()
            self.store = None
        log.info("stopped")

    @staticmethod
    async def _settle(tasks: list[asyncio.Task[Any]]) -> None:
        # asyncio.wait, not `await task` under suppress(CancelledError): that would also
        # swallow a cancellation of the task doing the waiting
        if tasks:
            await asyncio.wait(tasks)

    @staticmethod
    async def _bounded(aw: Any, what: str, timeout: float = 5.0) -> None:
        try:
            await asyncio.wait_for(aw, timeout)
        except TimeoutError:
            log.error("stop_step_timed_out", step=what, seconds=timeout)
        except Exception:
            log.exception("stop_step_failed", step=what)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(), "reload"))
        # `kill -USR1` dumps every thread's stack to stderr: how to see where a stuck daemon is
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        try:
            await self.start()
        except StoreUnusable:
            await self.stop()
            raise
        try:
            await self.stopping.wait()
        finally:
            await self.stop()
            await self._reap()

    def _spawn(self, aw: Coroutine[Any, Any, Any], what: str) -> None:
        """A background job whose failure is logged, never lost (SIGHUP reloads, alarms)."""
        task = asyncio.ensure_future(aw)
        self._jobs.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._jobs.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("job_failed", job=what, error=repr(t.exception()), exc_info=t.exception())

        task.add_done_callback(done)

    async def _reap(self, grace: float = 5.0) -> None:
        """After a clean stop nothing should be left running; a library task that ignores
        cancellation must not keep a stopped daemon (and systemd's stop) hanging."""
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        for t in rest:
            t.cancel()
        if not rest:
            return
        _, pending = await asyncio.wait(rest, timeout=grace)
        if pending:
            log.error("stuck_tasks_at_exit", tasks=[t.get_name() for t in pending])
            sys.stderr.flush()
            os._exit(0)  # the store is closed: everything worth keeping is on disk

    # -- taps, the desk, safety (the work is in gated/taps.py and gated/safety.py) ----------

    async def handle_credential(self, gate_id: str, cred: Credential, reader: Reader | None = None) -> dict[str, Any]:
        if self.taps is None:
            return {"error": "not running"}
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            return await self.taps.tap(gate_id, cred, reader)
        finally:
            if task is not None:
                self.in_flight.discard(task)

    async def check_in(
        self,
        gate_id: str,
        member_id: str,
        operator: str,
        reason: str,
        *,
        booking_id: str | None = None,
        pass_id: str | None = None,
    ) -> dict[str, Any]:
        """The desk checks a member in by hand: same rules, intent, relay and ledger as a tap."""
        assert self.taps is not None
        self.taps.engine.gate(gate_id)  # unknown gate: raise before touching anything
        return await self.taps.check_in(gate_id, member_id, operator, reason, booking_id=booking_id, pass_id=pass_id)

    async def override(self, gate_id: str, operator: str, reason: str) -> dict[str, Any]:
        assert self.taps is not None
        return await self.taps.override(gate_id, operator, reason)

    @property
    def lockdown(self) -> bool:
        return self.safety is not None and self.safety.lockdown.active

    @property
    def fire_alarm(self) -> bool:
        """Fail-safe doors released: the fire input (or its policy) or an emergency release."""
        return self.safety is not None and self.safety.released

    def occupancy(self, zone: str) -> int:
        assert self.store is not None
        return occupancy(self.store, zone, self.clock())

    def _cache_stale(self) -> bool:
        assert self.store is not None
        max_age = self.config.stale_cache.max_age
        if max_age is None:
            return False
        last = self.store.last_sync_at()
        return last is None or self.clock() - last > parse_duration(max_age)

    async def relay_by_hand(self, gate_id: str, action: str, seconds: float | None, operator: str) -> dict[str, Any]:
        """`gated relay` while running: audited, and an event, like an override."""
        assert self.store is not None
        ctl = self.controllers.get(gate_id)
        if ctl is None:
            return {"error": f"gate {gate_id!r} has no relay"}
        try:
            await ctl.by_hand(action, seconds)
        except OutputFault as e:
            return {"error": "hardware_fault", "message": str(e)}
        self.store.emit("relay_by_hand", self.clock(), gate=gate_id, action=action, operator=operator)
        self.store.audit(self.clock(), operator, f"relay_{action}", {"gate": gate_id})
        log.warning("relay_by_hand", gate=gate_id, action=action, operator=operator)
        return {"gate": gate_id, "relay": action}

    async def set_lockdown(self, on: bool, operator: str) -> None:
        assert self.safety is not None
        await self.safety.set_lockdown(on, operator)
        sdnotify.status(self._status_line())

    async def emergency_release(self, operator: str) -> None:
        """Every fail-safe door released, as for a fire alarm, by an admin's decision."""
        assert self.safety is not None
        await self.safety.set_emergency(True, operator)
        sdnotify.status(self._status_line())

    async def end_emergency_release(self, operator: str) -> None:
        """Back to normal after an emergency release (not while the fire input is active)."""
        assert self.safety is not None
        await self.safety.set_emergency(False, operator)
        sdnotify.status(self._status_line())

    async def _start_fire_monitor(self) -> None:
        assert self.config.fire_alarm is not None and self.safety is not None
        safety = self.safety

        def health(h: OutputHealth, error: str | None) -> None:
            if self.stopping.is_set():
                return  # the monitor closing at shutdown is not an alarm
            self.metrics.fire_input_up.set(1 if h is OutputHealth.online else 0)
            self._spawn(safety.fire_input_health(h, error), "fire input health")

        monitor = self.fire_monitor = FireAlarmMonitor(
            self.config.fire_alarm, on_change=safety.fire_input_read, on_health=health
        )
        await monitor.start()
        if not safety.fire.known:
            # the board did not answer at start: that is news too, not just a change
            self.metrics.fire_input_up.set(0)
            await safety.fire_input_health(monitor.health, monitor.device.last_error)
        else:
            self.metrics.fire_input_up.set(1)

    async def _site_alarm(self, kind: str, detail: str) -> None:
        """An alarm about the site rather than one gate (fire input)."""
        await self._on_alarm("", kind, detail)
        sdnotify.status(self._status_line())

    async def _on_alarm(self, gate_id: str, kind: str, detail: str) -> None:
        if kind.startswith("relay_"):
            self.metrics.relay_up.labels(gate_id).set(1 if kind == "relay_online" else 0)
            previous = self._relay_state.get(gate_id)
            self._relay_state[gate_id] = kind
            if kind == "relay_online" and previous in (None, "relay_online"):
                return  # coming up as expected is not news; coming back after a fault is
        self.metrics.alarms.labels(gate_id, kind).inc()
        log.warning("alarm", gate=gate_id or None, kind=kind, detail=detail)
        if self.store is not None:
            try:
                self.store.emit("alarm", self.clock(), gate=gate_id or None, kind=kind, detail=detail)
            except STORAGE_ERRORS as e:
                if self.storage is not None:
                    self.storage.failed(e, "alarm")

    def _reader_health(self, reader_id: str, health: ReaderHealth) -> None:
        """A reader went offline, came back or refuses us: an event like a relay's (the
        first time it comes up is not news)."""
        previous = self._reader_state.get(reader_id)
        self._reader_state[reader_id] = health
        self.metrics.reader_up.labels(reader_id).set(1 if health == ReaderHealth.ONLINE else 0)
        if (previous is None and health == ReaderHealth.ONLINE) or reader_id in self._readers_stopping:
            return
        gate_id = self.readers[reader_id][0] if reader_id in self.readers else None
        kind = f"reader_{health.value}"
        self.metrics.alarms.labels(gate_id or "", kind).inc()
        if self.store is not None:
            self.store.emit("alarm", self.clock(), gate=gate_id, kind=kind, reader=reader_id, detail=f"reader {reader_id} is {health.value}")
        log.warning("alarm", gate=gate_id, kind=kind, reader=reader_id)

    def _on_events(self, events: list[Event]) -> None:
        for ev in events:
            if ev.get("type") == "access" and ev.get("gate"):
                self.last_tap[ev["gate"]] = ev
            for listener in list(self.feed_listeners):
                try:
                    listener(ev)
                except Exception:
                    log.exception("feed_listener_failed")  # a console page is not the gate

    # -- time-driven work and health --------------------------------------------------

    async def _scheduler(self) -> None:
        while True:
            try:
                if self.engine is not None and (self.storage is None or self.storage.ok):
                    self.engine.run_due(self.clock())
            except STORAGE_ERRORS as e:
                if self.storage is not None:
                    self.storage.failed(e, "scheduler")
            except Exception:
                log.exception("scheduler_failed")
            try:
                self._update_gauges()
            except STORAGE_ERRORS as e:
                if self.storage is not None:
                    self.storage.failed(e, "gauges")
            await asyncio.sleep(SCHEDULER_INTERVAL)

    def _update_gauges(self) -> None:
        if self.store is None:
            return
        for rid, (_, r) in self.readers.items():
            self.metrics.reader_up.labels(rid).set(1 if r.health == ReaderHealth.ONLINE else 0)
        for gid, ctl in self.controllers.items():
            self.metrics.relay_up.labels(gid).set(1 if ctl.output.health == OutputHealth.online else 0)
        self.metrics.broker_up.set(1 if self.link is not None and getattr(self.link, "connected", False) else 0)
        if self.safety is not None:
            self.metrics.safety.labels("lockdown").set(int(self.safety.lockdown.active))
            self.metrics.safety.labels("emergency_release").set(int(self.safety.emergency.active))
            self.metrics.safety.labels("fire_alarm").set(int(self.safety.fire_alarm))
        self.metrics.outbox_depth.set(self.store.outbox_depth())
        last = self.store.last_sync_at()
        if last is not None:
            self.metrics.last_sync.set(last.timestamp())

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        last = self._status_line()
        while True:
            sdnotify.watchdog()  # from the event loop: a stuck loop stops the pings
            line = self._status_line()
            if line != last:  # `systemctl status` shows a storage fault or a lockdown
                sdnotify.status(line)
                last = line
            await asyncio.sleep(interval)

    def _link_health(self) -> dict[str, Any]:
        """What the periodic MQTT health message says about this daemon's devices."""
        return {
            "readers": {rid: r.health.value for rid, (_, r) in self.readers.items()},
            "outputs": {gid: ctl.output.health.value for gid, ctl in self.controllers.items()},
            "lockdown": self.lockdown,
            "fire_alarm": self.fire_alarm,
            "storage": self.storage.as_dict() if self.storage is not None else None,
        }

    def health(self) -> dict[str, Any]:
        store = self.store

        def read(f: Callable[[], Any]) -> Any:
            try:
                return f()
            except STORAGE_ERRORS as e:  # a broken store must not break the status too
                return f"unreadable: {e}"

        last = read(store.last_sync_at) if store else None
        return {
            "site": self.config.site.id,
            "daemon": self.config.daemon_id,
            "ready": self.ready,
            "clock": "simulated" if self.config.simulation is not None else "real",
            "lockdown": self.lockdown,
            "fire_alarm": self.fire_alarm,
            "safety": self.safety.as_dict() if self.safety is not None else None,
            "storage": self.storage.as_dict() if self.storage is not None else None,
            "readers": {rid: {"gate": g, "health": r.health.value, "stats": dict(r.stats)} for rid, (g, r) in self.readers.items()},
            "modbus_lines": lines_in_use(),
            "gates": {
                g.id: {
                    "zone": g.zone,
                    "direction": g.direction,
                    "relay": self.controllers[g.id].output.health.value if g.id in self.controllers else "none",
                    "state": self.controllers[g.id].state if g.id in self.controllers else {},
                    "last_tap": self.last_tap.get(g.id),
                }
                for g in self.config.gates
            },
            "broker": "connected" if self.link is not None and getattr(self.link, "connected", False) else ("none" if self.link is None else "disconnected"),
            "outbox_depth": read(store.outbox_depth) if store else None,
            "last_sync": last.isoformat() if isinstance(last, datetime) else last,
            "cache_stale": read(self._cache_stale) if store else None,
            "sync": (
                {"central_online": self.link.central_online, "awaiting_snapshot": self.link.awaiting_snapshot,
                 "stats": dict(self.link.stats)}
                if self.link is not None else None
            ),
        }

    # -- reload -----------------------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP: take a new configuration without dropping taps; a broken file is refused."""
        if self.config_path is None:
            return False
        async with self._reload_lock:  # SIGHUPs in a burst: one reload after another
            return await self._reload(self.config_path)

    async def _reload(self, path: Path) -> bool:
        # Parsed in a worker thread: the file is outside input, and even bounded (see
        # gated/yamlload.py) a big one takes a while; taps go on meanwhile.
        try:
            new = await asyncio.wait_for(asyncio.to_thread(load_config, path), RELOAD_TIMEOUT)
        except ConfigError as e:
            log.error("reload_refused", problems=[f"{ln}:{k}: {m}" for ln, k, m in e.problems])
            sdnotify.status("reload refused: configuration invalid; running with the previous one")
            return False
        except TimeoutError:
            log.error("reload_refused", problems=[f"reading the file took longer than {RELOAD_TIMEOUT:.0f} s"])
            sdnotify.status("reload refused: configuration took too long to read; running with the previous one")
            return False
        sdnotify.reloading()
        assert self.store is not None
        old = self.config
        self.config = new
        # rules parameters swap atomically: a tap decided after this line uses the new ones
        self.engine = self._engine(new, self.store)
        if self.taps is not None:
            self.taps.engine, self.taps.config = self.engine, new
        old_gates = {g.id: g for g in old.gates}
        for g in new.gates:
            before = old_gates.get(g.id)
            if before is None or before.readers != g.readers:
                if before is not None:
                    for rc in before.readers:
                        await self._stop_reader(rc.id)
                for rc in g.readers:
                    self._start_reader(g.id, build_reader(rc, on_health=self._reader_health))
            if (before is None or before.output != g.output):
                if g.id in self.controllers:
                    await self.controllers.pop(g.id).stop()
                if g.output is not None:
                    ctl = GateController(g.id, g.output, on_alarm=self._on_alarm)
                    await ctl.start()
                    self.controllers[g.id] = ctl
                    if self.safety is not None:
                        await self.safety.apply_to(ctl)  # a lockdown holds on a new board too
        if new.fire_alarm != old.fire_alarm:
            if self.fire_monitor is not None:
                await self.fire_monitor.stop()
                self.fire_monitor = None
            assert self.safety is not None
            self.safety.fire_policy = new.fire_alarm.on_unknown if new.fire_alarm else FireInputPolicy.KEEP
            if new.fire_alarm is not None:
                self.safety.watch_fire_input()
                await self._start_fire_monitor()
            else:
                self.safety.fire_configured = False
                await self.safety.fire_input_read(False)
        for gid, g in old_gates.items():
            if gid not in {x.id for x in new.gates}:
                for rc in g.readers:
                    await self._stop_reader(rc.id)
                if gid in self.controllers:
                    await self.controllers.pop(gid).stop()
        sdnotify.ready()
        sdnotify.status("ready: configuration reloaded")
        log.info("reloaded", gates=len(new.gates))
        return True

    async def _stop_reader(self, reader_id: str) -> None:
        task = self.reader_tasks.pop(reader_id, None)
        self.readers.pop(reader_id, None)
        if task is not None:
            self._readers_stopping.add(reader_id)
            task.cancel()
            await asyncio.wait([task])
            self._readers_stopping.discard(reader_id)
            self._reader_state.pop(reader_id, None)  # a reader started again comes up quietly


def run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        for line, key, msg in e.problems:
            print(f"{e.path}:{line or '?'}: {key}: {msg}", flush=True)
        return 2
    clock: Clock = utc_now
    if config.simulation is not None:
        if not simulation_allowed():
            print(
                f"{config_path}: simulation: a simulated clock is for the simulator only; "
                f"set {SIMULATION_ENV}=1 to run it (never on a real site)",
                file=sys.stderr,
                flush=True,
            )
            return 2
        sim = config.simulation
        clock = SimulatedClock(sim.clock_start, sim.clock_speed, sim.clock_epoch)
    logs.setup(config.logging.format, config.logging.level, config.logging.libraries)
    daemon = Daemon(config, config_path, clock=clock)
    try:
        asyncio.run(daemon.run())
    except KeyboardInterrupt:
        pass
    except StoreUnusable as e:
        print(f"gated: the store cannot be used: {e} (see docs/operations.md, \"A damaged store\")", file=sys.stderr, flush=True)
        return EXIT_STORE_UNUSABLE
    return 0


__all__ = ["EXIT_STORE_UNUSABLE", "Daemon", "StoreUnusable", "run"]
