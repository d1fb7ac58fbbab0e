"""A real mosquitto for the sync tests, plus helpers to build gate-side stores and links.

Fixtures (import them into conftest.py, or `from tests.broker import *` in a test file):
- `mosquitto`: a broker on a free loopback port, started for the test and killed after;
  `.stop()`, `.start()`, `.restart()` let a test take it away and bring it back.
- `mosquitto_factory`: a callable making more brokers (TLS configurations, etc.).
- `central`: an in-process reference central system (simulator.central.Central) running
  against `mosquitto`, connected, with site `s1` empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rules.model import AntiPassback, Direction, Gate, Policy, Site
from simulator.central import Central, CentralSettings
from sync.link.settings import MqttSettings
from sync.store import Store

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BRIDGE_EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "mosquitto-bridge.conf.example"
WAIT_S = 20.0  # bounds a hang; not a performance claim
SITE = "s1"
TZ = ZoneInfo("Europe/Madrid")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def needs_mosquitto() -> None:
    """The broker is part of what is tested, not optional: `make test` installs it (as it
    does socat), so a machine without it fails with the way to fix it."""
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is required (make system-deps installs it)")


class PortTaken(RuntimeError):
    """The port was bound by someone else before mosquitto could bind it."""


def _listening_pid_has(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on 127.0.0.1:`port` (Linux: the
    LISTEN entry of /proc/net/tcp, found among the process's descriptors)."""
    want = f"0100007F:{port:04X}"
    inodes = set()
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) > 9 and cols[1] == want and cols[3] == "0A":
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return False
    fd_dir = Path(f"/proc/{pid}/fd")
    with contextlib.suppress(OSError):
        for fd in fd_dir.iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return True
    return False


