"""The front-desk console: a Starlette app served by uvicorn inside the daemon's event loop.

`start_console(daemon)` binds the socket, starts `uvicorn.Server.serve()` as a task of the
daemon's loop and returns a handle whose `stop()` ends the live streams and the server.
See docs/console.md for the routes, the security model and why it runs in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hmac
import io
import json
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gated.console.data import ConsoleData, dumps
from gated.console.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginLimiter,
    SecurityHeaders,
    Session,
    Sessions,
    same_origin,
)

log = structlog.get_logger("gated.console")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
HEARTBEAT = 15.0
QUEUE_MAX = 1000
MAX_BODY = 16 * 1024
REASON_MAX = 200
CONFIRM = {"lockdown": "LOCKDOWN", "release": "RELEASE", "emergency": "EMERGENCY", "restore": "RESTORE"}


# -- templates ---------------------------------------------------------------------------

_SLOT = re.compile(r"\{\{(\{?)\s*(\w+)\s*\}?\}\}")


def render(name: str, **ctx: Any) -> str:
    """`{{x}}` is replaced HTML-escaped, `{{{x}}}` raw (only for our own fragments)."""
    text = (TEMPLATES / name).read_text(encoding="utf-8")

    def sub(m: re.Match[str]) -> str:
        value = ctx.get(m.group(2), "")
        return str(value) if m.group(1) else escape(str(value), quote=True)

    return _SLOT.sub(sub, text)


# -- the live feed hub -------------------------------------------------------------------


class FeedHub:
    """Receives committed events from the daemon (synchronously, in the tap path), and
    fans them out to the SSE streams from a task of its own: the tap path only queues."""

    def __init__(self, data: ConsoleData):
        self.data = data
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=10_000)
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.closed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def listener(self, event: dict[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.inbox.put_nowait(event)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="console-feed")

    async def _run(self) -> None:
        while True:
            ev = await self.inbox.get()
            try:
                item = self.data.feed_item(ev)
            except Exception:
                log.exception("feed_item_failed", seq=ev.get("seq"))
                continue
            if item is None:
                continue
            for q in list(self.subscribers):
                try:
                    q.put_nowait(item)
                except asyncio.QueueFull:
                    # a stuck browser: end its stream; EventSource reconnects with
                    # Last-Event-ID and catches up from the store
                    self.subscribers.discard(q)
                    with contextlib.suppress(asyncio.QueueFull):
                        q.get_nowait()
                        q.put_nowait(None)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(q)

    async def close(self) -> None:
        self.closed.set()
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait([self.task])


# -- the application ---------------------------------------------------------------------


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message


Handler = Callable[[Request, Session], Awaitable[Response]]


class Console:
    def __init__(self, daemon: Any, *, tls: bool = False):
        self.daemon = daemon
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.data = ConsoleData(daemon)
        self.sessions = Sessions(daemon.config.console.session_minutes)
        self.limiter = LoginLimiter()
        self.hub = FeedHub(self.data)
        self.app = self._build()

    # -- plumbing -----------------------------------------------------------------------

    @property
    def cfg(self) -> Any:
        return self.daemon.config.console

    def _user(self, name: str) -> Any:
        return next((u for u in self.cfg.users if u.name == name), None)

    def session_of(self, request: Request) -> Session | None:
        s = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if s is None:
            return None
        user = self._user(s.user)  # removed from the config by a reload: out
        if user is None:
            self.sessions.drop(request.cookies.get(SESSION_COOKIE))
            return None
        s.role = user.role
        return s

    def _cookie(self, response: Response, name: str, value: str, max_age: int | None) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=self.tls
        )

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            s = self.session_of(request)
            if s is None:
                return RedirectResponse("/login", status_code=303)
            return await handler(request, s)

        return endpoint

    def api(
        self, handler: Handler, *, write: bool = False, role: str | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            s = self.session_of(request)
            if s is None:
                return JSONResponse({"error": "login required"}, status_code=401)
            if write:
                if not same_origin(request.headers, self.scheme):
                    log.warning("console_cross_site_refused", path=request.url.path, user=s.user)
                    return JSONResponse({"error": "cross-site request refused"}, status_code=403)
                token = request.headers.get("x-csrf-token", "")
                if not hmac.compare_digest(token.encode(), s.csrf.encode()):
                    return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
                if not request.headers.get("content-type", "").startswith("application/json"):
                    return JSONResponse({"error": "JSON body expected"}, status_code=415)
            if role == "admin" and s.role != "admin":
                return JSONResponse({"error": "an admin must do this"}, status_code=403)
            try:
                return await handler(request, s)
            except HttpError as e:
                return JSONResponse({"error": e.message}, status_code=e.status)

        return endpoint

    async def body(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise HttpError(413, "request too large")
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise HttpError(400, "invalid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "a JSON object expected")
        return data

    @staticmethod
    def _reason(data: dict[str, Any], required: bool = True) -> str:
        reason = data.get("reason")
        reason = reason.strip() if isinstance(reason, str) else ""
        if required and not reason:
            raise HttpError(400, "a reason is required")
        if len(reason) > REASON_MAX:
            raise HttpError(400, f"the reason is longer than {REASON_MAX} characters")
        return reason

    @staticmethod
    def json(data: Any, status: int = 200) -> Response:
        return Response(dumps(data), status_code=status, media_type="application/json")

    def _shell(self, s: Session, page: str, title: str, content: str) -> Response:
        site = self.daemon.config.site
        html = render(
            "base.html",
            page=page,
            title=title,
            csrf=s.csrf,
            user=s.user,
            role=s.role,
            site=site.name or site.id,
            content=render(content),
            **{f"nav_{p}": ("page" if p == page else "false") for p in ("feed", "members", "classes", "audit")},
        )
        return Response(html, media_type="text/html; charset=utf-8")

    def _build(self) -> Starlette:
        async def healthz(request: Request) -> Response:
            ready = bool(getattr(self.daemon, "ready", False))
            return JSONResponse({"status": "ok" if ready else "starting"}, status_code=200 if ready else 503)

        routes = [
            Route("/healthz", healthz),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.page(self.feed_page)),
            Route("/members", self.page(self.members_page)),
            Route("/classes", self.page(self.classes_page)),
            Route("/audit", self.page(self.audit_page)),
            Route("/audit.csv", self.page(self.audit_csv)),
            Route("/events", self.api(self.events)),
            Route("/api/me", self.api(self.me)),
            Route("/api/health", self.api(self.health)),
            Route("/api/feed", self.api(self.feed)),
            Route("/api/members", self.api(self.members)),
            Route("/api/members/{member_id}", self.api(self.member)),
            Route("/api/classes", self.api(self.classes)),
            Route("/api/audit", self.api(self.audit)),
            Route("/api/gates/{gate_id}/open", self.api(self.open_gate, write=True), methods=["POST"]),
            Route("/api/bookings/{booking_id}/attend", self.api(self.attend, write=True), methods=["POST"]),
            Route("/api/members/{member_id}/points", self.api(self.points, write=True), methods=["POST"]),
            Route("/api/lockdown", self.api(self.lockdown, write=True, role="admin"), methods=["POST"]),
            Route("/api/emergency", self.api(self.emergency, write=True, role="admin"), methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]

        async def not_found(request: Request, exc: Exception) -> Response:
            return PlainTextResponse("Not found", status_code=404)

        app = Starlette(routes=routes, exception_handlers={404: not_found})
        return app

    # -- login --------------------------------------------------------------------------

    def _client_ip(self, request: Request) -> str:
        return request.client.host if request.client else "?"

    def _login_page(self, error: str = "", status: int = 200, headers: dict[str, str] | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        site = self.daemon.config.site
        html = render("login.html", csrf=token, error=error, site=site.name or site.id,
                      error_class="error" if error else "error hidden")
        response = Response(html, status_code=status, media_type="text/html; charset=utf-8", headers=headers)
        self._cookie(response, LOGIN_COOKIE, token, 600)
        return response

    async def login_form(self, request: Request) -> Response:
        if self.session_of(request) is not None:
            return RedirectResponse("/", status_code=303)
        return self._login_page()

    async def login(self, request: Request) -> Response:
        if not same_origin(request.headers, self.scheme):
            return PlainTextResponse("Cross-site request refused", status_code=403)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return PlainTextResponse("Request too large", status_code=413)
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        name = form.get("user", "").strip()[:100]
        password = form.get("password", "")[:1024]
        cookie_token = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie_token or not hmac.compare_digest(form.get("csrf", "").encode(), cookie_token.encode()):
            return self._login_page("The login form expired — please try again.", 403)
        ip = self._client_ip(request)
        keys = [f"ip:{ip}", f"user:{name.lower()}"]
        wait = self.limiter.retry_after(keys)
        if wait > 0:
            log.warning("console_login_locked", user=name, ip=ip)
            return self._login_page(
                f"Too many failed logins — try again in {int(wait) + 1} s.", 429, {"Retry-After": str(int(wait) + 1)}
            )
        from gated.auth import authenticate

        # argon2 takes tens of ms of CPU: off the event loop, taps keep flowing
        user = await asyncio.to_thread(authenticate, list(self.cfg.users), name, password)
        if user is None:
            self.limiter.failure(keys)
            log.warning("console_login_failed", user=name, ip=ip)
            return self._login_page("Wrong user name or password.", 401)
        self.limiter.success(keys)
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))  # no session fixation
        token, _ = self.sessions.create(user.name, user.role, ip)
        log.info("console_login", user=user.name, role=user.role, ip=ip)
        response = RedirectResponse("/", status_code=303)
        self._cookie(response, SESSION_COOKIE, token, self.cfg.session_minutes * 60)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(self, request: Request) -> Response:
        s = self.session_of(request)
        if s is not None:
            if not same_origin(request.headers, self.scheme):
                return PlainTextResponse("Cross-site request refused", status_code=403)
            raw = await request.body()
            form = {k: v[0] for k, v in parse_qs(raw[:MAX_BODY].decode("utf-8", "replace")).items()}
            token = form.get("csrf") or request.headers.get("x-csrf-token", "")
            if not hmac.compare_digest(token.encode(), s.csrf.encode()):
                return PlainTextResponse("Missing or wrong CSRF token", status_code=403)
            self.sessions.drop(request.cookies.get(SESSION_COOKIE))
            log.info("console_logout", user=s.user)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=self.tls)
        return response

    # -- pages --------------------------------------------------------------------------

    async def feed_page(self, request: Request, s: Session) -> Response:
        return self._shell(s, "feed", "Live feed", "feed.html")

    async def members_page(self, request: Request, s: Session) -> Response:
        return self._shell(s, "members", "Members", "members.html")

    async def classes_page(self, request: Request, s: Session) -> Response:
        return self._shell(s, "classes", "Today's classes", "classes.html")

    async def audit_page(self, request: Request, s: Session) -> Response:
        return self._shell(s, "audit", "Audit log", "audit.html")

    # -- reads --------------------------------------------------------------------------

    def _store(self) -> Any:
        if self.daemon.store is None:
            raise HttpError(503, "the daemon is not running")
        return self.daemon.store

    async def me(self, request: Request, s: Session) -> Response:
        return self.json({"user": s.user, "role": s.role, "csrf": s.csrf})

    async def health(self, request: Request, s: Session) -> Response:
        self._store()
        return self.json(self.data.health())

    async def feed(self, request: Request, s: Session) -> Response:
        self._store()
        limit = _int(request.query_params.get("limit"), 50, 1, 500)
        return self.json({"items": self.data.recent_feed(limit), "last_seq": self.daemon.store.last_seq})

    async def events(self, request: Request, s: Session) -> Response:
        store = self._store()
        after = _int(request.headers.get("last-event-id") or request.query_params.get("after"), 0, 0, 1 << 62)
        token = request.cookies.get(SESSION_COOKIE)
        q = self.hub.subscribe()

        async def stream() -> AsyncIterator[str]:
            last = after
            try:
                yield "retry: 2000\n\n"
                if after:
                    # what happened while the browser was away (network blip, page load)
                    for item in self.data.feed_items(store.events_after(after, 300)):
                        last = max(last, item["seq"])
                        yield _sse(item)
                while not self.hub.closed.is_set():
                    try:
                        pushed = await asyncio.wait_for(q.get(), HEARTBEAT)
                    except TimeoutError:
                        if self.sessions.get(token) is None:
                            return  # logged out or expired: the stream ends too
                        yield ": keep-alive\n\n"
                        continue
                    if pushed is None:
                        return
                    if self.sessions.get(token) is None:
                        return
                    if pushed["seq"] is not None and pushed["seq"] <= last:
                        continue
                    last = max(last, pushed["seq"] or 0)
                    yield _sse(pushed)
            finally:
                self.hub.unsubscribe(q)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def members(self, request: Request, s: Session) -> Response:
        store = self._store()
        q = request.query_params.get("q", "")[:100]
        results = await asyncio.to_thread(self.data.search_members, store.path, q)
        return self.json({"results": results})

    async def member(self, request: Request, s: Session) -> Response:
        self._store()
        detail = self.data.member_detail(request.path_params["member_id"])
        if detail is None:
            raise HttpError(404, "no such member")
        return self.json(detail)

    async def classes(self, request: Request, s: Session) -> Response:
        self._store()
        day = _date(request.query_params.get("day")) or self.data.today()
        return self.json(self.data.classes(day))

    def _audit_filters(self, request: Request) -> dict[str, Any]:
        p = request.query_params
        return {
            "operator": p.get("operator", "")[:100],
            "action": p.get("action", "")[:100],
            "q": p.get("q", "")[:100],
            "day_from": _date(p.get("from")),
            "day_to": _date(p.get("to")),
        }

    async def audit(self, request: Request, s: Session) -> Response:
        store = self._store()
        f = self._audit_filters(request)
        rows = await asyncio.to_thread(lambda: self.data.audit_rows(store.path, **f))
        query = urlencode({k: v for k, v in request.query_params.items() if k in ("operator", "action", "q", "from", "to") and v})
        return self.json({"rows": rows, "facets": self.data.audit_facets(), "csv": "/audit.csv" + (f"?{query}" if query else "")})

    async def audit_csv(self, request: Request, s: Session) -> Response:
        store = self._store()
        f = self._audit_filters(request)
        rows = await asyncio.to_thread(lambda: self.data.audit_rows(store.path, limit=100_000, **f))
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "at", "operator", "action", "detail", "seq"])
        for r in reversed(rows):
            w.writerow([_cell(r["id"]), _cell(r["at"]), _cell(r["operator"]), _cell(r["action"]),
                        _cell(json.dumps(r["detail"], ensure_ascii=False)), _cell(r["seq"])])
        name = f"gated-audit-{self.daemon.config.site.id}-{self.data.today().isoformat()}.csv"
        return Response(
            buf.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # -- actions ------------------------------------------------------------------------

    async def open_gate(self, request: Request, s: Session) -> Response:
        self._store()
        data = await self.body(request)
        reason = self._reason(data)
        gate_id = request.path_params["gate_id"]
        if gate_id not in {g.id for g in self.daemon.config.gates}:
            raise HttpError(404, "no such gate")
        result = await self.daemon.override(gate_id, s.user, reason)
        if result.get("error"):
            return self.json({"error": result.get("message") or result["error"]}, 502)
        log.info("console_open", gate=gate_id, operator=s.user)
        return self.json({"ok": True, "result": result})

    async def attend(self, request: Request, s: Session) -> Response:
        store = self._store()
        data = await self.body(request)
        refund = data.get("refund", False)
        if not isinstance(refund, bool):
            raise HttpError(400, "refund is true or false")
        booking_id = request.path_params["booking_id"]
        booking = store.get_booking(booking_id)
        if booking is None:
            raise HttpError(404, "no such booking")
        if booking.status.value == "attended":
            raise HttpError(409, "this booking is already marked attended")
        if booking.status.value == "cancelled":
            raise HttpError(409, "this booking was cancelled")
        committed = self.daemon.engine.mark_attended(booking_id, s.user, refund=refund, now=self.daemon.clock())
        refunded = next((e for e in committed.events if e.get("type") == "deduction" and e.get("cause") == "refund"), None)
        log.info("console_attend", booking=booking_id, refund=refund, refunded=refunded is not None, operator=s.user)
        return self.json(
            {
                "ok": True,
                "refunded": None if refunded is None else {"pass": refunded.get("pass"), "amount": -refunded["amount"],
                                                            "balance": refunded.get("balance")},
                "refund_requested": refund,
                "seq": [e["seq"] for e in committed.events],
            }
        )

    async def points(self, request: Request, s: Session) -> Response:
        store = self._store()
        data = await self.body(request)
        reason = self._reason(data)
        pts = data.get("points")
        if isinstance(pts, str) and re.fullmatch(r"[+-]?\d{1,6}", pts.strip()):
            pts = int(pts)
        if not isinstance(pts, int) or isinstance(pts, bool) or pts == 0 or abs(pts) > 100_000:
            raise HttpError(400, "points: a whole number, not zero, at most 100000")
        member_id = request.path_params["member_id"]
        if store.member(member_id) is None:
            raise HttpError(404, "no such member")
        committed = self.daemon.engine.adjust_points(member_id, pts, s.user, reason, self.daemon.clock())
        log.info("console_points", member=member_id, points=pts, operator=s.user)
        return self.json({"ok": True, "points": store.points(member_id), "seq": [e["seq"] for e in committed.events]})

    def _confirmed(self, data: dict[str, Any], word: str) -> None:
        if data.get("confirm") != word:
            raise HttpError(400, f'type {word} to confirm')

    async def lockdown(self, request: Request, s: Session) -> Response:
        self._store()
        data = await self.body(request)
        on = data.get("on")
        if not isinstance(on, bool):
            raise HttpError(400, "on is true or false")
        self._confirmed(data, CONFIRM["lockdown" if on else "release"])
        await self.daemon.set_lockdown(on, s.user)
        return self.json({"ok": True, "lockdown": self.daemon.lockdown})

    async def emergency(self, request: Request, s: Session) -> Response:
        self._store()  # 503 while the daemon is starting or stopping
        data = await self.body(request)
        on = data.get("on")
        if not isinstance(on, bool):
            raise HttpError(400, "on is true or false")
        self._confirmed(data, CONFIRM["emergency" if on else "restore"])
        if on:
            await self.daemon.emergency_release(s.user)
        else:
            try:
                await self.daemon.end_emergency_release(s.user)
            except RuntimeError as e:  # the building's fire input still says fire
                raise HttpError(409, str(e)) from e
        return self.json({"ok": True, "emergency": self.daemon.fire_alarm})


def _sse(item: dict[str, Any]) -> str:
    return f"id: {item['seq']}\nevent: feed\ndata: {dumps(item)}\n\n"


def _int(text: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(text))) if text else default
    except ValueError:
        return default


def _date(text: str | None) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def _cell(v: Any) -> str:
    """CSV cells that a spreadsheet would run as a formula get a leading apostrophe."""
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


# -- the server --------------------------------------------------------------------------


class _InLoopServer(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


class ConsoleHandle:
    def __init__(self, console: Console | None, server: _InLoopServer | None, task: asyncio.Task[None] | None,
                 sock: socket.socket | None):
        self.console = console
        self.server = server
        self.task = task
        self.sock = sock

    @property
    def port(self) -> int | None:
        return self.sock.getsockname()[1] if self.sock is not None else None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def stop(self) -> None:
        if self.console is not None:
            with contextlib.suppress(Exception):
                self.console.daemon.feed_listeners.remove(self.console.hub.listener)
            await self.console.hub.close()  # ends the SSE streams, or shutdown would wait on them
        if self.server is not None:
            self.server.should_exit = True
        if self.task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                if self.server is not None:
                    self.server.force_exit = True
                self.task.cancel()
                await asyncio.wait([self.task])
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        log.info("console_stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def start_console(daemon: Any) -> ConsoleHandle:
    """Serve the console in this loop; a console that cannot start never stops the gates."""
    cfg = daemon.config.console
    tls = bool(cfg.tls_cert and cfg.tls_key)
    try:
        sock = _bind(cfg.bind, cfg.port)
    except OSError as e:
        log.error("console_unavailable", bind=cfg.bind, port=cfg.port, error=str(e))
        return ConsoleHandle(None, None, None, None)
    console = Console(daemon, tls=tls)
    config = uvicorn.Config(
        SecurityHeaders(console.app, tls=tls),
        log_config=None,
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=3,
        ssl_certfile=str(cfg.tls_cert) if tls else None,
        ssl_keyfile=str(cfg.tls_key) if tls else None,
        h11_max_incomplete_event_size=MAX_BODY,
    )
    server = _InLoopServer(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit:  # uvicorn exits on startup errors; inside a task that would end the loop
            log.error("console_failed_to_start")
        except Exception:
            log.exception("console_crashed")

    daemon.feed_listeners.append(console.hub.listener)
    console.hub.start()
    task = asyncio.create_task(serve(), name="console")
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if server.started:
        log.info("console_listening", url=f"{'https' if tls else 'http'}://{cfg.bind}:{sock.getsockname()[1]}")
    return ConsoleHandle(console, server, task, sock)


__all__ = ["Console", "ConsoleHandle", "start_console"]
