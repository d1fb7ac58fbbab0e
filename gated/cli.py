"""The `gated` command: builds the argument parser and dispatches. The daemon and the
installer's and desk's commands are in gated/commands.py, the QR tools in gated/qrcli.py,
the store's in gated/storecli.py, the scenario runner in gated/scenario.py."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _scenario(args: argparse.Namespace) -> int:
    from gated.scenario import run_files

    return run_files(args.files)


def _qr(args: argparse.Namespace) -> int:
    from gated.qrcli import run

    return run(args)


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("gated")
    except metadata.PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gated", description="Access-control gate daemon for gyms and studios")
    p.add_argument("--version", action="version", version=f"gated {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    sc = sub.add_parser("scenario", help="run behaviour scenarios")
    sc_sub = sc.add_subparsers(dest="scenario_command", required=True)
    run = sc_sub.add_parser("run", help="run scenario files through the real engine and store")
    run.add_argument("files", nargs="+")
    run.set_defaults(func=_scenario)

    from gated.qrcli import add_parser as add_qr

    add_qr(sub, _qr)

    from gated import commands, storecli

    commands.add_parsers(sub)
    storecli.add_parser(sub)
    _described(p)
    return p


def _described(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's own --help opens with the line its parent lists it with: argparse
    shows `help=` only in the parent's list, and `gated clock confirm --help` is where an
    installer looks for what the command does (and which docs say more)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            said = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None:
                    sub.description = said.get(name)
                _described(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
