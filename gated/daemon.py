"""`gated run`: the daemon. Readers → rules → relays → store, the scheduler, the MQTT link,
the control socket and the console, in one asyncio loop.

This module wires the parts and owns their lifetimes — start and stop in one place, in
their order (outputs locked before any reader; readers stopped before the store), which
is why it is about 650 lines. The path of a tap is in
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
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from drivers.outputs.fire import FireAlarmMonitor
from drivers.outputs.gate import GateController
from drivers.outputs.links import lines_in_use
from drivers.outputs.modbus import OutputHealth
from drivers.readers.base import Reader, ReaderHealth
from drivers.readers.config import build_reader
from gated import instance_lock, logs, sdnotify, status
from gated.alarms import Alarms
from gated.clock import SIMULATION_ENV, Clock, GuardedClock, SimulatedClock, utc_now
from gated.clock import allowed as simulation_allowed
from gated.config import Config, ConfigError, load_config
from gated.engine import Engine
from gated.exits_mirror import ExitsMirror
from gated.knowledge import Knowledge
from gated.metrics import Metrics
from gated.operator import DaemonOperatorApi
from gated.reload import reload_config
from gated.retention import LedgerRetention
from gated.safety import Safety, read_stored
from gated.storage_watch import StorageWatch
from gated.taps import TapPath
from gated.while_down import GateSide, RotationsWhileDown
from rules.admission import FireInputPolicy, SiteSafety
from rules.credential import Credential
from rules.timeutil import parse_duration
from sync.errors import SchemaNewer
from sync.qrtoken import TrustedKeys
from sync.store import Event, Store, StoreError
from sync.store.faults import STORAGE_ERRORS, describe_store_error
from sync.store.meta import CLOCK_FLOOR_KEY
from sync.store.occupancy import occupancy

log = structlog.get_logger("gated")

SCHEDULER_INTERVAL = 1.0
CLOCK_FLOOR_EVERY = 60.0


class StoreUnusable(Exception):
    """The store cannot be opened at start (corrupt, unreadable): one line, exit code 3."""


EXIT_STORE_UNUSABLE = 3
# another daemon runs on this store (gated/instance_lock.py): no restart loop either
EXIT_ALREADY_RUNNING = 4


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
        # the time everything here acts at: on a real site a GuardedClock over the wall
        # clock (made at start, from what the store last trusted: gated/clock.py)
        self._clock_source = clock
        self.clock_guard: GuardedClock | None = None
        self._floor_saved = 0.0
        self.clock: Callable[[], datetime] = self._now
        self.metrics = Metrics()
        self.store: Store | None = None
        self.engine: Engine | None = None
        self.taps: TapPath | None = None
        self.safety: Safety | None = None
        self.storage: StorageWatch | None = None
        self.retention: LedgerRetention | None = None
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
        self.alarms = Alarms(self.metrics, self.clock)
        self.knowledge = Knowledge(self)
        # what counting boards counted while this daemon was not running (gated/while_down.py)
        self.while_down = RotationsWhileDown(
            self.controllers, lambda: {g.id: GateSide(g.zone, g.direction) for g in self.config.gates}, self.metrics,
            self.clock, lambda: self.clock_guard is None or self.clock_guard.trusted,
        )
        # what the console and the control socket may ask (gated/operator.py)
        self.operator = DaemonOperatorApi(self)
        self._reload_lock = asyncio.Lock()
        self._jobs: set[asyncio.Future[Any]] = set()

    def _now(self) -> datetime:
        guard = self.clock_guard
        return guard() if guard is not None else self._clock_source()

    def _guard_clock(self, store: Store) -> None:
        """The wall clock, guarded against steps (rules/clock.py); a simulated or a test's
        clock is used as given."""
        if self._clock_source is not utc_now:
            return
        try:
            floor = float(store.meta(CLOCK_FLOOR_KEY) or 0.0)
        except ValueError:
            floor = 0.0
        self.clock_guard = GuardedClock(floor)
        self._floor_saved = floor
        if not self.clock_guard.trusted:
            log.warning("clock_untrusted", detail=self.clock_guard.describe())
        elif not self.clock_guard.may_settle:
            log.warning("clock_unconfirmed", detail=self.clock_guard.unconfirmed())

    def _keep_clock(self) -> None:
        """Once a second: the kernel's word on NTP, and — while trusted and confirmed (a
        clock hours ahead at boot must not become the next start's floor) — the latest
        trusted instant written down (at most once a minute) for the next start to check against."""
        guard = self.clock_guard
        if guard is None or self.store is None:
            return
        guard.tick()
        while guard.corrections:
            # the clock trusted again, off the time acted at while it was in doubt: what this
            # run stamped meanwhile moved to when it happened — before any no-show or fee is
            # settled by it (GuardedClock.may_settle waits for this)
            c = guard.corrections[0]
            corrected = self.store.correct_stamps(c.since, c.delta)
            guard.corrections.pop(0)
            log.warning("clock_corrected", since=c.since.isoformat(), by_s=round(c.delta, 3), **corrected)
        if guard.stepped_back_to is not None:
            # NTP took the clock back: this daemon's passages stamped by the clock that was
            # ahead would be "after" every passage to come (anti-passback, re-entries)
            moved = self.store.clamp_own_passages(guard.stepped_back_to)
            log.warning("clock_stepped_back", to=guard.stepped_back_to.isoformat(), passages_moved=moved)
            guard.stepped_back_to = None
        floor = guard.state.floor
        if guard.may_settle and (floor - self._floor_saved >= CLOCK_FLOOR_EVERY or floor < self._floor_saved):
            with self.store.transaction() as tx:
                tx.set_meta(CLOCK_FLOOR_KEY, repr(floor))
                self.while_down.refresh(tx)  # the boards' counts ride on it (gated/while_down.py)
            self._floor_saved = floor

    # -- wiring -----------------------------------------------------------------------

    def build_engine(self, config: Config, store: Store) -> Engine:
        return Engine(
            store,
            config.site_domain(),
            config.gates_domain(),
            config.policy.to_domain(),
            TrustedKeys.from_texts(config.qr.public_keys),
            lambda: self.clock_guard is not None and not self.clock_guard.trusted,
        )

    def log_card_rule(self) -> None:
        store = self.store
        assert store is not None
        log.warning(
            "card_rule_changed",
            cards_typed_as=store.cards_typed_as.value,
            now=store.ten_digits.value,
            action="a snapshot is asked for to type the cards again"
            if self.config.mqtt is not None
            else "no central system configured: stored 10-digit cards keep the old typing; seed typed keys (em: or em32:)",
        )

    def _open_store(self) -> Store:
        cfg = self.config
        try:
            return Store(cfg.store.path, cfg.site_domain(), daemon_id=cfg.daemon_id, ten_digits=cfg.ten_digits())
        except (sqlite3.Error, OSError, StoreError) as e:
            raise StoreUnusable(f"{cfg.store.path}: {describe_store_error(e, Path(cfg.store.path))}") from e

    async def start(self) -> None:
        cfg = self.config
        sdnotify.status("starting")
        loop = asyncio.get_running_loop()
        self.metrics.watch_devices(
            lambda: {rid: dict(r.stats) for rid, (_, r) in list(self.readers.items())},
            lambda: lines_in_use(loop),
        )
        # the relays first, before anything else (the store among it): a pulse a crash cut
        # off is relocked even when the store then turns out unusable (exit 3); alarms
        # from the boards meanwhile wait for the store (Alarms.attach). Driven to the
        # safety state stored, read on its own: a door released for a fire alarm or an
        # emergency release before the restart is not locked first and released again.
        await self._start_outputs(self._stored_safety())
        store = self.store = self._open_store()
        self._guard_clock(store)
        store.listeners.append(self._on_events)
        if store.card_rule_changed:
            self.log_card_rule()
        self.engine = self.build_engine(cfg, store)
        backup_every = parse_duration(cfg.store.backup_interval) if cfg.store.backup_interval else None
        check_every = parse_duration(cfg.store.integrity_interval) if cfg.store.integrity_interval else None
        self.storage = StorageWatch(
            store, self.clock, self.metrics, min_free=int(cfg.store.min_free_mb * 1024 * 1024),
            backup_interval=backup_every, integrity_interval=check_every, max_held_exits=cfg.store.max_held_exits,
            zones={g.id: g.zone for g in cfg.gates},
            mirror=ExitsMirror(cfg.store.exits_file or cfg.control.socket.parent / "exits-not-recorded.json",
                               cfg.daemon_id),
        )
        self.alarms.attach(store, self.storage)
        self.while_down.attach(store, self.storage)  # the boards' first readings against the counts kept
        self.retention = LedgerRetention(
            store, *cfg.store.retention_periods(), self.clock, self._may_prune,
            lambda e: self.storage.failed(e, "retention") if self.storage is not None else None, self.metrics,
            no_show_work=cfg.time_driven_work,
        )
        fire_policy = cfg.fire_alarm.on_unknown if cfg.fire_alarm is not None else FireInputPolicy.KEEP
        self.safety = Safety(store, self.controllers, self.clock, self._site_alarm, fire_policy, self.storage)
        self.storage.owed.append(self.safety.write_pending)  # set during a fault: written once it ends
        if cfg.fire_alarm is not None:
            self.safety.watch_fire_input()
        self._check_storage_at_start()
        # the outputs are locked (above); now what a person decided before the restart
        # (lockdown, emergency release), and the fire input, before any reader is read
        await self.safety.restore()
        if cfg.fire_alarm is not None:
            await self.start_fire_monitor()  # its first read (or failure) before any reader
        self.taps = TapPath(
            self.engine, cfg, self.controllers, self.safety, self.storage, self.metrics, self.clock, self.cache_stale
        )
        for g in cfg.gates:
            for rc in g.readers:
                self.start_reader(g.id, build_reader(rc, on_health=self.reader_health, now=self.clock))
        if cfg.mqtt is not None:
            from sync.link import SyncLink

            self.link = SyncLink(store, cfg.mqtt, now=self.clock, gates=cfg.gates_domain(), health=lambda: status.link_health(self))
            store.set_site_wide_qr(cfg.mqtt.share_access)
            self.taps.link = self.link
            self.link_task = asyncio.create_task(self.link.run(), name="mqtt-link")
        from gated.control import ControlServer

        self.control = ControlServer(self.operator, cfg.control.socket, self.metrics)
        await self.control.start()
        if cfg.metrics.enabled:
            try:
                self.metrics.serve(cfg.metrics.bind, cfg.metrics.port)
            except OSError as e:
                log.warning("metrics_unavailable", error=str(e))
        if cfg.console.enabled:
            from gated.console.server import start_console

            self.console = await start_console(self.operator)
        self._tasks.append(asyncio.create_task(self._scheduler(), name="scheduler"))
        self._tasks.append(asyncio.create_task(self.storage.run(), name="storage-watch"))
        self._tasks.append(asyncio.create_task(self.retention.run(), name="ledger-retention"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        self.ready = True
        # what start-up built lives as long as the daemon: keep the collector from walking
        # it again and again (full collections of a big heap stall taps for 100s of ms)
        gc.collect()
        gc.freeze()
        sdnotify.ready()
        sdnotify.status(status.status_line(self))
        log.info("ready", gates=len(cfg.gates), readers=len(self.readers), seconds=round(time.monotonic() - self.started_at, 3))

    def _stored_safety(self) -> SiteSafety:
        """The safety state the store holds, read before it is opened. Unreadable: the
        doors at rest (locked); opening the store then says why (exit 3), or restore()
        applies what it holds."""
        cfg = self.config
        try:
            stored = read_stored(Path(cfg.store.path))
        except (sqlite3.Error, OSError) as e:
            log.warning("safety_state_unread_at_start", error=str(e), doors="locked until the store is opened")
            return SiteSafety()
        return stored.site(cfg.fire_alarm.on_unknown if cfg.fire_alarm is not None else None)

    async def _start_outputs(self, safety: SiteSafety) -> None:
        """Each output driven to its safe state (locked, or held as `safety` says), then
        supervised; all at once, so a board that does not answer holds up no other."""
        for g in self.config.gates:
            if g.output is not None:
                self.controllers[g.id] = GateController(g.id, g.output, on_alarm=self.on_alarm)
        await asyncio.gather(*(ctl.start(safety) for ctl in self.controllers.values()))

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

    def start_reader(self, gate_id: str, reader: Reader) -> None:
        async def on_credential(cred: Credential) -> None:
            # a tap runs in its own task: stopping a reader (shutdown, reload, unplug)
            # must never cancel a tap that already released the turnstile
            task = asyncio.create_task(self.handle_credential(gate_id, cred, reader), name=f"tap-{gate_id}")
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)

        self.readers[reader.id] = (gate_id, reader)
        self.alarms.reader_gates[reader.id] = gate_id
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
        self.alarms.readers_stopping.update(self.reader_tasks)
        await self._end(self.reader_tasks.values(), "readers")
        if self.in_flight:
            # a person already released is waited for (the tap is finished and committed);
            # a grant that lapses meanwhile, or is still pending after that, ends
            # unconfirmed and relocked, without a not_opened alarm: nobody failed to pass,
            # we are stopping to look
            await asyncio.wait(list(self.in_flight), timeout=15)
            for ctl in self.controllers.values():
                await self._bounded(ctl.abandon_grants(), "pending grants")
        await self._end(self._tasks, "background tasks")
        if self.taps is not None and self.store is not None:
            try:
                self.taps.record_unknown_cards(all_=True)  # a burst in progress is not lost
            except Exception:
                log.exception("stop_step_failed", step="unknown cards")
        if self.storage is not None:
            self.storage.stop_checks()
        owed = self.safety is not None and bool(self.safety.not_durable)
        if self.storage is not None and (self.storage.held or self.storage.alarms_pending or owed):
            await self._bounded(self.storage.check(), "held commits")  # one last try
        if self.fire_monitor is not None:
            await self._bounded(self.fire_monitor.stop(), "fire-alarm input")
        if self.console is not None:
            await self._bounded(self.console.stop(), "console")
        if self.control is not None:
            await self._bounded(self.control.stop(), "control socket")
        if self.link_task is not None:
            await self._end([self.link_task], "mqtt link")
        for gid, ctl in self.controllers.items():
            await self._bounded(ctl.stop(), f"gate {gid}")
        if self.store is not None:
            self.while_down.stop()
            self.alarms.store = None
            self.store.close()
            self.store = None
        log.info("stopped")

    async def _end(self, tasks: Iterable[asyncio.Task[Any]], what: str) -> None:
        """Cancel `tasks` and wait for them, bounded. Not an asyncio.TaskGroup: start() and
        stop() are the daemon's API (tests and the demo embed it), so its tasks outlive any
        one `async with`; and on Python 3.11 a TaskGroup can leave its owner cancelled after
        a child fails (seen with the MQTT link). asyncio.wait, not `await task` under
        suppress(CancelledError): that would also swallow a cancel of the waiting task."""
        todo = [t for t in tasks if not t.done()]
        for t in todo:
            t.cancel()
        if todo:
            await self._bounded(asyncio.wait(todo), what)

    @staticmethod
    async def _bounded(aw: Any, what: str, timeout: float = 5.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                await aw
        except TimeoutError:
            log.error("stop_step_timed_out", step=what, seconds=timeout)
        except Exception:
            log.exception("stop_step_failed", step=what)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(logs.QuietResourceErrors())
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload(), "reload"))
        # `kill -USR1` dumps every thread's stack to stderr: how to see where a stuck daemon is;
        # so does the abort systemd's watchdog sends a hung one (and a crash in C code). With
        # a handler the abort waits for a stopped process to run again: the unit's
        # TimeoutAbortSec bounds that with a kill
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        faulthandler.enable(all_threads=True)
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

    # -- taps and the safety state (the work is in gated/taps.py and gated/safety.py; what
    # people may ask is gated/operator.py) --------------------------------------------

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

    @property
    def lockdown(self) -> bool:
        return self.safety is not None and self.safety.lockdown.active

    def _may_prune(self) -> bool:
        """The ledger's retention may delete: the store works and the clock is trusted."""
        settles = self.clock_guard is None or self.clock_guard.may_settle
        return settles and (self.storage is None or self.storage.ok)

    @property
    def fire_alarm(self) -> bool:
        """Fail-safe doors released: the fire input (or its policy) or an emergency release."""
        return self.safety is not None and self.safety.released

    def occupancy(self, zone: str) -> int:
        assert self.store is not None
        return occupancy(self.store, zone, self.clock())

    def cache_stale(self) -> bool:
        assert self.store is not None
        max_age = self.config.stale_cache.max_age
        if max_age is None or self.config.mqtt is None:
            # Without a central system the replica is what `gated seed` loaded: nothing newer
            # exists for it to lack, so its age says nothing (a site seeded once a week must
            # not start refusing walk-ins a day after)
            return False
        now = self.clock()
        last = self.knowledge.replica_as_of(now)
        return last is None or now - last > parse_duration(max_age)

    async def start_fire_monitor(self) -> None:
        assert self.config.fire_alarm is not None and self.safety is not None
        safety = self.safety

        def health(h: OutputHealth, error: str | None) -> None:
            if self.stopping.is_set():
                return  # the monitor closing at shutdown is not an alarm
            self.metrics.fire_input_up.set(1 if h is OutputHealth.ONLINE else 0)
            self._spawn(safety.fire_input_health(h, error), "fire input health")

        monitor = self.fire_monitor = FireAlarmMonitor(
            self.config.fire_alarm, on_change=safety.fire_input_read, on_health=health
        )
        await monitor.start()
        # the monitor's own word: at a reload the safety state still holds the previous
        # monitor's reading (known) until this one reads
        if not monitor.known:
            # the board did not answer at start: that is news too, not just a change
            self.metrics.fire_input_up.set(0)
            await safety.fire_input_health(monitor.health, monitor.device.last_error)
        else:
            self.metrics.fire_input_up.set(1)

    async def _site_alarm(self, kind: str, detail: str) -> None:
        """An alarm about the site rather than one gate (the fire input)."""
        self.alarms.raise_(None, kind, detail)
        sdnotify.status(status.status_line(self))

    async def on_alarm(self, gate_id: str, kind: str, detail: str) -> None:
        await self.alarms.gate_alarm(gate_id, kind, detail)

    def reader_health(self, reader_id: str, health: ReaderHealth) -> None:
        self.alarms.reader_health(reader_id, health)

    def _on_events(self, events: list[Event]) -> None:
        for ev in events:
            if ev.get("type") == "access" and ev.get("gate"):
                self.last_tap[ev["gate"]] = ev
            remedy = _history_repair(ev, self.config.daemon_id)
            if remedy is not None:
                self.metrics.history_repairs.labels(remedy).inc()
            for listener in list(self.feed_listeners):
                try:
                    listener(ev)
                except Exception:
                    log.exception("feed_listener_failed")  # a console page is not the gate

    # -- time-driven work and health --------------------------------------------------

    async def _scheduler(self) -> None:
        while True:
            try:
                self._keep_clock()
                now = self.clock()
                self.knowledge.check(now)
                # no no-show, fee or loyalty credit at a time of day the gate cannot trust
                trusted = self.clock_guard is None or self.clock_guard.trusted
                settles = self.clock_guard is None or self.clock_guard.may_settle
                # one daemon of the site does the time-driven work, from where the last one
                # had settled (gated/knowledge.py, `handover`)
                handover = self.knowledge.handover(now) if self.config.time_driven_work else None
                writable = self.storage is None or self.storage.ok
                if (self.engine is not None and handover is not None and handover.defer_to is None
                        and handover.ready and settles and writable):
                    self.engine.run_due(now, *self.knowledge.no_show_horizon(now),
                                        settled_by_site=handover.settled_through)
                elif (handover is None or handover.defer_to is not None) and self.store is not None and writable:
                    self.store.leave_time_driven_work()
                self.knowledge.announce()
                if self.engine is not None and trusted and (self.storage is None or self.storage.ok):
                    # a refund settled when its charge arrives does not depend on the time of
                    # day; giving one up after a day does: only at a confirmed clock
                    self.engine.settle_refunds(now, self.knowledge.unheard, give_up=settles)
                if self.taps is not None:
                    self.taps.record_unknown_cards()
            except STORAGE_ERRORS as e:
                if self.storage is not None:
                    self.storage.failed(e, "scheduler")
            except Exception:
                log.exception("scheduler_failed")
            try:
                self.while_down.check()  # a board first read late (offline at start, a reload)
            except Exception:
                log.exception("rotations_while_down_failed")
            try:
                status.update_gauges(self)
            except STORAGE_ERRORS as e:
                if self.storage is not None:
                    self.storage.failed(e, "gauges")
            await asyncio.sleep(SCHEDULER_INTERVAL)

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        last = status.status_line(self)
        while True:
            sdnotify.watchdog()  # from the event loop: a stuck loop stops the pings
            line = status.status_line(self)
            if line != last:  # `systemctl status` shows a storage fault or a lockdown
                sdnotify.status(line)
                last = line
            await asyncio.sleep(interval)

    # -- reload -----------------------------------------------------------------------

    async def reload(self) -> bool:
        """SIGHUP: take a new configuration without dropping taps; a broken file is refused."""
        if self.config_path is None:
            return False
        async with self._reload_lock:  # SIGHUPs in a burst: one reload after another
            return await reload_config(self, self.config_path)

    def health(self) -> dict[str, Any]:
        return status.health(self)

    async def stop_reader(self, reader_id: str) -> None:
        task = self.reader_tasks.pop(reader_id, None)
        self.readers.pop(reader_id, None)
        if task is not None:
            self.alarms.readers_stopping.add(reader_id)
            await self._end([task], f"reader {reader_id}")
            self.alarms.reader_stopped(reader_id)


