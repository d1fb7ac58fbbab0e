"""The control socket: how `gated tap`, `gated open`, `gated lockdown`, `gated emergency`,
`gated relay`, `gated clock confirm` and `gated status` reach a running daemon (through its operator API,
gated/operator.py). A Unix socket (mode 0660): only root and the gated group can connect.

Who may open a door: `open` and `lockdown` need a console user's name and password and
are audited; `tap` (a read injected as if a reader had read it) is refused unless the
configuration says `control.injected_reads: true` (the demo, tests, commissioning).
Password checks are limited when they start, per user and per connecting Unix user
(SO_PEERCRED), so parallel guesses run at most the limit and one account's guessing cannot
lock out another account's (docs/console.md, "Security": login limits).

Protocol: one JSON object per line in, one per line out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from gated.auth import authenticate
from gated.login_limits import Attempt, LoginLimiter
from gated.operator import ActionRefused, OperatorApi
from rules.credential import Credential

if TYPE_CHECKING:
    from gated.metrics import Metrics

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
    """`gated lockdown` / `gated emergency` (an admin): every entrance locked, or every
    fail-safe door released; a reason to switch either on."""

    cmd: Literal["lockdown", "emergency"]
    on: bool
    reason: str | None = Field(None, max_length=500)
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


class ClockConfirmCmd(_Cmd):
    """`gated clock confirm` (an admin who checked the time): the wall clock's time of day
    is right, no-shows and fees may act at it without NTP (rules/clock.py, `confirm`)."""

    cmd: Literal["clock_confirm"]
    user: str
    password: str


Command = TypeAdapter(
    Annotated[TapCmd | StatusCmd | OpenCmd | LockdownCmd | RelayCmd | ClockConfirmCmd, Field(discriminator="cmd")]
)


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The Unix user at the other end of the socket (Linux SO_PEERCRED), if the OS says."""
    sock = writer.get_extra_info("socket")
    if sock is None or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


class ControlServer:
    def __init__(self, backend: OperatorApi, path: Path, metrics: Metrics):
        self.backend = backend
        self.metrics = metrics
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
                await self._reply(writer, await self.handle(line, peer_uid(writer)))
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

    async def handle(self, line: bytes, uid: int | None = None) -> dict[str, Any]:
        b = self.backend
        try:
            cmd = Command.validate_json(line)
        except ValidationError as e:
            self.metrics.rejected_input.labels("control").inc()
            return {"error": "invalid command", "detail": e.errors(include_url=False, include_input=False)[:3]}
        if isinstance(cmd, StatusCmd):
            return b.health()
        if isinstance(cmd, TapCmd):
            if not b.config.control.injected_reads:
                return {"error": "injected reads are off: set control.injected_reads: true to allow `gated tap`"}
            if (cmd.card is None) == (cmd.qr is None):
                return {"error": "give exactly one of card or qr"}
            if cmd.gate not in {g.id for g in b.config.gates}:
                return {"error": f"unknown gate {cmd.gate!r}"}
            if cmd.card:  # read as this site's readers would send it (typed keys as given)
                try:
                    card = b.store.read_card(cmd.card) if b.store is not None else cmd.card
                except ValueError as e:
                    return {"error": f"not a card: {e}"}
                cred = Credential.card(card, "control")
            else:
                cred = Credential.qr(cmd.qr or "", "control")
            return await b.tap(cmd.gate, cred)
        keys = [f"user:{cmd.user.strip().lower()[:100]}|uid:{uid if uid is not None else '?'}"]
        attempt = self.limiter.begin(keys)
        if not isinstance(attempt, Attempt):
            return {"error": f"too many failed attempts: try again in {int(attempt) + 1} s"}
        user = None
        try:
            # argon2 takes tens of ms of CPU: off the event loop, taps keep flowing
            user = await asyncio.to_thread(authenticate, list(b.config.console.users), cmd.user, cmd.password)
        finally:
            self.limiter.end(attempt, ok=user is not None)
        if user is None:
            return {"error": "authentication failed"}
        try:
            if isinstance(cmd, OpenCmd):
                if cmd.gate not in {g.id for g in b.config.gates}:
                    return {"error": f"unknown gate {cmd.gate!r}"}
                return await b.open_once(cmd.gate, user.name, cmd.reason)
            if isinstance(cmd, RelayCmd):
                if user.role != "admin":
                    return {"error": "only an admin can drive a relay by hand"}
                return await b.relay_by_hand(cmd.gate, cmd.action, cmd.seconds, user.name)
            if isinstance(cmd, ClockConfirmCmd):
                if user.role != "admin":
                    return {"error": "only an admin can confirm the clock"}
                return await b.confirm_clock(user.name)
            if user.role != "admin":
                return {"error": "only an admin can lock down or release"}
            if cmd.cmd == "lockdown":
                await b.set_lockdown(cmd.on, user.name, cmd.reason)
                return {"lockdown": b.lockdown, **not_durable(b)}
            await b.set_emergency(cmd.on, user.name, cmd.reason)
            return {"emergency": b.emergency, **not_durable(b)}
        except ActionRefused as e:
            return {"error": e.message}


def not_durable(b: OperatorApi) -> dict[str, Any]:
    """In a switch's answer when it is in force but not stored yet (a storage fault): a
    restart now would forget it. Absent when all is on disk."""
    pending = b.not_durable
    return {"not_durable": pending} if pending else {}


async def request(
    path: str | Path, obj: dict[str, Any], timeout: float = 15.0, *, limit: int = MAX_LINE
) -> dict[str, Any]:
    """One JSON line to a control socket and its one-line answer (at most `limit` bytes)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=limit)
    try:
        writer.write(json.dumps(obj).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        if not line:
            # the daemon went away with the request in hand (stopped, or died mid-tap)
            raise ConnectionResetError("the daemon closed the connection without answering")
        try:
            result: dict[str, Any] = json.loads(line)
        except ValueError:
            raise ConnectionResetError("the daemon's answer was cut off") from None
        return result
    finally:
        writer.close()
