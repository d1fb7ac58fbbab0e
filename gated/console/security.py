"""The console's guards: server-side sessions, login rate limiting, origin checks and the
security headers every response carries.

Everything is in memory: a daemon restart logs everybody out, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

SESSION_COOKIE = "gated_session"
LOGIN_COOKIE = "gated_login"  # double-submit token for the login form (no session yet)
MAX_SESSIONS = 500

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def _digest(token: str) -> str:
    # only the hash of a cookie is kept: a memory dump does not hand out live sessions
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class Session:
    user: str
    role: str
    csrf: str
    created: float
    expires: float
    ip: str


class Sessions:
    """Opaque random cookies mapped to sessions that end at a fixed time after login."""

    def __init__(self, minutes: int, clock: Callable[[], float] = time.monotonic):
        self.minutes = minutes
        self.clock = clock
        self._by_digest: dict[str, Session] = {}

    def create(self, user: str, role: str, ip: str) -> tuple[str, Session]:
        self.purge()
        if len(self._by_digest) >= MAX_SESSIONS:  # drop the oldest rather than grow forever
            oldest = min(self._by_digest, key=lambda k: self._by_digest[k].created)
            del self._by_digest[oldest]
        token = secrets.token_urlsafe(32)
        now = self.clock()
        s = Session(user, role, secrets.token_urlsafe(32), now, now + self.minutes * 60, ip)
        self._by_digest[_digest(token)] = s
        return token, s

    def get(self, token: str | None) -> Session | None:
        if not token or len(token) > 200:
            return None
        key = _digest(token)
        s = self._by_digest.get(key)
        if s is None:
            return None
        if self.clock() >= s.expires:
            del self._by_digest[key]
            return None
        return s

    def drop(self, token: str | None) -> bool:
        if not token:
            return False
        return self._by_digest.pop(_digest(token), None) is not None

    def drop_user(self, user: str) -> None:
        for k in [k for k, s in self._by_digest.items() if s.user == user]:
            del self._by_digest[k]

    def purge(self) -> None:
        now = self.clock()
        for k in [k for k, s in self._by_digest.items() if now >= s.expires]:
            del self._by_digest[k]

    def __len__(self) -> int:
        return len(self._by_digest)


@dataclass(slots=True)
class _Counter:
    failures: list[float] = field(default_factory=list)
    locked_until: float = 0.0


class LoginLimiter:
    """`max_failures` failed logins within `window` seconds lock the key for `lockout` s.

    Keys are "ip:<address>" and "user:<name>": guessing one user's password from many
    addresses, or many users' from one address, both run into a lockout.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        lockout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self.clock = clock
        self._keys: dict[str, _Counter] = {}

    def retry_after(self, keys: list[str]) -> float:
        """Seconds until these keys may try again; 0 when none is locked."""
        now = self.clock()
        wait = 0.0
        for k in keys:
            c = self._keys.get(k)
            if c is not None and c.locked_until > now:
                wait = max(wait, c.locked_until - now)
        return wait

    def failure(self, keys: list[str]) -> None:
        now = self.clock()
        if len(self._keys) > 10_000:
            self._prune(now)
        for k in keys:
            c = self._keys.setdefault(k, _Counter())
            c.failures = [t for t in c.failures if now - t < self.window]
            c.failures.append(now)
            if len(c.failures) >= self.max_failures:
                c.locked_until = now + self.lockout
                c.failures.clear()

    def success(self, keys: list[str]) -> None:
        for k in keys:
            self._keys.pop(k, None)

    def _prune(self, now: float) -> None:
        for k in [
            k for k, c in self._keys.items()
            if c.locked_until <= now and all(now - t >= self.window for t in c.failures)
        ]:
            del self._keys[k]


def same_origin(headers: Any, scheme: str) -> bool:
    """A state change must come from a page of this console.

    Browsers send Origin on every POST (fetch and forms); without it the Referer must
    point here. Sec-Fetch-Site, where sent, must not say cross-site. A request that
    carries none of these is refused too: the console's own pages always send them.
    """
    host = headers.get("host")
    if not host:
        return False
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None or origin == "null":
        referer = headers.get("referer")
        if not referer or origin == "null":
            return False
        parts = urlsplit(referer)
        return bool(parts.scheme == scheme and parts.netloc == host)
    parts = urlsplit(origin)
    return bool(parts.scheme == scheme and parts.netloc == host and not parts.path.strip("/"))


class SecurityHeaders:
    """Pure ASGI middleware (streams pass through untouched, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: Any, *, tls: bool):
        self.app = app
        self.headers = [
            (b"content-security-policy", CSP.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"cross-origin-resource-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
        ]
        if tls:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers.extend(h for h in self.headers if h[0] not in present)
                if not path.startswith("/static/") and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
