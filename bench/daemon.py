"""The real daemon (`gated run`) as a subprocess on the large data set, for benchmarks 2 and 5.

- A store holding the whole site is built once (Store.apply_sync) and copied per start.
- The configuration: one entry turnstile with a serial reader on a VirtualSerialReader
  pty and a Modbus TCP output to a SimTurnstile on loopback; console, metrics and MQTT
  off (they are not on the tap path); stale-cache policy `keep` (the data set is dated).
- READY: the bench binds a unix datagram socket and passes it as NOTIFY_SOCKET, as
  systemd does; start-up time is from spawning the process to the `READY=1` datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import common
from bench.common import ROOT, fresh_dir, loaded_store
from bench.generate import _ALWAYS as ALWAYS
from bench.generate import SiteData, generate, policy
from rules.model import MemberStatus, PassKind
from sync.store.replica_file import copy_store


def live_site(members: int, seed: int = 1) -> SiteData:
    """The site anchored at the current hour: the daemon decides with the real clock."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return generate(members, seed=seed, now=now)


def grantable_cards(data: SiteData) -> list[str]:
    """Cards that are granted whatever the wall clock says: active members with an
    open-ended time pass valid in every zone at every hour."""
    ok_members = set()
    for r in data.passes:
        p = r.pass_
        if (
            p.kind == PassKind.TIME
            and p.valid_from is None
            and p.valid_until is None
            and p.zones is None
            and p.access_windows is ALWAYS
        ):
            ok_members.add(p.member)
    return [m.cards[0] for m in data.members if m.id in ok_members and m.cards and m.status == MemberStatus.ACTIVE]


def base_store(data: SiteData, log: Any = print) -> Path:
    """The site's store file, built once per data set size."""
    d = common.WORK / f"site-{len(data.members)}"
    path = d / "gated.db"
    marker = d / "complete"
    key = f"{data.seed}:{data.counts()}:{data.now.isoformat()}"
    if marker.exists() and marker.read_text() == key:
        return path
    d = fresh_dir(f"site-{len(data.members)}")
    store, seconds = loaded_store(path, data)
    # a running daemon began its time-driven work long ago (its first run marks where: the
    # past weeks' bookings are not walked), and the central system acknowledged what it
    # did: do it now, not at start
    store.run_due(policy(), datetime.now(UTC))
    store.ack(store.last_seq)
    store.close()
    marker.write_text(key)
    log(f"  (built the {len(data.members)}-member store for the daemon in {seconds:.1f} s)")
    return path


def write_config(work: Path, store_path: Path, reader_device: str | None, modbus_port: int | None) -> Path:
    gate: dict[str, Any] = {"id": "turnstile-in", "name": "Main entrance", "zone": "main", "direction": "in"}
    if reader_device:
        gate["readers"] = [{"type": "serial", "id": "reader-in", "device": reader_device, "baudrate": 9600, "format": "hex"}]
    if modbus_port:
        gate["output"] = {
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": modbus_port,
            "unit": 1,
            "coil": 0,
            "pulse": 0.2,
            "passage_input": 0,
            "door_contact": 1,
            "passage_timeout": 2,
            "mode": "fail_safe",
        }
    site = {"id": "bench-gym", "name": "Bench Gym", "timezone": "Europe/Madrid"}
    return daemon_config(work, site, "bench-gate", [gate], store_path)


def daemon_config(work: Path, site: dict[str, Any], daemon_id: str, gates: list[dict[str, Any]], store_path: Path) -> Path:
    """A benchmark daemon's gated.yaml in `work`: only the gates measured (no console, no
    metrics, no look-ups, a cache that never goes stale), warnings only in its log."""
    cfg = {
        "site": site,
        "daemon_id": daemon_id,
        "stale_cache": {"max_age": None, "policy": "keep"},
        "gates": gates,
        "store": {"path": str(store_path)},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
        "control": {"socket": str(work / "control.sock")},
        "logging": {"format": "json", "level": "warning"},
        "lookup_unknown_cards": False,
    }
    path = work / "gated.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclass
class RunningDaemon:
    proc: asyncio.subprocess.Process
    ready_seconds: float
    work: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.asynccontextmanager
async def gated_run(work: Path, config: Path, timeout: float = 60) -> AsyncIterator[tuple[asyncio.subprocess.Process, float]]:
    """`gated run -c config` as systemd starts it (NOTIFY_SOCKET bound here): yields the
    process and the seconds from spawn to READY=1; SIGTERM (then SIGKILL) at the end.
    Its output goes to work/daemon.log."""
    notify_path = work / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.setblocking(False)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_USEC", None)
    loop = asyncio.get_running_loop()
    log = open(work / "daemon.log", "wb")  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gated.cli", "run", "-c", str(config),
        cwd=str(ROOT), env=env, stdout=log, stderr=log,
    )
    try:
        ready = None
        deadline = time.perf_counter() + timeout
        while ready is None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or proc.returncode is not None:
                raise RuntimeError(f"daemon not ready (exit {proc.returncode}); see {work / 'daemon.log'}")
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    data = await loop.sock_recv(sock, 4096)
            except TimeoutError:
                continue
            if b"READY=1" in data.split(b"\n"):
                ready = time.perf_counter() - t0
        yield proc, ready
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        sock.close()
        log.close()


@contextlib.asynccontextmanager
async def daemon_process(
    base: Path, name: str, *, reader_device: str | None = None, modbus_port: int | None = None, timeout: float = 60
) -> AsyncIterator[RunningDaemon]:
    """Start `gated run` on a copy of the base store; yield once READY=1 arrived."""
    work = fresh_dir(name)
    store_path = work / "gated.db"
    copy_store(base, store_path)
    config = write_config(work, store_path, reader_device, modbus_port)
    async with gated_run(work, config, timeout) as (proc, ready):
        yield RunningDaemon(proc, ready, work)
