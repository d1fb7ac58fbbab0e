"""The front-desk console over real HTTP: a Daemon started in-process with a turnstile on a
real Modbus TCP server, the console on a free loopback port, requests from http.client in
a worker thread (the server runs in the test's event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import http.client
import io
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest

from gated.auth import hash_password
from gated.clock import SimulatedClock
from gated.config import Config
from gated.console.security import Sessions, same_origin
from gated.daemon import Daemon
from gated.login_limits import LoginLimiter
from gated.seed import batch_from
from rules.credential import Credential
from simulator.turnstile import SimTurnstile
from sync.store import Store
from tests.test_daemon import wait_for

TZ = "Europe/Madrid"
PASSWORDS = {"desk": "desk-pass-1", "boss": "boss-pass-1"}
DISPLAY_TOKEN = "display-token-for-tests-0123456789"  # not a secret: a test site on loopback
_HASHES: dict[str, str] = {}


def user_hashes() -> dict[str, str]:
    if not _HASHES:
        _HASHES.update({u: hash_password(p) for u, p in PASSWORDS.items()})
    return _HASHES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_data(now: datetime) -> dict[str, Any]:
    """The SPORTRICK set-up: Ana's Spinning starts in 20 minutes (outside the 15-minute
    arrival window), her multipack deducts at booking; Bruno pays per access."""
    local = now.astimezone(ZoneInfo(TZ)).replace(second=0, microsecond=0)

    def at(minutes: int) -> str:
        return (local + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M")

    windows = {"mon-sun": "00:00-24:00"}
    return {
        "members": [
            {"id": "m-ana", "name": "Ana López", "cards": ["04A1B2C3D4"], "email": "ana@example.org",
             "phone": "+34 612 345 678"},
            {"id": "m-bruno", "name": "Bruno Díaz", "cards": ["0499887766"], "email": "bruno@example.org"},
            {"id": "m-lena", "name": "Lena Vogel", "cards": ["A1B2C3D4"]},
            {"id": "m-blocked", "name": "Max Mustermann", "status": "blocked", "cards": ["DEADBEEF"]},
        ],
        "passes": [
            {"id": "p-ana", "member": "m-ana", "name": "Multipack 10", "kind": "visits", "balance": 9,
             "deduct_on": "booking", "access_windows": windows, "valid_until": (local + timedelta(days=60)).date().isoformat()},
            {"id": "p-bruno", "member": "m-bruno", "name": "Multipack 10", "kind": "visits", "balance": 10,
             "deduct_on": "access", "access_windows": windows},
            {"id": "p-lena", "member": "m-lena", "name": "wellpass", "kind": "marketplace"},
        ],
        "bookings": [
            {"id": "b-spin", "member": "m-ana", "pass": "p-ana", "class": "Spinning", "zone": "main",
             "starts_at": at(20), "ends_at": at(65), "deducted": True, "loyalty_points": 10},
            {"id": "b-spin-lena", "member": "m-lena", "pass": "p-lena", "class": "Spinning", "zone": "main",
             "starts_at": at(20), "ends_at": at(65), "deducted": True},
            {"id": "b-pilates", "member": "m-bruno", "pass": "p-bruno", "class": "Pilates", "zone": "main",
             "starts_at": at(150), "ends_at": at(205)},
        ],
    }


def site_config(
    tmp_path: Path, modbus_port: int, console_port: int, tls: tuple[Path, Path] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """`extra`: top-level sections replacing the test site's (or added to it)."""
    hashes = user_hashes()
    return Config.model_validate(
        {
            "site": {"id": "test-gym", "name": "Test Gym", "timezone": TZ},
            "daemon_id": "gate-test",
            "policy": {"early_entry": "strict"},
            "stale_cache": {"max_age": None, "policy": "keep"},
            "gates": [
                {
                    "id": "turnstile-in",
                    "name": "Main entrance",
                    "zone": "main",
                    "direction": "in",
                    "output": {
                        "transport": "tcp",
                        "host": "127.0.0.1",
                        "port": modbus_port,
                        "unit": 1,
                        "coil": 0,
                        "pulse": 0.3,
                        "passage_input": 0,
                        "door_contact": 1,
                        "passage_timeout": 3,
                        "mode": "fail_safe",
                    },
                },
                {"id": "exit", "name": "Exit", "zone": "main", "direction": "out"},
            ],
            "mqtt": None,
            "zones": {"main": {"capacity": 40}},
            "store": {"path": str(tmp_path / "gated.db")},
            "console": {
                "bind": "127.0.0.1",
                "port": console_port,
                "session_minutes": 30,
                # the password-guessing tests send 60 requests at once from one address
                # (the default cap is 16 per client: tests/test_floods.py)
                "limits": {"per_client": 100, "max_connections": 100},
                "displays": [{"id": "entrance", "gate": "turnstile-in", "token": DISPLAY_TOKEN, "clear_after": 3}],
                "tls_cert": str(tls[0]) if tls else None,
                "tls_key": str(tls[1]) if tls else None,
                "users": [
                    {"name": "desk", "role": "staff", "password_hash": hashes["desk"]},
                    {"name": "boss", "role": "admin", "password_hash": hashes["boss"]},
                ],
            },
            "metrics": {"enabled": False},
            "control": {"socket": str(tmp_path / "control.sock")},
            "logging": {"format": "json", "level": "warning"},
        } | (extra or {})
    )


