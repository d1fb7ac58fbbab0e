"""The processes of a simulated chain: mosquitto brokers (a site broker bridged to the
central broker through a WAN link that can be cut), `gated run` daemons and the reference
central system, each a real process with its own log file, killed by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.day.harness.central_proc import request as central_request

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ROOT = Path(__file__).resolve().parents[3]  # simulator/day/harness/procs.py: the checkout
BRIDGE_EXAMPLE = ROOT / "config" / "mosquitto-bridge.conf.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bridge_block(site: str, remote_port: int, prefix: str = "gated") -> str:
    """The site broker's bridge to the central broker: config/mosquitto-bridge.conf.example
    as an installer would fill it in (the site's id, the central broker's address; no TLS
    and a short restart_timeout on loopback)."""
    if BRIDGE_EXAMPLE.exists():
        out = []
        for line in BRIDGE_EXAMPLE.read_text().splitlines():
            s = line.strip()
            if s.startswith(("bridge_cafile", "bridge_certfile", "bridge_keyfile", "remote_username", "remote_password")):
                continue
            if s.startswith("address "):
                line = f"address 127.0.0.1:{remote_port}"
            elif s.startswith("restart_timeout"):
                line = "restart_timeout 1 3"
            out.append(line.replace("gym-madrid-1", site))
        text = "\n".join(out)
        if prefix != "gated":
            text = text.replace(" gated/", f" {prefix}/")
        return text + "\n"
    return (
        f"connection gated-central\naddress 127.0.0.1:{remote_port}\nbridge_protocol_version mqttv50\n"
        f"remote_clientid gated-bridge-{site}\ncleansession false\nlocal_clientid gated-bridge-local-{site}\n"
        "restart_timeout 1 3\nkeepalive_interval 30\nnotifications false\ntry_private true\n"
        f"topic {prefix}/{site}/+/events out 1\ntopic {prefix}/{site}/+/status out 1\n"
        f"topic {prefix}/{site}/+/health out 0\ntopic {prefix}/{site}/resync out 1\n"
        f"topic {prefix}/{site}/lookup/request out 0\ntopic {prefix}/{site}/+/ack in 1\n"
        f"topic {prefix}/{site}/+/lookup/response in 0\ntopic {prefix}/{site}/snapshot in 1\n"
        f"topic {prefix}/{site}/delta in 1\ntopic {prefix}/central/status in 1\n"
    )


def _kill9(proc: subprocess.Popen[bytes] | None) -> bool:
    """SIGKILL and reap `proc` (the chaos's kill, as a power cut or the OOM killer would);
    False when there is none."""
    if proc is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


@dataclass
class Broker:
    """One mosquitto with its own configuration file; `kill()` is SIGKILL by PID."""

    name: str
    workdir: Path
    port: int = field(default_factory=free_port)
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def conf(self) -> Path:
        return self.workdir / f"mosquitto-{self.name}.conf"

    @property
    def log(self) -> Path:
        return self.workdir / f"mosquitto-{self.name}.log"

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "log_dest stderr", "log_type error", "log_type warning", "max_queued_messages 100000"]
        if os.geteuid() == 0:  # else mosquitto drops to user "mosquitto", who cannot read our dir
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n" + self.extra)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto {self.name} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto {self.name} did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if _kill9(self.proc):
            self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None


class WanLink:
    """The site's WAN: a TCP relay between the site broker's bridge and the central broker.
    `cut()` drops every connection and refuses new ones until `restore()`."""

    def __init__(self, name: str, target_port: int):
        self.name = name
        self.target_port = target_port
        self.port = 0
        self.up = True
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self.cuts = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self.up = False
        self.cuts += 1
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()

    def restore(self) -> None:
        self.up = True

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._conns |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the link is being taken down: asyncio's callback must not see the cancellation
        finally:
            self._conns.discard(writer)
            self._conns.discard(up_writer)


class LogTail:
    """A JSON-lines log file read as it grows (the daemons write; we never block them)."""

    def __init__(self, path: Path, on_line: Callable[[dict[str, Any]], None]):
        self.path = path
        self.on_line = on_line
        self._pos = 0
        self._rest = b""
        self.bad_lines = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return
        if not data:
            return
        self._pos += len(data)
        data = self._rest + data
        *lines, self._rest = data.split(b"\n")
        for raw in lines:
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                self.bad_lines += 1  # a traceback from a crash: kept in the file
                continue
            if isinstance(obj, dict):
                self.on_line(obj)


class GateProc:
    """One `gated run` process; restarted on the same configuration and store."""

    def __init__(self, name: str, config: Path, log: Path, env: dict[str, str], trace: Path | None = None):
        self.name = name
        self.config = config
        self.log = log
        self.env = env
        self.trace = trace  # tracemalloc's growth report (traced.py), or None
        self.proc: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.ready = False
        self.kills = 0
        self.exits: list[int] = []  # exit codes of incarnations that ended by themselves

    def start(self) -> None:
        cmd = [sys.executable, "-m", "gated.cli", "run", "-c", str(self.config)]
        if self.trace is not None:
            out = self.trace.with_name(f"{self.trace.stem}-{self.incarnation + 1}.json")
            cmd = [sys.executable, "-X", "tracemalloc=6", "-m", "simulator.day.harness.traced", str(out), *cmd[1:]]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.incarnation += 1
        self.ready = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if not _kill9(self.proc):
            return
        self.kills += 1
        self.ready = False

    def freeze(self) -> None:
        """SIGSTOP: the process does nothing more from this instant (a power cut's first step)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen process goes on."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)

    async def terminate(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None


class CentralProc:
    """The reference central system as its own process (simulator/day/harness/central_proc.py), with
    a control socket for the back office and the chaos (snapshots, re-sent deltas)."""

    def __init__(self, args: list[str], control: Path, log: Path, env: dict[str, str]):
        self.args = args
        self.control = control
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        if self.pid is not None:
            return  # one central system: a second would be a process nobody stops
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "simulator.day.harness.central_proc", *self.args],
                                         cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.starts += 1

    def kill9(self) -> None:
        if _kill9(self.proc):
            self.proc = None

    async def terminate(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            self.kill9()
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    async def request(self, obj: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        return await central_request(self.control, obj, timeout)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the central system exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError, ValueError, TimeoutError):
                if (await self.request({"cmd": "status"}, 2.0)).get("connected"):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("the central system did not connect")
            await asyncio.sleep(0.1)


__all__ = ["Broker", "CentralProc", "GateProc", "LogTail", "WanLink", "bridge_block", "free_port"]
