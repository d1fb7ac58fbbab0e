"""The console's guards: server-side sessions, origin checks and the security headers
every response carries (login rate limits, shared with the control socket, are in
gated/login_limits.py).

Everything is in memory: a daemon restart logs everybody out, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def _decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() then refuses."""
    return text.isascii() and text.isdigit()


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

    def purge(self) -> None:
        now = self.clock()
        for k in [k for k, s in self._by_digest.items() if now >= s.expires]:
            del self._by_digest[k]

    def __len__(self) -> int:
        return len(self._by_digest)


class DeviceCookies:
    """Browsers that logged in before, remembered with a signed cookie (OWASP's "device
    cookies"): a login from such a browser is limited on a key of its own, so an attacker
    guessing a user's password elsewhere cannot lock that user out of their own desk.

    The cookie holds up to four `nonce.issued.mac` entries, one per user who logged in on
    this browser; the MAC binds the entry to the user's name (lower case) with a key kept in
    the store, so it survives restarts and is useless for any other user or site.
    """

    COOKIE = "gated_device"
    MAX_AGE = 180 * 24 * 3600
    KEEP = 4

    def __init__(self, key: bytes, clock: Callable[[], float] = time.time):
        self.key = key
        self.clock = clock

    def _mac(self, user: str, nonce: str, issued: int) -> str:
        msg = f"{user.lower()}|{nonce}|{issued}".encode()
        return hmac.new(self.key, msg, hashlib.sha256).hexdigest()[:32]

    def issue(self, user: str, cookie: str | None) -> str:
        """The cookie value after `user` logged in: theirs added, others kept."""
        nonce = secrets.token_urlsafe(9)
        issued = int(self.clock())
        entry = f"{nonce}.{issued}.{self._mac(user, nonce, issued)}"
        others = [e for e in (cookie or "").split("~")[: self.KEEP * 2] if e and self._owner_ok(e) and
                  self.device_of(user, e) is None]
        return "~".join([entry, *others][: self.KEEP])

    def _owner_ok(self, entry: str) -> bool:
        parts = entry.split(".")
        return len(parts) == 3 and _decimal(parts[1]) and self.clock() - int(parts[1]) < self.MAX_AGE

    def device_of(self, user: str, entry: str) -> str | None:
        parts = entry.split(".")
        if len(parts) != 3 or not _decimal(parts[1]) or len(entry) > 100:
            return None
        nonce, issued = parts[0], int(parts[1])
        if self.clock() - issued >= self.MAX_AGE:
            return None
        if not hmac.compare_digest(parts[2], self._mac(user, nonce, issued)):
            return None
        return nonce

    def device(self, user: str, cookie: str | None) -> str | None:
        """The id of this browser for `user`, if it logged in as that user before."""
        if not cookie or len(cookie) > 1000:
            return None
        for entry in cookie.split("~")[: self.KEEP]:
            found = self.device_of(user, entry)
            if found is not None:
                return found
        return None


def login_keys(user: str, ip: str, device: str | None) -> list[str]:
    """The limiter's keys for one console login attempt (see LoginLimiter)."""
    name = user.strip().lower()[:100]
    if device is not None:
        return [f"user:{name}|device:{device}"]
    return [f"user:{name}|untrusted", f"client:{ip}"]


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
            # the camera for the desk's "Take photo" (static/camera.js), for this origin only
            (b"permissions-policy", b"camera=(self), microphone=(), geolocation=(), payment=()"),
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
