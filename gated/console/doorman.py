"""The console's door: who gets a connection, and for how long they may dawdle.

The console is the one part of the daemon a stranger on the LAN can reach. Left to itself
(uvicorn on an asyncio server) it accepts connections until the process runs out of file
descriptors, keeps a request whose headers never end for ever, and an EMFILE at accept()
is logged in a tight loop; meanwhile the relays cannot reconnect and the control socket
cannot accept (issue 22). So the daemon accepts the console's connections itself and hands
each one to uvicorn's protocol only when:

- fewer than `max_connections` are open, and fewer than `per_client` from that address;
- the process keeps at least `fd_reserve` descriptors free after it (for the relays,
  readers, the store, MQTT and the control socket: the tap path before the console);

otherwise the connection gets a one-line 503 and is closed at once. A connection must
send its request headers within `header_timeout` and its body within `body_timeout`
(a slowloris sends a byte now and then, which resets any idle timer: these are deadlines);
an idle keep-alive connection is uvicorn's to close (`keep_alive`). TLS handshakes are
bounded by `header_timeout` too.

Watching a connection's progress reads h11's state: the console runs uvicorn's h11
protocol (server.py pins it).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

from gated.fds import fd_limit, open_fds

log = structlog.get_logger("gated.console")

# accept() failing for lack of descriptors or memory: wait, never spin
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_CLOSED_ERRNOS = {errno.EBADF, errno.EINVAL, errno.ENOTSOCK}
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n"
    b"Connection: close\r\nRetry-After: 5\r\n\r\nconsole busy, retry\r\n"
)
SWEEP_INTERVAL = 0.5
WARN_EVERY = 10.0  # seconds between two log lines about refused connections


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 64
    per_client: int = 16
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    fd_reserve: int = 64


@dataclass(slots=True, eq=False)  # identity: records live in a set
class _Conn:
    client: str
    phase: str | None = "headers"  # what we wait for from the client; None: nothing
    since: float = field(default_factory=time.monotonic)
    protocol: GuardedH11Protocol | None = None
    gone: bool = False


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, telling the doorman when its connection is gone."""

    on_lost: Callable[[], None] | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            done, self.on_lost = self.on_lost, None
            if done is not None:
                done()


class Doorman:
    def __init__(
        self,
        sock: socket.socket,
        protocol: Callable[[], GuardedH11Protocol],
        limits: Limits,
        tls: ssl.SSLContext | None = None,
        *,
        fds: Callable[[], int | None] = open_fds,
        fd_max: Callable[[], int] = fd_limit,
    ):
        self.sock = sock
        self.protocol = protocol
        self.limits = limits
        self.tls = tls
        self.fds = fds
        self.fd_max = fd_max
        self.open: set[_Conn] = set()
        self.per_client: Counter[str] = Counter()
        self.stats: dict[str, int] = {
            "accepted": 0, "refused_busy": 0, "refused_client": 0, "refused_fds": 0,
            "accept_failed": 0, "timed_out": 0,
        }
        self._warned_at = -WARN_EVERY
        self._warned: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- accepting --------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        sweeper = loop.create_task(self._sweep(), name="console-sweep")
        backoff = 0.05
        try:
            while True:
                try:
                    conn, addr = await loop.sock_accept(self.sock)
                except OSError as e:
                    if e.errno in _CLOSED_ERRNOS:
                        raise  # the listening socket itself is gone (stopping)
                    # out of descriptors: the pending connection stays in the kernel's
                    # backlog; try again later instead of spinning (and logging) on it.
                    # Anything else (a client that reset before its accept) is that
                    # client's: the next one is taken
                    self._refused("accept_failed", os.strerror(e.errno or 0))
                    if e.errno in _RESOURCE_ERRNOS:
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 1.0)
                    continue
                backoff = 0.05
                client = str(addr[0]) if isinstance(addr, tuple) else "unix"
                why = self._refusal(client)
                if why is not None:
                    self._turn_away(conn)
                    self._refused(why, client)
                    continue
                self._admit(conn, client)
        finally:
            sweeper.cancel()
            for task in list(self._tasks):
                task.cancel()

    def _refusal(self, client: str) -> str | None:
        lim = self.limits
        if len(self.open) >= lim.max_connections:
            return "refused_busy"
        if self.per_client[client] >= lim.per_client:
            return "refused_client"
        used = self.fds()
        if used is None or used + lim.fd_reserve >= self.fd_max():
            return "refused_fds"
        return None

    @staticmethod
    def _turn_away(conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            conn.send(BUSY)  # a fresh socket's send buffer takes it whole
        except OSError:
            pass
        finally:
            conn.close()

    def _refused(self, why: str, detail: str) -> None:
        self.stats[why] += 1
        self._warned[why] = self._warned.get(why, 0) + 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:  # a flood is one line every 10 s, not one per try
            self._warned_at = now
            log.warning("console_connections_refused", counts=dict(self._warned), last=detail,
                        open=len(self.open), limits=f"{self.limits.max_connections} open, "
                        f"{self.limits.per_client} per client, {self.limits.fd_reserve} fds kept free")
            self._warned = {}

    def _admit(self, conn: socket.socket, client: str) -> None:
        self.stats["accepted"] += 1
        rec = _Conn(client)
        self.open.add(rec)
        self.per_client[client] += 1
        task = asyncio.get_running_loop().create_task(self._connect(conn, rec), name="console-conn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, rec: _Conn) -> None:
        loop = asyncio.get_running_loop()

        def make() -> asyncio.Protocol:
            p = self.protocol()
            p.on_lost = lambda: self._gone(rec)
            rec.protocol = p
            return p

        try:
            await loop.connect_accepted_socket(
                make, conn, ssl=self.tls,
                ssl_handshake_timeout=self.limits.header_timeout if self.tls is not None else None,
            )
        except asyncio.CancelledError:
            conn.close()
            self._gone(rec)
            raise
        except Exception:  # noqa: BLE001 - a failed handshake or a peer gone: just this connection
            conn.close()
            self._gone(rec)

    def _gone(self, rec: _Conn) -> None:
        if rec.gone:
            return
        rec.gone = True
        self.open.discard(rec)
        self.per_client[rec.client] -= 1
        if self.per_client[rec.client] <= 0:
            del self.per_client[rec.client]

    # -- deadlines ----------------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            self.check_deadlines(time.monotonic())

    def check_deadlines(self, now: float) -> None:
        lim = self.limits
        for rec in list(self.open):
            p = rec.protocol
            if p is None or p.transport is None:
                continue  # a TLS handshake: bounded by ssl_handshake_timeout
            state = p.conn.their_state
            if state is h11.IDLE and p.timeout_keep_alive_task is None:
                phase: str | None = "headers"  # a new request (or the first) is due
            elif state is h11.SEND_BODY:
                phase = "body"
            else:
                phase = None  # idle keep-alive (uvicorn's timer), or ours to answer
            if phase != rec.phase:
                rec.phase, rec.since = phase, now
                continue
            if phase is None:
                continue
            limit = lim.header_timeout if phase == "headers" else lim.body_timeout
            if now - rec.since > limit:
                self.stats["timed_out"] += 1
                p.transport.abort()


__all__ = ["Doorman", "GuardedH11Protocol", "Limits"]