@dataclass
class Site:
    daemon: Daemon
    turnstile: SimTurnstile
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store(self) -> Store:
        assert self.daemon.store is not None
        return self.daemon.store

    async def tap(self, card: str, gate: str = "turnstile-in") -> dict[str, Any]:
        return await self.daemon.handle_credential(gate, Credential.card(card, "test"))


def mid_morning() -> SimulatedClock:
    """Today at 10:00 on the site, running at real speed: the seeded classes (up to 3½ hours
    ahead) then fall on the same local day whenever the suite runs. On the wall clock, a run
    at 23:45 would put Ana's Spinning after midnight, and the rules rightly stop calling her
    early for a class that is tomorrow."""
    today = datetime.now(ZoneInfo(TZ)).date()
    return SimulatedClock(datetime.combine(today, dt_time(10, 0), ZoneInfo(TZ)).astimezone(UTC), speed=1)


@contextlib.asynccontextmanager
async def running_site(
    tmp_path: Path, tls: tuple[Path, Path] | None = None, extra: dict[str, Any] | None = None
) -> AsyncIterator[Site]:
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0) as turnstile:
        port = free_port()
        config = site_config(tmp_path, turnstile.port, port, tls, extra)
        clock = mid_morning()
        now = clock()
        store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id)
        store.apply_sync(batch_from(seed_data(now), config), now)
        store.close()
        daemon = Daemon(config, clock=clock)
        await daemon.start()
        try:
            assert daemon.console is not None and daemon.console.running
            yield Site(daemon, turnstile, port)
        finally:
            await daemon.stop()


# -- a small HTTP client (blocking, run in a thread) ----------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    cookies: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def _request(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        cookies = {}
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                cookies[name] = rest.split(";", 1)[0]
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data, cookies)
    finally:
        conn.close()


