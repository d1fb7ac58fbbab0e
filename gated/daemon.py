"""`gated run`: the daemon. Readers → rules → relays → store, the scheduler, the MQTT link,
the control socket and the console, in one asyncio loop.

The path of a tap (DESIGN.md): decide from the local replica without waiting on the
network (except a bounded look-up of an unknown card), release the relay, wait for the
turnstile to turn, then commit the deduction, attendance and events in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import gc
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from drivers.outputs.config import DoorMode
from drivers.outputs.gate import GateController, GrantRefused
from drivers.outputs.modbus import OutputFault, OutputHealth, lines_in_use
from drivers.readers.base import Reader, ReaderHealth
from drivers.readers.config import build_reader
from gated import logs, sdnotify
from gated.config import Config, ConfigError, load_config
from gated.engine import Engine, PendingTap
from gated.metrics import Metrics
from rules.credential import Credential, CredentialKind
from rules.decide import Decision
from rules.model import Direction, PassKind
from rules.reasons import Reason
from sync.occupancy import is_full, occupancy
from sync.qrtoken import TrustedKeys
from sync.store import Event, Store

log = structlog.get_logger("gated")

SCHEDULER_INTERVAL = 1.0
STALE_ALLOWED = {Reason.BOOKING, Reason.LINKED_BOOKING, Reason.REENTRY, Reason.EXIT}


def utc_now() -> datetime:
    return datetime.now(UTC)


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
        self.controllers: dict[str, GateController] = {}
        self.readers: dict[str, tuple[str, Reader]] = {}  # reader id -> (gate id, reader)
        self.reader_tasks: dict[str, asyncio.Task[None]] = {}
        self.link: Any = None
        self.link_task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.lockdown = False
        self.fire_alarm = False
        self.started_at = time.monotonic()
        self.ready = False
        self.feed_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.last_tap: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self.console: Any = None
        self._relay_state: dict[str, str] = {}
        self._reader_state: dict[str, ReaderHealth] = {}
        self._fire_input_active = False
        # member / QR token -> the tap holding it between its grant and its commit
        self._taps_pending: dict[str, asyncio.Future[None]] = {}

    # -- wiring -----------------------------------------------------------------------

    def _engine(self, config: Config, store: Store) -> Engine:
        return Engine(
            store,
            config.site_domain(),
            config.gates_domain(),
            config.policy.to_domain(),
            TrustedKeys.from_texts(config.qr.public_keys),
        )

    async def start(self) -> None:
        cfg = self.config
        sdnotify.status("starting")
        loop = asyncio.get_running_loop()
        self.metrics.watch_devices(
            lambda: {rid: dict(r.stats) for rid, (_, r) in list(self.readers.items())},
            lambda: lines_in_use(loop),
        )
        self.store = Store(cfg.store.path, cfg.site_domain(), daemon_id=cfg.daemon_id, ten_digits=cfg.ten_digits())
        self.store.listeners.append(self._on_events)
        self.engine = self._engine(cfg, self.store)
        # outputs first, each driven to its safe (locked) state before any reader is read
        for g in cfg.gates:
            if g.output is not None:
                ctl = GateController(g.id, g.output, on_alarm=self._on_alarm)
                await ctl.start()
                self.controllers[g.id] = ctl
        if cfg.fire_alarm is not None:
            self._tasks.append(asyncio.create_task(self._watch_fire_alarm(), name="fire-alarm"))
        for g in cfg.gates:
            for rc in g.readers:
                self._start_reader(g.id, build_reader(rc, on_health=self._reader_health))
        if cfg.mqtt is not None:
            from sync.link import SyncLink

            self.link = SyncLink(
                self.store, cfg.mqtt, now=self.clock, gates=cfg.gates_domain(), health=self._link_health
            )
            self.link_task = asyncio.create_task(self.link.run(), name="mqtt-link")
        from gated.control import ControlServer

        self.control = ControlServer(self, cfg.control.socket)
        await self.control.start()
        if cfg.metrics.enabled:
            try:
                self.metrics.serve(cfg.metrics.bind, cfg.metrics.port)
            except OSError as e:
                log.warning("metrics_unavailable", error=str(e))
        if cfg.console.enabled:
            from gated.console.app import start_console

            self.console = await start_console(self)
        self._tasks.append(asyncio.create_task(self._scheduler(), name="scheduler"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name="watchdog"))
        self.ready = True
        # what start-up built lives as long as the daemon: keep the collector from walking
        # it again and again (full collections of a big heap stall taps for 100s of ms)
        gc.collect()
        gc.freeze()
        sdnotify.ready()
        sdnotify.status(f"ready: {len(cfg.gates)} gates, {len(self.readers)} readers")
        log.info("ready", gates=len(cfg.gates), readers=len(self.readers), seconds=round(time.monotonic() - self.started_at, 3))

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
        for task in self.reader_tasks.values():
            task.cancel()
        await self._bounded(self._settle(list(self.reader_tasks.values())), "readers")
        # a grant still waiting for its person ends now, unconfirmed (no deduction, no
        # not_opened alarm: nobody failed to pass, we stopped looking) and relocks
        for ctl in self.controllers.values():
            await self._bounded(ctl.abandon_grants(), "pending grants")
        if self.in_flight:
            await asyncio.wait(list(self.in_flight), timeout=15)
        for task in self._tasks:
            task.cancel()
        await self._bounded(self._settle(self._tasks), "background tasks")
        if self.console is not None:
            await self._bounded(self.console.stop(), "console")
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
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        # `kill -USR1` dumps every thread's stack to stderr: how to see where a stuck daemon is
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        await self.start()
        try:
            await self.stopping.wait()
        finally:
            await self.stop()
            await self._reap()

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

    # -- taps -------------------------------------------------------------------------

    async def handle_credential(self, gate_id: str, cred: Credential, reader: Reader | None = None) -> dict[str, Any]:
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            return await self._handle(gate_id, cred, reader)
        except Exception:  # one bad tap must never take the daemon down
            log.exception("tap_failed", gate=gate_id)
            return {"error": "internal"}
        finally:
            if task is not None:
                self.in_flight.discard(task)

    def _shell_checks(self, pending: PendingTap) -> PendingTap:
        assert self.engine is not None
        d = pending.decision
        if not d.granted:
            return pending
        entering = d.reason != Reason.EXIT
        if entering and (self.lockdown or self.fire_alarm):
            return self.engine.refuse(pending, Reason.LOCKDOWN)
        ctl = self.controllers.get(pending.gate.id)
        if ctl is not None and ctl.output.health != OutputHealth.online and entering:
            return self.engine.refuse(pending, Reason.HARDWARE_FAULT)
        if entering and self._cache_stale():
            policy = self.config.stale_cache.policy
            if policy == "deny":
                return self.engine.refuse(pending, Reason.CACHE_STALE)
            if policy == "bookings_and_time_passes" and d.reason not in STALE_ALLOWED:
                p = self.engine.store.get_pass(d.pass_id) if d.pass_id else None
                if p is None or p.kind != PassKind.TIME:
                    return self.engine.refuse(pending, Reason.CACHE_STALE)
        if entering and d.reason != Reason.REENTRY:
            zone = pending.gate.zone
            cap = self.config.zones.get(zone)
            if cap is not None and is_full(self.engine.store, zone, cap.capacity, self.clock(), member=d.member):
                return self.engine.refuse(pending, Reason.SITE_FULL)
        return pending

    def occupancy(self, zone: str) -> int:
        assert self.store is not None
        return occupancy(self.store, zone, self.clock())

    def _cache_stale(self) -> bool:
        assert self.store is not None
        max_age = self.config.stale_cache.max_age
        if max_age is None:
            return False
        from rules.timeutil import parse_duration

        last = self.store.last_sync_at()
        return last is None or self.clock() - last > parse_duration(max_age)

    async def _handle(self, gate_id: str, cred: Credential, reader: Reader | None) -> dict[str, Any]:
        engine = self.engine
        if engine is None:
            return {"error": "not running"}
        t0 = time.perf_counter()
        now = self.clock()
        pending = engine.decide(gate_id, cred, now)
        if (
            pending.decision.reason == Reason.UNKNOWN_CARD
            and cred.kind == CredentialKind.CARD
            and self.link is not None
            and self.config.lookup_unknown_cards
        ):
            # a marketplace member who booked a minute ago: ask, but never wait long
            try:
                found = await self.link.lookup(cred.typed.key if cred.typed is not None else cred.value)
            except Exception:
                found = False
            if found:
                pending = engine.decide(gate_id, cred, self.clock())
        pending = self._shell_checks(pending)
        decided = time.perf_counter()
        self.metrics.decision_seconds.observe(decided - t0)
        # Between a grant and its commit the tap waits for the turnstile (seconds). A second
        # tap of the same member or QR token decided meanwhile (a cloned card at another
        # gate, one QR code shown at two readers) would not see the first one's passage or
        # used token: it waits for the first to be committed and is decided afresh.
        while busy := self._holders(pending):
            await asyncio.wait(busy)
            pending = self._shell_checks(engine.decide(gate_id, cred, self.clock()))
        hold = self._hold(pending)
        try:
            passed = False
            d = pending.decision
            if d.granted:
                if reader is not None:
                    with contextlib.suppress(Exception):
                        await reader.feedback(True, pending.message)
                ctl = self.controllers.get(gate_id)
                if ctl is None:
                    passed = True  # no lock and no sensor: commit on grant
                else:
                    try:
                        passed = await ctl.grant()
                    except GrantRefused as refused:
                        if refused.reason == "fire_alarm" and d.reason == Reason.EXIT and ctl.cfg.mode is DoorMode.fail_safe:
                            passed = True  # evacuation: the way out is held open, let them go
                        else:
                            pending = engine.refuse(pending, Reason.LOCKDOWN)
                    except OutputFault:
                        pending = engine.refuse(pending, Reason.HARDWARE_FAULT)
            committed = engine.commit(pending, passed=passed, now=self.clock())
        finally:
            self._release(hold)
        d = pending.decision
        if not d.granted and reader is not None:
            with contextlib.suppress(Exception):
                await reader.feedback(False, pending.message)
        self.metrics.taps.labels(gate_id, "granted" if d.granted else "denied", d.reason.value).inc()
        log.info(
            "tap",
            gate=gate_id,
            credential=logs.mask(cred.value),
            kind=cred.kind.value,
            member=d.member,
            decision="granted" if d.granted else "denied",
            reason=d.reason.value,
            passed=passed,
            ms=round((decided - t0) * 1000, 3),
        )
        return self._result(pending.decision, pending.message, passed, committed.events)

    @staticmethod
    def _tap_keys(pending: PendingTap) -> list[str]:
        if not pending.decision.granted:
            return []
        keys = [f"member:{pending.decision.member}"] if pending.decision.member else []
        if pending.qr_token is not None:
            keys.append(f"qr:{pending.qr_token[0]}")
        return keys

    def _holders(self, pending: PendingTap) -> list[asyncio.Future[None]]:
        return [f for k in self._tap_keys(pending) if (f := self._taps_pending.get(k)) is not None]

    def _hold(self, pending: PendingTap) -> tuple[list[str], asyncio.Future[None]]:
        keys = self._tap_keys(pending)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for k in keys:
            self._taps_pending[k] = fut
        return keys, fut

    def _release(self, hold: tuple[list[str], asyncio.Future[None]]) -> None:
        keys, fut = hold
        for k in keys:
            if self._taps_pending.get(k) is fut:
                del self._taps_pending[k]
        if not fut.done():
            fut.set_result(None)

    @staticmethod
    def _result(d: Decision, message: str, passed: bool, events: list[Event]) -> dict[str, Any]:
        return {
            "decision": "granted" if d.granted else "denied",
            "reason": d.reason.value,
            "member": d.member,
            "booking": d.booking,
            "pass": d.pass_id,
            "passed": passed,
            "message": message,
            "seq": [e["seq"] for e in events],
        }

    async def override(self, gate_id: str, operator: str, reason: str) -> dict[str, Any]:
        assert self.engine is not None
        self.engine.gate(gate_id)  # unknown gate: raise before touching anything
        ctl = self.controllers.get(gate_id)
        passed = True
        if ctl is not None:
            try:
                passed = await ctl.open_once()
            except OutputFault:
                return {"error": "hardware_fault", "message": "The gate's relay does not answer"}
        decision, committed = self.engine.override(gate_id, operator, reason, self.clock(), passed=passed)
        log.info("override", gate=gate_id, operator=operator, reason=reason, passed=passed)
        return self._result(decision, "Opened by the front desk", passed, committed.events)

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
        assert self.store is not None
        self.lockdown = on
        for ctl in self.controllers.values():
            await ctl.set_lockdown(on)
        self.store.emit("lockdown", self.clock(), active=on, operator=operator)
        self.store.audit(self.clock(), operator, "lockdown" if on else "release", {})
        log.warning("lockdown" if on else "lockdown_released", operator=operator)

    async def emergency_release(self, operator: str) -> None:
        """Every fail-safe door released, as for a fire alarm, by an admin's decision."""
        assert self.store is not None
        await self._set_fire_alarm(True, source=operator)
        self.store.audit(self.clock(), operator, "emergency_release", {})

    async def end_emergency_release(self, operator: str) -> None:
        """Back to normal after an emergency release (not while the fire input is active)."""
        assert self.store is not None
        if self._fire_input_active:
            raise RuntimeError("the fire-alarm input is still active")
        await self._set_fire_alarm(False, source=operator)
        self.store.audit(self.clock(), operator, "emergency_restore", {})

    async def _set_fire_alarm(self, on: bool, source: str) -> None:
        assert self.store is not None
        self.fire_alarm = on
        for ctl in self.controllers.values():
            await ctl.set_fire_alarm(on)
        self.store.emit("fire_alarm", self.clock(), active=on, source=source)

    async def _watch_fire_alarm(self) -> None:
        from drivers.outputs.gate import FireAlarmMonitor

        assert self.config.fire_alarm is not None

        async def changed(active: bool) -> None:
            self._fire_input_active = active
            await self._set_fire_alarm(active, source="input")

        monitor = FireAlarmMonitor(self.config.fire_alarm, on_change=changed)
        await monitor.start()
        try:
            await asyncio.Event().wait()  # until cancelled at shutdown
        finally:
            await monitor.stop()

    async def _on_alarm(self, gate_id: str, kind: str, detail: str) -> None:
        if kind.startswith("relay_"):
            self.metrics.relay_up.labels(gate_id).set(1 if kind == "relay_online" else 0)
            previous = self._relay_state.get(gate_id)
            self._relay_state[gate_id] = kind
            if kind == "relay_online" and previous in (None, "relay_online"):
                return  # coming up as expected is not news; coming back after a fault is
        self.metrics.alarms.labels(gate_id, kind).inc()
        if self.store is not None:
            self.store.emit("alarm", self.clock(), gate=gate_id, kind=kind, detail=detail)
        log.warning("alarm", gate=gate_id, kind=kind, detail=detail)

    def _reader_health(self, reader_id: str, health: ReaderHealth) -> None:
        """A reader went offline, came back or refuses us: an event like a relay's (the
        first time it comes up is not news)."""
        previous = self._reader_state.get(reader_id)
        self._reader_state[reader_id] = health
        self.metrics.reader_up.labels(reader_id).set(1 if health == ReaderHealth.ONLINE else 0)
        if previous is None and health == ReaderHealth.ONLINE:
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
                with contextlib.suppress(Exception):
                    listener(ev)

    # -- time-driven work and health --------------------------------------------------

    async def _scheduler(self) -> None:
        while True:
            try:
                if self.engine is not None:
                    self.engine.run_due(self.clock())
                self._update_gauges()
            except Exception:
                log.exception("scheduler_failed")
            await asyncio.sleep(SCHEDULER_INTERVAL)

    def _update_gauges(self) -> None:
        if self.store is None:
            return
        self.metrics.outbox_depth.set(self.store.outbox_depth())
        last = self.store.last_sync_at()
        if last is not None:
            self.metrics.last_sync.set(last.timestamp())
        for rid, (_, r) in self.readers.items():
            self.metrics.reader_up.labels(rid).set(1 if r.health == ReaderHealth.ONLINE else 0)
        for gid, ctl in self.controllers.items():
            self.metrics.relay_up.labels(gid).set(1 if ctl.output.health == OutputHealth.online else 0)
        self.metrics.broker_up.set(1 if self.link is not None and getattr(self.link, "connected", False) else 0)

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        while True:
            sdnotify.watchdog()  # from the event loop: a stuck loop stops the pings
            await asyncio.sleep(interval)

    def _link_health(self) -> dict[str, Any]:
        """What the periodic MQTT health message says about this daemon's devices."""
        return {
            "readers": {rid: r.health.value for rid, (_, r) in self.readers.items()},
            "outputs": {gid: ctl.output.health.value for gid, ctl in self.controllers.items()},
            "lockdown": self.lockdown,
            "fire_alarm": self.fire_alarm,
        }

    def health(self) -> dict[str, Any]:
        store = self.store
        last = store.last_sync_at() if store else None
        return {
            "site": self.config.site.id,
            "daemon": self.config.daemon_id,
            "ready": self.ready,
            "lockdown": self.lockdown,
            "fire_alarm": self.fire_alarm,
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
            "outbox_depth": store.outbox_depth() if store else None,
            "last_sync": last.isoformat() if last else None,
            "cache_stale": self._cache_stale() if store else None,
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
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload_refused", problems=[f"{ln}:{k}: {m}" for ln, k, m in e.problems])
            sdnotify.status("reload refused: configuration invalid; running with the previous one")
            return False
        sdnotify.reloading()
        assert self.store is not None
        old = self.config
        self.config = new
        # rules parameters swap atomically: a tap decided after this line uses the new ones
        self.engine = self._engine(new, self.store)
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
            task.cancel()
            await asyncio.wait([task])


def run(config_path: str) -> int:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        for line, key, msg in e.problems:
            print(f"{e.path}:{line or '?'}: {key}: {msg}", flush=True)
        return 2
    logs.setup(config.logging.format, config.logging.level)
    daemon = Daemon(config, config_path)
    try:
        asyncio.run(daemon.run())
    except KeyboardInterrupt:
        pass
    return 0


__all__ = ["Daemon", "Direction", "run"]
