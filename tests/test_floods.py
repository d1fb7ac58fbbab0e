"""Floods from outside (issue 22): a slowloris on the console, MQTT messages at full rate,
unknown cards at full baud. Each against a real `gated run` process: the gate keeps
answering taps, the relays and the control socket keep working, memory stays within the
budget, and what was dropped is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gated.control import request
from tests.broker import Mosquitto, needs_mosquitto
from tests.gate_process import IN_CARD, OUT_CARD, Gate, gate_process
from tests.test_console import PASSWORDS, free_port, user_hashes
from tests.test_daemon import wait_for

RSS_BUDGET_MB = 80  # docs/performance.md: the daemon's resident memory
FLOOD_TARGETS = ["gated/storage-site/gate-rogue/events=events", "gated/storage-site/delta=delta"]
FD_LIMIT = 256  # the unit's default is 1024; lower here so the flood is quick


def low_fd_limit() -> None:  # pragma: no cover - runs in the child before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def console_section(port: int, **limits: Any) -> dict[str, Any]:
    hashes = user_hashes()
    return {
        "console": {
            "bind": "127.0.0.1",
            "port": port,
            **({"limits": limits} if limits else {}),
            "users": [
                {"name": "desk", "role": "staff", "password_hash": hashes["desk"]},
                {"name": "boss", "role": "admin", "password_hash": hashes["boss"]},
            ],
        }
    }


def half_open(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each send the start of a request and never finish it."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(True)
        try:
            s.connect(("127.0.0.1", port))
            s.send(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def console_answers(port: int, timeout: float = 3.0) -> int | None:
    """The status line of a plain GET /login, or None if nothing came back in time."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
    except OSError:
        return None
    if not head.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
        return None
    return int(head.split()[1])


async def relay_is(gate: Gate, health: str) -> None:
    deadline = time.monotonic() + 15
    while (st := await gate.status())["gates"]["in-1"]["relay"] != health:
        assert time.monotonic() < deadline, f"relay {st['gates']['in-1']['relay']}, not {health}"
        await asyncio.sleep(0.1)


def emfile_lines(gate: Gate) -> int:
    return sum(1 for t in gate.text if "Too many open files" in t or "EMFILE" in t)


