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
from gated.console.hub import FeedHub
from gated.console.security import DeviceCookies, Sessions
from gated.console.views import DENIALS_DONE, Views
from gated.login_limits import LoginLimiter
from gated.operator import OperatorApi
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
    hub: FeedHub = field(init=False)
    # today's denials the desk has dealt with (the alert list), read once a day from the
    # audit log, where each "Done" is written
    _done: tuple[date, set[int]] | None = None

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.backend.config.console.session_minutes)
        self.devices = DeviceCookies(_device_key(self.backend))
        self.views = Views(self.backend)
        self.hub = FeedHub(self.views.feed_item)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def cfg(self) -> ConsoleConfig:
        return self.backend.config.console

    def dismissed(self) -> set[int]:
        today = self.views.today()
        if self._done is None or self._done[0] != today:
            self._done = (today, self.views.denials_done(today))
        return self._done[1]

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
