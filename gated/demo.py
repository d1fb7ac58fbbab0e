"""`make demo`: a whole simulated site on this machine, no hardware, no broker.

- a turnstile on a real Modbus TCP server (simulator/turnstile.py) at 127.0.0.1:1502,
- two serial readers on pseudo-terminals (var/demo/reader-in, var/demo/reader-out),
- the daemon on config/demo.yaml with members, passes and today's classes,
- the console on http://127.0.0.1:8080 (user `desk`, password `demo`; admin `admin`/`demo`),
- a script of taps so that something happens at once, then a tap every 20 s.

Events wait in the outbox (no broker). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "demo.yaml"

MEMBERS = [
    ("m-ana", "Ana López", "04A1B2C3D4"),
    ("m-bruno", "Bruno Díaz", "0499887766"),
    ("m-lena", "Lena Vogel", "A1B2C3D4"),
    ("m-jonas", "Jonas Weber", "C0FFEE01"),
    ("m-kari", "Kari Nordmann", "1111AAAA"),
]


def demo_data(now: datetime, tz: ZoneInfo) -> dict[str, Any]:
    """Members, passes and classes around now, in the central system's format."""
    local = now.astimezone(tz).replace(second=0, microsecond=0)

    def at(minutes: int) -> str:
        return (local + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M")

    windows = {"mon-sun": "00:00-24:00"}
    return {
        "members": [{"id": i, "name": n, "cards": [c]} for i, n, c in MEMBERS]
        + [{"id": "m-blocked", "name": "Max Mustermann", "status": "blocked", "cards": ["DEADBEEF"]}],
        "passes": [
            {"id": "p-ana", "member": "m-ana", "name": "Multipack 10", "kind": "visits", "balance": 9,
             "deduct_on": "booking", "access_windows": windows},
            {"id": "p-bruno", "member": "m-bruno", "name": "Multipack 10", "kind": "visits", "balance": 10,
             "deduct_on": "access", "access_windows": windows},
            {"id": "p-lena", "member": "m-lena", "name": "wellpass", "kind": "marketplace"},
            {"id": "p-jonas", "member": "m-jonas", "name": "Monthly", "kind": "time", "access_windows": windows},
            {"id": "p-kari", "member": "m-kari", "name": "1000 points", "kind": "credits", "balance": 250,
             "walk_in_cost": 120, "deduct_on": "access", "access_windows": windows},
        ],
        "bookings": [
            {"id": "b-spin", "member": "m-ana", "pass": "p-ana", "class": "Spinning", "zone": "main",
             "starts_at": at(10), "ends_at": at(55), "deducted": True, "loyalty_points": 10},
            {"id": "b-yoga", "member": "m-lena", "pass": "p-lena", "class": "Workshop Yoga", "zone": "main",
             "starts_at": at(5), "ends_at": at(95), "deducted": True},
            {"id": "b-pilates", "member": "m-bruno", "pass": "p-bruno", "class": "Pilates", "zone": "main",
             "starts_at": at(120), "ends_at": at(175)},
        ],
    }


SCRIPT = [
    ("turnstile-in", "04A1B2C3D4"),  # Ana, inside Spinning's arrival window
    ("turnstile-in", "A1B2C3D4"),  # Lena, marketplace booking: the booking is the ticket
    ("turnstile-in", "DEADBEEF"),  # blocked member
    ("turnstile-in", "0499887766"),  # Bruno, walk-in on a deduct-at-access pass
    ("turnstile-in", "12345678"),  # unknown card
    ("exit", "04A1B2C3D4"),  # Ana leaves
]


async def run_demo(config_template: Path, workdir: Path, *, scripted: bool = True, forever: bool = True) -> None:
    from drivers.readers.frames import FrameConfig
    from gated import logs
    from gated.auth import hash_password
    from gated.config import Config
    from gated.daemon import Daemon
    from gated.seed import batch_from
    from simulator.serial_reader import VirtualSerialReader
    from simulator.turnstile import SimTurnstile
    from sync.store import Store

    workdir.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(config_template.read_text())
    raw["console"]["users"] = [
        {"name": "desk", "role": "staff", "password_hash": hash_password("demo")},
        {"name": "admin", "role": "admin", "password_hash": hash_password("demo")},
    ]
    (workdir / "gated.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = Config.model_validate(raw)
    logs.setup(config.logging.format, config.logging.level, config.logging.libraries)
    tz = config.site_domain().timezone
    store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id)
    store.apply_sync(batch_from(demo_data(datetime.now(UTC), tz), config), datetime.now(UTC))
    store.close()

    # a virtual reader behind every serial reader the configuration names
    readers = {
        g.id: VirtualSerialReader(Path(r.device), FrameConfig())
        for g in config.gates
        for r in g.readers
        if getattr(r, "type", "") == "serial"
    }
    out = config.gates[0].output
    assert out is not None
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=out.port, unit=out.unit) as turnstile:
        daemon = Daemon(config, workdir / "gated.yaml")
        await daemon.start()
        print(
            "\n  gated demo is running\n"
            f"  console:   http://{config.console.bind}:{config.console.port}  (desk / demo, admin / demo)\n"
            f"  metrics:   http://{config.metrics.bind}:{config.metrics.port}/metrics\n"
            f"  tap:       .venv/bin/gated tap -c {workdir / 'gated.yaml'} turnstile-in 04A1B2C3D4\n"
            f"  or type:   printf '0499887766\\r\\n' > {readers['turnstile-in'].slave_name}  (a card on the reader's line)\n"
            f"  cards:     {', '.join(c for _, _, c in MEMBERS)}, DEADBEEF (blocked)\n"
            "  Ctrl-C stops the demo.\n",
            flush=True,
        )
        try:
            if scripted:
                for gate, card in SCRIPT:
                    await asyncio.sleep(1.5)
                    readers[gate].tap(card)
            while forever:
                await asyncio.sleep(20)
                gate, card = random.choice(SCRIPT[:4])
                readers[gate].tap(card)
            await asyncio.sleep(3)
        finally:
            await daemon.stop()
            for r in readers.values():
                r.close()
            del turnstile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gated-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--workdir", default=str(ROOT / "var" / "demo"))
    parser.add_argument("--once", action="store_true", help="run the script of taps and stop (for tests)")
    parser.add_argument("--fresh", action="store_true", help="start from an empty store")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if args.fresh and workdir.exists():
        shutil.rmtree(workdir)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(Path(args.config), workdir, forever=not args.once))
    return 0


if __name__ == "__main__":
    sys.exit(main())
