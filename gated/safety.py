"""Lockdown, emergency release and the fire-alarm input: the site's safety state.

What a person decided survives any restart: a lockdown or an emergency release is written
to the store when it is set and restored at start-up, before any reader is read (a kill -9,
a watchdog restart or a reboot must not silently reopen a locked-down site). Only an admin
lifts them (the console and the control socket check the role).

The fire-alarm input is the fire panel's, not a person's: it is read again at start. Its
last reading is stored too: until the input is read after a start (or while it cannot be),
that is the state `fire_alarm.on_unknown` keeps — a restart in a fire whose I/O board went
silent must not lock the fail-safe doors and let entries in. A reload keeps the state it
had until the new monitor reads. While the input cannot be read (board down, wrong
address) that is an alarm — event, status, metric, console — never silence, and
`on_unknown` says what the gate does meanwhile (rules.admission.fire_input_effect).

The doors follow a change all at once (`_each`): a board that does not answer holds up no
other door's release. What cannot be written to the store (a storage fault) stays in force
and pending (`not_durable`, in the status and the switch's answer), reported as the storage
fault it is, and is written when the store works again (the storage watch asks).

The stored state is read before the daemon opens the store (`read_stored`): the relays are
driven first, and to the state stored, so a restart never relocks a released door first.

A fire alarm or an emergency release is also an evacuation, written with its `fire_alarm`
event: from then on nobody's earlier entry counts as inside (sync/store/evacuation.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from drivers.outputs.gate import GateController
from drivers.outputs.modbus import OutputHealth
from rules.admission import FireInput, FireInputPolicy, SiteSafety, fire_input_effect
from rules.timeutil import iso_utc
from sync.store import Store, evacuation
from sync.store.db import uri
from sync.store.faults import STORAGE_ERRORS

if TYPE_CHECKING:
    from gated.storage_watch import StorageWatch

log = structlog.get_logger("gated.safety")

LOCKDOWN_KEY = "safety.lockdown"
EMERGENCY_KEY = "safety.emergency_release"
FIRE_KEY = "safety.fire_input"  # the fire input's last reading: {"active": bool, "at": ...}
# what each key is called in the status and the switches' answers
NAMES = {LOCKDOWN_KEY: "lockdown", EMERGENCY_KEY: "emergency_release", FIRE_KEY: "fire_input"}

Alarm = Callable[[str, str], Awaitable[None]]  # (kind, detail)


@dataclass(frozen=True, slots=True)
class Switch:
    """A safety state a person turned on or off, and who, and when."""

    active: bool = False
    operator: str | None = None
    at: str | None = None
    reason: str | None = None  # what the person said when they switched it

    @classmethod
    def load(cls, text: str | None) -> Switch:
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            return cls(bool(raw["active"]), raw.get("operator"), raw.get("at"), raw.get("reason"))
        except (ValueError, KeyError, TypeError):
            # unreadable: a lockdown may have been on; the safe reading is "on"
            return cls(True, "unknown (unreadable safety state)", None)


def fire_reading(text: str | None) -> bool | None:
    """The fire input's last reading as stored; None when it was never read. Unreadable:
    active (as an unreadable lockdown reads "on": nobody is locked in on a guess)."""
    if not text:
        return None
    try:
        return bool(json.loads(text)["active"])
    except (ValueError, KeyError, TypeError):
        return True


@dataclass(frozen=True, slots=True)
class StoredSafety:
    """The safety state as the store last had it (`read_stored`)."""

    lockdown: Switch = field(default_factory=Switch)
    emergency: Switch = field(default_factory=Switch)
    fire_input: bool | None = None  # the fire input's last reading; None: never read

    def site(self, fire_policy: FireInputPolicy | None) -> SiteSafety:
        """What the doors are while the fire input is not read yet; `fire_policy` None: no
        fire input configured."""
        fire = False
        if fire_policy is not None:
            fire = fire_input_effect(FireInput(active=self.fire_input, known=False), fire_policy)[0]
        return SiteSafety(fire_alarm=fire, emergency_release=self.emergency.active, lockdown=self.lockdown.active)


def read_stored(path: Path) -> StoredSafety:
    """The safety state in the store at `path`, read on a connection of its own: by the
    daemon before it opens the store (the relays are driven first) and by `gated relock`
    with no daemon. No file yet: nothing stored. sqlite3.Error when it cannot be read."""
    if not path.exists():
        return StoredSafety()
    # A file this process may not write (a read-only mount, the wrong owner): SQLite would
    # create its -shm as unwritable as the file and leave it there, and the store could not
    # recover once the file is fixed. Read it as it is on disk instead (what only the WAL of
    # a crashed daemon holds is missed: the store, once open, restores it).
    mode = "rw" if os.access(path, os.W_OK) else "ro&immutable=1"
    conn = sqlite3.connect(uri(path, mode), uri=True, timeout=2.0)
    try:
        rows = conn.execute("SELECT key, value FROM meta WHERE key IN (?, ?, ?)",
                            (LOCKDOWN_KEY, EMERGENCY_KEY, FIRE_KEY)).fetchall()
    finally:
        conn.close()
    stored = {str(k): v for k, v in rows}
    return StoredSafety(Switch.load(stored.get(LOCKDOWN_KEY)), Switch.load(stored.get(EMERGENCY_KEY)),
                        fire_reading(stored.get(FIRE_KEY)))


class Safety:
    def __init__(
        self,
        store: Store,
        controllers: Mapping[str, GateController],
        clock: Callable[[], datetime],
        alarm: Alarm,
        fire_policy: FireInputPolicy = FireInputPolicy.KEEP,
        storage: StorageWatch | None = None,
    ):
        self.store = store
        self.controllers = controllers
        self.clock = clock
        self.alarm = alarm
        self.fire_policy = fire_policy
        self.storage = storage  # told of a write that failed: the store's fault, said everywhere
        self.lockdown = Switch()
        self.emergency = Switch()
        self.fire = FireInput(active=None, known=True)
        self.fire_configured = False
        self.fire_error: str | None = None
        self._unreachable_reported = False
        self._released: tuple[bool, bool] | None = None  # what the doors were last told
        # in force but not yet on disk (a storage fault): key -> value, the latest of each
        self.not_durable: dict[str, str] = {}

    # -- what the rules need ---------------------------------------------------------------

    @property
    def fire_alarm(self) -> bool:
        return fire_input_effect(self.fire, self.fire_policy)[0]

    @property
    def input_lost(self) -> bool:
        return fire_input_effect(self.fire, self.fire_policy)[1]

    @property
    def site(self) -> SiteSafety:
        """What the rules need of it (rules.admission.plan_release)."""
        return SiteSafety(fire_alarm=self.fire_alarm, emergency_release=self.emergency.active,
                          lockdown=self.lockdown.active)

    @property
    def released(self) -> bool:
        """Fail-safe doors held open: a fire alarm (or its policy) or an emergency release."""
        return self.fire_alarm or self.emergency.active

    # -- start-up ---------------------------------------------------------------------------

    async def restore(self) -> None:
        """Take back what was decided before the restart, and the fire input's last reading
        (what `on_unknown` keeps until the input is read); the doors follow. (They were
        started in the state stored: read_stored, before the store was opened.)"""
        self.lockdown = Switch.load(self.store.meta(LOCKDOWN_KEY))
        self.emergency = Switch.load(self.store.meta(EMERGENCY_KEY))
        if self.fire_configured:
            last = fire_reading(self.store.meta(FIRE_KEY))
            self.fire = FireInput(active=last, known=False)
            if last:
                log.warning("fire_alarm_restored", policy=self.fire_policy.value,
                            detail="the fire input read active before the restart; it stands until read clear")
        if self.lockdown.active:
            log.warning("lockdown_restored", operator=self.lockdown.operator, since=self.lockdown.at)
            await self._each(lambda ctl: ctl.set_lockdown(True))
        if self.emergency.active:
            log.warning("emergency_release_restored", operator=self.emergency.operator, since=self.emergency.at)
        await self._apply_release()

    def watch_fire_input(self) -> None:
        """A fire input is configured. Until its first successful read its state is the last
        one known: at start what the store holds (restore), at a reload what the previous
        monitor read — a reload does not unlearn a fire."""
        if self.fire_configured:
            return
        self.fire_configured = True
        self.fire = FireInput(active=None, known=False)

    # -- changes --------------------------------------------------------------------------

    async def set_lockdown(self, on: bool, operator: str, reason: str | None = None) -> None:
        self.lockdown = Switch(on, operator, iso_utc(self.clock()), reason)
        # the doors first: a lockdown that cannot be written still locks
        await self._each(lambda ctl: ctl.set_lockdown(on))
        written = self._persist(LOCKDOWN_KEY, json.dumps(asdict(self.lockdown)))
        self._record("lockdown", {"active": on, "operator": operator, "reason": reason}, operator,
                     "lockdown" if on else "release")
        await self._on_disk(LOCKDOWN_KEY, written)
        log.warning("lockdown" if on else "lockdown_released", operator=operator, reason=reason)

    async def set_emergency(self, on: bool, operator: str, reason: str | None = None) -> None:
        if not on and self.fire.active and self.fire.known:
            raise RuntimeError("the fire-alarm input is still active")
        self.emergency = Switch(on, operator, iso_utc(self.clock()), reason)
        await self._apply_release()
        written = self._persist(EMERGENCY_KEY, json.dumps(asdict(self.emergency)))
        self._record(
            "fire_alarm",
            {"active": self.released, "source": operator, "emergency_release": on, "reason": reason},
            operator,
            "emergency_release" if on else "emergency_restore",
        )
        await self._on_disk(EMERGENCY_KEY, written)
        log.warning("emergency_release" if on else "emergency_release_ended", operator=operator, reason=reason)

    async def fire_input_read(self, active: bool) -> None:
        """The fire input was read and changed (or read for the first time: at start, after
        the board was unreachable, by a new monitor after a reload)."""
        was_known = self.fire.known
        same = was_known and self.fire.active == active  # a reload's new monitor: nothing new
        self.fire = FireInput(active=active, known=True)
        self.fire_error = None
        await self._apply_release()
        if same:
            return
        # the reading is what a restart keeps until the input is read again
        written = self._persist(FIRE_KEY, json.dumps({"active": active, "at": iso_utc(self.clock())}))
        self._record("fire_alarm", {"active": self.released, "source": "input", "input": active}, None, None)
        # a fire may take the power next: the evacuation is on disk before anything else
        # (lost, everyone who left by a fire exit would still be inside after the restart)
        await self._on_disk("fire_alarm", written)
        if not was_known and self._unreachable_reported:
            self._unreachable_reported = False
            await self.alarm("fire_input_online", "the fire-alarm input reads again")

    async def fire_input_health(self, health: OutputHealth, error: str | None) -> None:
        if health is OutputHealth.ONLINE:
            return  # known again only once a read succeeds (fire_input_read)
        self.fire = FireInput(active=self.fire.active, known=False)
        self.fire_error = error
        await self._apply_release()
        self._unreachable_reported = True
        await self.alarm(
            "fire_input_unreachable",
            f"the fire-alarm input cannot be read ({health.value}: {error}); policy {self.fire_policy.value}",
        )

    async def apply_to(self, ctl: GateController) -> None:
        """A controller started after start-up (a reload): the safety state holds there too."""
        await ctl.set_lockdown(self.lockdown.active)
        await ctl.set_fire_alarm(self.released, emergency=self._by_emergency)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _by_emergency(self) -> bool:
        """Released by an admin's emergency release alone (entries say so)."""
        return self.emergency.active and not self.fire_alarm

    async def _apply_release(self) -> None:
        told = (self.released, self._by_emergency)
        if told == self._released:
            return
        self._released = told
        await self._each(lambda ctl: ctl.set_fire_alarm(told[0], emergency=told[1]))

    async def _each(self, act: Callable[[GateController], Awaitable[None]]) -> None:
        """Every gate at once: one whose board does not answer (a frozen peer that takes a
        whole timeout) holds up no other door's release; its failure is its own."""
        gates = list(self.controllers.items())
        results = await asyncio.gather(*(act(ctl) for _, ctl in gates), return_exceptions=True)
        for (gate_id, _), result in zip(gates, results, strict=True):
            if isinstance(result, Exception):
                log.error("safety_not_applied", gate=gate_id, error=repr(result))

    # -- what is stored, and what is not yet -------------------------------------------------

    async def _on_disk(self, key: str, written: Mapping[str, str]) -> None:
        """What a person decided survives a power cut before they are told it is done; a fire
        alarm's evacuation, before the poller goes on. `written`: the values this flush
        makes durable (no longer pending once it is through)."""
        try:
            await self.store.flushed()
        except OSError as e:
            log.error("safety_state_not_durable", key=key, error=str(e))
            self._store_failed(e, "safety state flush")
            return
        for k, value in written.items():
            if self.not_durable.get(k) == value:  # not replaced by a newer one meanwhile
                del self.not_durable[k]

    def _persist(self, key: str, value: str) -> dict[str, str]:
        """Write `value` (and anything still pending): pending until flushed (_on_disk).
        Returns what was written; nothing when the store cannot write (then it stays
        pending, the storage watch asks for it again once the store works)."""
        self.not_durable[key] = value
        return self._write_pending()

    def _write_pending(self) -> dict[str, str]:
        pending = dict(self.not_durable)
        try:
            for key, value in pending.items():
                self.store.set_meta(key, value)
        except STORAGE_ERRORS as e:
            # in force now, but a restart would forget it: say so loudly, keep it to write
            log.error("safety_state_not_durable", pending=sorted(NAMES.get(k, k) for k in pending), error=str(e),
                      detail="in force; written when the store works again")
            self._store_failed(e, "safety state")
            return {}
        return pending

    async def write_pending(self) -> bool:
        """The storage watch, once the store works: what is in force but not on disk is
        written now. True when nothing is left pending."""
        if not self.not_durable:
            return True
        names = sorted(NAMES.get(k, k) for k in self.not_durable)
        written = self._write_pending()
        if written:
            await self._on_disk("pending", written)
        if not self.not_durable:
            log.warning("safety_state_durable", written=names, detail="written after the storage fault")
        return not self.not_durable

    def _store_failed(self, error: BaseException, where: str) -> None:
        """A safety write failed: it is the store's fault like any other (entries refused
        with storage_fault, the alarm raised), and the watch probes until it recovers."""
        if self.storage is not None:
            self.storage.failed(error, where)

    def _record(self, event: str, fields: dict[str, Any], operator: str | None, audit: str | None) -> None:
        now = self.clock()
        try:
            with self.store.transaction() as tx:
                tx.emit(event, now, **fields)
                if event == "fire_alarm" and fields.get("active"):
                    # the site is being evacuated: who is inside is no longer known (the
                    # site's other daemons learn it from this event)
                    evacuation.record(tx.conn, now)
                elif event == "fire_alarm":
                    evacuation.record_end(tx.conn, now)  # the all-clear
            if operator is not None and audit is not None:
                reason = fields.get("reason")
                self.store.audit(now, operator, audit, {"reason": reason} if reason else {})
        except STORAGE_ERRORS as e:
            log.error("safety_event_not_recorded", event=event, error=str(e), **fields)
            self._store_failed(e, "safety event")

    def as_dict(self) -> dict[str, Any]:
        return {
            "lockdown": asdict(self.lockdown),
            "emergency_release": asdict(self.emergency),
            "fire_input": None
            if not self.fire_configured
            else {
                "active": self.fire.active,
                "known": self.fire.known,
                "error": self.fire_error,
                "policy": self.fire_policy.value,
            },
            "fire_alarm": self.fire_alarm,
            "doors_released": self.released,
            # in force, not yet on disk: a restart now would forget them
            "not_durable": sorted(NAMES.get(k, k) for k in self.not_durable),
        }


__all__ = ["EMERGENCY_KEY", "FIRE_KEY", "LOCKDOWN_KEY", "Safety", "StoredSafety", "Switch", "fire_reading",
           "read_stored"]
