"""What people may ask of the running daemon: the operator API.

`OperatorApi` is the whole surface the console (gated/console/) and the control socket
(gated/control.py) use: the configuration and the clock, the store for reads (through
sync.store.read_models), health, the live event stream, and the actions — open once, check in,
an injected tap (control socket only), attendance, points, card enrolment, a member's
photo, a relay by hand, lockdown and emergency release, the clock confirmed by a person. Neither front end imports the other; both are
handed an `OperatorApi` and only render what it answers.

`DaemonOperatorApi` is the daemon's implementation (after Home Assistant's coordinator:
the daemon is the one owner of I/O and state). Every action is recorded and on disk
(`Store.flushed`) before its answer: a desk worker told "done" is never told so about
something a power cut would take back. A record whose commit took effect but whose flush
failed (a storage fault, told to the storage watch as a tap's is) is answered `Done` with
`durable` False: done, not yet safe on disk — never "not done" for something done, which
the desk would do again.

The desk's actions take the page's request (`request`, sync/store/desk_requests.py) into
the transaction of the record they produce — for open once and check-in, `begun` on disk
before the relay is pulsed — so that a retry after a lost answer, a restart between,
never does it twice (gated/console/once.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from drivers.outputs.modbus import OutputFault
from gated import sdnotify, status
from rules.credential import Credential
from sync.store.faults import STORAGE_ERRORS

if TYPE_CHECKING:
    from gated.config import Config
    from gated.daemon import Daemon
    from gated.safety import Safety
    from gated.taps import TapPath
    from sync.store import Committed, Event, Store
    from sync.store.desk_requests import DeskRequest

log = structlog.get_logger("gated.operator")

Listener = Callable[[dict[str, Any]], None]

MAX_REASON = 500  # a reason is a sentence for the audit log, not a document


class ActionRefused(Exception):
    """The daemon will not do this now; `message` says why in the desk's words."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True, slots=True)
class Done:
    """A record the store committed (attendance, points, a card, a photo): its events, and
    whether they are on disk. `durable` False: the commit took effect — the replica has it,
    the outbox sends it — but its flush failed (a storage fault, said in the gate's status):
    a power cut before the disk works again could take it back. It is done all the same:
    answered as done, never to be done again."""

    committed: Committed
    durable: bool = True

    @property
    def events(self) -> list[Event]:
        return self.committed.events


def clean_reason(reason: str | None, *, required: bool) -> str | None:
    """A reason as the audit log keeps it: trimmed, bounded, one line."""
    text = " ".join((reason or "").split())
    if not text:
        if required:
            raise ActionRefused("say why (a reason is recorded with it)", 400)
        return None
    if len(text) > MAX_REASON:
        raise ActionRefused(f"a reason has at most {MAX_REASON} characters", 400)
    return text


