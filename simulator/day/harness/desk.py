"""The front desk of a site in `gated sim day`: a member of staff using the console over
HTTP as the browser does (login form with its CSRF cookie, then JSON actions with the
session's CSRF token and the page's Origin). The console runs in the desk gate's daemon; a
restart of that daemon ends the session, and the desk logs in again."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import urllib.parse
from typing import Any


class DeskError(Exception):
    pass


class Desk:
    def __init__(self, port: int, user: str, password: str):
        self.port = port
        self.user = user
        self.password = password
        self.cookies: dict[str, str] = {}
        self.csrf: str | None = None
        self._lock = asyncio.Lock()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            h = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
            if self.cookies:
                h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body=body, headers=h)
            resp = conn.getresponse()
            data = resp.read()
            for k, v in resp.getheaders():
                if k.lower() == "set-cookie":
                    name, _, rest = v.partition("=")
                    value = rest.split(";", 1)[0]
                    if value in ("", '""') or "max-age=0" in v.lower():
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = value
            return resp.status, data
        finally:
            conn.close()

    def _login(self) -> None:
        self.cookies.clear()
        status, page = self._request("GET", "/login")
        m = re.search(rb'name="csrf" value="([^"]+)"', page)
        if status != 200 or m is None:
            raise DeskError(f"login form: {status}")
        form = urllib.parse.urlencode({"user": self.user, "password": self.password, "csrf": m.group(1).decode()})
        status, _ = self._request("POST", "/login", form.encode(), {
            "Content-Type": "application/x-www-form-urlencoded", "Origin": self.origin})
        if status != 303:
            raise DeskError(f"login refused: {status}")
        status, data = self._request("GET", "/api/me")
        if status != 200:
            raise DeskError(f"/api/me: {status}")
        self.csrf = json.loads(data)["csrf"]

    def _post(self, path: str, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for attempt in range(2):
            if self.csrf is None:
                self._login()
            status, data = self._request("POST", path, json.dumps(obj).encode(), {
                "Content-Type": "application/json", "Origin": self.origin, "X-CSRF-Token": self.csrf or ""})
            if status == 401 and attempt == 0:  # the daemon restarted: sessions are in memory
                self.csrf = None
                continue
            try:
                body = json.loads(data) if data else {}
            except ValueError:
                body = {"raw": data[:200].decode(errors="replace")}
            return status, body
        raise DeskError("unreachable")

    async def post(self, path: str, obj: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with self._lock:  # one member of staff: one thing at a time
            return await asyncio.to_thread(self._post, path, obj)

    async def open_gate(self, gate: str, reason: str) -> tuple[int, dict[str, Any]]:
        return await self.post(f"/api/gates/{gate}/open", {"reason": reason})

    async def attend(self, booking: str, refund: bool) -> tuple[int, dict[str, Any]]:
        return await self.post(f"/api/bookings/{booking}/attend", {"refund": refund})

    async def points(self, member: str, points: int, reason: str) -> tuple[int, dict[str, Any]]:
        return await self.post(f"/api/members/{member}/points", {"points": points, "reason": reason})


__all__ = ["Desk", "DeskError"]
