"""Who may log in, open a door or see a gate's answers: login limits under real parallel
clients (console and control socket), remembered browsers, the Host check, injected reads,
display tokens, and the desk actions' refusals (lockdown, a gate with no relay)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gated.console.security import DeviceCookies, login_keys
from gated.control import request
from gated.login_limits import Attempt, LoginLimiter
from tests.test_console import DISPLAY_TOKEN, PASSWORDS, Client, running_site

# -- unit-level pieces ----------------------------------------------------------------------


def test_limiter_counts_attempts_in_flight() -> None:
    now = [0.0]
    lim = LoginLimiter(clock=lambda: now[0])
    keys = ["user:desk|untrusted", "client:1.2.3.4"]
    started = [lim.begin(keys) for _ in range(20)]  # twenty at once, none finished yet
    attempts = [a for a in started if isinstance(a, Attempt)]
    assert len(attempts) == 5 and all(isinstance(a, float) and a > 0 for a in started[5:])
    for a in attempts:
        lim.end(a, ok=False)
    assert 59 < lim.retry_after(keys) <= 60
    now[0] += 61
    a = lim.begin(keys)
    assert isinstance(a, Attempt)
    lim.end(a, ok=True)  # a success clears the keys
    assert all(isinstance(lim.begin(keys), Attempt) for _ in range(5))


def test_limiter_keys_of_other_clients_are_untouched() -> None:
    lim = LoginLimiter()
    for _ in range(5):
        lim.failure(login_keys("Boss", "127.0.0.1", None))
    assert lim.retry_after(login_keys("boss", "127.0.0.1", None)) > 0
    assert lim.retry_after(login_keys("boss", "127.0.0.1", "the-desk-browser")) == 0
    assert lim.retry_after(login_keys("desk", "10.0.0.9", None)) == 0


def test_device_cookies_are_bound_to_user_key_and_age() -> None:
    now = [1_000_000.0]
    dc = DeviceCookies(b"k" * 32, clock=lambda: now[0])
    cookie = dc.issue("Desk", None)
    assert dc.device("desk", cookie) is not None
    assert dc.device("boss", cookie) is None
    assert DeviceCookies(b"x" * 32, clock=lambda: now[0]).device("desk", cookie) is None
    nonce, issued, mac = cookie.split(".")
    assert dc.device("desk", f"{nonce}.{issued}.{mac[:-1]}0") is None or mac.endswith("0")
    both = dc.issue("boss", cookie)
    assert dc.device("desk", both) is not None and dc.device("boss", both) is not None
    now[0] += DeviceCookies.MAX_AGE
    assert dc.device("desk", both) is None
    assert dc.device("desk", "garbage~" * 200) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
@example("a.\u00b2.b")  # "²" is a digit to str.isdigit() and not to int()
@example("n.1\u0663.m~x.\u00b2\u00b3.y")
def test_any_cookie_text_is_refused_cleanly(text: str) -> None:
    dc = DeviceCookies(b"k" * 32, clock=lambda: 1_000_000.0)
    assert dc.device("desk", text) is None
    assert dc.device("desk", dc.issue("desk", text)) is not None  # a bad old cookie never blocks a new one


# -- the console over real parallel connections --------------------------------------------


def _login_form(port: int) -> tuple[str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/login", headers={"Host": f"127.0.0.1:{port}"})
        r = conn.getresponse()
        html = r.read().decode()
        cookie = next(v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie")
        m = re.search(r'name="csrf" value="([^"]+)"', html)
        assert m
        return cookie, m.group(1)
    finally:
        conn.close()


def _post_login(port: int, cookie: str, token: str, user: str, password: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/login", body=urlencode({"user": user, "password": password, "csrf": token}),
                     headers={"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}", "Cookie": cookie,
                              "Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


async def _parallel_guesses(port: int, user: str, n: int) -> list[int]:
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=n) as pool:  # one thread per client: all really at once
        forms = await asyncio.gather(*(loop.run_in_executor(pool, _login_form, port) for _ in range(n)))
        barrier = threading.Barrier(n)

        def guess(i: int) -> int:
            cookie, token = forms[i]
            barrier.wait(30)  # all requests leave together
            return _post_login(port, cookie, token, user, f"guess-{i}")

        return list(await asyncio.gather(*(loop.run_in_executor(pool, guess, i) for i in range(n))))


async def test_sixty_parallel_guesses_check_at_most_five(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        # the admin logged in from the desk's browser earlier: that browser is remembered
        admin = Client(site.port)
        assert (await admin.login("boss")).status == 303
        device = admin.cookies["gated_device"]
        statuses = await _parallel_guesses(site.port, "boss", 60)
        assert statuses.count(401) <= 5, statuses  # at most five passwords were checked
        assert set(statuses) <= {401, 429} and statuses.count(429) >= 55
        # the guesser is locked out, even with the right password
        form = await asyncio.to_thread(_login_form, site.port)
        assert await asyncio.to_thread(_post_login, site.port, *form, "boss", PASSWORDS["boss"]) == 429
        # the admin's open session still works: an emergency release during the attack
        r = await admin.post_json("/api/emergency", {"on": True, "confirm": "EMERGENCY", "reason": "smoke in the hall"})
        assert r.status == 200 and site.daemon.fire_alarm
        # and the admin logs in again from the remembered browser, locked-out name or not
        again = Client(site.port)
        again.cookies["gated_device"] = device
        assert (await again.login("boss")).status == 303
        r = await again.post_json("/api/emergency", {"on": False, "confirm": "RESTORE"})
        assert r.status == 200 and not site.daemon.fire_alarm
        failed = [row for row in (await again.get("/api/audit?action=login_failed")).json()["rows"]]
        assert 1 <= len(failed) <= 5 and all(r["operator"] == "boss" for r in failed)


async def test_host_header_must_name_this_console(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        for host in ("evil.example", "evil.example:80", f"127.0.0.2:{site.port}"):
            r = await c.get("/login", headers={"Host": host})
            assert r.status == 400, host
        assert (await c.get("/login", headers={"Host": f"localhost:{site.port}"})).status == 200
        # a name added to the configuration is accepted at once (live configuration)
        cfg = site.daemon.config
        site.daemon.config = cfg.model_copy(update={"console": cfg.console.model_copy(update={"trusted_hosts": ["gate-1.gym.lan"]})})
        assert (await c.get("/login", headers={"Host": f"gate-1.gym.lan:{site.port}"})).status == 200


async def test_display_needs_its_token_and_shows_only_answers(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        assert (await c.get("/display/entrance")).status == 403
        assert (await c.get("/display/entrance?token=" + "x" * 34)).status == 403
        assert (await c.get(f"/display/nope?token={DISPLAY_TOKEN}")).status == 403
        page = await c.get(f"/display/entrance?token={DISPLAY_TOKEN}")
        assert page.status == 200 and "Main entrance" in page.text and "<script>" not in page.text
        got: list[dict[str, Any]] = []
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()

        def read() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
            conn.request("GET", f"/display/entrance/events?token={DISPLAY_TOKEN}", headers={"Host": f"127.0.0.1:{site.port}"})
            r = conn.getresponse()
            loop.call_soon_threadsafe(ready.set)
            while len(got) < 2:
                line = r.fp.readline().decode()
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
            conn.close()

        reader = asyncio.create_task(asyncio.to_thread(read))
        await asyncio.wait_for(ready.wait(), 5)
        await site.tap("0499887766", gate="exit")  # another gate: not shown
        await site.tap("DEADBEEF")
        await site.tap("0499887766")
        await asyncio.wait_for(reader, 10)
        assert [g["granted"] for g in got] == [False, True]
        assert set(got[0]) == {"seq", "granted", "headline", "detail", "exit"}
        assert got[1]["headline"] == "Welcome Bruno" and "m-bruno" not in json.dumps(got)


async def test_open_once_refused_in_lockdown_and_without_relay(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        r = await c.post_json("/api/gates/exit/open", {"reason": "x"})
        assert r.status == 409 and "no relay" in r.json()["error"]
        assert not site.store.recent_events(5, types=["override"])
        await site.daemon.operator.set_lockdown(True, "boss", "drill")
        r = await c.post_json("/api/gates/turnstile-in/open", {"reason": "x"})
        assert r.status == 409 and "an admin must" in r.json()["error"]
        r = await c.post_json("/api/members/m-bruno/check-in", {"gate": "turnstile-in", "reason": "x"})
        assert r.status == 200 and r.json()["result"]["reason"] == "lockdown" and not r.json()["ok"]
        assert site.turnstile.unlocks == 0


async def test_check_in_validates_and_goes_through_the_ledger(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        base = {"gate": "turnstile-in", "reason": "forgot card"}
        assert (await c.post_json("/api/members/nobody/check-in", base)).status == 404
        assert (await c.post_json("/api/members/m-bruno/check-in", {**base, "pass": "p-ana"})).status == 404
        assert (await c.post_json("/api/members/m-bruno/check-in", {**base, "gate": "nope"})).status == 404
        r = await c.post_json("/api/members/m-lena/check-in", base)  # marketplace, class in 20 min: too early
        assert r.status == 200 and r.json()["result"]["reason"] == "too_early" and site.turnstile.unlocks == 0
        r = await c.post_json("/api/members/m-bruno/check-in", {**base, "pass": "p-bruno"})
        body = r.json()
        assert r.status == 200 and body["ok"] and body["result"]["reason"] == "walk_in"
        assert site.turnstile.unlocks == 1 and site.store.balance("p-bruno") == 9
        inside = (await c.get("/api/occupancy")).json()["zones"][0]
        assert inside["inside"] == 1 and inside["capacity"] == 40 and inside["people"][0]["name"] == "Bruno Díaz"
        assert inside["evacuated_at"] is None
        # an emergency release evacuates the site: nobody is counted inside after it
        await site.daemon.operator.set_emergency(True, "boss", "drill")
        await site.daemon.operator.set_emergency(False, "boss", "drill over")
        inside = (await c.get("/api/occupancy")).json()["zones"][0]
        assert inside["inside"] == 0 and inside["people"] == [] and inside["evacuated_at"] is not None
        audit = (await c.get("/api/audit?action=check_in")).json()["rows"]
        assert [a["operator"] for a in audit] == ["desk", "desk"]
        assert "reason: forgot card" in audit[0]["detail_text"]


async def two_denials(site: Any) -> tuple[Client, list[dict[str, Any]]]:
    """The desk logged in, a blocked member's card and an unknown card tapped: the list."""
    c = Client(site.port)
    await c.login("desk")
    await site.tap("DEADBEEF")
    await site.tap("cafe0001")
    return c, (await c.get("/api/denials")).json()["groups"]