class OperatorApi(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def ready(self) -> bool: ...

    @property
    def store(self) -> Store | None:
        """For reads only (sync.store.read_models and the store's domain reads); None when stopped."""

    @property
    def lockdown(self) -> bool: ...

    @property
    def emergency(self) -> bool: ...

    @property
    def not_durable(self) -> list[str]:
        """Safety switches in force but not yet stored (a storage fault): a restart now
        would forget them; written when the store works again."""

    def now(self) -> datetime: ...

    @property
    def cache_stale(self) -> bool:
        """No sync for longer than `stale_cache.max_age`: the gate applies
        `stale_cache.policy` to entries (rules.admission)."""

    def health(self) -> dict[str, Any]: ...

    def subscribe(self, listener: Listener) -> None: ...

    def unsubscribe(self, listener: Listener) -> None: ...

    async def open_once(
        self, gate_id: str, operator: str, reason: str, *, request: DeskRequest | None = None,
    ) -> dict[str, Any]: ...

    async def check_in(
        self, gate_id: str, member_id: str, operator: str, reason: str, *, booking_id: str | None = None,
        pass_id: str | None = None, request: DeskRequest | None = None,
    ) -> dict[str, Any]: ...

    async def tap(self, gate_id: str, credential: Credential) -> dict[str, Any]: ...

    async def mark_attended(
        self, booking_id: str, operator: str, *, refund: bool, request: DeskRequest | None = None,
    ) -> Done: ...

    async def adjust_points(
        self, member_id: str, points: int, operator: str, reason: str, *, request: DeskRequest | None = None,
    ) -> Done: ...

    async def enrol_card(self, card: str, member_id: str, operator: str) -> Done: ...

    async def set_member_photo(self, member_id: str, jpeg: bytes, operator: str) -> Done:
        """A photo the desk took of the member (sync/photos.py): shown beside their taps,
        sent to the central system. ActionRefused (400) when the bytes are not a JPEG
        within the bound."""

    async def relay_by_hand(self, gate_id: str, action: str, seconds: float | None, operator: str) -> dict[str, Any]:
        """An installer's hand on a gate's relay (`gated relay` while the daemon runs)."""

    async def set_lockdown(self, on: bool, operator: str, reason: str | None) -> None:
        """Every entrance locked (or back to normal); the reason is required to lock."""

    async def set_emergency(self, on: bool, operator: str, reason: str | None) -> None:
        """Every fail-safe door released (or back to normal); the reason is required to
        release."""

    async def confirm_clock(self, operator: str) -> dict[str, Any]:
        """A person who checked the time says the wall clock is right (`gated clock
        confirm`): no-shows, fees and credits may act at it (rules/clock.py, `confirm`)."""

    def audit(self, operator: str, action: str, detail: dict[str, Any]) -> None:
        """An audit row for something that is not an action on the site (logins)."""


class DaemonOperatorApi:
    """The running daemon's operator API."""

    def __init__(self, daemon: Daemon):
        self._d = daemon

    # -- reads -----------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._d.config

    @property
    def ready(self) -> bool:
        return self._d.ready

    @property
    def store(self) -> Store | None:
        return self._d.store

    @property
    def lockdown(self) -> bool:
        return self._d.lockdown

    @property
    def emergency(self) -> bool:
        return self._d.fire_alarm

    @property
    def not_durable(self) -> list[str]:
        safety = self._d.safety
        return [] if safety is None else list(safety.as_dict()["not_durable"])

    def now(self) -> datetime:
        return self._d.clock()

    @property
    def cache_stale(self) -> bool:
        return self._d.store is not None and self._d.cache_stale()

    def health(self) -> dict[str, Any]:
        return self._d.health()

    def subscribe(self, listener: Listener) -> None:
        self._d.feed_listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._d.feed_listeners:
            self._d.feed_listeners.remove(listener)

    # -- what the actions need -------------------------------------------------------------

    def _store(self) -> Store:
        if self._d.store is None:
            raise ActionRefused("the daemon is not running", 503)
        return self._d.store

    def _taps(self, gate_id: str) -> TapPath:
        if self._d.taps is None:
            raise ActionRefused("the daemon is not running", 503)
        if gate_id not in {g.id for g in self._d.config.gates}:
            raise ActionRefused("no such gate", 404)
        return self._d.taps

    def _safety(self) -> Safety:
        if self._d.safety is None:
            raise ActionRefused("the daemon is not running", 503)
        return self._d.safety

    def _failed(self, error: BaseException, what: str) -> None:
        """A storage fault met by a desk action: the storage watch is told (the gate's
        status, the alarm, the probe that ends it), as for a tap (TapPath._on_disk)."""
        if self._d.storage is not None:
            self._d.storage.failed(error, what)

    async def _durable(self, what: str, commit: Callable[[], Committed]) -> Done:
        """The commit, and the answer after it is on disk. A failing commit raises (nothing
        was done); a failing flush does not: the commit took effect (`Done.durable` False)."""
        try:
            committed = commit()
        except STORAGE_ERRORS as e:
            self._failed(e, what)
            raise
        try:
            await self._store().flushed()
        except OSError as e:
            self._failed(e, what)
            log.error("action_not_durable", what=what, seq=[ev["seq"] for ev in committed.events], error=str(e))
            return Done(committed, durable=False)
        return Done(committed)

    # -- actions at a gate -----------------------------------------------------------------

    async def open_once(
        self, gate_id: str, operator: str, reason: str, *, request: DeskRequest | None = None,
    ) -> dict[str, Any]:
        return await self._taps(gate_id).override(gate_id, operator, reason, request=request)

    async def check_in(
        self, gate_id: str, member_id: str, operator: str, reason: str, *, booking_id: str | None = None,
        pass_id: str | None = None, request: DeskRequest | None = None,
    ) -> dict[str, Any]:
        """The desk checks a member in by hand: the same rules, intent, relay and ledger as
        a tap (gated/taps.py)."""
        return await self._taps(gate_id).check_in(
            gate_id, member_id, operator, reason, booking_id=booking_id, pass_id=pass_id, request=request
        )

    async def tap(self, gate_id: str, credential: Credential) -> dict[str, Any]:
        self._taps(gate_id)
        return await self._d.handle_credential(gate_id, credential)

    async def relay_by_hand(self, gate_id: str, action: str, seconds: float | None, operator: str) -> dict[str, Any]:
        """`gated relay` while running: audited, and an event, like an override."""
        store = self._store()
        ctl = self._d.controllers.get(gate_id)
        if ctl is None:
            return {"error": f"gate {gate_id!r} has no relay"}
        try:
            await ctl.by_hand(action, seconds)
        except OutputFault as e:
            return {"error": "hardware_fault", "message": str(e)}
        now = self._d.clock()
        store.emit("relay_by_hand", now, gate=gate_id, action=action, operator=operator)
        store.audit(now, operator, f"relay_{action}", {"gate": gate_id})
        await store.flushed()
        log.warning("relay_by_hand", gate=gate_id, action=action, operator=operator)
        return {"gate": gate_id, "relay": action}

    # -- records ---------------------------------------------------------------------------

    async def mark_attended(
        self, booking_id: str, operator: str, *, refund: bool, request: DeskRequest | None = None,
    ) -> Done:
        if self._d.engine is None:
            raise ActionRefused("the daemon is not running", 503)
        now = self._d.clock()
        # who is not heard up to now: a walk-in charge not found meanwhile is waited for
        waiting = self._d.knowledge.unheard(now) if refund else []
        engine = self._d.engine
        return await self._durable("attendance", lambda: engine.mark_attended(
            booking_id, operator, refund=refund, now=now, waiting=waiting, request=request))

    async def adjust_points(
        self, member_id: str, points: int, operator: str, reason: str, *, request: DeskRequest | None = None,
    ) -> Done:
        engine = self._d.engine
        if engine is None:
            raise ActionRefused("the daemon is not running", 503)
        return await self._durable("points", lambda: engine.adjust_points(
            member_id, points, operator, reason, self._d.clock(), request))

    async def enrol_card(self, card: str, member_id: str, operator: str) -> Done:
        store = self._store()
        return await self._durable("card", lambda: store.enrol_card(card, member_id, operator, self._d.clock()))

    async def set_member_photo(self, member_id: str, jpeg: bytes, operator: str) -> Done:
        store = self._store()
        if store.member(member_id) is None:
            raise ActionRefused("no such member", 404)

        def commit() -> Committed:
            try:
                return store.set_member_photo(member_id, jpeg, operator, self._d.clock())
            except ValueError as e:
                raise ActionRefused(f"not a photo: {e}", 400) from None

        return await self._durable("photo", commit)

    def audit(self, operator: str, action: str, detail: dict[str, Any]) -> None:
        if self._d.store is not None:
            self._d.store.audit(self._d.clock(), operator, action, detail)

    # -- the site's safety -----------------------------------------------------------------

    async def set_lockdown(self, on: bool, operator: str, reason: str | None) -> None:
        text = clean_reason(reason, required=on)
        await self._safety().set_lockdown(on, operator, text)
        sdnotify.status(status.status_line(self._d))

    async def set_emergency(self, on: bool, operator: str, reason: str | None) -> None:
        text = clean_reason(reason, required=on)
        try:
            await self._safety().set_emergency(on, operator, text)
        except RuntimeError as e:  # the building's fire input still says fire
            raise ActionRefused(str(e)) from e
        sdnotify.status(status.status_line(self._d))

    # -- the clock -------------------------------------------------------------------------

    async def confirm_clock(self, operator: str) -> dict[str, Any]:
        """Audited; refused for a clock behind the last trusted time (only NTP sets it back)
        and where the daemon's clock is not the wall clock (the simulator's, a test's)."""
        store = self._store()
        guard = self._d.clock_guard
        if guard is None:
            raise ActionRefused("this daemon does not run on the wall clock (a simulated clock): nothing to confirm")
        was = guard.as_dict()
        try:
            wall = guard.confirm()
        except ValueError as e:
            raise ActionRefused(str(e)) from None
        store.audit(wall, operator, "clock_confirm", {
            "wall": wall.isoformat(), "was": was["state"], "was_confirmed": was["confirmed"],
            "synchronised": was["synchronised"]})
        await store.flushed()
        log.warning("clock_confirmed", operator=operator, wall=wall.isoformat(), was=was["state"],
                    was_confirmed=was["confirmed"])
        sdnotify.status(status.status_line(self._d))
        return {"clock": guard.as_dict()}


__all__ = ["ActionRefused", "DaemonOperatorApi", "Done", "Listener", "OperatorApi", "clean_reason"]
