"""What the console and the control socket may ask of the daemon, and nothing more.

`ConsoleBackend` is the whole surface: the configuration and the clock, the store for
reads (through sync.read_models), health, the live event stream, and the desk's actions —
open once, check in, tap (control socket only), attendance, points, card enrolment,
lockdown and emergency release. `DaemonBackend` adapts a running `Daemon` to it; tests may
give the console anything else that fits (the daemon is one coordinator that owns the I/O,
the console only reads it and asks it to act).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from rules.credential import Credential

if TYPE_CHECKING:
    from gated.config import Config
    from gated.daemon import Daemon
    from sync.store import Committed, Store

Listener = Callable[[dict[str, Any]], None]


class ActionRefused(Exception):
    """The daemon will not do this now; `message` says why in the desk's words."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.message = message
        self.status = status


class ConsoleBackend(Protocol):
    @property
    def config(self) -> Config: ...

    @property
    def ready(self) -> bool: ...

    @property
    def store(self) -> Store | None:
        """For reads only (sync.read_models and the store's domain reads); None when stopped."""

    @property
    def lockdown(self) -> bool: ...

    @property
    def emergency(self) -> bool: ...

    def now(self) -> datetime: ...

    def health(self) -> dict[str, Any]: ...

    def subscribe(self, listener: Listener) -> None: ...

    def unsubscribe(self, listener: Listener) -> None: ...

    async def open_once(self, gate_id: str, operator: str, reason: str) -> dict[str, Any]: ...

    async def check_in(
        self, gate_id: str, member_id: str, operator: str, reason: str, *, booking_id: str | None = None,
        pass_id: str | None = None,
    ) -> dict[str, Any]: ...

    async def tap(self, gate_id: str, credential: Credential) -> dict[str, Any]: ...

    def mark_attended(self, booking_id: str, operator: str, *, refund: bool) -> Committed: ...

    def adjust_points(self, member_id: str, points: int, operator: str, reason: str) -> Committed: ...

    def enrol_card(self, card: str, member_id: str, operator: str) -> Committed: ...

    async def set_lockdown(self, on: bool, operator: str) -> None: ...

    async def relay_by_hand(self, gate_id: str, action: str, seconds: float | None, operator: str) -> dict[str, Any]:
        """An installer's hand on a gate's relay (`gated relay` while the daemon runs)."""

    async def set_emergency(self, on: bool, operator: str) -> None: ...

    def audit(self, operator: str, action: str, detail: dict[str, Any]) -> None:
        """An audit row for something that is not an action on the site (logins)."""


class DaemonBackend:
    """The running daemon as a ConsoleBackend."""

    def __init__(self, daemon: Daemon):
        self._d = daemon

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

    def now(self) -> datetime:
        return self._d.clock()

    def health(self) -> dict[str, Any]:
        return self._d.health()

    def subscribe(self, listener: Listener) -> None:
        self._d.feed_listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._d.feed_listeners:
            self._d.feed_listeners.remove(listener)

    def _known_gate(self, gate_id: str) -> None:
        if gate_id not in {g.id for g in self._d.config.gates}:
            raise ActionRefused("no such gate", 404)

    async def open_once(self, gate_id: str, operator: str, reason: str) -> dict[str, Any]:
        self._known_gate(gate_id)
        return await self._d.override(gate_id, operator, reason)

    async def check_in(
        self, gate_id: str, member_id: str, operator: str, reason: str, *, booking_id: str | None = None,
        pass_id: str | None = None,
    ) -> dict[str, Any]:
        self._known_gate(gate_id)
        return await self._d.check_in(gate_id, member_id, operator, reason, booking_id=booking_id, pass_id=pass_id)

    async def tap(self, gate_id: str, credential: Credential) -> dict[str, Any]:
        self._known_gate(gate_id)
        return await self._d.handle_credential(gate_id, credential)

    def _engine(self) -> Any:
        if self._d.engine is None:
            raise ActionRefused("the daemon is not running", 503)
        return self._d.engine

    def mark_attended(self, booking_id: str, operator: str, *, refund: bool) -> Committed:
        committed: Committed = self._engine().mark_attended(booking_id, operator, refund=refund, now=self._d.clock())
        return committed

    def adjust_points(self, member_id: str, points: int, operator: str, reason: str) -> Committed:
        committed: Committed = self._engine().adjust_points(member_id, points, operator, reason, self._d.clock())
        return committed

    def enrol_card(self, card: str, member_id: str, operator: str) -> Committed:
        store = self._d.store
        if store is None:
            raise ActionRefused("the daemon is not running", 503)
        return store.enrol_card(card, member_id, operator, self._d.clock())

    async def set_lockdown(self, on: bool, operator: str) -> None:
        await self._d.set_lockdown(on, operator)

    async def relay_by_hand(self, gate_id: str, action: str, seconds: float | None, operator: str) -> dict[str, Any]:
        return await self._d.relay_by_hand(gate_id, action, seconds, operator)

    async def set_emergency(self, on: bool, operator: str) -> None:
        if on:
            await self._d.emergency_release(operator)
            return
        try:
            await self._d.end_emergency_release(operator)
        except RuntimeError as e:  # the building's fire input still says fire
            raise ActionRefused(str(e)) from e

    def audit(self, operator: str, action: str, detail: dict[str, Any]) -> None:
        if self._d.store is not None:
            self._d.store.audit(self._d.clock(), operator, action, detail)


__all__ = ["ActionRefused", "ConsoleBackend", "DaemonBackend", "Listener"]
