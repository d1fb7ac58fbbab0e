"""Attacks on a running daemon: nobody gets in by mistake, nothing is charged twice.

- QR codes: signed by another key, expired, replayed (again after a restart, and at two
  readers at once), tampered payload or signature, issued in the future.
- A cloned card at two entrance gates of one zone under hard anti-passback, tapped at the
  same instant: exactly one entry.
- The console: no login, a stolen session replayed after logout, cross-site POSTs (bad or
  missing Origin, a cross-site Referer or Sec-Fetch-Site, no CSRF token), a session cookie
  planted before login, password guessing (locked after 5).
- The control socket: wrong passwords (locked after 5), a staff member trying a lockdown.
- The broker: config/mosquitto-acl.example on a real mosquitto keeps each daemon to its
  own topics.

Daemons run in this event loop against simulated turnstiles on real Modbus TCP servers;
the console is reached over real HTTP (tests/test_console.py's client).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gated.control import request
from gated.daemon import Daemon
from rules.credential import Credential
from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import SimTurnstile
from sync.qrtoken import generate_private_key, mint, public_key_text
from tests.broker import needs_mosquitto
from tests.test_console import PASSWORDS, Client
from tests.test_console import running_site as console_site
from tests.test_faults_devices import BALANCE, CARDS, make_config, output, running_site

KEY = generate_private_key()  # the central system's signing key
ROGUE = generate_private_key()  # anybody else's


def qr_keys(_: dict[str, SimTurnstile]) -> dict[str, Any]:
    return {"qr": {"public_keys": [public_key_text(KEY.public_key())]}}


def qr_gates(sims: dict[str, SimTurnstile], _: dict[str, VirtualSerialReader]) -> list[dict[str, Any]]:
    return [
        {"id": "in-a", "zone": "main", "output": output(sims["a"])},
        {"id": "in-b", "zone": "main", "output": output(sims["b"])},
        {"id": "out", "zone": "main", "direction": "out"},
    ]


def token(key: Any = KEY, *, member: str = "m1", tid: str = "t-1", issued: timedelta = timedelta(minutes=-1),
          ttl: timedelta = timedelta(minutes=10)) -> str:
    now = datetime.now(UTC)
    return mint(key, token_id=tid, member=member, issued=now + issued, expires=now + issued + ttl)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def with_payload(tok: str, **changes: Any) -> str:
    prefix, kid, payload, sig = tok.split(".")
    body = json.loads(unb64(payload))
    body.update(changes)
    return ".".join([prefix, kid, b64(json.dumps(body, separators=(",", ":")).encode()), sig])


async def qr(daemon: Daemon, gate: str, text: str) -> dict[str, Any]:
    return await daemon.handle_credential(gate, Credential.qr(text, "test"))


# -- QR codes ----------------------------------------------------------------------------------


async def test_forged_expired_tampered_future_qr_codes_are_refused(tmp_path: Path) -> None:
    async with running_site(tmp_path, qr_gates, sims=("a", "b"), extra=qr_keys) as site:
        good = token(tid="t-good")
        _, kid, _, _ = good.split(".")
        rogue = token(ROGUE, tid="t-rogue")
        r_prefix, _, r_payload, r_sig = rogue.split(".")
        flipped = bytearray(unb64(good.split(".")[3]))
        flipped[0] ^= 1
        cases = {
            "another key": (rogue, "invalid_qr"),
            "another key, our key id": (".".join([r_prefix, kid, r_payload, r_sig]), "invalid_qr"),
            "member changed": (with_payload(good, m="m2"), "invalid_qr"),
            "expiry pushed out": (with_payload(good, e=int(datetime.now(UTC).timestamp()) + 86400), "invalid_qr"),
            "signature bit flipped": (".".join([*good.split(".")[:3], b64(bytes(flipped))]), "invalid_qr"),
            "signature removed": (good.rsplit(".", 1)[0] + ".", "invalid_qr"),
            "expired": (token(tid="t-old", issued=timedelta(hours=-2), ttl=timedelta(minutes=30)), "qr_expired"),
            "issued in an hour": (token(tid="t-future", issued=timedelta(hours=1)), "invalid_qr"),
            "not a token": ("GQ1." + "A" * 40, "invalid_qr"),
        }
        for name, (text, reason) in cases.items():
            r = await qr(site.daemon, "in-a", text)
            assert r["decision"] == "denied" and r["reason"] == reason, (name, r)
        assert site.sims["a"].unlocks == 0
        assert not site.events("deduction")
        # the genuine token still works: none of the forgeries used it up
        r = await qr(site.daemon, "in-a", good)
        assert r["decision"] == "granted" and r["passed"] is True and r["member"] == "m1"
        assert site.sims["a"].unlocks == 1


async def test_qr_replayed_also_after_restart_and_at_two_readers_at_once(tmp_path: Path) -> None:
    async with running_site(tmp_path, qr_gates, sims=("a", "b"), extra=qr_keys) as site:
        first = token(tid="t-once", member="m1")
        r = await qr(site.daemon, "in-a", first)
        assert r["decision"] == "granted" and r["passed"]
        await site.tap("out", "04A1B2C3D4")  # she leaves: the replay is not stopped by anti-passback
        r = await qr(site.daemon, "in-b", first)
        assert r["decision"] == "denied" and r["reason"] == "qr_replayed", r
        # one screenshot shown at two readers at the same instant (ten times over)
        for i in range(10):
            shot = token(tid=f"t-shot-{i}", member="m2")
            results = await asyncio.gather(qr(site.daemon, "in-a", shot), qr(site.daemon, "in-b", shot))
            assert sorted(r["decision"] for r in results) == ["denied", "granted"], results
            assert next(r for r in results if r["decision"] == "denied")["reason"] == "qr_replayed"
            await site.tap("out", "0499887766")
        assert site.balance("m2") == BALANCE - 10
        assert site.sims["a"].unlocks + site.sims["b"].unlocks == 11
    # the daemon restarts on the same database: the used tokens are remembered
    async with SimTurnstile(port=0) as a, SimTurnstile(port=0) as b:
        config = make_config(tmp_path, qr_gates({"a": a, "b": b}, {}), **qr_keys({}))
        daemon = Daemon(config)
        await daemon.start()
        try:
            for text in (first, token(tid="t-shot-3", member="m2")):
                r = await qr(daemon, "in-a", text)
                assert r["decision"] == "denied" and r["reason"] == "qr_replayed", r
            assert a.unlocks == 0
            r = await qr(daemon, "in-a", token(tid="t-new", member="m1"))
            assert r["decision"] == "granted"
        finally:
            await daemon.stop()


# -- a cloned card -----------------------------------------------------------------------------


def hard_apb_gates(sims: dict[str, SimTurnstile], _: dict[str, VirtualSerialReader]) -> list[dict[str, Any]]:
    return [
        {"id": "in-a", "zone": "main", "anti_passback": "hard", "output": output(sims["a"])},
        {"id": "in-b", "zone": "main", "anti_passback": "hard", "output": output(sims["b"])},
        {"id": "out", "zone": "main", "direction": "out"},
    ]


ROUNDS = 10


async def test_cloned_card_at_two_gates_at_once_under_hard_anti_passback(tmp_path: Path) -> None:
    """The card and its clone are tapped at both entrances at the same instant, ten rounds:
    exactly one entry each round, one deduction, and while the member is inside neither
    gate lets the clone in."""
    card = "04A1B2C3D4"
    async with running_site(tmp_path, hard_apb_gates, sims=("a", "b")) as site:
        a, b = site.sims["a"], site.sims["b"]
        for i in range(ROUNDS):
            gates = ("in-a", "in-b") if i % 2 == 0 else ("in-b", "in-a")
            results = await asyncio.gather(*(site.tap(g, card) for g in gates))
            granted = [r for r in results if r["decision"] == "granted"]
            assert len(granted) == 1 and granted[0]["passed"] is True, results
            denied = next(r for r in results if r["decision"] == "denied")
            assert denied["reason"] == "anti_passback", results
            for g in ("in-a", "in-b"):  # inside now: the clone is refused anywhere
                r = await site.tap(g, card)
                assert r["decision"] == "denied" and r["reason"] == "anti_passback", r
            r = await site.tap("out", card)
            assert r["decision"] == "granted" and r["reason"] == "exit"
        assert a.unlocks + b.unlocks == ROUNDS
        assert len(site.events("deduction")) == ROUNDS
        assert site.balance("m1") == BALANCE - ROUNDS
        # another member at the other gate at the same time is not held up or refused
        results = await asyncio.gather(site.tap("in-a", card), site.tap("in-b", "0499887766"))
        assert [r["decision"] for r in results] == ["granted", "granted"]
        assert CARDS[card] == "m1"


# -- the console -------------------------------------------------------------------------------


OPEN = "/api/gates/turnstile-in/open"


async def test_console_without_login_and_with_a_stolen_session(tmp_path: Path) -> None:
    async with console_site(tmp_path) as site:
        anon = Client(site.port)
        for method, path in [("GET", "/api/health"), ("GET", "/api/members/m-ana"), ("GET", "/audit.csv"),
                             ("GET", "/events"), ("POST", OPEN), ("POST", "/api/lockdown"),
                             ("POST", "/api/emergency"), ("POST", "/api/members/m-ana/points"),
                             ("POST", "/api/bookings/b-spin/attend")]:
            if method == "GET":
                r = await anon.get(path)
                assert r.status in (303, 401), path
            else:
                r = await anon.post_json(path, {"reason": "x", "on": True, "confirm": "LOCKDOWN", "points": 5},
                                         csrf="guess")
                assert r.status == 401, path
        # a session cookie planted before login (fixation) is not the one handed out
        victim = Client(site.port)
        victim.cookies["gated_session"] = "attacker-chosen-value"
        assert (await victim.login("boss")).status == 303
        assert victim.cookies["gated_session"] != "attacker-chosen-value"
        planted = Client(site.port)
        planted.cookies["gated_session"] = "attacker-chosen-value"
        assert (await planted.get("/api/me")).status == 401
        # the cookie and CSRF token are stolen, then the victim logs out: both are dead
        stolen, stolen_csrf = victim.cookies["gated_session"], victim.csrf
        thief = Client(site.port)
        thief.cookies["gated_session"] = stolen
        assert (await thief.get("/api/me")).status == 200  # the theft works while logged in...
        r = await victim.request("POST", "/logout", headers={"Content-Type": "application/x-www-form-urlencoded"},
                                 body=f"csrf={victim.csrf}".encode())
        assert r.status == 303
        assert (await thief.get("/api/me")).status == 401  # ...and not after
        for path, body in [(OPEN, {"reason": "x"}), ("/api/lockdown", {"on": True, "confirm": "LOCKDOWN"}),
                           ("/api/emergency", {"on": True, "confirm": "EMERGENCY"})]:
            r = await thief.post_json(path, body, csrf=stolen_csrf)
            assert r.status == 401, path
        assert site.turnstile.unlocks == 0
        assert not site.daemon.lockdown and not site.daemon.fire_alarm
        assert not site.store.recent_events(50, types=["override", "lockdown", "fire_alarm"])


async def test_console_cross_site_requests_refused(tmp_path: Path) -> None:
    async with console_site(tmp_path) as site:
        c = Client(site.port)
        assert (await c.login("boss")).status == 303
        own = c.origin
        bad_headers: list[tuple[str | None, dict[str, str]]] = [
            ("http://evil.example", {}),
            (None, {}),  # neither Origin nor Referer
            ("null", {}),  # sandboxed iframe / data: URL
            (f"{own}.evil.example", {}),
            (f"https://127.0.0.1:{site.port}", {}),  # another scheme is another origin
            (f"{own}/path", {}),
            (None, {"Referer": "http://evil.example/attack.html"}),
            (None, {"Referer": f"http://127.0.0.1:{site.port}.evil.example/"}),
            (own, {"Sec-Fetch-Site": "cross-site"}),
            (own, {"Sec-Fetch-Site": "same-site"}),  # a sibling subdomain is not this console
        ]
        for origin, extra in bad_headers:
            for path, body in [(OPEN, {"reason": "x"}), ("/api/lockdown", {"on": True, "confirm": "LOCKDOWN"})]:
                r = await c.request("POST", path, origin=origin,
                                    headers={"Content-Type": "application/json", "X-CSRF-Token": c.csrf, **extra},
                                    body=json.dumps(body).encode())
                assert r.status == 403, (origin, extra, path, r.status)
        # same origin, but the CSRF token is missing, empty, or another session's
        other = Client(site.port)
        assert (await other.login("desk")).status == 303
        for token in (None, "", other.csrf, c.csrf + "x"):
            headers = {"Content-Type": "application/json"}
            if token is not None:
                headers["X-CSRF-Token"] = token
            r = await c.request("POST", OPEN, headers=headers, body=b'{"reason": "x"}')
            assert r.status == 403 and "CSRF" in r.json()["error"], token
        # a form post (what a cross-site <form> can send) is not JSON
        r = await c.request("POST", OPEN, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                   "X-CSRF-Token": c.csrf}, body=b"reason=x")
        assert r.status == 415
        # logout without the token does not log out (no forced-logout CSRF)
        r = await c.request("POST", "/logout", headers={"Content-Type": "application/x-www-form-urlencoded"},
                            body=b"csrf=wrong")
        assert r.status == 403 and (await c.get("/api/me")).status == 200
        assert site.turnstile.unlocks == 0 and not site.daemon.lockdown
        assert not site.store.recent_events(50, types=["override", "lockdown"])
        # the same requests done right work (the guards are not simply refusing everything)
        r = await c.post_json(OPEN, {"reason": "delivery"})
        assert r.status == 200 and site.turnstile.unlocks == 1


async def test_console_password_guessing_locked_out_after_five(tmp_path: Path) -> None:
    async with console_site(tmp_path) as site:
        c = Client(site.port)
        guesses = ["123456", "password", "desk", "desk-pass-2", "Desk-pass-1"]
        for guess in guesses:
            r = await c.login("desk", guess)
            assert r.status == 401
        for guess in ["qwerty", PASSWORDS["desk"]]:  # even the right one is refused now
            r = await c.login("desk", guess)
            assert r.status == 429 and 0 < int(r.headers["retry-after"]) <= 60
        assert "gated_session" not in c.cookies
        # another spelling of the name, from the same address: refused as well
        r = await c.login("DESK", "letmein")
        assert r.status == 429
        assert site.turnstile.unlocks == 0


# -- the control socket ------------------------------------------------------------------------


async def test_control_socket_wrong_password_and_staff_lockdown(tmp_path: Path) -> None:
    async with console_site(tmp_path) as site:
        sock = site.daemon.config.control.socket
        open_cmd = {"cmd": "open", "gate": "turnstile-in", "reason": "test"}
        r = await request(sock, {**open_cmd, "user": "desk", "password": "wrong"})
        assert r == {"error": "authentication failed"}
        r = await request(sock, {**open_cmd, "user": "nobody", "password": PASSWORDS["desk"]})
        assert r == {"error": "authentication failed"}
        r = await request(sock, {**open_cmd, "user": "desk"})  # no password at all
        assert r["error"] == "invalid command"
        r = await request(sock, {"cmd": "lockdown", "on": True, "user": "desk", "password": PASSWORDS["desk"]})
        assert "admin" in r["error"] and not site.daemon.lockdown
        r = await request(sock, {"cmd": "lockdown", "on": True, "user": "boss", "password": "boss"})
        assert r == {"error": "authentication failed"} and not site.daemon.lockdown
        assert site.turnstile.unlocks == 0
        # guessing: after 5 failures even the right password is refused for a while
        for i in range(4):
            r = await request(sock, {**open_cmd, "user": "boss", "password": f"guess-{i}"})
            assert r == {"error": "authentication failed"}
        r = await request(sock, {"cmd": "lockdown", "on": True, "reason": "drill", "user": "boss", "password": PASSWORDS["boss"]})
        assert "too many" in r["error"] and not site.daemon.lockdown
        # a tap over the socket cannot pass extra fields (no member or decision injection)
        r = await request(sock, {"cmd": "tap", "gate": "turnstile-in", "card": "FFFF", "decision": "granted"})
        assert r["error"] == "invalid command"
        assert site.turnstile.unlocks == 0
        assert not site.store.recent_events(50, types=["override", "lockdown"])
        # the desk's own account was not locked by the guesses against boss
        r = await request(sock, {**open_cmd, "user": "desk", "password": PASSWORDS["desk"]})
        assert r["decision"] == "granted" and r["reason"] == "override"


# -- the broker's ACL example ------------------------------------------------------------------

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ACL_EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "mosquitto-acl.example"


def _disconnect(clients: list[Any]) -> None:
    for c in clients:
        c.loop_stop()
        c.disconnect()


def _mqtt(port: int, user: str, password: str) -> Any:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}", protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


@contextlib.contextmanager
def acl_broker(tmp_path: Path, users: dict[str, str]) -> Iterator[int]:
    """A real mosquitto with config/mosquitto-acl.example, a password file of `users` and
    no anonymous clients, as the central broker runs it; yields its port."""
    needs_mosquitto()
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    for user, pw in users.items():
        subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(passwd), user, pw],
                       check=True, capture_output=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "mosquitto.conf"
    acl = tmp_path / "acl"
    acl.write_text(ACL_EXAMPLE.read_text())
    conf.write_text(f"per_listener_settings false\nallow_anonymous false\npassword_file {passwd}\n"
                    f"acl_file {acl}\nlistener {port} 127.0.0.1\n"
                    # as root mosquitto drops to user "mosquitto", who cannot read tmp_path
                    + ("user root\n" if os.geteuid() == 0 else ""))
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mosquitto did not start"
                time.sleep(0.05)
        yield port
    finally:
        broker.terminate()
        broker.wait(10)


def test_broker_acl_example_keeps_each_daemon_to_its_own_topics(tmp_path: Path) -> None:
    """config/mosquitto-acl.example on a real mosquitto: a gate daemon cannot post another
    gate's events, acknowledge its own events, push a delta or pose as the central system;
    what it is meant to publish gets through."""
    users = {"central": "c-pw", "gym-madrid-1.gate-a": "a-pw", "gym-madrid-1.gate-b": "b-pw"}
    clients: list[Any] = []
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(acl_broker(tmp_path, users))
        stack.callback(_disconnect, clients)
        seen: dict[str, list[tuple[str, bytes]]] = {"central": [], "gate-a": [], "gate-b": []}
        subscribed = threading.Semaphore(0)
        for who, user in (("central", "central"), ("gate-a", "gym-madrid-1.gate-a"), ("gate-b", "gym-madrid-1.gate-b")):
            c = _mqtt(port, user, users[user])
            c.on_message = lambda _c, _u, m, who=who: seen[who].append((m.topic, m.payload))
            c.on_subscribe = lambda *_: subscribed.release()
            clients.append(c)
            c.subscribe("gated/#", qos=1)
        central, gate_a, gate_b = clients
        for _ in clients:  # every SUBACK back: the subscriptions are in place
            assert subscribed.acquire(timeout=10)
        base = "gated/gym-madrid-1"
        sends = [
            (gate_a, f"{base}/gate-a/events", b"ok: own events"),
            (gate_a, f"{base}/resync", b"ok: resync"),
            (gate_a, f"{base}/gate-b/events", b"FORGED: another gate's events"),
            (gate_a, f"{base}/gate-a/ack", b"FORGED: acking its own events"),
            (gate_a, f"{base}/delta", b"FORGED: a delta"),
            (gate_a, f"{base}/snapshot", b"FORGED: a snapshot"),
            (gate_a, "gated/central/status", b"FORGED: central status"),
            (gate_a, "gated/other-site/gate-a/events", b"FORGED: another site"),
            (central, f"{base}/gate-a/ack", b"ok: ack for a"),
            (central, f"{base}/gate-b/ack", b"ok: ack for b"),
            (central, f"{base}/delta", b"ok: delta"),
            # a replaced box asks for its own events back; only the central system answers
            (gate_a, f"{base}/gate-a/history/request", b"ok: history request"),
            (gate_a, f"{base}/gate-b/history/request", b"FORGED: asking for another gate's events"),
            (gate_a, f"{base}/gate-a/history", b"FORGED: its own history answer"),
            (gate_b, f"{base}/gate-a/history", b"FORGED: another gate's history answer"),
            (central, f"{base}/gate-a/history", b"ok: history for a"),
        ]
        # Last, from each sender, a message every client receives: the broker keeps one
        # client's messages in order, so once the end marks are in, whatever was going to
        # arrive from the sends above has (a forged one that did not, never will).
        ends = [(gate_a, f"{base}/gate-a/events", b"end: gate-a"), (gate_b, f"{base}/gate-b/events", b"end: gate-b"),
                (central, f"{base}/delta", b"end: central")]
        for client, topic, payload in sends + ends:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        marks = {"central": {b"end: gate-a", b"end: gate-b"}, "gate-a": {b"end: central", b"end: gate-b"},
                 "gate-b": {b"end: central", b"end: gate-a"}}
        deadline = time.monotonic() + 10
        while not all(marks[w] <= {p for _, p in seen[w]} for w in marks) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert all(marks[w] <= {p for _, p in seen[w]} for w in marks), seen
        got = {who: {p.decode() for _, p in msgs} for who, msgs in seen.items()}
        assert not any(p.startswith("FORGED") for msgs in got.values() for p in msgs), got
        assert got["central"] >= {"ok: own events", "ok: resync"}
        assert "ok: ack for a" in got["gate-a"] and "ok: ack for b" not in got["gate-a"]
        assert "ok: delta" in got["gate-a"] and "ok: delta" in got["gate-b"]
        assert "ok: own events" in got["gate-b"]  # site-wide anti-passback reads the others' events
        assert "ok: history request" in got["central"]
        assert "ok: history for a" in got["gate-a"] and "ok: history for a" not in got["gate-b"]


def test_broker_acl_example_lets_the_example_bridge_carry_every_topic_it_bridges(tmp_path: Path) -> None:
    """config/mosquitto-bridge.conf.example on a site broker, bridged to a central broker
    that runs config/mosquitto-acl.example with the bridge's user: every topic the bridge
    carries gets across in each direction it is carried. (The bridge user's ACL once
    lacked a replaced box's history request and answer: its lost events never came back
    at a site with its own broker.)"""
    import re
    import secrets

    from tests.broker import BRIDGE_EXAMPLE, Mosquitto, bridge_config

    site = "gym-madrid-1"
    users = {"central": secrets.token_hex(8), f"{site}.gate-a": secrets.token_hex(8),
             f"bridge-{site}": secrets.token_hex(8)}
    carried = re.findall(r"^topic (\S+) (in|out|both) [01]$", BRIDGE_EXAMPLE.read_text(), flags=re.M)
    assert len(carried) >= 15, carried
    clients: list[Any] = []
    with contextlib.ExitStack() as stack:
        (tmp_path / "central").mkdir()
        port = stack.enter_context(acl_broker(tmp_path / "central", users))
        bridge = bridge_config(port, site).replace("remote_password change-me", f"remote_password {users[f'bridge-{site}']}")
        site_broker = Mosquitto(tmp_path / "site", extra=bridge)
        site_broker.start()
        stack.callback(site_broker.stop)
        stack.callback(_disconnect, clients)
        seen: dict[str, set[str]] = {"central": set(), "site": set()}
        subscribed = threading.Semaphore(0)
        central = _mqtt(port, "central", users["central"])
        gate_a = _mqtt(port, f"{site}.gate-a", users[f"{site}.gate-a"])  # a gate failed over to the central broker

        import paho.mqtt.client as mqtt

        local = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-site", protocol=mqtt.MQTTv5)
        local.connect("127.0.0.1", site_broker.port)
        local.loop_start()
        clients += [central, gate_a, local]
        for who, c in (("central", central), ("site", local)):
            c.on_message = lambda _c, _u, m, who=who: seen[who].add(m.payload.decode())
            c.on_subscribe = lambda *_: subscribed.release()
            c.subscribe("gated/#", qos=1)
        for _ in range(2):
            assert subscribed.acquire(timeout=10)

        def topic(pattern: str) -> str:
            return pattern.replace("+", "gate-a")

        # the bridge connects within a second or two: an upward message, until one is through
        deadline = time.monotonic() + 20
        while not any(p.startswith("probe") for p in seen["central"]):
            assert time.monotonic() < deadline, "the bridge did not connect to the central broker"
            local.publish(f"gated/{site}/gate-a/events", b"probe", qos=1).wait_for_publish(5)
            time.sleep(0.2)
        expected: dict[str, set[str]] = {"central": set(), "site": set()}
        for pattern, way in carried:
            if way in ("out", "both"):
                expected["central"].add(f"up {pattern}")
                local.publish(topic(pattern), f"up {pattern}".encode(), qos=1).wait_for_publish(5)
            if way in ("in", "both"):
                # down: what the central system sends, or (both ways) what a gate on the
                # central broker publishes for the site's other gates
                sender = gate_a if way == "both" else central
                expected["site"].add(f"down {pattern}")
                sender.publish(topic(pattern), f"down {pattern}".encode(), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 15
        while any(expected[w] - seen[w] for w in expected) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not expected["central"] - seen["central"], f"not carried up: {sorted(expected['central'] - seen['central'])}"
        assert not expected["site"] - seen["site"], f"not carried down: {sorted(expected['site'] - seen['site'])}"
