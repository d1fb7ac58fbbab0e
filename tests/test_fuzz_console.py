"""Fuzzing what reaches the daemon from outside (hypothesis, bounded and derandomized):

- HTTP requests to the console of a running daemon: random methods, paths, query strings,
  headers, cookies and bodies, logged in or not, with or without the right Origin and
  CSRF token (so the write handlers are reached too), plus raw malformed bytes on the
  socket. Never a 5xx, never a crash; afterwards the daemon still decides a tap.
- Bytes on a pty into a running serial reader (line and STX/ETX framings, with and without
  checksums): it never dies and reads the next good frame.
- Strings into `TrustedKeys.verify`: random text and mutations of genuine tokens never
  raise, and a mutated token is never accepted with a different claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import string
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.readers.frames import Checksum, FrameConfig, Framing, Terminator, encode_frame
from drivers.readers.serial_reader import SerialReader
from rules.credential import Credential
from simulator.serial_reader import VirtualSerialReader
from sync.qrtoken import TrustedKeys, generate_private_key, mint
from tests.test_console import running_site
from tests.test_daemon import wait_for

HTTP_EXAMPLES = 1000
RAW_EXAMPLES = 100
SERIAL_EXAMPLES = 200
QR_EXAMPLES = 1500

FUZZ = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

T = TypeVar("T")

# -- HTTP ---------------------------------------------------------------------------------------

ROUTES = [
    "/", "/login", "/logout", "/healthz", "/members", "/classes", "/audit", "/audit.csv",
    "/api/me", "/api/health", "/api/feed", "/api/members", "/api/members/m-ana", "/api/members/m-ana/points",
    "/api/classes", "/api/audit", "/api/gates/turnstile-in/open", "/api/gates/exit/open",
    "/api/bookings/b-spin/attend", "/api/bookings/b-pilates/attend", "/api/lockdown", "/api/emergency",
    "/static/console.js", "/static/console.css", "/static/../app.py", "/static/%2e%2e/app.py",
    "/reports", "/reports/loyalty.csv", "/api/reports/loyalty", "/api/occupancy", "/api/denials",
    "/api/denials/dismiss", "/api/unknown-cards", "/api/members/m-bruno/check-in", "/api/members/m-ana/cards",
    "/display/entrance", "/display/entrance/events", "/display/nope",
    "/api/alarms/ack", "/api/members/m-ana/photo", "/api/members/nobody/photo", "/api/denials?offset=99",
]
QUERY_KEYS = ["q", "limit", "day", "after", "operator", "action", "from", "to", "token", "x"]
JSON_KEYS = ["reason", "on", "confirm", "points", "refund", "gate", "booking", "pass", "card", "seq", "groups", "through",
             "all", "id", "photo", "x"]
HEADER_NAMES = [
    "Origin", "Referer", "Content-Type", "X-CSRF-Token", "Last-Event-ID", "Sec-Fetch-Site", "Accept",
    "Accept-Encoding", "Range", "If-None-Match", "X-Forwarded-For", "Transfer-Encoding-Test", "Content-Language",
]
# header values http.client will send: no CR/LF/NUL, latin-1
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=80
)
segment = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF, blacklist_categories=("Cs",)),
                  max_size=30).map(lambda s: quote(s, safe="")) | st.sampled_from(
    ["9999-12-31", "0001-01-01", "1899-12-31", "2026-12-05", "2026-02-30", "99999999999999999999", "-1"])
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                   st.text(max_size=300), st.sampled_from(["LOCKDOWN", "RELEASE", "EMERGENCY", "RESTORE", "x" * 201]))
json_value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                          max_leaves=10)


@st.composite
def paths(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        path = draw(st.sampled_from(ROUTES))
    elif kind == 1:
        path = draw(st.sampled_from(ROUTES)).rstrip("/") + "/" + draw(segment)
    elif kind == 2:
        path = "/" + "/".join(draw(st.lists(segment, min_size=1, max_size=5)))
    else:
        path = "/api/" + draw(st.sampled_from(["members", "gates", "bookings"])) + "/" + draw(segment) + "/" + draw(
            st.sampled_from(["open", "attend", "points", ""]))
    if draw(st.booleans()):
        pairs = draw(st.lists(st.tuples(st.sampled_from(QUERY_KEYS), segment), max_size=4))
        path += "?" + "&".join(f"{k}={v}" for k, v in pairs)
    if path.startswith("/events"):  # an endless stream when logged in: not a request/response
        path = "/x" + path
    return path


@st.composite
def bodies(draw: st.DrawFn) -> bytes | None:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return None
    if kind == 1:
        return draw(st.binary(max_size=2000))
    if kind == 2:
        return json.dumps(draw(st.dictionaries(st.sampled_from(JSON_KEYS), json_value, max_size=5))).encode()
    if kind == 3:
        return json.dumps(draw(json_value)).encode()
    return b"x" * draw(st.sampled_from([16 * 1024 + 1, 70_000]))  # over the body limit


@st.composite
def http_requests(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO"])),
        "path": draw(paths()),
        "headers": draw(st.dictionaries(st.sampled_from(HEADER_NAMES), header_text, max_size=5)),
        "body": draw(bodies()),
        "session": draw(st.sampled_from(["none", "valid", "garbage"])),
        "right_origin": draw(st.booleans()),
        "right_csrf": draw(st.booleans()),
        "json_type": draw(st.booleans()),
        "cookie": draw(header_text.filter(lambda s: ";" not in s)),
    }


def send(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v.encode("latin-1"))
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        r.read()
        return r.status
    except (ConnectionError, http.client.RemoteDisconnected):
        return 0  # the server may close a connection it refuses to read (oversized body)
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
        return out


async def test_console_http_fuzz_never_5xx_and_daemon_keeps_working(tmp_path: Path) -> None:
    async with running_site(tmp_path) as site:
        loop = asyncio.get_running_loop()
        console = site.daemon.console.console
        port = site.port
        statuses: dict[int, int] = {}

        def on_loop(coro: Awaitable[T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(30)  # type: ignore[arg-type]

        async def new_session() -> tuple[str, str]:
            token, s = console.sessions.create("boss", "admin", "127.0.0.1")
            return token, s.csrf

        @settings(FUZZ, max_examples=HTTP_EXAMPLES)
        @given(http_requests())
        def fuzz(req: dict[str, Any]) -> None:
            headers = {"Host": f"127.0.0.1:{port}"}
            csrf = "nope"
            if req["session"] == "valid":
                token, csrf = on_loop(new_session())
                headers["Cookie"] = f"gated_session={token}; {req['cookie']}"
            elif req["session"] == "garbage":
                headers["Cookie"] = f"gated_session={req['cookie']}"
            if req["right_origin"]:
                headers["Origin"] = f"http://127.0.0.1:{port}"
            if req["right_csrf"]:
                headers["X-CSRF-Token"] = csrf
            if req["json_type"]:
                headers["Content-Type"] = "application/json"
            headers.update(req["headers"])
            status = send(port, req["method"], req["path"], headers, req["body"])
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (status, req)

        @settings(FUZZ, max_examples=RAW_EXAMPLES)
        @given(st.one_of(
            st.binary(max_size=3000),
            st.builds(lambda m, p, v, rest: m + b" " + p + b" " + v + b"\r\n" + rest,
                      st.sampled_from([b"GET", b"POST", b"G\x00T", b""]), st.binary(max_size=100),
                      st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/9.9", b"ICY"]),
                      st.binary(max_size=500)),
        ))
        def fuzz_raw(data: bytes) -> None:
            out = raw(port, data)
            if out.startswith(b"HTTP/1.1 "):
                assert out[9:10] != b"5", out[:200]

        await asyncio.to_thread(fuzz)
        await asyncio.to_thread(fuzz_raw)
        # days at the calendar's ends: the day after 9999-12-31 overflowed (a 500)
        token, _ = await new_session()
        for path in ("/api/classes?day=9999-12-31", "/api/classes?day=0001-01-01", "/api/audit?from=0001-01-01&to=9999-12-31",
                     "/api/reports/loyalty?from=9999-12-01&to=9999-12-31", "/reports/loyalty.csv?to=0001-01-02"):
            status = await asyncio.to_thread(send, port, "GET", path, {"Host": f"127.0.0.1:{port}", "Cookie": f"gated_session={token}"}, None)
            assert status < 500, (path, status)
        assert sum(v for k, v in statuses.items() if 200 <= k < 300) > 0  # some requests got through
        # the daemon is alive and deciding; any switch the fuzzer flipped is put back
        if site.daemon.fire_alarm:
            await site.daemon.operator.set_emergency(False, "test", None)
        if site.daemon.lockdown:
            await site.daemon.operator.set_lockdown(False, "test", None)
        assert site.daemon.console.running
        r = await site.daemon.handle_credential("turnstile-in", Credential.card("0499887766", "test"))  # Bruno, walk-in
        assert r["decision"] == "granted", r
        assert await asyncio.to_thread(send, port, "GET", "/healthz", {"Host": f"127.0.0.1:{port}"}, None) == 200
        # a name this console does not answer to (DNS rebinding) is refused before any route
        assert await asyncio.to_thread(send, port, "GET", "/healthz", {"Host": "x"}, None) == 400


# -- serial frames ------------------------------------------------------------------------------

FRAMES = [
    FrameConfig(),
    FrameConfig(framing=Framing.STX_ETX, checksum=Checksum.XOR_HEX),
    FrameConfig(terminator=Terminator.CR, checksum=Checksum.XOR, max_frame_length=32),
]


@pytest.mark.parametrize("frame", FRAMES, ids=["line-crlf", "stx-etx-xorhex", "line-cr-xor-short"])
async def test_serial_reader_survives_any_bytes(tmp_path: Path, frame: FrameConfig) -> None:
    got: list[Credential] = []

    async def on_credential(c: Credential) -> None:
        got.append(c)

    with VirtualSerialReader(tmp_path / "reader", frame) as pty:
        reader = SerialReader("fuzz", pty.path, frame=frame, debounce=0)
        task = asyncio.create_task(reader.run(on_credential))
        loop = asyncio.get_running_loop()
        try:
            await wait_for(lambda: reader.health.value == "online", what="the reader to open")
            examples = [0]

            def write(data: bytes) -> None:
                pty.write(data)  # from this thread: a full pty blocks here, not the loop

            @settings(FUZZ, max_examples=SERIAL_EXAMPLES)
            @given(st.lists(st.one_of(
                st.binary(max_size=600),
                st.sampled_from([b"\x02", b"\x03", b"\r", b"\n", b"\r\n", b"\x00" * 50, b"\xff" * 300]),
                st.text(string.hexdigits + "\r\n\x02\x03", max_size=40).map(str.encode),
            ), max_size=6))
            def fuzz(chunks: list[bytes]) -> None:
                for chunk in chunks:
                    write(chunk)
                # then a good card, after whatever the garbage left half-open
                n = examples[0] = examples[0] + 1
                card = f"04{n:08X}"
                write(b"\x03\r\n" + encode_frame(frame, card))
                asyncio.run_coroutine_threadsafe(
                    wait_for(lambda: any(c.value == card for c in got), 10, f"card {card} after garbage"), loop
                ).result(15)

            await asyncio.to_thread(fuzz)
            assert not task.done()
            assert reader.health.value == "online"
            assert reader.stats["callback_errors"] == 0
            assert reader.stats["credentials"] >= SERIAL_EXAMPLES
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- QR tokens -----------------------------------------------------------------------------------

KEY = generate_private_key()
TRUSTED = TrustedKeys.of([KEY.public_key()])


def genuine(member: str = "m1", tid: str = "t-1") -> str:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    return mint(KEY, token_id=tid, member=member, issued=now, expires=now + timedelta(minutes=5))


GOOD = genuine()
OTHERS = ["m2", "admin", "m1"]
# what a mutation may legitimately produce: the genuine token, or (spliced together again
# part by part) one of the other genuine tokens it borrows parts from
ALLOWED = {TRUSTED.verify(GOOD)} | {TRUSTED.verify(genuine(member=m, tid="t-2")) for m in OTHERS}


@st.composite
def mutated(draw: st.DrawFn) -> str:
    tok = GOOD
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 4))
        i = draw(st.integers(0, len(tok)))
        if op == 0:  # replace a character
            tok = tok[:i] + draw(st.characters(max_codepoint=0x2FF)) + tok[i + 1:]
        elif op == 1:  # insert
            tok = tok[:i] + draw(st.text(max_size=5)) + tok[i:]
        elif op == 2:  # delete
            tok = tok[:i] + tok[i + draw(st.integers(1, 10)):]
        elif op == 3:  # swap two parts
            parts = tok.split(".")
            a, b = draw(st.integers(0, len(parts) - 1)), draw(st.integers(0, len(parts) - 1))
            parts[a], parts[b] = parts[b], parts[a]
            tok = ".".join(parts)
        else:  # splice in a part of another genuine token
            other = genuine(member=draw(st.sampled_from(OTHERS)), tid="t-2").split(".")
            parts = tok.split(".")
            k = draw(st.integers(0, min(len(parts), len(other)) - 1))
            parts[k] = other[k]
            tok = ".".join(parts)
    return tok


@settings(FUZZ, max_examples=QR_EXAMPLES)
@given(st.one_of(mutated(), st.text(max_size=300), st.text(string.ascii_letters + string.digits + "-_.", max_size=400)
                 .map(lambda s: "GQ1." + s)))
def test_qr_verify_never_raises_and_never_accepts_a_forgery(text: str) -> None:
    claim = TRUSTED.verify(text)
    if claim is not None:
        # only a genuine token (or another encoding of its very bytes) is accepted
        assert claim in ALLOWED, text
