"""A TCP proxy on loopback between MQTT clients and a broker, for network-fault tests.

It forwards whole MQTT control packets (it parses each fixed header: type and remaining
length) and can, per direction ("up": client -> broker, "down": broker -> client):

- delay every packet by a random time in `delay = (lo, hi)` seconds, keeping their order;
- hold packets back (`hold(direction)`) and let them go later (`release(direction,
  reorder=True)`), the held PUBLISH packets shuffled among themselves (every other packet
  keeps its place: a CONNACK never overtakes, a PUBLISH may overtake a PUBACK);
- cut every connection at once (`cut()`), and refuse new ones for a while (`refuse`).

    async with MqttProxy(broker_port, seed=1) as proxy:
        client connects to 127.0.0.1:proxy.port
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["up", "down"]
PUBLISH = 3


async def read_packet(reader: asyncio.StreamReader) -> bytes:
    """One whole MQTT control packet: fixed header, remaining length, body."""
    first = await reader.readexactly(1)
    header = bytearray(first)
    length = 0
    shift = 0
    for _ in range(4):
        b = (await reader.readexactly(1))[0]
        header.append(b)
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    else:
        raise ValueError("malformed remaining length")
    body = await reader.readexactly(length) if length else b""
    return bytes(header) + body


def packet_type(packet: bytes) -> int:
    return packet[0] >> 4


@dataclass(eq=False)
class _Conn:
    client_w: asyncio.StreamWriter
    broker_w: asyncio.StreamWriter
    queues: dict[str, asyncio.Queue[tuple[float, bytes] | None]] = field(
        default_factory=lambda: {"up": asyncio.Queue(), "down": asyncio.Queue()}
    )
    held: dict[str, list[bytes]] = field(default_factory=lambda: {"up": [], "down": []})
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for w in (self.client_w, self.broker_w):
            with contextlib.suppress(Exception):
                w.close()
        for t in self.tasks:
            t.cancel()


class MqttProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1", seed: int = 0):
        self.target = (host, target_port)
        self.host = host
        self.port = 0
        self.delay: tuple[float, float] = (0.0, 0.0)
        self.refuse = False
        self.stats: Counter[str] = Counter()
        self._rnd = random.Random(seed)
        self._holding: dict[str, bool] = {"up": False, "down": False}
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> MqttProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- knobs ------------------------------------------------------------------------------

    def hold(self, direction: Direction) -> None:
        self._holding[direction] = True

    def release(self, direction: Direction, *, reorder: bool = False) -> int:
        """Let the held packets go (shuffled PUBLISHes if `reorder`); returns how many."""
        self._holding[direction] = False
        n = 0
        for conn in list(self._conns):
            held, conn.held[direction] = conn.held[direction], []
            if reorder:
                held = self._reorder(held)
            for p in held:
                conn.queues[direction].put_nowait((self._due(), p))
            n += len(held)
        return n

    def held(self, direction: Direction) -> int:
        return sum(len(c.held[direction]) for c in self._conns)

    def cut(self) -> None:
        """Every connection dropped at once (a cable pulled, a NAT timeout)."""
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()
        self.stats["cuts"] += 1

    # -- plumbing ---------------------------------------------------------------------------

    def _due(self) -> float:
        lo, hi = self.delay
        return time.monotonic() + (self._rnd.uniform(lo, hi) if hi > 0 else 0.0)

    def _reorder(self, packets: list[bytes]) -> list[bytes]:
        slots = [i for i, p in enumerate(packets) if packet_type(p) == PUBLISH]
        if len(slots) < 2:
            return packets
        pubs = [packets[i] for i in slots]
        shuffled = pubs[:]
        self._rnd.shuffle(shuffled)
        if shuffled == pubs:
            shuffled.reverse()
        out = packets[:]
        for i, p in zip(slots, shuffled, strict=True):
            out[i] = p
        self.stats["reordered"] += sum(1 for a, b in zip(pubs, shuffled, strict=True) if a is not b)
        return out

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.refuse:
            self.stats["refused"] += 1
            client_w.close()
            return
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.target)
        except OSError:
            self.stats["broker_unreachable"] += 1
            client_w.close()
            return
        conn = _Conn(client_w, broker_w)
        self._conns.add(conn)
        self.stats["connections"] += 1
        conn.tasks = [
            asyncio.create_task(self._pump(conn, "up", client_r)),
            asyncio.create_task(self._pump(conn, "down", broker_r)),
            asyncio.create_task(self._writer(conn, "up", broker_w)),
            asyncio.create_task(self._writer(conn, "down", client_w)),
        ]

    async def _pump(self, conn: _Conn, direction: Direction, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                packet = await read_packet(reader)
                self.stats[f"packets_{direction}"] += 1
                if self._holding[direction]:
                    conn.held[direction].append(packet)
                    self.stats[f"held_{direction}"] += 1
                else:
                    conn.queues[direction].put_nowait((self._due(), packet))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            # the other side sees the close once what is queued (not what is held) is out
            conn.queues[direction].put_nowait(None)

    async def _writer(self, conn: _Conn, direction: Direction, writer: asyncio.StreamWriter) -> None:
        q = conn.queues[direction]
        try:
            while (item := await q.get()) is not None:
                due, packet = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(packet)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()
            self._conns.discard(conn)