@dataclass
class Mosquitto:
    """One mosquitto process with its own config, killed by PID."""

    workdir: Path
    port: int = field(default_factory=free_port)
    tls: dict[str, str] | None = None  # cafile, certfile, keyfile, require_certificate
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.workdir / f"mosquitto-{self.port}.conf"

    def _write_conf(self) -> None:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:  # else mosquitto drops to user "mosquitto", who cannot read tmp_path
            lines.append("user root")
        if self.tls:
            lines += [f"cafile {self.tls['cafile']}", f"certfile {self.tls['certfile']}", f"keyfile {self.tls['keyfile']}"]
            if self.tls.get("require_certificate"):
                lines += ["require_certificate true", "use_identity_as_username true"]
        self.conf.write_text("\n".join(lines) + "\n" + self.extra)

    def start(self, timeout: float = WAIT_S) -> None:
        """Until this mosquitto listens on `port`. A port free when it was picked may be
        taken before mosquitto binds it (another test's broker or server, under xdist):
        then something else answers a connect, and the test would talk to another test's
        broker (a foreign snapshot, client ids taken over). So the listener must be this
        process's; at the first start a port found taken is picked again."""
        assert self.proc is None, "already running"
        for attempt in range(5):
            try:
                self._start_once(timeout)
                self._started = True
                return
            except PortTaken:
                if getattr(self, "_started", False) or attempt == 4:
                    raise  # a restart keeps its port: the test's clients know it
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        log_path = self.workdir / f"mosquitto-{self.port}.log"
        log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                text = log_path.read_text(errors="replace")
                if "Address already in use" in text:
                    raise PortTaken(self.port)
                raise RuntimeError(f"mosquitto exited: {text}")
            if _listening_pid_has(self.proc.pid, self.port):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("mosquitto did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    needs_mosquitto()
    made: list[Mosquitto] = []

    def make(**kw: Any) -> Mosquitto:
        m = Mosquitto(tmp_path / "broker", **kw)
        m.start()
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


@pytest.fixture
def mosquitto(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return mosquitto_factory()


def bridge_config(remote_port: int, site: str = "s1") -> str:
    """config/mosquitto-bridge.conf.example for a site broker bridged to a central broker
    on loopback: the address and site changed, no TLS, a test-sized restart_timeout."""
    text = BRIDGE_EXAMPLE.read_text(encoding="utf-8")
    assert "central.example.net:8883" in text and "restart_timeout 1 10" in text
    text = text.replace("central.example.net:8883", f"127.0.0.1:{remote_port}").replace("gym-madrid-1", site)
    text = text.replace("restart_timeout 1 10", "restart_timeout 1 2")
    return "\n".join(line for line in text.splitlines() if not line.startswith("bridge_cafile")) + "\n"


def cluster_link(remote_port: int) -> str:
    """Two mosquitto nodes made into a small "cluster": every gated topic both ways (EMQX
    and HiveMQ clusters do this themselves)."""
    return (
        f"connection node-link\naddress 127.0.0.1:{remote_port}\nbridge_protocol_version mqttv50\n"
        "cleansession false\nrestart_timeout 1 2\nnotifications false\ntry_private true\n"
        "topic gated/# both 1\n"
    )


# -- a tiny site ---------------------------------------------------------------------------------

GATES = {
    "in-1": Gate("in-1", "main", Direction.IN, anti_passback=AntiPassback.HARD),
    "out-1": Gate("out-1", "main", Direction.OUT),
}
POLICY = Policy()


def site() -> Site:
    return Site(TZ, id=SITE)


def clock(start: datetime | None = None) -> Callable[[], datetime]:
    """A clock that advances one second per reading: events get distinct, increasing times."""
    state = {"t": start or datetime(2026, 11, 18, 9, 0, tzinfo=UTC)}

    def now() -> datetime:
        from datetime import timedelta

        state["t"] = state["t"] + timedelta(seconds=1)
        return state["t"]

    return now


def settings_for(broker: Mosquitto, daemon: str, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = {
        "port": broker.port,
        "site": SITE,
        "daemon": daemon,
        "ack_timeout": 1.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.5,
        "resync_retry": 2.0,
        "keepalive": 5,
    }
    base.update(kw)
    return MqttSettings(**base)


def settings_for_port(port: int, daemon: str, **kw: Any) -> MqttSettings:
    """Gate settings for a subprocess that only knows the broker's port."""
    m = Mosquitto.__new__(Mosquitto)
    m.port = port
    return settings_for(m, daemon, **kw)


def central_settings(broker: Mosquitto, **kw: Any) -> CentralSettings:
    return CentralSettings(port=broker.port, **kw)


SEED: dict[str, list[dict[str, Any]]] = {
    "members": [
        {"id": "m1", "name": "Ana", "cards": ["C1"]},
        {"id": "m2", "name": "Ben", "cards": ["C2"]},
        {"id": "m3", "name": "Cris", "cards": ["C3"]},
    ],
    "passes": [
        {"id": "p1", "member": "m1", "kind": "visits", "balance": 1000, "deduct_on": "access",
         "access_windows": {"mon-sun": "00:00-24:00"}},
        {"id": "p2", "member": "m2", "kind": "visits", "balance": 1000, "deduct_on": "access",
         "access_windows": {"mon-sun": "00:00-24:00"}},
        {"id": "p3", "member": "m3", "kind": "time", "access_windows": {"mon-sun": "00:00-24:00"}},
    ],
    "bookings": [],
}


@contextlib.asynccontextmanager
async def running(*aws: Any) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Run coroutines (link.run(), central.run()) as tasks for the block; cancel after.
    A task that does not end within WAIT_S of its cancellation fails the test with every
    task's stack (a hang in a shell's shutdown is a bug, not a slow test)."""
    tasks = [asyncio.create_task(a) for a in aws]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        _, pending = await asyncio.wait(tasks, timeout=WAIT_S)
        if pending:
            stacks = io.StringIO()
            for t in asyncio.all_tasks():
                t.print_stack(file=stacks)
            raise AssertionError(f"tasks did not end when cancelled: {pending}\n{stacks.getvalue()}")
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S, what: str = "") -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what or predicate}") from None


def make_store(path: Path, daemon: str) -> Store:
    return Store(path, site(), daemon_id=daemon, durable=False)


@pytest.fixture
async def central(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Central]:
    c = Central(central_settings(mosquitto), tmp_path / "central.db")
    c.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    task = asyncio.create_task(c.run())
    await c.wait_connected(WAIT_S)
    try:
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
