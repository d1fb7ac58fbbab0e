"""`gated relock -c FILE`: every configured relay to its safe state, with no daemon.

The unit runs it as `ExecStopPost=`, so the relays are relocked on every way out of the
daemon — a clean stop, a crash (kill -9 mid-pulse), a watchdog kill, or an exit that
systemd does not restart (2: invalid configuration, 3: damaged store). A pulse cut off by
a crash must not leave a turnstile released until someone notices.

The safe state is the one the daemon's outputs go to (drivers/outputs/gate.py,
`_apply_hold`): locked, except a fail-safe door while the fire alarm is active (the fire
input reads active, or cannot be read and `fire_alarm.on_unknown` is `release`) or while
an admin's emergency release is stored: such a door is held released. Fail-secure doors
are always locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from drivers.outputs.config import DoorMode, ModbusOutputConfig
from drivers.outputs.fire import FireAlarmInput
from drivers.outputs.modbus import ModbusGateOutput, OutputFault
from gated.config import Config
from gated.safety import EMERGENCY_KEY, Switch
from rules.admission import FireInput, fire_input_effect

Out = Callable[[str], None]


async def fire_alarm_active(config: Config, out: Out) -> bool:
    """What the fire input says now, read once, with `on_unknown` for a silent board."""
    cfg = config.fire_alarm
    if cfg is None:
        return False
    device = FireAlarmInput(cfg)
    try:
        if await device.connect():
            with contextlib.suppress(OutputFault):
                active = await device.read_active()
                out(f"fire-alarm input: {'ACTIVE' if active else 'clear'}")
                return active
        out(f"fire-alarm input: cannot be read ({device.last_error}); on_unknown: {cfg.on_unknown.value}")
    finally:
        await device.close()
    # a fresh process has no last state: `keep` keeps the doors' resting state
    return fire_input_effect(FireInput(active=None, known=False), cfg.on_unknown)[0]


def emergency_release_stored(path: Path, out: Out) -> bool:
    """An admin's emergency release, as the daemon stored it; False when the store cannot
    be read (it may be the reason the daemon stopped: exit 3)."""
    if not path.exists():
        return False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=2.0)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (EMERGENCY_KEY,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        out(f"store: cannot read the safety state ({e}); doors locked as at rest")
        return False
    switch = Switch.load(row[0] if row else None)
    if switch.active:
        out(f"emergency release stored (by {switch.operator}): fail-safe doors stay released")
    return switch.active


async def _drive(gate_id: str, cfg: ModbusOutputConfig, released: bool, out: Out) -> bool:
    output = ModbusGateOutput(cfg)
    state = "released (fail-safe door, fire alarm)" if released else "locked"
    coil = released != cfg.active_low
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


async def relock(config: Config, *, out: Out = print) -> int:
    """0 when every relay answered and is in its safe state, 1 when one did not."""
    from gated.installer import quiet_libraries

    quiet_libraries()
    gates = [(g.id, g.output) for g in config.gates if g.output is not None]
    if not gates:
        out("no gate has an output: nothing to relock")
        return 0
    fire = await fire_alarm_active(config, out)
    release = fire or emergency_release_stored(Path(config.store.path), out)
    results = await asyncio.gather(
        *(_drive(gid, cfg, release and cfg.mode is DoorMode.FAIL_SAFE, out) for gid, cfg in gates)
    )
    return 0 if all(results) else 1


__all__ = ["emergency_release_stored", "fire_alarm_active", "relock"]
