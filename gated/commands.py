"""Subcommands beyond scenarios and QR keys (daemon, installer tools, simulator)."""

from __future__ import annotations

from typing import Any


def add_parsers(sub: Any) -> None:  # argparse's subparsers action has no public type
    del sub
