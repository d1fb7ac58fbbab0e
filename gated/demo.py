"""`make demo`: a whole simulated site on this machine, no hardware, no broker.

- a turnstile on a real Modbus TCP server (simulator/turnstile.py), port 1502 by default,
- two serial readers on pseudo-terminals (var/demo/reader-in, var/demo/reader-out),
- the daemon on config/demo.yaml with members, passes and today's classes (fresh at every
  start: the balances and classes are reset around the current time; --keep, or `make demo
  KEEP=1`, keeps the last run's store),
- the front-desk console on http://127.0.0.1:8080 (user `desk`, password `demo`; admin
  `admin`/`demo`) and a member-facing gate display (its link is printed),
- a script of taps so that something happens at once, then now and then a tap that costs
  nobody anything (a time pass coming and going, an unknown card).

Type a card number and Enter in this terminal to tap it at the entrance (`out CARD` at the
exit). Ports: --console-port, --modbus-port, --metrics-port (or GATED_DEMO_CONSOLE_PORT,
GATED_DEMO_MODBUS_PORT, GATED_DEMO_METRICS_PORT). Events wait in the outbox (no broker).
Ctrl-C (or SIGTERM) stops everything; SIGHUP reloads the configuration, as for the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import stat
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
             "starts_at": at(150), "ends_at": at(205)},
        ],
    }


SCRIPT = [
    ("turnstile-in", "04A1B2C3D4"),  # Ana, inside Spinning's arrival window
    ("turnstile-in", "A1B2C3D4"),  # Lena, marketplace booking: the booking is the ticket
    ("turnstile-in", "DEADBEEF"),  # blocked member
    ("turnstile-in", "0499887766"),  # Bruno, walk-in on a deduct-at-access pass
    ("turnstile-in", "12345678"),  # unknown card: the desk can assign it to a member
    ("exit", "04A1B2C3D4"),  # Ana leaves
]

# Now and then, taps that take nothing from anybody: a run left going all day must not
# drain the demo members' passes (Jonas has a monthly time pass).
BACKGROUND = [
    ("turnstile-in", "C0FFEE01"),
    ("exit", "C0FFEE01"),
    ("turnstile-in", "5EED5EED"),  # an unknown card
]


def _port(value: str | None, fallback: int) -> int:
    return int(value) if value else fallback


def typed_tap(line: str) -> tuple[str, str] | None:
    """A line typed in the demo's terminal: `CARD` at the entrance, `out CARD` (or `exit
    CARD`) at the exit, with any spaces between; None when it is no tap."""
    words = line.split()
    if len(words) == 1 and words[0].lower() not in ("out", "exit"):
        gate, card = "turnstile-in", words[0]
    elif len(words) == 2 and words[0].lower() in ("out", "exit"):
        gate, card = "exit", words[1]
    else:
        return None
    return (gate, card.upper()) if card.isascii() and card.isalnum() and len(card) <= 40 else None


def stdin_kind() -> str:
    """What the demo's standard input is: `tty` (a terminal: type cards), `pipe` (lines
    from another program), `file` (a file redirected in), or `none`."""
    if sys.stdin is None:
        return "none"
    try:
        fd = sys.stdin.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError):
        return "none"
    if os.isatty(fd):
        return "tty"
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        return "pipe"
    if stat.S_ISREG(mode):
        return "file"
    return "none"  # /dev/null and the like: nothing will be typed


async def _typed_taps(readers: dict[str, Any], stop: asyncio.Event, kind: str) -> None:
    """Cards typed in the demo's terminal (or sent down a pipe), read as if the card had
    been held to a reader. The end of the input is the end of typing — and, for a
    terminal, of the demo: a closed terminal has nobody left to use it, and the demo
    must not hold its ports (nor spin on the end of input)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()  # None: the end of the input
    fd = sys.stdin.fileno()

    def say(text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # the terminal may be gone already
            print(text, flush=True)

    def tap(line: str) -> None:
        if not line.strip():
            return
        parsed = typed_tap(line)
        if parsed is None:
            say("  type a card number (letters and digits), or `out CARD` for the exit")
            return
        gate, card = parsed
        say(f"  tap {card} at {'the exit' if gate == 'exit' else 'the entrance'}")
        readers[gate].tap(card)

    if kind == "file":  # a regular file cannot be waited on: it is all there already
        for line in sys.stdin.read().splitlines():
            tap(line)
        return
    pending = b""

    def readable() -> None:
        nonlocal pending
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""  # a terminal that went away reads as an error: the end too
        if not chunk:
            loop.remove_reader(fd)
            if pending:
                queue.put_nowait(pending.decode(errors="replace"))
            queue.put_nowait(None)
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            queue.put_nowait(raw.decode(errors="replace"))

    loop.add_reader(fd, readable)
    try:
        while (line := await queue.get()) is not None:
            tap(line)
        if kind == "tty":
            stop.set()
            say("  the terminal is closed: stopping the demo")
    finally:
        loop.remove_reader(fd)


async def run_demo(
    config_template: Path,
    workdir: Path,
    *,
    scripted: bool = True,
    forever: bool = True,
    ports: dict[str, int | None] | None = None,
) -> None:
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
    # a display token made here, never kept in the repository
    raw["console"]["displays"] = [{"id": "entrance", "gate": "turnstile-in", "token": secrets.token_urlsafe(24)}]
    ports = ports or {}
    if ports.get("console") is not None:
        raw["console"]["port"] = ports["console"]
    if ports.get("metrics") is not None:
        raw["metrics"]["port"] = ports["metrics"]
    if ports.get("modbus") is not None:
        raw["gates"][0]["output"]["port"] = ports["modbus"]
    (workdir / "gated.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    config = Config.model_validate(raw)
    logs.setup(config.logging.format, config.logging.level, config.logging.libraries)
    tz = config.site_domain().timezone
    store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id, ten_digits=config.ten_digits())
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=out.port, unit=out.unit) as turnstile:
        daemon = Daemon(config, workdir / "gated.yaml")
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(daemon.reload()))
        await daemon.start()
        base = f"http://{config.console.bind}:{daemon.console.port if daemon.console else config.console.port}"
        display = config.console.displays[0]
        stdin = stdin_kind()
        tap_hint = ("  tap:       type a card number here and press Enter (`out CARD` for the exit), or\n"
                    "             " if stdin == "tty" else
                    "  tap:       lines from standard input (`CARD`, `out CARD`), or\n             ")
        print(
            "\n  gated demo is running\n"
            f"  console:   {base}  (desk / demo; admin / demo for lockdown)\n"
            f"  display:   {base}/display/{display.id}?token={display.token}\n"
            "             (what members see at the entrance: open it beside the console)\n"
            f"  metrics:   http://{config.metrics.bind}:{config.metrics.port}/metrics\n"
            + (tap_hint if stdin in ("tty", "pipe", "file") else "  tap:       ")
            + f".venv/bin/gated tap -c {workdir / 'gated.yaml'} turnstile-in 04A1B2C3D4\n"
            "  cards:     04A1B2C3D4 Ana (Spinning soon)  0499887766 Bruno (pay per visit)\n"
            "             A1B2C3D4 Lena (marketplace)  C0FFEE01 Jonas (monthly)  1111AAAA Kari (credits)\n"
            "             DEADBEEF Max (blocked)  anything else: an unknown card\n"
            "  Ctrl-C stops the demo.\n",
            flush=True,
        )
        typing = (
            asyncio.create_task(_typed_taps(readers, stop, stdin), name="demo-typing")
            if forever and stdin in ("tty", "pipe", "file") else None
        )
        try:
            if scripted:
                for gate, card in SCRIPT:
                    if stop.is_set():
                        break
                    await asyncio.sleep(1.5)
                    readers[gate].tap(card)
            background = itertools.cycle(BACKGROUND)
            while forever and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await stop.wait()
                if not stop.is_set():
                    gate, card = next(background)
                    readers[gate].tap(card)
            if not forever:
                await asyncio.sleep(3)
        finally:
            if typing is not None:
                typing.cancel()
                await asyncio.wait([typing])
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await daemon.stop()
            for r in readers.values():
                r.close()
            del turnstile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gated-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--workdir", default=str(ROOT / "var" / "demo"))
    parser.add_argument("--once", action="store_true", help="run the script of taps and stop (for tests)")
    parser.add_argument("--keep", action="store_true", help="keep the store of the last run (default: start afresh)")
    parser.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for old scripts
    env = os.environ.get
    parser.add_argument("--console-port", type=int, default=_port(env("GATED_DEMO_CONSOLE_PORT"), 0) or None)
    parser.add_argument("--modbus-port", type=int, default=_port(env("GATED_DEMO_MODBUS_PORT"), 0) or None)
    parser.add_argument("--metrics-port", type=int, default=_port(env("GATED_DEMO_METRICS_PORT"), 0) or None)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if not args.keep and workdir.exists():
        # the demo's members and classes are made around "now": yesterday's ledger would
        # replay its deductions onto them
        for name in ("gated.db", "gated.db-wal", "gated.db-shm"):
            with contextlib.suppress(FileNotFoundError):
                (workdir / name).unlink()
    ports = {"console": args.console_port, "modbus": args.modbus_port, "metrics": args.metrics_port}
    asyncio.run(run_demo(Path(args.config), workdir, forever=not args.once, ports=ports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
