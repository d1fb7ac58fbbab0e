"""What the console keeps while it runs: sessions, login limits, the feed hub, the views.

Handlers reach it as `console_of(request)` (the Starlette app's state).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import structlog
from starlette.requests import HTTPConnection

from gated.config import ConsoleConfig
from gated.console.alarms import ACK_ACTION, EVENT_TYPES, AlarmBoard, conditions
from gated.console.attention import DAY_SLACK, Attention
from gated.console.hub import FeedHub
from gated.console.once import DeskRequests
from gated.console.security import DeviceCookies, Sessions
from gated.console.views import DENIALS_DONE, Views, parse_at
from gated.login_limits import LoginLimiter
from gated.operator import OperatorApi
from sync.store import read_models as rm
from sync.store.faults import STORAGE_ERRORS

log = structlog.get_logger(__name__)

DEVICE_KEY_META = "console_device_key"


def _device_key(backend: OperatorApi) -> bytes:
    """The device-cookie key, kept in the store so remembered browsers survive restarts."""
    store = backend.store
    if store is None:
        return secrets.token_bytes(32)
    key = store.meta(DEVICE_KEY_META)
    if key is None:
        key = secrets.token_hex(32)
        store.set_meta(DEVICE_KEY_META, key)
    return bytes.fromhex(key)


@dataclass
class Console:
    backend: OperatorApi
    tls: bool = False
    sessions: Sessions = field(init=False)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    devices: DeviceCookies = field(init=False)
    views: Views = field(init=False)
    attention: Attention = field(init=False)
    alarms: AlarmBoard = field(default_factory=AlarmBoard)
    hub: FeedHub = field(init=False)
    requests: DeskRequests = field(default_factory=DeskRequests)  # the desk's actions, done once (in the ledger)
    # today's denials the desk has dealt with (the alert list), read once a day from the
    # audit log, where each "Done" is written
    _done: tuple[date, set[int]] | None = None
    _alarms_restored: bool = False

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.backend.config.console.session_minutes)
        self.devices = DeviceCookies(_device_key(self.backend))
        self.views = Views(self.backend)
        self.attention = Attention(self.views)
        self.hub = FeedHub(self._feed_line)

    def _feed_line(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Each committed event: an incident for the alarm board, a line for the feed."""
        if event.get("type") in EVENT_TYPES:
            self.alarms.incident(event, parse_at(event.get("at")) or self.views.now())
        return self.views.feed_item(event)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def cfg(self) -> ConsoleConfig:
        return self.backend.config.console

    def dismissed(self) -> set[int]:
        today = self.views.today()
        if self._done is None or self._done[0] != today:
            self._done = (today, self.attention.done_on(today))
        return self._done[1]

    def current_alarms(self, health: dict[str, Any]) -> list[dict[str, Any]]:
        """The alarm board brought up to `health`, as the pages show it (gated/console/alarms.py)."""
        if not self._alarms_restored:
            self._restore_alarms()
        now = self.views.now()
        self.alarms.update(conditions(health), now)
        return self.alarms.views(self.views.gate_names(), lambda at: self.views.local_time(at, "%H:%M:%S"))

    def _restore_alarms(self) -> None:
        """Today's incidents and acknowledgements, from the store (after a restart)."""
        v = self.views
        start, end = v.day_bounds(v.today())
        conn = v.store.conn
        for row in rm.audit_rows(conn, action=ACK_ACTION, start=start, end=end, limit=5000):
            alarm_id = row.detail.get("alarm")
            if isinstance(alarm_id, str):
                self.alarms.restore_ack(alarm_id, row.operator, row.at)
        for ev in rm.alarm_events(conn, rm.first_seq_at(conn, start - DAY_SLACK), EVENT_TYPES):
            at = parse_at(ev.get("at"))
            if at is not None and at >= start:
                self.alarms.incident(ev, at)
        self._alarms_restored = True

    def acknowledge(self, alarm_id: str, operator: str) -> dict[str, Any] | None:
        """Staff have seen the alarm: quiet it, and say who in the audit log."""
        alarm = self.alarms.acknowledge(alarm_id, operator, self.views.now())
        if alarm is None:
            return None
        detail = {"alarm": alarm.id, "kind": alarm.kind, "gate": alarm.gate, "detail": alarm.detail or None}
        try:
            self.backend.audit(operator, ACK_ACTION, detail)
        except STORAGE_ERRORS as e:  # acknowledged here all the same: the storage alarm says why
            log.warning("alarm_ack_not_saved", error=repr(e), operator=operator)
        return alarm.view(self.views.gate_names(), lambda at: self.views.local_time(at, "%H:%M:%S"))

    def dismiss(self, seqs: list[int], operator: str) -> bool:
        """Marks denials done; False when the mark could not be written (it then holds
        until the daemon restarts)."""
        done = self.dismissed()
        new = sorted(set(seqs) - done)
        done.update(new)
        if not new:
            return True
        try:
            self.backend.audit(operator, DENIALS_DONE, {"denials": new})
        except STORAGE_ERRORS as e:
            log.warning("denials_done_not_saved", error=repr(e), operator=operator)
            return False
        return True


def console_of(conn: HTTPConnection) -> Console:
    c: Any = conn.app.state.console
    assert isinstance(c, Console)
    return c


__all__ = ["Console", "console_of"]
