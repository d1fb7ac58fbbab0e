"""The arguments of `gated sim day`, apart from run.py: `gated`'s parser loads this module
alone (no harness, no checks) for `gated --help`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", type=int, help="members of the chain (default 2000; --short 300)")
    p.add_argument("--seed", type=_seed, default=1,
                   help="the population, the traffic and the chaos instants: a number, or `random` (one is picked "
                        "and printed, so every soak tries a day nobody ran; run it again with that number)")
    p.add_argument("--speed", type=float, help="simulated seconds per real second (default 72; --short 120)")
    p.add_argument("--short", action="store_true", help="a 2-hour morning (06:00-08:00) with 300 members, faster")
    p.add_argument("--dir", help="the run directory (default var/simday/seed-N; emptied first)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("--no-chaos", action="store_true", help="the same day without faults")
    p.add_argument("--no-bridge", action="store_true", help="one broker for everything (no WAN cuts)")
    p.add_argument("--trace-memory", action="store_true",
                   help="run the daemons under tracemalloc and report what grew most (slower)")
    p.add_argument("--check", metavar="DIR", help="only check a finished run's directory again")


def _seed(text: str) -> int:
    if text == "random":
        import secrets

        seed = secrets.randbelow(1_000_000) + 1
        print(f"gated sim day: seed {seed} (random)", flush=True)
        return seed
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'random', not {text!r}") from None
