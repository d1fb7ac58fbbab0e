"""Logging in and out of the console.

The login form carries a one-time token matched against a short-lived cookie (login
CSRF). Attempts are limited when they *start* (in-flight checks count), per user and per
client: a browser that logged in as that user before (a signed device cookie) has a key of
its own, so guessing elsewhere cannot lock the real desk out (docs/console.md).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from urllib.parse import parse_qs

import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from gated.auth import authenticate
from gated.console.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    DeviceCookies,
    login_keys,
    same_origin,
)
from gated.console.state import Console, console_of
from gated.console.templates import render
from gated.login_limits import Attempt

log = structlog.get_logger("gated.console")

MAX_BODY = 16 * 1024


def set_cookie(console: Console, response: Response, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=console.tls)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "?"


def login_page(console: Console, error: str = "", status: int = 200, headers: dict[str, str] | None = None) -> Response:
    token = secrets.token_urlsafe(24)
    site = console.backend.config.site
    html = render("login.html", csrf=token, error=error, site=site.name or site.id,
                  error_class="error" if error else "error hidden")
    response = Response(html, status_code=status, media_type="text/html; charset=utf-8", headers=headers)
    set_cookie(console, response, LOGIN_COOKIE, token, 600)
    return response


def _form(raw: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(raw[:MAX_BODY].decode("utf-8", "replace")).items()}


async def login_form(request: Request) -> Response:
    console = console_of(request)
    if request.user.is_authenticated:
        return RedirectResponse("/", status_code=303)
    return login_page(console)


async def login(request: Request) -> Response:
    console = console_of(request)
    if not same_origin(request.headers, console.scheme):
        return PlainTextResponse("Cross-site request refused", status_code=403)
    raw = await request.body()
    if len(raw) > MAX_BODY:
        return PlainTextResponse("Request too large", status_code=413)
    form = _form(raw)
    name = form.get("user", "").strip()[:100]
    password = form.get("password", "")[:1024]
    cookie_token = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie_token or not hmac.compare_digest(form.get("csrf", "").encode(), cookie_token.encode()):
        return login_page(console, "The login form expired — please try again.", 403)
    ip = client_ip(request)
    device_cookie = request.cookies.get(DeviceCookies.COOKIE)
    device = console.devices.device(name, device_cookie)
    attempt = console.limiter.begin(login_keys(name, ip, device))
    if not isinstance(attempt, Attempt):
        wait = int(attempt) + 1
        log.warning("console_login_locked", user=name, ip=ip, known_device=device is not None)
        return login_page(console, f"Too many failed logins — try again in {wait} s.", 429, {"Retry-After": str(wait)})
    ok = False
    try:
        # argon2 takes tens of ms of CPU: off the event loop, taps keep flowing
        user = await asyncio.to_thread(authenticate, list(console.cfg.users), name, password)
        ok = user is not None
    finally:
        console.limiter.end(attempt, ok=ok)
    if user is None:
        log.warning("console_login_failed", user=name, ip=ip)
        console.backend.audit(name or "?", "login_failed", {"ip": ip})
        return login_page(console, "Wrong user name or password.", 401)
    console.sessions.drop(request.cookies.get(SESSION_COOKIE))  # no session fixation
    token, _ = console.sessions.create(user.name, user.role, ip)
    log.info("console_login", user=user.name, role=user.role, ip=ip)
    console.backend.audit(user.name, "login", {"ip": ip, "role": user.role})
    response = RedirectResponse("/", status_code=303)
    set_cookie(console, response, SESSION_COOKIE, token, console.cfg.session_minutes * 60)
    set_cookie(console, response, DeviceCookies.COOKIE, console.devices.issue(user.name, device_cookie),
               DeviceCookies.MAX_AGE)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


async def logout(request: Request) -> Response:
    console = console_of(request)
    if request.user.is_authenticated:
        if not same_origin(request.headers, console.scheme):
            return PlainTextResponse("Cross-site request refused", status_code=403)
        s = console.sessions.get(request.cookies.get(SESSION_COOKIE))
        form = _form(await request.body())
        token = form.get("csrf") or request.headers.get("x-csrf-token", "")
        if s is None or not hmac.compare_digest(token.encode(), s.csrf.encode()):
            return PlainTextResponse("Missing or wrong CSRF token", status_code=403)
        console.sessions.drop(request.cookies.get(SESSION_COOKIE))
        log.info("console_logout", user=s.user)
        console.backend.audit(s.user, "logout", {})
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=console.tls)
    return response


__all__ = ["login", "login_form", "login_page", "logout"]