def _history_repair(ev: Event, daemon_id: str) -> str | None:
    """What a committed event repaired of the taps decided while our lost events were
    missing (sync/store/repairs.py), for the metric; None: nothing of that."""
    if ev.get("type") == "deduction" and ev.get("cause") == "refund" and ev.get("because"):
        return "refund"
    kind = ev.get("kind") if ev.get("type") == "alarm" else None
    if kind == "anti_passback_missed" or (kind == "qr_double_use" and ev.get("other") == daemon_id):
        return str(kind)
    return None


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
    held: int | None = None
    try:
        # before anything touches the relays or the store (gated/instance_lock.py)
        held = instance_lock.hold(Path(config.store.path))
    except instance_lock.AlreadyRunning as e:
        print(f"gated: {e}", file=sys.stderr, flush=True)
        return EXIT_ALREADY_RUNNING
    except OSError as e:
        # the store's folder cannot be written: opening the store says why, and exits 3
        log.warning("store_lock_not_taken", path=str(instance_lock.lock_path(Path(config.store.path))), error=str(e))
    daemon = Daemon(config, config_path, clock=clock)
    try:
        asyncio.run(daemon.run())
    except KeyboardInterrupt:
        pass
    except StoreUnusable as e:
        # a store a newer version wrote is not damaged: the way back is the rollback's copy
        section = "Upgrade and roll back" if isinstance(e.__cause__, SchemaNewer) else "A damaged store"
        print(f"gated: the store cannot be used: {e} (see docs/operations.md, \"{section}\")", file=sys.stderr, flush=True)
        return EXIT_STORE_UNUSABLE
    finally:
        if held is not None:
            os.close(held)
    return 0


__all__ = ["EXIT_ALREADY_RUNNING", "EXIT_STORE_UNUSABLE", "Daemon", "StoreUnusable", "run"]
