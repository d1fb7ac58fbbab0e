"""The front-desk console as a Starlette app: routes, middleware, error handling.

The modules by concern (what the console may ask of the daemon is gated/operator.py's
`OperatorApi`): `auth` (sessions as middleware, the role guard), `login`, `pages`, `api`,
`desk_api` (Needs attention, alarm acknowledgements, photos), `exports` (CSV), `display`
(the member-facing gate screen), `hub` (the live feed), `views`, `attention` and `alarms`
(read models shaped for the pages; the alarm board), `security` (sessions, login limits,
headers), `server` (uvicorn in the daemon's loop). See docs/console.md for the routes and
the security model.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from gated.console import api, desk_api, display, exports, login, pages
from gated.console.auth import SessionAuth
from gated.console.state import Console, console_of
from gated.console.templates import STATIC
from gated.console.views import StoreUnavailable
from gated.operator import ActionRefused

log = structlog.get_logger("gated.console")

MAX_BODY = 16 * 1024


class LiveTrustedHosts(TrustedHostMiddleware):
    """Starlette's Host check (DNS rebinding), with the names read from the live
    configuration at each request: a reload that adds a name takes effect at once."""

    def __init__(self, app: ASGIApp, console: Console):
        super().__init__(app, allowed_hosts=console.cfg.allowed_hosts(), www_redirect=False)
        self.console = console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.allowed_hosts = [h.lower() for h in self.console.cfg.allowed_hosts()]
        await super().__call__(scope, receive, send)


async def healthz(request: Request) -> Response:
    ready = console_of(request).backend.ready
    return JSONResponse({"status": "ok" if ready else "starting"}, status_code=200 if ready else 503)


def _routes() -> list[Route | Mount]:
    write = ["POST"]
    return [
        Route("/healthz", healthz),
        Route("/login", login.login_form, methods=["GET"]),
        Route("/login", login.login, methods=write),
        Route("/logout", login.logout, methods=write),
        *(Route(path, handler) for path, handler in pages.ROUTES.items()),
        Route("/audit.csv", exports.audit_csv),
        Route("/reports/loyalty.csv", exports.loyalty_csv),
        Route("/display/{display_id}", display.display_page),
        Route("/display/{display_id}/events", display.display_events),
        Route("/events", api.events),
        Route("/api/me", api.me),
        Route("/api/health", api.health),
        Route("/api/feed", api.feed),
        Route("/api/occupancy", api.occupancy),
        Route("/api/denials", desk_api.denials),
        Route("/api/denials/dismiss", desk_api.dismiss_denials, methods=write),
        Route("/api/unknown-cards", desk_api.unknown_cards),
        Route("/api/alarms/ack", desk_api.acknowledge_alarm, methods=write),
        Route("/api/members", api.members),
        Route("/api/members/{member_id}", api.member),
        Route("/api/members/{member_id}/photo", desk_api.member_photo, methods=["GET"]),
        Route("/api/members/{member_id}/photo", desk_api.take_photo, methods=write),
        Route("/api/members/{member_id}/check-in", api.check_in, methods=write),
        Route("/api/members/{member_id}/points", api.points, methods=write),
        Route("/api/members/{member_id}/cards", api.enrol_card, methods=write),
        Route("/api/classes", api.classes),
        Route("/api/audit", api.audit),
        Route("/api/reports/loyalty", api.loyalty_report),
        Route("/api/gates/{gate_id}/open", api.open_gate, methods=write),
        Route("/api/bookings/{booking_id}/attend", api.attend, methods=write),
        Route("/api/lockdown", api.lockdown, methods=write),
        Route("/api/emergency", api.emergency, methods=write),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, api.HttpError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ActionRefused)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _unavailable(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": "the daemon is not running"}, status_code=503)


async def _storage_fault(request: Request, exc: Exception) -> Response:
    log.error("console_storage_fault", path=request.url.path, error=str(exc))
    return JSONResponse({"error": "the gate cannot record this now (a storage fault: see the gate's status)"},
                        status_code=503)


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("Not found", status_code=404)


def _auth_error(conn: HTTPConnection, exc: Exception) -> Response:
    return JSONResponse({"error": "login required"}, status_code=401)


def build_app(console: Console) -> Starlette:
    handlers: dict[Any, Any] = {
        api.HttpError: _http_error,
        ActionRefused: _refused,
        StoreUnavailable: _unavailable,
        sqlite3.Error: _storage_fault,
        OSError: _storage_fault,
        404: _not_found,
    }
    app = Starlette(
        routes=_routes(),
        exception_handlers=handlers,
        middleware=[
            Middleware(LiveTrustedHosts, console=console),
            Middleware(AuthenticationMiddleware, backend=SessionAuth(), on_error=_auth_error),
        ],
    )
    app.state.console = console
    return app


__all__ = ["MAX_BODY", "build_app"]
