"""What the console keeps while it runs: sessions, login limits, the feed hub, the views.

Handlers reach it as `console_of(request)` (the Starlette app's state).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import HTTPConnection

from gated.config import ConsoleConfig
from gated.console.backend import ConsoleBackend
from gated.console.hub import FeedHub
from gated.console.security import DeviceCookies, LoginLimiter, Sessions
from gated.console.views import Views

DEVICE_KEY_META = "console_device_key"


def _device_key(backend: ConsoleBackend) -> bytes:
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
    backend: ConsoleBackend
    tls: bool = False
    sessions: Sessions = field(init=False)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)
    devices: DeviceCookies = field(init=False)
    views: Views = field(init=False)
    hub: FeedHub = field(init=False)
    # denials the desk has dealt with (the alert list); forgotten at restart
    dismissed: set[int] = field(default_factory=set)

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

    def dismiss(self, seqs: list[int]) -> None:
        self.dismissed.update(seqs)
        if len(self.dismissed) > 5000:  # bounded: the oldest are long out of today's list
            for s in sorted(self.dismissed)[:1000]:
                self.dismissed.discard(s)


def console_of(conn: HTTPConnection) -> Console:
    c: Any = conn.app.state.console
    assert isinstance(c, Console)
    return c


__all__ = ["Console", "console_of"]
