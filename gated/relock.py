"""`gated relock -c FILE`: every configured relay to its safe state, with no daemon.

The unit runs it as `ExecStopPost=`, so the relays are relocked on every way out of the
daemon — a clean stop, a crash (kill -9 mid-pulse), a watchdog kill, or an exit that
systemd does not restart (2: invalid configuration, 3: damaged store). A pulse cut off by
a crash must not leave a turnstile released until someone notices.

The safe state is the one the daemon's outputs go to (drivers/outputs/gate.py,
`_apply_hold`): locked, except a fail-safe door while the fire alarm is active or while an
admin's emergency release is stored: such a door is held released. The fire alarm is the
input read now; when it cannot be read, `fire_alarm.on_unknown` with the daemon's last
reading as stored (gated/safety.py): `keep` keeps it — a stop in a fire whose I/O board went
silent leaves the doors released, as the daemon held them — and `release` releases.
Fail-secure doors are always locked.

It reads only the outputs, the fire input and the store's path from the file, each on its
own (`outputs_of`): a file the daemon refused (exit 2) still has relays to lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from drivers.outputs.config import DoorMode, FireAlarmInputConfig, ModbusOutputConfig
from drivers.outputs.fire import FireAlarmInput
from drivers.outputs.modbus import ModbusGateOutput, OutputFault
from gated.config import Config, ControlConfig, StoreConfig
from gated.installer import quiet_libraries, say
from gated.safety import StoredSafety, read_stored
from gated.yamlload import load, read_text
from rules.admission import FireInput, fire_input_effect

Out = Callable[[str], None]
DEFAULT_STORE = StoreConfig().path
DEFAULT_CONTROL = ControlConfig().socket


async def fire_alarm_active(cfg: FireAlarmInputConfig | None, out: Out, last: bool | None = None) -> bool:
    """What the fire input says now, read once; for a silent board `on_unknown` with `last`,
    the daemon's last reading as stored (None: never read)."""
    if cfg is None:
        return False
    device = FireAlarmInput(cfg)
    try:
        if await device.connect():
            with contextlib.suppress(OutputFault):
                active = await device.read_active()
                out(f"fire-alarm input: {'ACTIVE' if active else 'clear'}")
                return active
        last_said = "never read" if last is None else ("ACTIVE" if last else "clear")
        out(f"fire-alarm input: cannot be read ({device.last_error}); on_unknown: {cfg.on_unknown.value}, "
            f"last reading stored: {last_said}")
    finally:
        await device.close()
    # what the daemon held: `keep` keeps its last reading (none stored: the doors at rest)
    return fire_input_effect(FireInput(active=last, known=False), cfg.on_unknown)[0]


def stored_safety(path: Path, out: Out) -> StoredSafety:
    """The safety state as the daemon stored it (an emergency release, the fire input's
    last reading); nothing when the store cannot be read (it may be the reason the daemon
    stopped: exit 3)."""
    try:
        stored = read_stored(path)
    except (sqlite3.Error, OSError) as e:
        out(f"store: cannot read the safety state ({e}); doors locked as at rest")
        return StoredSafety()
    if stored.emergency.active:
        out(f"emergency release stored (by {stored.emergency.operator}): fail-safe doors stay released")
    return stored


async def _drive(gate_id: str, cfg: ModbusOutputConfig, released: bool, out: Out) -> bool:
    output = ModbusGateOutput(cfg)
    state = "released (fail-safe door, fire alarm)" if released else "locked"
    coil = released != cfg.active_low
    # planned before connecting: connect()'s probe is the first write (a door held released
    # in a fire is not written locked first)
    output.rest_at(released)
    try:
        if not await output.connect():
            out(f"{gate_id}: FAILED: the board does not answer ({output.last_error}); the relay may still be released")
            return False
        await output.hold(unlocked=released)
    except OutputFault as e:
        out(f"{gate_id}: FAILED: {e}; the relay may still be released")
        return False
    finally:
        with contextlib.suppress(OutputFault):
            await output.close()
    out(f"{gate_id}: {state} (coil {cfg.coil} {'on' if coil else 'off'})")
    return True


@dataclass
class Outputs:
    """What relocking needs from a configuration, read leniently: the relays must be locked
    even when the rest of the file is wrong (the daemon exited 2 on it) or its credentials
    are out of reach."""

    gates: list[tuple[str, ModbusOutputConfig]] = field(default_factory=list)
    fire_alarm: FireAlarmInputConfig | None = None
    store: Path = DEFAULT_STORE
    problems: list[str] = field(default_factory=list)
    control: Path = DEFAULT_CONTROL


def outputs_of(path: Path) -> Outputs:
    """The outputs, fire input and store path of the file at `path`. YamlError, OSError,
    UnicodeDecodeError when the file cannot be read as YAML at all."""
    data = load(read_text(path)).data
    found = Outputs()
    if not isinstance(data, dict):
        return found
    gates = data.get("gates")
    for i, gate in enumerate(gates if isinstance(gates, list) else []):
        if not isinstance(gate, dict) or gate.get("output") is None:
            continue
        name = str(gate.get("id", f"gates[{i}]"))
        try:
            found.gates.append((name, ModbusOutputConfig.model_validate(gate["output"])))
        except ValidationError as e:
            found.problems.append(f"{name}: its output cannot be read ({e.error_count()} problem(s)): not relocked")
    if data.get("fire_alarm") is not None:
        try:
            found.fire_alarm = FireAlarmInputConfig.model_validate(data["fire_alarm"])
        except ValidationError:
            found.problems.append("fire_alarm cannot be read: taken as unreadable")
            found.fire_alarm = None
    store = data.get("store")
    if isinstance(store, dict) and isinstance(store.get("path"), str):
        found.store = Path(store["path"])
    control = data.get("control")
    if isinstance(control, dict) and isinstance(control.get("socket"), str):
        found.control = Path(control["socket"])
    return found


async def daemon_answers(socket: Path) -> bool:
    """A daemon is running on these relays (its control socket answers)."""
    from gated.control import request

    if not socket.exists():
        return False
    try:
        async with asyncio.timeout(1.0):
            await request(socket, {"cmd": "status"})
    except (OSError, TimeoutError, ValueError):
        return False  # a socket file left by a crash
    return True


async def relock(config: Config | Outputs, *, out: Out = say) -> int:
    """0 when every relay answered and is in its safe state, 1 when one did not (or an
    output could not be read from the file)."""
    quiet_libraries()
    if isinstance(config, Config):
        outputs = Outputs([(g.id, g.output) for g in config.gates if g.output is not None], config.fire_alarm,
                          Path(config.store.path), control=Path(config.control.socket))
    else:
        outputs = config
    if await daemon_answers(outputs.control):
        out("the daemon is running and drives the relays: it locks them itself when it stops")
        return 1
    for problem in outputs.problems:
        out(problem)
    if not outputs.gates:
        out("no gate has an output: nothing to relock")
        return 1 if outputs.problems else 0
    stored = stored_safety(outputs.store, out)
    fire = await fire_alarm_active(outputs.fire_alarm, out, stored.fire_input)
    release = fire or stored.emergency.active
    results = await asyncio.gather(
        *(_drive(gid, cfg, release and cfg.mode is DoorMode.FAIL_SAFE, out) for gid, cfg in outputs.gates)
    )
    return 0 if all(results) and not outputs.problems else 1


__all__ = ["Outputs", "fire_alarm_active", "outputs_of", "relock", "stored_safety"]
