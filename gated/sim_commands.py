"""The simulator's subcommands (`gated sim …`): the central system, a turnstile, a reader,
a simulated day and a whole site, each for rehearsals and demos, not for a gate's daemon."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any


async def until_stopped(main: Any, grace: float = 5.0) -> None:
    """Run `main` until it ends or Ctrl-C / SIGTERM / its terminal closes (SIGHUP, unless
    it runs under nohup); then cancel it, so that its cleanup runs (the socat child of
    `gated sim turnstile --transport rtu`, which a signal's default action left running),
    and wait at most `grace` seconds. Bounded because aiomqtt's disconnect waits for the
    broker's answer with no limit: once, under load, `gated sim central` never ended after
    its one Ctrl-C."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(main)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
    if task.done():
        task.result()  # its error, if it failed
        return
    task.cancel()
    await asyncio.wait({task}, timeout=grace)


def cmd_sim_central(args: argparse.Namespace) -> int:
    from gated.seed import SeedError, explain, read_seed_file
    from gated.yamlload import YamlError
    from simulator.central import CentralSettings, serve_central
    from sync.records import CentralSeedFile

    settings = CentralSettings(host=args.host, port=args.port, prefix=args.prefix, sites=[args.site])
    seed = None
    if args.seed:
        # read and checked before anything starts, as `gated seed` reads it: a bad file is
        # its lines and exit 2, not a traceback once the broker is up
        try:
            seed = read_seed_file(Path(args.seed), CentralSeedFile)
        except (OSError, UnicodeDecodeError, YamlError, SeedError) as e:
            print("\n".join(explain(Path(args.seed), e)), file=sys.stderr)
            return 2
    try:
        asyncio.run(until_stopped(serve_central(settings, Path(args.db), seed=seed, site=args.site)))
    except KeyboardInterrupt:  # before the loop took the signal over
        pass
    return 0


def cmd_sim_turnstile(args: argparse.Namespace) -> int:
    from gated import logs
    from simulator.turnstile import serve_turnstile

    logs.setup("console", "info")

    def ready(sim: Any) -> None:
        where = f"host: {sim.host}, port: {sim.port}" if args.transport == "tcp" else f"device: {sim.device}"
        print(f"simulated turnstile ready; in the gate's output: {{transport: {args.transport}, {where}, "
              f"unit: {args.unit}, coil: 0, passage_input: 0, door_contact: 1}}; Ctrl-C to stop", flush=True)

    try:
        asyncio.run(until_stopped(
            serve_turnstile(
                transport=args.transport, host=args.host, port=args.port, device=args.device, unit=args.unit,
                turns=not args.no_turn, delay=args.delay, on_ready=ready,
            )
        ))
    except KeyboardInterrupt:  # before the loop took the signal over
        pass
    return 0


def cmd_sim_reader(args: argparse.Namespace) -> int:
    from simulator.serial_reader import main as reader_main

    return reader_main(["--link", args.link, "--format", args.format])


def cmd_sim_day(args: argparse.Namespace) -> int:
    from simulator.day.run import run as run_day

    return run_day(args)


def cmd_sim_site(args: argparse.Namespace) -> int:
    from gated.demo import main as demo_main

    return demo_main(["--config", args.config])
