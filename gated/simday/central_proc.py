"""The reference central system for `gated sim day`, as its own process: simulator/central.py
on the day's simulated clock, with a control socket (one JSON object per line) for the back
office and the chaos:

    {"cmd": "status"}                                  connected, delta_seq per site, stats
    {"cmd": "snapshot", "site": S}                     a full snapshot pushed to every gate
    {"cmd": "resend_deltas", "site": S, "count": N, "seed": K}
                                                       the last N deltas re-sent, shuffled
    {"cmd": "push", "site": S, "members": [...], "passes": [...], "bookings": [...]}
    {"cmd": "topup", "site": S, "pass": P, "amount": A} a pass topped up in the app

    python -m gated.simday.central_proc --db central.db --port 1883 --control c.sock \
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
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiomqtt

from gated import logs
from gated.clock import SimulatedClock
from simulator.central import Central, CentralSettings

log = logging.getLogger("gated.simday.central")


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


async def serve(args: argparse.Namespace) -> None:
    clock = SimulatedClock(datetime.fromisoformat(args.clock_start), args.clock_speed, args.clock_epoch)
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
    logs.setup("json", "info")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