async def test_denials_list_and_unknown_cards(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        c, groups = await two_denials(site)
        assert [g["reason"] for g in groups] == ["unknown_card", "member_blocked"]
        assert groups[0]["card"] == "uid:CAFE0001" and groups[0]["key"] == "card:uid:CAFE0001"  # typed: enrolled so
        assert groups[1]["member"] == "m-blocked" and groups[1]["member_name"] == "Max Mustermann"
        assert [u["card"] for u in (await c.get("/api/unknown-cards")).json()["items"]] == ["uid:CAFE0001"]
        r = await c.post_json("/api/denials/dismiss", {"groups": [groups[1]["key"]], "through": groups[1]["through"]})
        assert r.status == 200 and r.json()["saved"] is True and r.json()["dismissed"] == 1
        assert [g["reason"] for g in (await c.get("/api/denials")).json()["groups"]] == ["unknown_card"]
        for bad in ({"seq": ["x"]}, {"groups": "card:x", "through": 1}, {"groups": ["card:x"]},
                    {"groups": [], "through": 1}, {"all": True, "through": -1}, {"all": "yes", "through": 1}):
            assert (await c.post_json("/api/denials/dismiss", bad)).status == 400, bad
        # the desk gives the unknown card to Bruno: it opens the gate at once
        r = await c.post_json("/api/members/m-bruno/cards", {"card": "cafe0001"})
        assert r.status == 200, r.text
        assert (await site.tap("CAFE0001"))["member"] == "m-bruno"
        assert (await c.get("/api/unknown-cards")).json()["items"] == []
        assert (await c.post_json("/api/members/m-ana/cards", {"card": "CAFE0001"})).status == 409
        assert (await c.post_json("/api/members/m-ana/cards", {"card": "<script>"})).status == 400
        ev = site.store.recent_events(10, types=["card_enrolled"])[0]
        assert ev["card"] == "uid:CAFE0001" and ev["member"] == "m-bruno" and ev["operator"] == "desk"


async def test_done_denials_stay_done_across_a_restart(tmp_path: Path) -> None:
    """The desk's "Done" on a denial is written to the audit log (who, when): after the
    daemon restarts, the alert list does not bring back what the desk already dealt with."""
    async with running_site(tmp_path) as site:
        c, groups = await two_denials(site)
        blocked = next(g for g in groups if g["reason"] == "member_blocked")
        done = {"groups": [blocked["key"]], "through": blocked["through"]}
        assert (await c.post_json("/api/denials/dismiss", done)).json()["saved"] is True
        assert (await c.post_json("/api/denials/dismiss", done)).json()["dismissed"] == 0  # already done
        assert (await c.post_json("/api/denials/dismiss", {"seq": blocked["seqs"]})).json()["saved"] is True
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("boss")
        assert [g["reason"] for g in (await c.get("/api/denials")).json()["groups"]] == ["unknown_card"]
        rows = (await c.get("/api/audit?action=denials_done")).json()["rows"]
        assert [(r["operator"], r["action"]) for r in rows] == [("desk", "denials_done")]  # once, not twice


# -- the control socket ---------------------------------------------------------------------


async def test_control_socket_parallel_guesses_and_injected_reads(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        sock = site.daemon.config.control.socket
        open_cmd = {"cmd": "open", "gate": "turnstile-in", "reason": "test"}
        replies = await asyncio.gather(*(request(sock, {**open_cmd, "user": "boss", "password": f"guess-{i}"})
                                         for i in range(40)))
        failed = [r for r in replies if r == {"error": "authentication failed"}]
        assert len(failed) <= 5 and all("too many" in r["error"] for r in replies if r not in failed)
        assert site.turnstile.unlocks == 0
        # another account is not locked by these guesses
        r = await request(sock, {**open_cmd, "user": "desk", "password": PASSWORDS["desk"]})
        assert r["decision"] == "granted"
        # injected reads are off in this configuration: no door opens without a password
        r = await request(sock, {"cmd": "tap", "gate": "turnstile-in", "card": "0499887766"})
        assert "injected reads are off" in r["error"] and site.turnstile.unlocks == 1
        cfg = site.daemon.config
        site.daemon.config = cfg.model_copy(update={"control": cfg.control.model_copy(update={"injected_reads": True})})
        r = await request(sock, {"cmd": "tap", "gate": "turnstile-in", "card": "0499887766"})
        assert r["decision"] == "granted" and site.turnstile.unlocks == 2


async def test_control_socket_limits_are_per_unix_user(tmp_path: Path) -> None:
    """Guessing from one Unix account (uid) does not lock the same name out for another."""
    async with running_site(tmp_path) as site:
        control = site.daemon.control
        lock = {"cmd": "lockdown", "on": True, "reason": "drill", "user": "boss"}
        for i in range(5):
            r = await control.handle(json.dumps({**lock, "password": f"guess-{i}"}).encode(), uid=1000)
            assert r == {"error": "authentication failed"}
        r = await control.handle(json.dumps({**lock, "password": PASSWORDS["boss"]}).encode(), uid=1000)
        assert "too many" in r["error"] and not site.daemon.lockdown
        r = await control.handle(json.dumps({**lock, "password": PASSWORDS["boss"]}).encode(), uid=0)
        assert r == {"lockdown": True} and site.daemon.lockdown
