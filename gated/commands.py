"""Subcommands beyond scenarios and QR keys: the daemon, installer tools, the simulator."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gated.sim_commands import (
    cmd_sim_central,
    cmd_sim_day,
    cmd_sim_reader,
    cmd_sim_site,
    cmd_sim_turnstile,
)

if TYPE_CHECKING:
    from gated.config import Config

DEFAULT_CONFIG = os.environ.get("GATED_CONFIG", "/etc/gated/gated.yaml")
# where `gated schema` keeps the schema in a clone of the repository (committed; the package
# installs it as /usr/share/gated/gated.schema.json)
SOURCE = Path(__file__).resolve().parent.parent
SCHEMA_PATH = SOURCE / "config" / "gated.schema.json"


def _source_checkout() -> bool:
    """gated runs from a clone of its repository (`make install`: an editable install), not
    from an installed package, whose code sits in site-packages with nothing of the
    repository beside it."""
    try:
        project = (SOURCE / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return '\nname = "gated"\n' in project and SCHEMA_PATH.parent.is_dir()


def _default_user() -> str:
    """GATED_USER, else the login name; a uid with no name (a systemd dynamic user without
    nss-systemd, a container) must not stop every command from starting."""
    given = os.environ.get("GATED_USER")
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"configuration file (default {DEFAULT_CONFIG})")


def add_parsers(sub: Any) -> None:  # argparse's subparsers action has no public type
    p = sub.add_parser("run", help="run the daemon")
    _config_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="check a configuration file: every error and warning, each with its line")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("schema", help="the configuration's JSON Schema, on stdout; run from a clone of the "
                       "repository, into its config/gated.schema.json (the package installs it as "
                       "/usr/share/gated/gated.schema.json)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write it to FILE (- for stdout); default: stdout, or config/gated.schema.json in a clone")
    p.add_argument("--check", action="store_true",
                   help="write nothing: exit 1 if FILE (in a clone, config/gated.schema.json) differs from the models")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("seed", help="load members, passes and bookings (scenario/central format) into the store")
    _config_arg(p)
    p.add_argument("file")
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("discover", help="list serial ports, NFC readers and input devices; scan a Modbus line")
    p.add_argument("--json", action="store_true")
    p.add_argument("--modbus", metavar="DEVICE|HOST[:PORT]",
                   help="also ask a Modbus line who is there: a serial device (RTU unit scan) or a TCP board")
    p.add_argument("--baudrate", type=int, default=9600, help="RTU line speed (default 9600)")
    p.add_argument("--parity", choices=["N", "E", "O"], default="N")
    p.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    p.add_argument("--units", default=None, help="unit ids to try, e.g. 1-32 (RTU default 1-247; TCP 1,0,255)")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("test-relay", help="pulse a gate's relay and watch its inputs: proves the wiring")
    _config_arg(p)
    p.add_argument("gate")
    p.add_argument("--no-passage", action="store_true", help="nobody will go through: succeed without a passage")
    p.add_argument("--watch", type=float, default=None, help="seconds to watch the inputs (default pulse + passage_timeout)")
    p.set_defaults(func=cmd_test_relay)

    p = sub.add_parser("relock", help="every relay to its safe state, with the daemon stopped (the unit's ExecStopPost)")
    _config_arg(p)
    p.set_defaults(func=cmd_relock)

    p = sub.add_parser("monitor", help="show a gate's inputs, coil and door live while you wire")
    _config_arg(p)
    p.add_argument("gate")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--interval", type=float, default=0.1)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("relay", help="switch a gate's relay by hand: on, off, pulse (admin login when the daemon runs)")
    _config_arg(p)
    p.add_argument("gate")
    p.add_argument("action", choices=["on", "off", "pulse"])
    p.add_argument("--seconds", type=float, default=None, help="pulse length (default: the gate's pulse)")
    p.add_argument("--user", default=_default_user())
    p.set_defaults(func=cmd_relay)

    p = sub.add_parser("osdp-install", help="load an OSDP reader's configured key into it (reader in install mode)")
    _config_arg(p)
    p.add_argument("reader")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=cmd_osdp_install)

    p = sub.add_parser("tap", help="inject a card or QR read into the running daemon")
    _config_arg(p)
    p.add_argument("gate")
    p.add_argument("card", nargs="?")
    p.add_argument("--qr")
    p.set_defaults(func=cmd_tap)

    p = sub.add_parser("status", help="the running daemon's health")
    _config_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("open", help="open a gate once (front-desk override, audited)")
    _config_arg(p)
    p.add_argument("gate")
    p.add_argument("--reason", required=True)
    p.add_argument("--user", default=_default_user())
    p.set_defaults(func=cmd_open)

    for name, what in (("lockdown", "lock every entrance (admin), or release with --off"),
                       ("emergency", "release every fail-safe door as on a fire alarm (admin), or end it with --off")):
        p = sub.add_parser(name, help=what)
        _config_arg(p)
        p.add_argument("--off", action="store_true")
        p.add_argument("--reason", help="why (required to switch it on): recorded in the event and the audit log, "
                       "shown on the console's banner")
        p.add_argument("--user", default=_default_user())
        p.set_defaults(func=cmd_safety_switch, switch=name)

    p = sub.add_parser("clock", help="the running daemon's clock")
    cs = p.add_subparsers(dest="clock_command", required=True)
    c = cs.add_parser("confirm", help="say the wall clock's time is right (admin): no-shows and fees may act at it "
                      "without NTP (docs/rules.md, \"When the clock cannot be trusted\")")
    _config_arg(c)
    c.add_argument("--user", default=_default_user())
    c.set_defaults(func=cmd_clock_confirm)

    p = sub.add_parser("hash-password", help="hash a console password (asked on the terminal, or GATED_PASSWORD) "
                       "for the configuration or a credential file")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write the hash to FILE, mode 0600, whole or not at all (e.g. "
                        "/etc/gated/credentials/desk.hash); default: print it")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("sim", help="simulated devices and central system, for rehearsals and tests")
    ss = p.add_subparsers(dest="sim_command", required=True)
    s = ss.add_parser("central", help="run the reference central system on an MQTT broker")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=1883)
    s.add_argument("--prefix", default="gated")
    s.add_argument("--site", required=True)
    s.add_argument("--db", default="central.db")
    s.add_argument("--seed", help="members, passes and bookings for the site, in the file `gated seed` loads "
                   "(config/members.example.yaml), into an empty database")
    s.set_defaults(func=cmd_sim_central)
    s = ss.add_parser("turnstile", help="a turnstile on a real Modbus server (TCP, or RTU over a pty pair)")
    s.add_argument("--transport", choices=["tcp", "rtu"], default="tcp")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5020)
    s.add_argument("--device", help="RTU: serial port to serve on (default: a new socat pty pair)")
    s.add_argument("--unit", type=int, default=1)
    s.add_argument("--no-turn", action="store_true", help="people walk away instead of turning it")
    s.add_argument("--delay", type=float, default=0.8, help="seconds from release to rotation")
    s.set_defaults(func=cmd_sim_turnstile)
    s = ss.add_parser("reader", help="a serial reader on a pseudo-terminal; type card ids, one per line")
    s.add_argument("--link", required=True, help="path of the symlink to create for the reader's device")
    s.add_argument("--format", default="hex")
    s.set_defaults(func=cmd_sim_reader)
    s = ss.add_parser("day", help="a day at a two-site chain with chaos, then the books checked (make soak)")
    from simulator.day.args import add_arguments as add_day_arguments

    add_day_arguments(s)
    s.set_defaults(func=cmd_sim_day)
    s = ss.add_parser("site", help="a whole simulated site (the demo) from a configuration")
    s.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "config" / "demo.yaml"))
    s.set_defaults(func=cmd_sim_site)


def cmd_run(args: argparse.Namespace) -> int:
    from gated.daemon import run

    return run(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    from gated.config import check_config

    report = check_config(args.file)
    said = [(line, "error", key, msg) for line, key, msg in report.errors]
    said += [(line, "warning", key, msg) for line, key, msg in report.warnings]
    # a warning that depends on a value with an error is not guessed: it is named, beside that error
    said += [(line, "waiting", key, f"warnings are checked once these errors are fixed ({what})")
             for line, key, what in report.waiting]
    # in the file's order, each with its line: an installer walks down the file once
    for line, kind, key, msg in sorted(said, key=lambda q: (q[0] or 0, q[1])):
        print(f"{report.path}:{line or '?'}: {kind}: {key}: {msg}")
    if report.errors or report.config is None:
        waiting = f"; warnings waiting for {len(report.waiting)} error(s) to be fixed" if report.waiting else ""
        print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s){waiting}")
        return 2
    print(f"{args.file}: OK ({len(report.config.gates)} gates, {len(report.warnings)} warning(s))")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from gated.config import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    # An installed package's code is in site-packages, where a file written beside it
    # belongs to no package (dpkg --purge leaves it, and the directory, behind): only a
    # clone of the repository has a config/ of its own to keep the schema in.
    target = args.out if args.out is not None else (str(SCHEMA_PATH) if _source_checkout() else "-")
    if args.check:
        if target == "-":
            print("gated schema --check compares a file with the models: name it with --out FILE "
                  "(the package's is /usr/share/gated/gated.schema.json)", file=sys.stderr)
            return 2
        out = Path(target)
        try:
            same = out.read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        print(f"{out}: {'up to date' if same else 'differs from the models; run gated schema'}")
        return 0 if same else 1
    if target == "-":
        sys.stdout.write(text)
        return 0
    out = Path(target)
    try:
        _replace(out, text)
    except OSError as e:
        print(f"{out}: cannot write: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def _replace(path: Path, text: str, mode: int = 0o644) -> None:
    """`path` holds `text`, whole, or is as it was: written beside it and renamed over it (a
    reader, an editor or a test, never sees half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # the rename itself outlives a power cut
        finally:
            os.close(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def cmd_seed(args: argparse.Namespace) -> int:
    from gated.seed import seed_store

    config = config_for(args)
    from gated.installer import daemon_running
    from gated.seed import SeedError, explain
    from gated.yamlload import YamlError
    from sync.errors import StoreError
    from sync.store.faults import describe_store_error

    if daemon_running(config):
        print("the daemon is running on this store: stop it first (systemctl stop gated); "
              "a site with a central system gets its members from it", file=sys.stderr)
        return 1
    notes: list[str] = []
    try:
        counts = seed_store(config, Path(args.file), notes)
    except (OSError, UnicodeDecodeError, YamlError, SeedError) as e:
        print("\n".join(explain(Path(args.file), e)), file=sys.stderr)
        return 2
    except (sqlite3.Error, StoreError) as e:
        print(f"{config.store.path}: {describe_store_error(e)}", file=sys.stderr)
        return 3
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps(counts))
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    from drivers.readers.discover import discover
    from gated.installer import format_table, parse_units

    found = discover().as_dict()
    modbus: list[list[str]] | None = None
    if args.modbus:
        try:
            modbus = _modbus_scan(args, parse_units)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.json:
        if modbus is not None:
            found["modbus"] = [dict(zip(("unit", "answer", "coils", "inputs"), r, strict=True)) for r in modbus]
        print(json.dumps(found, indent=2, default=str))
        return 0
    sections: list[tuple[str, list[str], list[list[str]]]] = [
        ("Serial ports (readers, RS-485 adapters)", ["path for the config", "device", "description"],
         [[p["path"], p["device"], p["description"]] for p in found["serial"]]),
        ("NFC readers", ["device for the config", "vendor:product", "driver"],
         [[n["path"], f"{n['vendor_id']:04x}:{n['product_id']:04x}", n["driver"]] for n in found["nfc"]]),
        ("Keyboard-wedge scanners", ["path for the config", "device", "name"],
         [[i["path"], i["device"], i["name"]] for i in found["input"]]),
    ]
    if modbus is not None:
        sections.append((f"Modbus {args.modbus}", ["unit", "answer", "coils", "inputs"], modbus))
    for title, head, rows in sections:
        print(f"{title}:")
        if rows:
            for line in format_table(rows, head):
                print(f"  {line}")
        else:
            print("  (none found)")
        print()
    for note in found["notes"]:
        print(f"note: {note}")
    return 0


def _modbus_scan(args: argparse.Namespace, parse_units: Any) -> list[list[str]]:
    from gated.installer import probe_tcp, quiet_libraries

    quiet_libraries()
    target: str = args.modbus
    if target.startswith("/") or target.startswith("COM"):
        from drivers.outputs.rtu_probe import CAUSES, Answer, explain, scan

        units = parse_units(args.units or "1-247")
        print(f"scanning units {units[0]}..{units[-1]} on {target} at {args.baudrate} 8{args.parity}{args.stopbits}…",
              file=sys.stderr)
        try:
            found = scan(target, units, baudrate=args.baudrate, parity=args.parity, stopbits=args.stopbits)
        except (OSError, ValueError) as e:  # serial.SerialException is an OSError
            raise ValueError(f"cannot open {target}: {getattr(e, 'strerror', None) or e}") from None
        rows = [[str(u), explain(r) if r.answer is not Answer.OK else "answers",
                 "" if r.coils is None else str(r.coils), "" if r.inputs is None else str(r.inputs)]
                for u, r in sorted(found.items())]
        if not rows:
            rows = [["-", CAUSES[Answer.SILENT], "", ""]]
        return rows
    host, _, port = target.partition(":")
    from gated.installer import TCP_UNITS

    if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{target!r}: the port must be a number from 1 to 65535")
    return asyncio.run(probe_tcp(host, int(port or 502), parse_units(args.units or "1,0,255", TCP_UNITS)))


def cmd_test_relay(args: argparse.Namespace) -> int:
    from gated.installer import test_relay

    config = config_for(args)
    return asyncio.run(test_relay(config, args.gate, expect_passage=not args.no_passage, watch=args.watch))


def cmd_relock(args: argparse.Namespace) -> int:
    from gated.relock import outputs_of, relock
    from gated.yamlload import YamlError

    try:
        outputs = outputs_of(Path(args.config))
    except (OSError, UnicodeDecodeError) as e:
        print(f"{args.config}: cannot read: {e}", file=sys.stderr)
        return 2
    except YamlError as e:
        print(f"{args.config}:{e.line or '?'}: {e.message}", file=sys.stderr)
        return 2
    return asyncio.run(relock(outputs))


def cmd_monitor(args: argparse.Namespace) -> int:
    from gated.installer import monitor

    config = config_for(args)
    return asyncio.run(monitor(config, args.gate, duration=args.duration, interval=args.interval))


def cmd_relay(args: argparse.Namespace) -> int:
    from gated.installer import daemon_running, relay

    config = config_for(args)
    if daemon_running(config):
        result = _control(args, {"cmd": "relay", "gate": args.gate, "action": args.action,
                                 "seconds": args.seconds, "user": args.user, "password": _password()})
        print(json.dumps(result))
        return 0 if "error" not in result else 1
    return asyncio.run(relay(config, args.gate, args.action, args.seconds))


def cmd_osdp_install(args: argparse.Namespace) -> int:
    from gated.installer import osdp_install

    config = config_for(args)
    return osdp_install(config, args.reader, timeout=args.timeout)


def config_for(args: argparse.Namespace) -> Config:
    """The configuration a command names (`-c`), or exit 2 with each problem on its own
    line on stderr: how every command refuses a broken file (but `check-config`, which
    reports warnings too, and `run`, whose lines go to the journal)."""
    from gated.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as e:
        for line, key, msg in e.problems:
            print(f"{e.path}:{line or '?'}: {key}: {msg}", file=sys.stderr)
        raise SystemExit(2) from None


CONTROL_TIMEOUT = 15.0  # seconds a command waits for the daemon's answer


def _control(args: argparse.Namespace, obj: dict[str, Any]) -> dict[str, Any]:
    from gated.control import request

    path = config_for(args).control.socket
    try:
        return asyncio.run(request(path, obj, CONTROL_TIMEOUT))
    except ConnectionResetError as e:
        print(f"the daemon at {path} stopped answering: {e}. If it died mid-tap, a grant it had "
              "acted on is reported as passage_unconfirmed when it starts again (gated status, its log)",
              file=sys.stderr)
        raise SystemExit(1) from None
    except (OSError, TimeoutError) as e:
        print(unreachable(path, args.config, e), file=sys.stderr)
        raise SystemExit(1) from None


def unreachable(path: Path, config: str, e: OSError | TimeoutError) -> str:
    """Why the control socket did not answer, and what to do about it: an errno alone left
    an installer at `gated tap` (guide, step 6) guessing whether the daemon ran at all."""
    where = f"cannot reach the daemon at {path}"
    look = "`systemctl status gated` (and `journalctl -u gated` for why it stopped)"
    if isinstance(e, FileNotFoundError):
        # a clean stop removes the socket; a daemon on another file listens elsewhere
        return (f"{where}: no socket there. Is the daemon running? {look}; start it with "
                f"`systemctl start gated`. The socket is looked for where control.socket in {config} "
                "says; a daemon started on another configuration file listens where that one says "
                "(name it with -c)")
    if isinstance(e, ConnectionRefusedError):
        return (f"{where}: nothing listens on it (connection refused): the daemon is not running — "
                f"it was killed or crashed and left its socket behind — or is still starting. {look}")
    if isinstance(e, PermissionError):
        return (f"{where}: permission denied: the socket (mode 0660) is for root and the daemon's "
                "own user: run the command as root (sudo)")
    if isinstance(e, TimeoutError):
        return (f"{where}: no answer within {CONTROL_TIMEOUT:.0f} s: the daemon is running but busy "
                f"or stuck. {look}")
    return f"{where}: {e.strerror or e}. Is the daemon running? {look}"


def cmd_tap(args: argparse.Namespace) -> int:
    if (args.card is None) == (args.qr is None):
        print("give a card id or --qr TOKEN", file=sys.stderr)
        return 2
    obj: dict[str, Any] = {"cmd": "tap", "gate": args.gate}
    obj["card" if args.card else "qr"] = args.card or args.qr
    result = _control(args, obj)
    print(json.dumps(result))
    return 0 if "error" not in result else 1


def cmd_status(args: argparse.Namespace) -> int:
    print(json.dumps(_control(args, {"cmd": "status"}), indent=2))
    return 0


def _password(prompt: str = "console password: ") -> str:
    """GATED_PASSWORD, or asked on the terminal; without either a clear refusal (getpass
    falls back to stdin, and a script's empty stdin would end in EOFError)."""
    given = os.environ.get("GATED_PASSWORD")
    if given:
        return given
    if not sys.stdin.isatty():
        print("a password is needed: set GATED_PASSWORD, or run this on a terminal", file=sys.stderr)
        raise SystemExit(2)
    try:
        return getpass.getpass(prompt)
    except EOFError:
        print("no password given", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_open(args: argparse.Namespace) -> int:
    result = _control(
        args, {"cmd": "open", "gate": args.gate, "reason": args.reason, "user": args.user, "password": _password()}
    )
    print(json.dumps(result))
    return 0 if "error" not in result else 1


def cmd_safety_switch(args: argparse.Namespace) -> int:
    if not args.off and not (args.reason or "").strip():
        print(f"gated {args.switch}: say why with --reason (it is recorded and shown on the console)", file=sys.stderr)
        return 2
    result = _control(args, {"cmd": args.switch, "on": not args.off, "reason": args.reason, "user": args.user,
                             "password": _password()})
    print(json.dumps(result))
    if result.get("not_durable"):
        print(f"gated {args.switch}: in force, but the store cannot write it yet (a storage fault): a restart "
              "now would forget it; it is written when the store works again (gated status: safety.not_durable)",
              file=sys.stderr)
    return 0 if "error" not in result else 1


def cmd_clock_confirm(args: argparse.Namespace) -> int:
    result = _control(args, {"cmd": "clock_confirm", "user": args.user, "password": _password()})
    print(json.dumps(result))
    return 0 if "error" not in result else 1


def cmd_hash_password(args: argparse.Namespace) -> int:
    from gated.auth import hash_password

    out = Path(args.out) if args.out is not None else None
    # where it goes is checked before the password is asked: a typed password is not lost
    if out is not None and not (out.parent.is_dir() and os.access(out.parent, os.W_OK | os.X_OK)):
        print(f"{out}: cannot write there: {out.parent} is no directory this user may write "
              "(the package makes /etc/gated/credentials, root's)", file=sys.stderr)
        return 2
    asked = not os.environ.get("GATED_PASSWORD")
    pw = _password("new password: ")
    if len(pw) < 8:
        print("use at least 8 characters", file=sys.stderr)
        return 2
    if asked and _password("the same again: ") != pw:  # typed unseen: a typo would lock the desk out
        print("the two passwords differ: nothing written", file=sys.stderr)
        return 2
    hashed = hash_password(pw)
    if out is None:
        print(hashed)
        return 0
    try:
        _replace(out, hashed + "\n", mode=0o600)
    except OSError as e:
        print(f"{out}: cannot write: {e.strerror or e}; nothing written", file=sys.stderr)
        return 2
    print(f"wrote {out} (mode 0600)")
    return 0