async def test_console_slowloris_leaves_taps_relays_and_control_working(tmp_path: Path) -> None:
    """1.5x the fd limit in half-open requests on the console: taps are granted and charged
    once per rotation, a relay that drops its connection reconnects, `gated status` and a
    lockdown go through the control socket, the log does not spin on EMFILE, and the console
    is back once the half-open requests time out."""
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    # no count limit that would stop the flood first: the descriptor reserve alone must hold
    section = console_section(port, max_connections=10_000, per_client=10_000, header_timeout=6)
    metrics_port = free_port()  # the metrics port too: a scraper may sit on another box
    section["metrics"] = {"enabled": True, "bind": "127.0.0.1", "port": metrics_port}
    async with gate_process(tmp_path, state, preexec=low_fd_limit, extra=section) as gate:
        assert await asyncio.to_thread(console_answers, port) == 200
        assert await asyncio.to_thread(console_answers, metrics_port) == 200
        socks = await asyncio.to_thread(half_open, metrics_port, 16)
        socks += await asyncio.to_thread(half_open, port, FD_LIMIT + FD_LIMIT // 2)
        try:
            await asyncio.sleep(1.0)  # the daemon has accepted what it will accept
            peak = rss_mb(gate.proc.pid)
            # the control socket: status and a lockdown (and its release)
            st = await request(gate.socket, {"cmd": "status"}, timeout=5)
            assert "gates" in st, st
            r = await request(gate.socket, {"cmd": "lockdown", "on": True, "reason": "drill", "user": "boss",
                                            "password": PASSWORDS["boss"]}, timeout=10)
            assert r == {"lockdown": True}, r
            r = await request(gate.socket, {"cmd": "lockdown", "on": False, "user": "boss",
                                            "password": PASSWORDS["boss"]}, timeout=10)
            assert r == {"lockdown": False}, r
            # the relay board drops its connection: the daemon must be able to reconnect
            await gate.turnstile.stop_server()
            await relay_is(gate, "offline")
            await gate.turnstile.start_server()
            await relay_is(gate, "online")
            for i in range(3):
                t = await gate.tap(IN_CARD)
                assert (t["decision"], t["reason"], t["passed"]) == ("granted", "walk_in", True), (i, t, gate.text[-12:])
                await wait_for(lambda n=i: len(gate.turnstile.passages) == n + 1, 10, "the member through")
            assert emfile_lines(gate) < 30, gate.text[-5:]
            peak = max(peak, rss_mb(gate.proc.pid))
            assert peak < RSS_BUDGET_MB, f"RSS {peak:.1f} MB with the console flooded"
            # the half-open requests time out; then the console and the metrics answer again
            await wait_for_status(gate, lambda st: st["console"]["timed_out"] > 0, "the header deadline")
            deadline = time.monotonic() + 30
            status = None
            while time.monotonic() < deadline and status != 200:
                status = await asyncio.to_thread(console_answers, port, 2.0)
                if status != 200:
                    await asyncio.sleep(0.2)  # a 503 comes at once: do not spin on it
            assert status == 200
            status = None
            while time.monotonic() < deadline and status != 200:
                status = await asyncio.to_thread(console_answers, metrics_port, 2.0)
                if status != 200:
                    await asyncio.sleep(0.2)
            assert status == 200  # the metrics' own deadline (10 s) closed the half-open scrapes
            console = (await gate.status())["console"]
            assert console["refused_fds"] > 0, console
            print(f"console {console}, peak RSS {peak:.1f} MB, EMFILE lines {emfile_lines(gate)}")
        finally:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.close()
        events = gate.events()
    deductions = [e for e in events if e["type"] == "deduction" and e["pass"] == "p1"]
    assert len(deductions) == len(gate.turnstile.passages) == 3
    access = [e for e in events if e["type"] == "access"]
    assert all(e.get("passed") for e in access if e.get("decision") == "granted"), access


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_mqtt_flood_keeps_memory_in_budget_and_taps_answering(tmp_path: Path) -> None:
    """~8,000 messages/s for 12 s from another client of the broker on a peer's events
    topic and on the delta topic (a compromised gate can publish its own events topic under
    the example ACL): the daemon's RSS stays under the 80 MB budget, taps are answered and
    charged during the flood, and what it dropped is counted in the link's stats."""
    needs_mosquitto()
    broker = Mosquitto(tmp_path / "mqtt")
    broker.start()
    state = tmp_path / "state"
    state.mkdir()
    mqtt = {"mqtt": {"port": broker.port, "keepalive": 5, "backoff_initial": 0.05, "backoff_max": 0.5}}
    try:
        async with gate_process(tmp_path, state, extra=mqtt) as gate:
            await wait_for_status(gate, lambda st: st["broker"] == "connected", "connected to the broker")
            flooder = subprocess.Popen(
                [sys.executable, "-m", "tests.mqtt_flooder", str(broker.port), "12", "8000",
                 *FLOOD_TARGETS],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            peak = rss_mb(gate.proc.pid)
            taps: list[dict[str, Any]] = []
            try:
                while flooder.poll() is None:
                    peak = max(peak, rss_mb(gate.proc.pid))
                    if len(taps) < 3 and len(gate.turnstile.passages) == len(taps):
                        taps.append(await gate.tap(IN_CARD))
                    await asyncio.sleep(0.2)
                out, err = flooder.communicate(timeout=30)
            finally:
                if flooder.poll() is None:
                    flooder.kill()
                    flooder.wait()
            sent = int(out.decode().strip() or 0)
            assert sent > 50_000, err.decode()[-500:]
            assert gate.alive(), "\n".join(gate.text[-20:])
            assert peak < RSS_BUDGET_MB, f"peak RSS {peak:.1f} MB during the flood"
            assert [(t["decision"], t["passed"]) for t in taps] == [("granted", True)] * 3, taps
            stats = (await gate.status())["sync"]["stats"]
            assert stats["inbound_dropped"] > 0, stats
            print(f"sent {sent}, peak RSS {peak:.1f} MB, dropped {stats['inbound_dropped']}, "
                  f"peer events recorded {stats.get('peer_events', 0)}")
    finally:
        broker.stop()


async def wait_for_status(gate: Gate, ok: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not ok(await gate.status()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def exit_tap(gate: Gate) -> dict[str, Any]:
    """A tap at the exit gate while the entry's reader floods the log with its own."""
    def exits() -> list[dict[str, Any]]:
        return [t for t in gate.taps() if t.get("gate") == "out-1"]

    before = len(exits())
    gate.exit_reader.tap(OUT_CARD)
    await wait_for(lambda: len(exits()) > before, 15, "the exit tap")
    return exits()[before]


def ledger_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


async def test_unknown_cards_at_full_baud_are_limited_and_recorded_in_aggregate(tmp_path: Path) -> None:
    """A reader sending made-up cards as fast as 9,600 baud carries them (~960 lines/s)
    for 8 s: reads over the reader's rate are dropped and counted; of those taken, the
    first few unknown cards are recorded one by one (the desk enrols from them), the rest
    as `unknown_cards` events; every read taken is accounted for; the other reader of the
    site keeps answering meanwhile."""
    state = tmp_path / "state"
    state.mkdir()
    async with gate_process(tmp_path, state) as gate:
        before = ledger_bytes(gate.db)
        peak = rss_mb(gate.proc.pid)
        exit_taps: list[dict[str, Any]] = []
        sent, start = 0, time.monotonic()
        while (elapsed := time.monotonic() - start) < 8.0:
            while sent < int(elapsed * 960):
                gate.reader.tap(f"{0xE000000000 + sent:010X}")
                sent += 1
            if len(exit_taps) < 2 and len(gate.exit_turnstile.passages) == len(exit_taps) and elapsed > 2 * (len(exit_taps) + 1):
                exit_taps.append(await exit_tap(gate))
            peak = max(peak, rss_mb(gate.proc.pid))
            await asyncio.sleep(0.01)
        assert [(t["decision"], t["reason"]) for t in exit_taps] == [("granted", "exit")] * 2, exit_taps
        # the burst is recorded once it goes quiet (5 s)
        deadline = time.monotonic() + 15
        while not any(e["type"] == "unknown_cards" for e in gate.events()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        stats = (await gate.status())["readers"]["r-in"]["stats"]
        grown = ledger_bytes(gate.db) - before
        events = gate.events()
    single = [e for e in events if e["type"] == "access" and e["reason"] == "unknown_card"]
    bursts = [e for e in events if e["type"] == "unknown_cards"]
    print(f"sent {sent}, taken {stats['credentials']}, rate-limited {stats.get('rate_limited')}, "
          f"recorded singly {len(single)}, in {len(bursts)} bursts; ledger +{grown / 1024:.0f} KiB; "
          f"peak RSS {peak:.1f} MB")
    assert peak < RSS_BUDGET_MB
    assert stats["rate_limited"] > sent // 2, stats
    assert len(single) == 10, len(single)  # the default quota: 10 a minute per gate
    assert all(e["card"].startswith("uid:") or e["card"] for e in single)
    assert len(single) + sum(b["count"] for b in bursts) == stats["credentials"], (stats, bursts)
    assert all(b["gate"] == "in-1" and b["readers"] == ["r-in"] and 1 <= len(b["cards"]) <= 5 for b in bursts)


def closed_by_server(s: socket.socket, within: float) -> bool:
    """Whether the server closes `s` (EOF or reset) within `within` seconds."""
    s.settimeout(within)
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def test_console_limits_per_client_and_body_deadline(tmp_path: Path) -> None:
    """The default limits, one by one: a client past `per_client` gets a 503 at once (and
    another address still gets in); a request whose body never ends is closed at
    `body_timeout`, one whose headers never end at `header_timeout`; a keep-alive
    connection that asked nothing more is closed after `keep_alive`."""
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    # keep_alive longer than body_timeout: an answered request whose body is still due is
    # closed by uvicorn's keep-alive timer too, and here the deadline must do it
    section = console_section(port, per_client=4, header_timeout=1, body_timeout=1.5, keep_alive=3)
    async with gate_process(tmp_path, state, extra=section) as gate:
        held = await asyncio.to_thread(half_open, port, 4)
        try:
            assert await asyncio.to_thread(console_answers, port) == 503  # a fifth from 127.0.0.1
            # another address of the same host is another client
            with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=("127.0.0.2", 0)) as other:
                other.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                assert other.recv(64).startswith(b"HTTP/1.1 200")
            closed = await asyncio.gather(*(asyncio.to_thread(closed_by_server, s, 5.0) for s in held))
            assert all(closed)  # the headers never came: closed at the deadline
        finally:
            for s in held:
                s.close()
        with socket.create_connection(("127.0.0.1", port), timeout=3) as body:
            # a request the console reads the body of (same origin), whose body never ends
            body.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                         + f"Origin: http://127.0.0.1:{port}\r\n".encode() + b"Content-Length: 100\r\n\r\nuser=")
            assert await asyncio.to_thread(closed_by_server, body, 6.0)
        with socket.create_connection(("127.0.0.1", port), timeout=3) as idle:
            idle.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert idle.recv(64).startswith(b"HTTP/1.1 200")
            assert await asyncio.to_thread(closed_by_server, idle, 6.0)
        console = (await gate.status())["console"]
    assert console["refused_client"] >= 1 and console["timed_out"] >= 5, console


# -- the pure parts ------------------------------------------------------------------------


def test_rate_limit_allows_the_burst_then_the_rate() -> None:
    from drivers.readers.base import RateLimit

    r = RateLimit(10)  # burst 20
    assert sum(r.allow(0.0) for _ in range(100)) == 20
    assert sum(r.allow(1.0) for _ in range(100)) == 10  # one second: ten more
    assert r.allow(0.5) is False  # a clock going back refills nothing


def test_unknown_cards_quota_then_bursts() -> None:
    from datetime import UTC, datetime

    from gated.unknown_cards import UnknownCards

    u = UnknownCards(individual=3, window=60, quiet=5)
    at = datetime(2026, 1, 1, 10, tzinfo=UTC)
    admitted = [u.admit("in-1", t) for t in range(5)]
    assert admitted == [True, True, True, False, False]
    assert u.admit("in-2", 4) is True  # per gate
    for t, card in ((3, "uid:A"), (4, "uid:B"), (4, "uid:A")):
        u.count("in-1", t, at, "r-in", card)
    assert u.due(8) == []  # 4 s quiet: the burst goes on
    (ev,) = u.due(9.5)
    assert ev | {"first_at": None, "last_at": None} == {
        "gate": "in-1", "count": 3, "readers": ["r-in"], "cards": ["uid:A", "uid:B"], "first_at": None, "last_at": None}
    assert u.admit("in-1", 61) is True  # the window moved on


async def test_inbound_queue_drops_over_a_class_budget_in_order() -> None:
    from sync.link.inbound import OVERHEAD, Budget, InboundQueue

    dropped: list[str] = []
    q: InboundQueue[tuple[str, bytes]] = InboundQueue(
        lambda m: m[0], lambda m: len(m[1]), dropped.append,
        {"control": Budget(2, 10 * OVERHEAD), "peers": Budget(3, 10 * OVERHEAD), "other": Budget(1, OVERHEAD)},
    )
    for i in range(10):
        q.put_nowait(("peers", b"%d" % i))
    q.put_nowait(("control", b"ack"))
    q.put_nowait(("weird", b""))  # an unknown class counts as `other`
    q.put_nowait(("other", b"x" * 10))  # over the bytes of `other`
    assert dropped == ["peers"] * 7 + ["other"]
    got = [q.get_nowait() for _ in range(q.qsize())]
    assert got == [("peers", b"0"), ("peers", b"1"), ("peers", b"2"), ("control", b"ack"), ("weird", b"")]
    q.put_nowait(("peers", b"again"))  # taken out: room again
    assert len(dropped) == 8


async def test_inbound_queue_takes_one_message_larger_than_its_class_when_it_holds_nothing() -> None:
    """A delta of 2.8 MB (within the 4 MB `max_payload`) was over the delta class's 2 MiB and
    dropped each time the central system sent it again: the replica stayed behind for good,
    and the drop was not counted `oversized` either. One message always fits an empty class;
    the session refuses one over `max_payload` (and counts it)."""
    from sync.link.inbound import OVERHEAD, Budget, InboundQueue

    dropped: list[str] = []
    q: InboundQueue[tuple[str, bytes]] = InboundQueue(
        lambda m: m[0], lambda m: len(m[1]), dropped.append, {"delta": Budget(4, 2 * OVERHEAD), "other": Budget(1, 1)})
    big = ("delta", b"x" * 5 * OVERHEAD)
    q.put_nowait(big)
    q.put_nowait(("delta", b"small"))  # behind the big one: over the class's bytes
    assert dropped == ["delta"] and q.get_nowait() == big
    q.put_nowait(("delta", b"small"))
    assert dropped == ["delta"] and q.qsize() == 1


def test_resource_errors_are_one_log_line_per_period() -> None:
    import errno

    from structlog.testing import capture_logs

    from gated.logs import QuietResourceErrors

    loop = asyncio.new_event_loop()
    try:
        quiet = QuietResourceErrors(every=10.0)
        emfile = OSError(errno.EMFILE, "Too many open files")
        with capture_logs() as logs:
            for _ in range(1000):
                quiet(loop, {"message": "socket.accept() out of system resource", "exception": emfile})
        assert [e["event"] for e in logs] == ["out_of_resources"]
        quiet.last -= 10.0  # ten seconds later
        with capture_logs() as logs:
            quiet(loop, {"message": "socket.accept() out of system resource", "exception": emfile})
        assert logs[0]["times"] == 1000  # how many since the last line
    finally:
        loop.close()
