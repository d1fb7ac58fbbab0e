"""The control socket: how `gated tap`, `gated open` and `gated status` reach a running
daemon. A Unix socket (mode 0660): only root and the gated group can connect; actions
that open doors also need a console user's name and password, and are audited.

Protocol: one JSON object per line in, one per line out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gated.auth import authenticate
from gated.console.security import LoginLimiter
from rules.credential import Credential

if TYPE_CHECKING:
    from gated.daemon import Daemon

MAX_LINE = 64 * 1024


class _Cmd(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TapCmd(_Cmd):
    cmd: Literal["tap"]
    gate: str = Field(min_length=1, max_length=100)
    card: str | None = Field(None, min_length=1, max_length=200)
    qr: str | None = Field(None, min_length=1, max_length=2000)


class StatusCmd(_Cmd):
    cmd: Literal["status"]


class OpenCmd(_Cmd):
    cmd: Literal["open"]
    gate: str = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=500)
    user: str
    password: str


class LockdownCmd(_Cmd):
    cmd: Literal["lockdown"]
    on: bool
    user: str
    password: str


class RelayCmd(_Cmd):
    """`gated relay GATE on|off|pulse` while the daemon runs: an admin's hand on the relay."""

    cmd: Literal["relay"]
    gate: str = Field(min_length=1, max_length=100)
    action: Literal["on", "off", "pulse"]
    seconds: float | None = Field(None, gt=0, le=30)
    user: str
    password: str


Command = TypeAdapter(
    Annotated[TapCmd | StatusCmd | OpenCmd | LockdownCmd | RelayCmd, Field(discriminator="cmd")]
)


class ControlServer:
    def __init__(self, daemon: Daemon, path: Path):
        self.daemon = daemon
        self.path = Path(path)
        self.server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        # as on the console: 5 wrong passwords for a user lock that user out for a minute
        self.limiter = LoginLimiter()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_LINE)
        os.chmod(self.path, 0o660)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self._clients):  # wait_closed waits for open connections
                writer.close()
            await self.server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"error": "line too long"})
                    break
                if not line:
                    break
                await self._reply(writer, await self.handle(line))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj).encode() + b"\n")
        await writer.drain()

    async def handle(self, line: bytes) -> dict[str, Any]:
        d = self.daemon
        try:
            cmd = Command.validate_json(line)
        except ValidationError as e:
            d.metrics.rejected_input.labels("control").inc()
            return {"error": "invalid command", "detail": e.errors(include_url=False, include_input=False)[:3]}
        if isinstance(cmd, StatusCmd):
            return d.health()
        if isinstance(cmd, TapCmd):
            if (cmd.card is None) == (cmd.qr is None):
                return {"error": "give exactly one of card or qr"}
            if d.engine is None or cmd.gate not in d.engine.gates:
                return {"error": f"unknown gate {cmd.gate!r}"}
            if cmd.card:  # read as this site's readers would send it (typed keys as given)
                try:
                    card = d.store.read_card(cmd.card) if d.store is not None else cmd.card
                except ValueError as e:
                    return {"error": f"not a card: {e}"}
                cred = Credential.card(card, "control")
            else:
                cred = Credential.qr(cmd.qr or "", "control")
            return await d.handle_credential(cmd.gate, cred)
        keys = [f"user:{cmd.user.strip().lower()[:100]}"]
        wait = self.limiter.retry_after(keys)
        if wait > 0:
            return {"error": f"too many failed attempts: try again in {int(wait) + 1} s"}
        # argon2 takes tens of ms of CPU: off the event loop, taps keep flowing
        user = await asyncio.to_thread(authenticate, list(d.config.console.users), cmd.user, cmd.password)
        if user is None:
            self.limiter.failure(keys)
            return {"error": "authentication failed"}
        self.limiter.success(keys)
        if isinstance(cmd, OpenCmd):
            if d.engine is None or cmd.gate not in d.engine.gates:
                return {"error": f"unknown gate {cmd.gate!r}"}
            return await d.override(cmd.gate, user.name, cmd.reason)
        if isinstance(cmd, RelayCmd):
            if user.role != "admin":
                return {"error": "only an admin can drive a relay by hand"}
            return await d.relay_by_hand(cmd.gate, cmd.action, cmd.seconds, user.name)
        if user.role != "admin":
            return {"error": "only an admin can lock down or release"}
        await d.set_lockdown(cmd.on, user.name)
        return {"lockdown": cmd.on}


async def request(path: str | Path, obj: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=MAX_LINE), timeout)
    try:
        writer.write(json.dumps(obj).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        result: dict[str, Any] = json.loads(line)
        return result
    finally:
        writer.close()
