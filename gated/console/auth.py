"""Who is asking: sessions as Starlette authentication middleware, and a role guard.

`SessionAuth` turns the session cookie into `request.user` (an `Operator`) with scopes
`authenticated`, `staff` and, for admins, `admin` — read from the live configuration at
every request, so a reload that removes a user or demotes an admin takes effect at once.
`requires()` guards an endpoint: the role, and for state changes the same-origin, CSRF and
JSON checks (docs/console.md, "Security").
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable

import structlog
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gated.console.security import SESSION_COOKIE, Session, same_origin
from gated.console.state import console_of

log = structlog.get_logger("gated.console")

Endpoint = Callable[[Request], Awaitable[Response]]


class Operator(BaseUser):
    def __init__(self, name: str, role: str, session: Session, token: str):
        self.name = name
        self.role = role
        self.session = session
        self.token = token

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def csrf(self) -> str:
        return self.session.csrf


class SessionAuth(AuthenticationBackend):
    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        console = console_of(conn)
        token = conn.cookies.get(SESSION_COOKIE)
        s = console.sessions.get(token)
        if s is None or token is None:
            return None
        user = next((u for u in console.cfg.users if u.name == s.user), None)
        if user is None:  # removed from the configuration by a reload: out
            console.sessions.drop(token)
            return None
        s.role = user.role
        scopes = ["authenticated", "staff"] + (["admin"] if user.role == "admin" else [])
        return AuthCredentials(scopes), Operator(user.name, user.role, s, token)


def operator(request: Request) -> Operator:
    user = request.user
    assert isinstance(user, Operator)
    return user


def requires(role: str = "staff", *, write: bool = False, page: bool = False) -> Callable[[Endpoint], Endpoint]:
    """Only for a logged-in operator with `role`; `write`: a state change from this console's
    own pages (same origin, the session's CSRF token, a JSON body)."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            if "authenticated" not in request.auth.scopes:
                if page:
                    return RedirectResponse("/login", status_code=303)
                return JSONResponse({"error": "login required"}, status_code=401)
            user = operator(request)
            if write:
                if not same_origin(request.headers, console_of(request).scheme):
                    log.warning("console_cross_site_refused", path=request.url.path, user=user.name)
                    return JSONResponse({"error": "cross-site request refused"}, status_code=403)
                token = request.headers.get("x-csrf-token", "")
                if not hmac.compare_digest(token.encode(), user.csrf.encode()):
                    return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
                if not request.headers.get("content-type", "").startswith("application/json"):
                    return JSONResponse({"error": "JSON body expected"}, status_code=415)
            if role not in request.auth.scopes:
                return JSONResponse({"error": f"an {role} must do this"}, status_code=403)
            return await endpoint(request)

        return guarded

    return wrap


__all__ = ["Operator", "SessionAuth", "operator", "requires"]