class Client:
    def __init__(self, port: int):
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"
        self.cookies: dict[str, str] = {}
        self.csrf = ""
        self.last_set_cookie: dict[str, str] = {}

    async def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
        origin: str | None = "same",
    ) -> Reply:
        h = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if method == "POST" and origin is not None:
            h["Origin"] = self.origin if origin == "same" else origin
        h.update(headers or {})
        r = await asyncio.to_thread(_request, self.port, method, path, h, body)
        self.last_set_cookie = r.cookies
        for k, v in r.cookies.items():
            if v in ("", '""'):
                self.cookies.pop(k, None)
            else:
                self.cookies[k] = v
        return r

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post_json(self, path: str, data: Any, *, csrf: str | None = None, **kw: Any) -> Reply:
        headers = {"Content-Type": "application/json", "X-CSRF-Token": self.csrf if csrf is None else csrf}
        return await self.request("POST", path, headers=headers, body=json.dumps(data).encode(), **kw)

    async def login(self, user: str, password: str | None = None) -> Reply:
        form = await self.get("/login")
        m = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert m, form.text
        body = urlencode({"user": user, "password": PASSWORDS.get(user, "") if password is None else password,
                          "csrf": m.group(1)}).encode()
        r = await self.request("POST", "/login", headers={"Content-Type": "application/x-www-form-urlencoded"}, body=body)
        if r.status == 303:
            me = await self.get("/api/me")
            self.csrf = me.json()["csrf"]
        return r


# -- unit-level pieces ------------------------------------------------------------------------


def test_sessions_expire_and_drop() -> None:
    now = [1000.0]
    s = Sessions(5, clock=lambda: now[0])
    token, sess = s.create("desk", "staff", "127.0.0.1")
    assert s.get(token) is sess
    assert s.get(token + "x") is None
    now[0] += 5 * 60 + 1
    assert s.get(token) is None
    token, _ = s.create("desk", "staff", "127.0.0.1")
    assert s.drop(token) and s.get(token) is None


def test_login_limiter_locks_after_five_failures() -> None:
    now = [0.0]
    lim = LoginLimiter(clock=lambda: now[0])
    keys = ["ip:1.2.3.4", "user:desk"]
    for _ in range(4):
        lim.failure(keys)
    assert lim.retry_after(keys) == 0
    lim.failure(keys)
    assert 59 < lim.retry_after(["user:desk"]) <= 60
    assert lim.retry_after(["ip:1.2.3.4"]) > 0
    now[0] += 61
    assert lim.retry_after(keys) == 0


def test_same_origin_rules() -> None:
    base = {"host": "127.0.0.1:8080"}
    assert same_origin({**base, "origin": "http://127.0.0.1:8080"}, "http")
    assert not same_origin({**base, "origin": "http://evil.example"}, "http")
    assert not same_origin({**base, "origin": "https://127.0.0.1:8080"}, "http")
    assert not same_origin({**base, "origin": "null"}, "http")
    assert same_origin({**base, "referer": "http://127.0.0.1:8080/members"}, "http")
    assert not same_origin(base, "http")
    assert not same_origin({**base, "origin": "http://127.0.0.1:8080", "sec-fetch-site": "cross-site"}, "http")


# -- over HTTP ------------------------------------------------------------------------------


