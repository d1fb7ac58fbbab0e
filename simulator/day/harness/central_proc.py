"""The reference central system for `gated sim day`, as its own process: simulator/central.py
on the day's simulated clock, with a control socket (one JSON object per line) for the back
office and the chaos:

    {"cmd": "status"}                                  connected, delta_seq per site, stats
    {"cmd": "snapshot", "site": S}                     a full snapshot pushed to every gate
    {"cmd": "resend_deltas", "site": S, "count": N, "seed": K}
                                                       the last N deltas re-sent, shuffled
    {"cmd": "push", "site": S, "members": [...], "passes": [...], "bookings": [...]}
    {"cmd": "topup", "site": S, "pass": P, "amount": A} a pass topped up in the app

The harness's side of that socket is `request` below.

    python -m simulator.day.harness.central_proc --db central.db --port 1883 --control c.sock \
        --clock-start 2026-11-18T05:57:00+00:00 --clock-speed 72 --clock-epoch 1790000000.0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt

from rules.clock import SimulatedTime
from simulator.central import Central, CentralSettings


class Control:
    def __init__(self, central: Central, path: Path):
        self.central = central
        self.path = path

    async def start(self) -> asyncio.AbstractServer:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return await asyncio.start_unix_server(self._client, path=str(self.path), limit=2**24)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    out = await self.handle(json.loads(line))
                except Exception as e:  # noqa: BLE001 - the caller sees it; the central goes on
                    out = {"error": repr(e)}
                writer.write(json.dumps(out).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        c = self.central
        kind = cmd.get("cmd")
        if kind == "status":
            sites = [r[0] for r in c.conn.execute("SELECT site FROM sites")]
            return {"connected": c.connected, "delta_seq": {s: c.delta_seq(s) for s in sites}, "stats": dict(c.stats)}
        if kind == "snapshot":
            return {"chunks": await c.publish_snapshot(cmd["site"])}
        if kind == "resend_deltas":
            site = cmd["site"]
            rows = c.conn.execute(
                "SELECT body FROM deltas WHERE site = ? ORDER BY delta_seq DESC LIMIT ?", (site, int(cmd.get("count", 20)))
            ).fetchall()
            bodies = [r[0] for r in rows]
            random.Random(cmd.get("seed", 0)).shuffle(bodies)
            for body in bodies:
                await c._publish(f"{c.settings.prefix}/{site}/delta", body.encode(), qos=1)
            await c.publish_head(site)
            c.stats["deltas_resent"] += len(bodies)
            return {"resent": len(bodies)}
        if kind == "push":
            return await self._push(cmd["site"], members=cmd.get("members", []), passes=cmd.get("passes", []),
                                    bookings=cmd.get("bookings", []))
        if kind == "topup":
            site, pid = cmd["site"], cmd["pass"]
            row = c.conn.execute("SELECT body FROM passes WHERE site = ? AND id = ?", (site, pid)).fetchone()
            if row is None:
                return {"error": f"no pass {pid}"}
            body = json.loads(row[0])
            new = Decimal(str(body["balance"])) + Decimal(str(cmd["amount"]))
            body["balance"] = int(new) if new == new.to_integral_value() else float(new)
            return {**await self._push(site, passes=[body]), "balance": body["balance"]}
        return {"error": f"unknown command {kind!r}"}

    async def _push(self, site: str, **records: Any) -> dict[str, Any]:
        """A back-office change: stored as the site's next delta, then published. Not
        connected (the broker is down): stored all the same, the gates get it later (a gap
        or a reconnect); `committed` says whether the change is in the central's books."""
        c = self.central
        before = c.delta_seq(site)
        try:
            seq = await c.push(site, **records)
            return {"committed": True, "published": True, "delta_seq": seq}
        except aiomqtt.MqttError as e:
            return {"committed": c.delta_seq(site) > before, "published": False, "error": str(e)}


async def request(path: Path, obj: dict[str, Any], timeout: float, *, limit: int = 2**24) -> dict[str, Any]:
    """One command to the central's control socket and its one-line answer (its event log
    or a gate's records run to megabytes: `limit`)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=limit)
    try:
        writer.write(json.dumps(obj).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        if not line:
            raise ConnectionResetError("the central system closed the connection without answering")
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError:
            raise ConnectionResetError("the central system's answer was cut off") from None
        return answer
    finally:
        writer.close()


class _JsonLines(logging.Formatter):
    """One JSON object a line with the keys the daemons' logs have (timestamp, level,
    logger, event): one reader for every log of a run."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "event": record.getMessage(), "level": record.levelname.lower(), "logger": record.name,
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for name in ("aiomqtt", "paho", "asyncio"):  # their chatter; the central says what matters
        logging.getLogger(name).setLevel(logging.WARNING)


async def serve(args: argparse.Namespace) -> None:
    sim = SimulatedTime(datetime.fromisoformat(args.clock_start), args.clock_speed, args.clock_epoch)

    def clock() -> datetime:
        return sim.at(time.time())

    settings = CentralSettings(port=args.port, prefix=args.prefix, chunk_rows=500, identifier="gated-central-simday")
    central = Central(settings, args.db, clock=clock)
    server = await Control(central, Path(args.control)).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(central.run())
    await stop.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    server.close()
    central.conn.close()
    with contextlib.suppress(FileNotFoundError):
        Path(args.control).unlink()  # 3.11's server.close() leaves a unix socket's file


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prefix", default="gated")
    p.add_argument("--control", required=True)
    p.add_argument("--clock-start", required=True)
    p.add_argument("--clock-speed", type=float, required=True)
    p.add_argument("--clock-epoch", type=float, required=True)
    args = p.parse_args(argv)
    _log_to_stderr()
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
