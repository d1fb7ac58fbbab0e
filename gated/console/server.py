"""Serving the console: uvicorn inside the daemon's event loop (docs/console.md says why).

`start_console(backend)` binds the socket itself, starts `uvicorn.Server.serve()` as a task
and returns a handle whose `stop()` ends the live streams first, then the server.

uvicorn gets no listening socket: the Doorman (doorman.py) accepts the connections, within
the configured limits and the descriptor reserve, and hands each to uvicorn's h11 protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import structlog
import uvicorn

from gated.console.app import MAX_BODY, build_app
from gated.console.doorman import Doorman, GuardedH11Protocol, Limits
from gated.console.security import SecurityHeaders
from gated.console.state import Console
from gated.fds import fd_limit
from gated.operator import OperatorApi

log = structlog.get_logger("gated.console")


class _InLoopServer(uvicorn.Server):
    """uvicorn without its signal handlers: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleHandle:
    def __init__(self, console: Console | None, server: _InLoopServer | None, task: asyncio.Task[None] | None,
                 sock: socket.socket | None, doorman: Doorman | None = None,
                 door_task: asyncio.Task[None] | None = None):
        self.console = console
        self.server = server
        self.task = task
        self.sock = sock
        self.doorman = doorman
        self.door_task = door_task

    @property
    def stats(self) -> dict[str, int]:
        """Connections accepted, refused (and why), timed out: `gated status`."""
        if self.doorman is None:
            return {}
        return {**self.doorman.stats, "open": len(self.doorman.open)}

    @property
    def port(self) -> int | None:
        return int(self.sock.getsockname()[1]) if self.sock is not None else None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def stop(self) -> None:
        if self.door_task is not None:
            self.door_task.cancel()  # no new connections while the rest closes
            await asyncio.wait([self.door_task])
        if self.console is not None:
            self.console.backend.unsubscribe(self.console.hub.listener)
            await self.console.hub.close()  # ends the SSE streams, or shutdown would wait on them
        if self.server is not None:
            self.server.should_exit = True
        if self.task is not None:
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(self.task)
            except (TimeoutError, asyncio.CancelledError):
                if self.server is not None:
                    self.server.force_exit = True
                self.task.cancel()
                await asyncio.wait([self.task])
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
        log.info("console_stopped")


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def start_console(backend: OperatorApi) -> ConsoleHandle:
    """Serve the console in this loop; a console that cannot start never stops the gates."""
    cfg = backend.config.console
    tls = bool(cfg.tls_cert and cfg.tls_key)
    try:
        sock = _bind(cfg.bind, cfg.port)
    except OSError as e:
        log.error("console_unavailable", bind=cfg.bind, port=cfg.port, error=str(e))
        return ConsoleHandle(None, None, None, None)
    console = Console(backend, tls=tls)
    lim = cfg.limits
    limits = Limits(max_connections=lim.max_connections, per_client=lim.per_client, header_timeout=lim.header_timeout,
                    body_timeout=lim.body_timeout, fd_reserve=lim.fd_reserve)
    if lim.max_connections + lim.fd_reserve > fd_limit():
        log.warning("console_fd_budget_small", fd_limit=fd_limit(), max_connections=lim.max_connections,
                    fd_reserve=lim.fd_reserve, hint="raise LimitNOFILE (systemd/gated.service)")
    config = uvicorn.Config(
        SecurityHeaders(build_app(console), tls=tls),
        log_config=None,
        access_log=False,
        lifespan="off",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=3,
        ssl_certfile=str(cfg.tls_cert) if tls else None,
        ssl_keyfile=str(cfg.tls_key) if tls else None,
        h11_max_incomplete_event_size=MAX_BODY,
        http=GuardedH11Protocol,  # the Doorman reads h11's state for its deadlines
        ws="none",
        limit_concurrency=lim.max_connections,
        timeout_keep_alive=lim.keep_alive,
    )
    server = _InLoopServer(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[])  # the Doorman accepts
        except SystemExit:  # uvicorn exits on startup errors; inside a task that would end the loop
            log.error("console_failed_to_start")
        except Exception:
            log.exception("console_crashed")

    backend.subscribe(console.hub.listener)
    console.hub.start()
    task = asyncio.create_task(serve(), name="console")
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if not server.started:
        return ConsoleHandle(console, server, task, sock)

    def protocol() -> GuardedH11Protocol:
        return GuardedH11Protocol(config=config, server_state=server.server_state, app_state=server.lifespan.state)

    sock.listen(min(2048, lim.max_connections * 4))
    doorman = Doorman(sock, protocol, limits, config.ssl)

    async def door() -> None:
        try:
            await doorman.run()
        except Exception:
            log.exception("console_doorman_crashed")  # the console is gone; the gates are not

    door_task = asyncio.create_task(door(), name="console-doorman")
    log.info("console_listening", url=f"{console.scheme}://{cfg.bind}:{sock.getsockname()[1]}")
    return ConsoleHandle(console, server, task, sock, doorman, door_task)


__all__ = ["ConsoleHandle", "start_console"]