async def test_login_required_everywhere_but_healthz(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        r = await c.get("/healthz")
        assert r.status == 200 and r.json() == {"status": "ok"}
        for path in ("/", "/members", "/classes", "/audit", "/audit.csv"):
            r = await c.get(path)
            assert r.status == 303 and r.headers["location"] == "/login", path
        for path in ("/api/health", "/api/feed", "/api/members?q=ana", "/api/members/m-ana", "/api/classes",
                     "/api/audit", "/events"):
            r = await c.get(path)
            assert r.status == 401, path
        r = await c.post_json("/api/gates/turnstile-in/open", {"reason": "x"}, csrf="whatever")
        assert r.status == 401
        assert site.turnstile.unlocks == 0


async def test_security_headers_and_cookie_flags(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        r = await c.get("/login")
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
        assert "<script>" not in r.text  # no inline script anywhere
        r = await c.login("desk")
        assert r.status == 303
        raw = await asyncio.to_thread(_raw_set_cookie, site.port)
        assert raw is not None
        low = raw.lower()
        assert "httponly" in low and "samesite=strict" in low and "secure" not in low
        page = await c.get("/")
        assert page.status == 200 and "<script>" not in page.text
        assert 'src="/static/console.js"' in page.text


def _raw_set_cookie(port: int) -> str | None:
    """Log in once more and return the raw Set-Cookie of the session."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/login")
    r = conn.getresponse()
    html = r.read().decode()
    login_cookie = next(v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie")
    token = re.search(r'name="csrf" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(
        "POST", "/login", body=urlencode({"user": "desk", "password": PASSWORDS["desk"], "csrf": token}),
        headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": login_cookie,
                 "Origin": f"http://127.0.0.1:{port}"},
    )
    r = conn.getresponse()
    r.read()
    conn.close()
    return next((v for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("gated_session=")), None)


async def test_wrong_password_then_lockout(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        for _ in range(5):
            r = await c.login("desk", "wrong")
            assert r.status == 401
        r = await c.login("desk")  # the right password, but locked out now
        assert r.status == 429 and int(r.headers["retry-after"]) <= 60
        assert "gated_session" not in c.cookies
        # another user from another address is not affected by the per-user lock, but this
        # address is locked too
        r = await c.login("boss")
        assert r.status == 429


async def test_login_form_needs_its_token_and_origin(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        body = urlencode({"user": "desk", "password": PASSWORDS["desk"], "csrf": "forged"}).encode()
        await c.get("/login")
        r = await c.request("POST", "/login", headers={"Content-Type": "application/x-www-form-urlencoded"}, body=body)
        assert r.status == 403
        r = await c.login("desk")
        assert r.status == 303


async def test_cross_site_and_csrf_refused(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        assert (await c.login("desk")).status == 303
        path = "/api/gates/turnstile-in/open"
        r = await c.post_json(path, {"reason": "x"}, origin="http://evil.example")
        assert r.status == 403 and "cross-site" in r.json()["error"]
        r = await c.post_json(path, {"reason": "x"}, origin=None)  # neither Origin nor Referer
        assert r.status == 403
        r = await c.post_json(path, {"reason": "x"}, csrf="not-the-token")
        assert r.status == 403 and "CSRF" in r.json()["error"]
        r = await c.request("POST", path, headers={"Content-Type": "text/plain", "X-CSRF-Token": c.csrf},
                            body=b'{"reason": "x"}')
        assert r.status == 415
        assert site.turnstile.unlocks == 0
        assert not site.store.recent_events(10, types=["override"])


async def test_logout_invalidates_the_session(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        cookie = c.cookies["gated_session"]
        assert (await c.get("/api/me")).status == 200
        r = await c.request("POST", "/logout", headers={"Content-Type": "application/x-www-form-urlencoded"},
                            body=urlencode({"csrf": c.csrf}).encode())
        assert r.status == 303 and r.headers["location"] == "/login"
        replay = Client(site.port)
        replay.cookies["gated_session"] = cookie
        assert (await replay.get("/api/me")).status == 401
        assert (await replay.get("/")).status == 303
        r = await replay.post_json("/api/gates/turnstile-in/open", {"reason": "x"}, csrf=c.csrf)
        assert r.status == 401


async def test_feed_stream_carries_a_tap(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        got: list[dict[str, Any]] = []
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()

        def read_stream() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
            conn.request("GET", "/events", headers={"Cookie": f"gated_session={c.cookies['gated_session']}"})
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("content-type", "").startswith("text/event-stream")
            loop.call_soon_threadsafe(ready.set)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                line = r.fp.readline().decode()
                if line.startswith("data: "):
                    item = json.loads(line[6:])
                    got.append(item)
                    if item.get("type") == "access":
                        break
            conn.close()

        reader = asyncio.create_task(asyncio.to_thread(read_stream))
        await asyncio.wait_for(ready.wait(), 5)  # the stream subscribes before it answers
        result = await site.tap("DEADBEEF")
        assert result["decision"] == "denied"
        await asyncio.wait_for(reader, 10)
        access = [i for i in got if i["type"] == "access"][0]
        assert access["member_name"] == "Max Mustermann" and access["decision"] == "denied"
        assert access["reason"] == "member_blocked" and access["message"].startswith("Membership on hold")
        assert access["gate_name"] == "Main entrance" and re.fullmatch(r"\d\d:\d\d:\d\d", access["time"])

        # the recent feed, and a reconnect with Last-Event-ID replays what was missed
        await site.tap("0499887766")
        feed = (await c.get("/api/feed")).json()
        bruno = [i for i in feed["items"] if i.get("member") == "m-bruno"][-1]
        assert bruno["decision"] == "granted" and bruno["balance"] == 9 and bruno["pass_name"] == "Multipack 10"


async def test_open_gate_sets_the_coil_and_records_the_override(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        r = await c.post_json("/api/gates/turnstile-in/open", {"reason": ""})
        assert r.status == 400 and "reason" in r.json()["error"]
        r = await c.post_json("/api/gates/nope/open", {"reason": "x"})
        assert r.status == 404
        r = await c.post_json("/api/gates/turnstile-in/open", {"reason": "forgot her card"})
        assert r.status == 200, r.text
        assert site.turnstile.unlocks == 1 and any(bit for _, bit in site.turnstile.coil_history)
        ev = site.store.recent_events(5, types=["override"])[0]
        assert ev["operator"] == "desk" and ev["reason"] == "forgot her card" and ev["gate"] == "turnstile-in"
        audit = (await c.get("/api/audit?action=override")).json()["rows"]
        assert audit[0]["operator"] == "desk" and audit[0]["detail"]["reason"] == "forgot her card"


async def test_sportrick_early_arrival_mark_attended_with_refund(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        # Ana arrives 20 minutes early: a walk-in, a second credit (9 -> 8)
        result = await site.tap("04A1B2C3D4")
        assert result["decision"] == "granted" and result["reason"] == "walk_in"
        assert site.store.balance("p-ana") == 8
        classes = (await c.get("/api/classes")).json()
        spin = next(g for g in classes["classes"] if g["class"] == "Spinning")
        ana = next(b for b in spin["bookings"] if b["member"] == "m-ana")
        assert ana["state"] == "expected" and ana["walk_in"]["amount"] == 1 and ana["on_site_since"]
        detail = (await c.get("/api/members/m-ana")).json()
        assert detail["passes"][0]["balance"] == 8 and detail["taps"][0]["reason"] == "walk_in"
        r = await c.post_json("/api/bookings/b-spin/attend", {"refund": True})
        assert r.status == 200, r.text
        body = r.json()
        assert body["refunded"] == {"pass": "p-ana", "amount": 1, "balance": 9}
        assert site.store.balance("p-ana") == 9
        assert site.store.booking_status("b-spin").value == "attended"
        again = await c.post_json("/api/bookings/b-spin/attend", {"refund": True})
        assert again.status == 409
        att = site.store.recent_events(10, types=["attendance"])[0]
        assert att["by"] == "desk" and att["booking"] == "b-spin"
        classes = (await c.get("/api/classes")).json()
        spin = next(g for g in classes["classes"] if g["class"] == "Spinning")
        assert next(b for b in spin["bookings"] if b["member"] == "m-ana")["state"] == "in"


async def test_a_refund_not_found_while_another_gate_is_unheard_is_shown_waiting(tmp_path: Path) -> None:
    """The desk's daemon has not heard another turnstile of the site up to now (its link's
    peer marks say so; stood in for here, the whole path is tests/test_site_facts.py): the
    answer and the class list say the refund waits, and for whom."""
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        site.daemon.knowledge.unheard = lambda now: ["north-in-2"]  # type: ignore[method-assign]
        r = await c.post_json("/api/bookings/b-spin/attend", {"refund": True})
        assert r.status == 200, r.text
        body = r.json()
        assert body["refunded"] is None and body["refund_waiting"] == {"for": ["north-in-2"]}
        classes = (await c.get("/api/classes")).json()
        spin = next(g for g in classes["classes"] if g["class"] == "Spinning")
        ana = next(b for b in spin["bookings"] if b["member"] == "m-ana")
        assert ana["state"] == "in" and ana["refund_waiting"] == {"for": ["north-in-2"]}
        # a refund with everyone heard and nothing charged: none, and nothing waits
        site.daemon.knowledge.unheard = lambda now: []  # type: ignore[method-assign]
        r = await c.post_json("/api/bookings/b-spin-lena/attend", {"refund": True})
        assert r.json()["refunded"] is None and r.json()["refund_waiting"] is None
        # the scheduler, with everyone heard up to the request and no charge: dropped
        await wait_for(lambda: site.store.refund_wanted("b-spin") is None, what="the refund dropped")
        # the audit says it in the desk's words, with no event of its own
        [row] = (await c.get("/api/audit?action=refund_none")).json()["rows"]
        assert row["operator"] == "desk" and row["action_text"] == "A waiting refund found no walk-in charge"
        assert row["seq"] is None and "waited for: north-in-2" in row["detail_text"], row
        assert "asked at: 20" in row["detail_text"] and "T" not in row["detail_text"].split("asked at: ")[1][:12]


async def test_a_refund_settled_while_its_answer_waits_is_shown_given(tmp_path: Path) -> None:
    """The desk's request waits (another gate not heard up to it) and the scheduler settles
    it before the answer is read (the answer waits for the flush): the answer says what was
    given back, not that no walk-in charge was found."""
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        assert (await site.tap("04A1B2C3D4"))["reason"] == "walk_in"  # 9 -> 8
        site.daemon.knowledge.unheard = lambda now: ["north-in-2"]  # type: ignore[method-assign]
        engine = site.daemon.engine
        assert engine is not None
        mark = engine.mark_attended

        def mark_then_settle(*args: Any, **kw: Any) -> Any:
            committed = mark(*args, **kw)
            assert site.store.refund_wanted("b-spin") is not None
            engine.settle_refunds(kw["now"], lambda _: [])  # north-in-2 heard up to it the next moment
            return committed

        engine.mark_attended = mark_then_settle  # type: ignore[method-assign]
        r = await c.post_json("/api/bookings/b-spin/attend", {"refund": True})
        assert r.status == 200, r.text
        body = r.json()
        assert body["refunded"] == {"pass": "p-ana", "amount": 1, "balance": 9} and body["refund_waiting"] is None
        assert site.store.balance("p-ana") == 9


async def test_points_member_search_and_audit_csv(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        for q, expect in (("ana", "m-ana"), ("04a1b2c3d4", "m-ana"), ("bruno@example", "m-bruno"), ("Vogel", "m-lena"),
                          ("LÓPEZ", "m-ana"), ("04a1b2", "m-ana"), ("612 345", "m-ana")):
            res = (await c.get("/api/members?" + urlencode({"q": q}))).json()["results"]
            assert [m["id"] for m in res] == [expect], q
        assert (await c.get("/api/members?q=%25")).json()["results"] == []  # LIKE wildcards are literal
        r = await c.post_json("/api/members/m-ana/points", {"points": 25})
        assert r.status == 400
        r = await c.post_json("/api/members/m-ana/points", {"points": 25, "reason": "=cmd|' /C calc'!A0"})
        assert r.status == 200 and r.json()["points"] == 25
        r = await c.post_json("/api/members/m-ana/points", {"points": -5, "reason": "correction"})
        assert r.json()["points"] == 20
        ev = site.store.recent_events(5, types=["loyalty"])[0]
        assert ev["operator"] == "desk" and ev["points"] == -5
        csv_r = await c.get("/audit.csv?action=adjust_points")
        assert csv_r.status == 200 and csv_r.headers["content-type"].startswith("text/csv")
        assert csv_r.body.startswith(b"\xef\xbb\xbf")  # the BOM: Excel reads UTF-8 right with it
        rows = list(csv.reader(io.StringIO(csv_r.body.decode("utf-8-sig"))))
        assert rows[0] == ["id", "at", "operator", "action", "detail", "seq"] and len(rows) == 3
        assert all(r[3] == "adjust_points" for r in rows[1:])
        assert not any(cell.startswith("=") for row in rows for cell in row)
        filtered = (await c.get("/api/audit?operator=nobody")).json()["rows"]
        assert filtered == []


@pytest.mark.parametrize(("text", "neutralised"), [
    ("Díaz", False), ("=HYPERLINK(\"x\")", True), ("+1", True), ("-2", True), ("@SUM(A1)", True),
    (" =1+1", True), ("\n@cmd", True), ("\t=1", True), ("\r-1", True), ("a=b", False), ("", False),
])
def test_csv_cells_neutralise_formulas_and_leave_numbers(text: str, neutralised: bool) -> None:
    from gated.console.exports import cell

    assert cell(text) == ("'" + text if neutralised else text)


def test_csv_numbers_stay_numbers() -> None:
    from decimal import Decimal

    from gated.console.exports import cell

    assert [cell(-3), cell(0), cell(Decimal("-1.5")), cell(None)] == ["-3", "0", "-1.5", ""]


async def test_the_loyalty_csv_is_the_screen_with_its_totals(tmp_path: Path) -> None:
    """Issue 24: the export opens in Excel as the report reads on screen — accents right
    (a BOM), the same columns in the same order, the totals row, and a member's name that
    a spreadsheet would run as a formula neutralised."""
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        store = site.daemon.store
        assert store is not None
        from sync.records import MemberIn
        from sync.store import SyncBatch

        store.apply_sync(SyncBatch([MemberIn(id="m-evil", name="=HYPERLINK(\"http://x\",\"y\")", cards=["CAFE0001"])]),
                         site.daemon.clock())
        for member, points in (("m-bruno", 25), ("m-evil", 7), ("m-bruno", -3)):
            r = await c.post_json(f"/api/members/{member}/points", {"points": points, "reason": "goodwill"})
            assert r.status == 200
        screen = (await c.get("/api/reports/loyalty")).json()
        r = await c.get(screen["csv"])
        assert r.status == 200 and r.body.startswith(b"\xef\xbb\xbf")
        rows = list(csv.reader(io.StringIO(r.body.decode("utf-8-sig"))))
        assert rows[0] == ["Member", "Member id", "Classes", "Credited", "Adjustments", "Adjusted", "Total"]
        by_id = {row[1]: row for row in rows[1:-1]}
        assert by_id["m-bruno"] == ["Bruno Díaz", "m-bruno", "0", "0", "2", "22", "22"]
        assert by_id["m-evil"][0] == "'=HYPERLINK(\"http://x\",\"y\")"
        assert rows[-1] == [f"All members ({len(screen['lines'])})", "", "", str(screen["totals"]["credited"]), "",
                            str(screen["totals"]["adjusted"]), str(screen["totals"]["total"])]
        assert len(rows) == len(screen["lines"]) + 2


async def test_staff_cannot_lock_down_admin_can(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        staff = Client(site.port)
        await staff.login("desk")
        r = await staff.post_json("/api/lockdown", {"on": True, "confirm": "LOCKDOWN"})
        assert r.status == 403 and not site.daemon.lockdown
        r = await staff.post_json("/api/emergency", {"on": True, "confirm": "EMERGENCY"})
        assert r.status == 403 and not site.daemon.fire_alarm
        admin = Client(site.port)
        await admin.login("boss")
        r = await admin.post_json("/api/lockdown", {"on": True, "reason": "intruder"})
        assert r.status == 400  # not confirmed
        r = await admin.post_json("/api/lockdown", {"on": True, "confirm": "LOCKDOWN"})
        assert r.status == 400 and "reason" in r.json()["error"] and not site.daemon.lockdown  # issue 24, bug 6
        r = await admin.post_json("/api/lockdown", {"on": True, "confirm": "LOCKDOWN", "reason": "  intruder in\nthe car park "})
        assert r.status == 200 and site.daemon.lockdown
        assert (await site.tap("0499887766"))["reason"] == "lockdown"
        # the reason is in the status every page's banner reads, the event and the audit log
        lockdown = (await admin.get("/api/health")).json()["safety"]["lockdown"]
        assert lockdown["operator"] == "boss" and lockdown["reason"] == "intruder in the car park"
        r = await admin.post_json("/api/lockdown", {"on": False, "confirm": "RELEASE"})  # no reason needed to lift it
        assert r.status == 200 and not site.daemon.lockdown
        r = await admin.post_json("/api/emergency", {"on": True, "confirm": "EMERGENCY", "reason": ""})
        assert r.status == 400 and not site.daemon.fire_alarm
        r = await admin.post_json("/api/emergency", {"on": True, "confirm": "EMERGENCY", "reason": "x" * 501})
        assert r.status == 400 and not site.daemon.fire_alarm
        r = await admin.post_json("/api/emergency", {"on": True, "confirm": "EMERGENCY", "reason": "gas smell"})
        assert r.status == 200 and site.daemon.fire_alarm
        r = await admin.post_json("/api/emergency", {"on": False, "confirm": "RESTORE", "reason": "all clear"})
        assert r.status == 200 and not site.daemon.fire_alarm
        rows = (await admin.get("/api/audit?operator=boss")).json()["rows"]
        assert {"lockdown", "release", "emergency_release"} <= {row["action"] for row in rows}
        said = {row["action"]: row["detail"].get("reason") for row in rows}
        assert said["lockdown"] == "intruder in the car park" and said["release"] is None
        assert said["emergency_release"] == "gas smell" and said["emergency_restore"] == "all clear"
        events = site.daemon.store.recent_events(20, types=["lockdown", "fire_alarm"])
        assert {(e["type"], e.get("reason")) for e in events} >= {
            ("lockdown", "intruder in the car park"), ("fire_alarm", "gas smell"), ("fire_alarm", "all clear")}


async def test_console_stops_with_open_streams(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")

        def hold_stream() -> bytes:
            conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
            conn.request("GET", "/events", headers={"Cookie": f"gated_session={c.cookies['gated_session']}"})
            r = conn.getresponse()
            return r.read()  # until the server ends the stream

        holder = asyncio.create_task(asyncio.to_thread(hold_stream))
        hub = site.daemon.console.console.hub
        await wait_for(lambda: len(hub.subscribers) >= 1, 10, "the stream open")
        # an open stream must not hold the shutdown (it would wait on it for ever): bounded
        await asyncio.wait_for(site.daemon.console.stop(), 10)
        await asyncio.wait_for(holder, 10)
        site.daemon.console = None


async def test_static_files_served(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        for path in ("/static/console.js", "/static/console.css"):
            r = await Client(site.port).get(path)
            assert r.status == 200 and len(r.body) > 1000
            assert r.headers["x-content-type-options"] == "nosniff"


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "console.crt", tmp_path / "console.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_tls_serves_https_with_secure_cookies(tmp_path: Path) -> None:
    import ssl

    async with running_site(tmp_path, tls=_self_signed(tmp_path)) as site:
        def get() -> tuple[int, dict[str, str], list[str]]:
            ctx = ssl.create_default_context(cafile=str(tmp_path / "console.crt"))
            ctx.check_hostname = False
            conn = http.client.HTTPSConnection("127.0.0.1", site.port, timeout=10, context=ctx)
            conn.request("GET", "/login")
            r = conn.getresponse()
            r.read()
            cookies = [v for k, v in r.getheaders() if k.lower() == "set-cookie"]
            conn.close()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, cookies

        status, headers, cookies = await asyncio.to_thread(get)
        assert status == 200
        assert "max-age" in headers["strict-transport-security"]
        assert cookies and all("secure" in c.lower() for c in cookies)
