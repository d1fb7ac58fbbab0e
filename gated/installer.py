"""The installer's tools that talk to the hardware: test-relay, monitor, relay, the Modbus
part of discover, and OSDP install mode. Each prints plain sentences for a person with a
screwdriver in the other hand, and returns the command's exit status.

They open the boards themselves, so the daemon should not be running (an RS-485 port can
be opened once); each says so when it is. `gated relay` and `gated monitor` go through
the running daemon instead.

About 500 lines: the installer's commands share the opening of a board, its answers and the
printing of what was found; each command is a short function over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.outputs.config import ModbusOutputConfig, OutputTransport
from drivers.outputs.modbus import ModbusGateOutput, OutputFault, OutputHealth
from drivers.outputs.plan import COUNTER_MODULO
from drivers.outputs.refusals import describe
from drivers.outputs.rtu_probe import explain, probe_unit
from gated.config import Config, GateConfig

Out = Callable[[str], None]


def say(line: str) -> None:
    """A line for the person at the gate, now: these are live views ("walk through now",
    each change of an input), also when the output goes through a pipe (`| tee log`)."""
    print(line, flush=True)


WATCH_POLL = 0.02  # seconds between two readings while watching the inputs


def quiet_libraries() -> None:
    """The tools print their own sentences: no pymodbus frame dumps, no device logs."""
    for name in ("pymodbus", "drivers", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def daemon_running(config: Config, timeout: float = 1.0) -> bool:
    """True when a daemon answers on this configuration's control socket."""
    from gated.control import request

    path = Path(config.control.socket)
    if not path.exists():
        return False

    async def status() -> None:
        async with asyncio.timeout(timeout):
            await request(path, {"cmd": "status"})

    try:
        asyncio.run(status())
    except (OSError, TimeoutError, ValueError):
        return False
    return True


def find_gate(config: Config, gate_id: str, out: Out) -> GateConfig | None:
    gate = next((g for g in config.gates if g.id == gate_id), None)
    if gate is None:
        out(f"no gate {gate_id!r} in the configuration (gates: {', '.join(g.id for g in config.gates)})")
        return None
    if gate.output is None:
        out(f"gate {gate_id} has no output configured")
        return None
    return gate


def where(cfg: ModbusOutputConfig) -> str:
    if cfg.transport is OutputTransport.TCP:
        return f"Modbus TCP {cfg.host}:{cfg.port} unit {cfg.unit}"
    return f"Modbus RTU {cfg.device} {cfg.baudrate} 8{cfg.parity}{cfg.stopbits} unit {cfg.unit}"


def likely_cause(cfg: ModbusOutputConfig, error: str) -> str:
    """The installer's reading of a failed request."""
    text = error.lower()
    if "illegal data address" in text:
        return "the board has no such coil or input: check coil/passage_input/door_contact numbers"
    if "permission denied" in text:
        return "no permission on the serial device: add the user to the dialout group"
    if "busy" in text or "lock" in text:
        return "the serial port is held by another program (the daemon?)"
    if cfg.transport is OutputTransport.TCP:
        if "refused" in text or "cannot open" in text or "connect" in text:
            return f"nothing accepts connections at {cfg.host}:{cfg.port}: wrong address or port, board off, another network"
        return f"the board does not answer unit {cfg.unit}: some boards want unit 1, 0 or 255"
    if "no such file" in text or "could not open" in text or "cannot open" in text:
        return f"no serial device {cfg.device}: check the path (ls /dev/serial/by-id/)"
    assert cfg.device is not None
    try:
        reply = probe_unit(cfg.device, cfg.unit, baudrate=cfg.baudrate, parity=cfg.parity, stopbits=cfg.stopbits)
    except Exception as e:  # the port itself: say so rather than guess
        return f"cannot probe {cfg.device}: {e}"
    return explain(reply)


@dataclass
class InputTrace:
    """What one input did while we watched: its level at each change."""

    name: str
    address: int
    changes: list[tuple[float, bool]] = field(default_factory=list)

    def feed(self, t: float, level: bool | None) -> None:
        if level is None:
            return
        if not self.changes or self.changes[-1][1] != level:
            self.changes.append((t, level))

    @property
    def start(self) -> bool | None:
        return self.changes[0][1] if self.changes else None

    @property
    def toggled(self) -> bool:
        return len(self.changes) > 1

    def active_spans(self, end: float) -> list[float]:
        spans, since = [], None
        for t, level in self.changes:
            if level and since is None:
                since = t
            elif not level and since is not None:
                spans.append(t - since)
                since = None
        if since is not None:
            spans.append(end - since)
        return spans

    def describe(self, end: float) -> str:
        if not self.changes:
            return f"{self.name} (input {self.address}): never read"
        if not self.toggled:
            return f"{self.name} (input {self.address}): stayed {'ACTIVE' if self.start else 'inactive'}"
        spans = ", ".join(f"{s:.2f} s" for s in self.active_spans(end))
        return f"{self.name} (input {self.address}): active {len(self.active_spans(end))}× ({spans})"


def verdict(cfg: ModbusOutputConfig, passage: InputTrace | None, door: InputTrace | None, end: float,
            expect_passage: bool, counted: int | None = None) -> tuple[bool, list[str]]:
    """(passage seen, what the installer should look at). `counted`: how far the board's
    pulse counter moved (passage_counter), which is then what the daemon goes by."""
    notes: list[str] = []
    seen = False
    if counted is not None:
        seen = counted > 0
        if not seen and passage is not None and passage.toggled:
            notes.append("the passage input pulsed and the counter did not move: passage_counter "
                         "names the wrong register, or the board's counter is off for that input")
        elif counted > 1 and expect_passage:
            notes.append(f"the counter moved by {counted} for one release: more than one person, "
                         "or it counts another input (or both edges) too")
    elif passage is not None:
        seen = bool(passage.changes) and any(
            level and i > 0 for i, (_, level) in enumerate(passage.changes)
        )
        if passage.start is True and not passage.toggled:
            notes.append("the passage input is active at rest and never changed: a wrong "
                         "passage_active_low, or the sensor wired to the wrong input")
    elif door is not None:
        seen = bool(door.changes) and any(level and i > 0 for i, (_, level) in enumerate(door.changes))
    else:
        notes.append("no passage input and no door contact: visits are recorded on grant")
        return True, notes
    if door is not None and door.start is True:
        notes.append("the door contact reads OPEN with the door shut: check door_contact_active_low "
                     "(a normally-closed contact reads OFF when the door is open) or the wiring")
    if passage is not None and door is not None:
        p_spans, d_spans = passage.active_spans(end), door.active_spans(end)
        if not passage.toggled and door.toggled and d_spans and max(d_spans) < 1.0:
            notes.append("the door contact gave a short pulse and the passage input nothing: the "
                         "passage sensor is dead or on another input, or the two inputs are swapped "
                         "(passage_input ↔ door_contact)")
        elif p_spans and d_spans and min(p_spans) > 2.0 and max(d_spans) < 1.0:
            notes.append("the passage input stayed active for seconds while the door contact pulsed: "
                         "the two inputs look swapped")
    quiet = passage is not None and not passage.toggled and (door is None or not door.toggled)
    if not seen and expect_passage and quiet:
        notes.append("no input changed at all: nobody went through, or the sensor is not "
                         "wired, not powered, or on another input")
    return seen, notes


async def test_relay(
    config: Config,
    gate_id: str,
    *,
    expect_passage: bool = True,
    watch: float | None = None,
    out: Out = say,
) -> int:
    """Pulse the gate's relay and watch its inputs: 0 when a passage was seen (or none was
    expected and the board answered), 1 when not, 2 for a configuration problem."""
    quiet_libraries()
    gate = find_gate(config, gate_id, out)
    if gate is None or gate.output is None:
        return 2
    cfg = gate.output
    if await asyncio.to_thread(daemon_running, config):
        # the live gate would open with nothing recorded: the daemon owns the relay
        out("the daemon is running and drives this relay: stop it first (systemctl stop gated); "
            "while it runs, `gated relay GATE pulse` opens through it (admin login, audited) "
            "and `gated monitor GATE` shows its view")
        return 1
    out(f"{gate_id}: {where(cfg)}, coil {cfg.coil}")
    output = ModbusGateOutput(cfg)
    try:
        if not await output.connect():
            return await _failed(output, cfg, f"the board does not answer ({output.last_error})", out)
        out("board answers; coil driven to locked")
        passage = InputTrace("passage", cfg.passage_input) if cfg.passage_input is not None else None
        door = InputTrace("door contact", cfg.door_contact) if cfg.door_contact is not None else None
        counts: list[int] = []  # the board's pulse counter (passage_counter), as read
        t0 = time.monotonic()

        async def read() -> None:
            snap = await output.read_inputs()
            if snap.passage_count is not None:
                counts.append(snap.passage_count)
            t = time.monotonic() - t0
            if passage is not None:
                passage.feed(t, snap.passage)
            if door is not None:
                door.feed(t, snap.door_open)

        try:
            await read()
            out(f"before: passage={_level(passage)} door={_door(door)}")
            span = watch if watch is not None else cfg.pulse + (cfg.passage_timeout if expect_passage else 0.5)
            out(f"pulsing for {cfg.pulse:g} s and watching the inputs for {span:g} s"
                + ("; walk through now" if expect_passage else ""))
            await output.pulse()
            while time.monotonic() - t0 < span:
                await read()
                await asyncio.sleep(WATCH_POLL)
            await output.drive_safe_state(locked=True)
        except OutputFault as e:
            return await _failed(output, cfg, f"the board stopped answering: {e}", out)
        end = time.monotonic() - t0
        for trace in (passage, door):
            if trace is not None:
                out("  " + trace.describe(end))
        counted = None
        if cfg.passage_counter is not None and counts:
            counted = (counts[-1] - counts[0]) % COUNTER_MODULO
            out(f"  passage counter (register {cfg.passage_counter}): {counts[0]} -> {counts[-1]} (+{counted})")
        seen, notes = verdict(cfg, passage, door, end, expect_passage, counted)
        for note in notes:
            out(f"check: {note}")
        if seen:
            out("passage seen: yes")
            return 0
        if not expect_passage:
            out("passage seen: no (none expected)")
            return 0
        out("passage seen: no — FAILED (use --no-passage if nobody was to go through)")
        return 1
    finally:
        await output.close()


async def _failed(output: ModbusGateOutput, cfg: ModbusOutputConfig, error: str, out: Out) -> int:
    """Say what failed and, with the port released (the probe opens it itself), why."""
    out(f"FAILED: {error}")
    await output.close()
    out(f"likely cause: {await asyncio.to_thread(likely_cause, cfg, error)}")
    return 1


def _level(trace: InputTrace | None) -> str:
    if trace is None or trace.start is None:
        return "-"
    return "ACTIVE" if trace.changes[-1][1] else "inactive"


def _door(trace: InputTrace | None) -> str:
    if trace is None or trace.start is None:
        return "-"
    return "OPEN" if trace.changes[-1][1] else "closed"


async def monitor(
    config: Config, gate_id: str, *, duration: float | None = None, interval: float = 0.1, out: Out = say
) -> int:
    """Print the gate's inputs, coil and door state on every change while you wire. Through
    the daemon when it runs (its view), else straight from the board."""
    quiet_libraries()
    gate = find_gate(config, gate_id, out)
    if gate is None or gate.output is None:
        return 2
    cfg = gate.output
    deadline = None if duration is None else time.monotonic() + duration
    last: str | None = None

    def show(line: str) -> None:
        nonlocal last
        if line != last:
            out(f"{time.strftime('%H:%M:%S')}  {line}")
            last = line

    if await asyncio.to_thread(daemon_running, config):
        from gated.control import request

        out(f"{gate_id}: through the running daemon (Ctrl-C to stop)")
        while deadline is None or time.monotonic() < deadline:
            status = await request(config.control.socket, {"cmd": "status"})
            g = status.get("gates", {}).get(gate_id, {})
            st = g.get("state") or {}
            show(f"relay={g.get('relay')} released={st.get('released')} door={st.get('door')} "
                 f"passages={st.get('passages')} lockdown={st.get('lockdown')} fire={st.get('fire_alarm')}")
            await asyncio.sleep(interval)
        return 0
    out(f"{gate_id}: {where(cfg)} (Ctrl-C to stop)")
    output = ModbusGateOutput(cfg)
    try:
        if not await output.connect():
            return await _failed(output, cfg, f"the board does not answer ({output.last_error})", out)
        while deadline is None or time.monotonic() < deadline:
            try:
                snap = await output.read_inputs()
                coil = (await output.read_bits(cfg.coil, 1, discrete=False))[0]
            except OutputFault as e:
                show(f"board not answering: {e}")
            else:
                released = coil != cfg.active_low
                line = output.line
                load = line.snapshot().get("load") if line is not None else None
                show(
                    f"coil={'ON' if coil else 'off'} ({'released' if released else 'locked'}) "
                    f"passage={_flag(snap.passage, 'ACTIVE', 'inactive')} "
                    f"door={_flag(snap.door_open, 'OPEN', 'closed')}"
                    + (f" counter={snap.passage_count}" if snap.passage_count is not None else "")
                    + (f" line load={load:.0%}" if load is not None else "")
                )
            if output.health is not OutputHealth.ONLINE:
                await asyncio.sleep(0.5)
            await asyncio.sleep(interval)
        return 0
    finally:
        await output.close()


def _flag(value: bool | None, on: str, off: str) -> str:
    return "-" if value is None else (on if value else off)


async def relay(config: Config, gate_id: str, action: str, seconds: float | None, *, out: Out = say) -> int:
    """Drive the relay by hand with no daemon running: on (stays on until off), off,
    pulse (for `seconds`, default the gate's pulse)."""
    quiet_libraries()
    gate = find_gate(config, gate_id, out)
    if gate is None or gate.output is None:
        return 2
    cfg = gate.output
    output = ModbusGateOutput(cfg)
    try:
        if not await output.connect():
            return await _failed(output, cfg, f"the board does not answer ({output.last_error})", out)
        try:
            if action == "on":
                await output.hold(unlocked=True)
                out(f"{gate_id}: relay ON (released); it stays on until `gated relay {gate_id} off`")
            elif action == "off":
                await output.hold(unlocked=False)
                out(f"{gate_id}: relay off (locked)")
            else:
                length = cfg.pulse if seconds is None else seconds
                await output.pulse(length)
                out(f"{gate_id}: relay pulsed for {length:g} s")
                await asyncio.sleep(length)
                await output.end_pulse()
        except OutputFault as e:
            return await _failed(output, cfg, str(e), out)
        return 0
    finally:
        with contextlib.suppress(OutputFault):
            await output.close()


def osdp_install(config: Config, reader_id: str, *, timeout: float = 10.0, out: Out = say) -> int:
    """Load a reader's configured key (scbk / scbk_file) into it while it is in install
    mode, then prove it with a secure channel on that key."""
    from drivers.readers.config import OsdpReaderConfig

    quiet_libraries()
    rc = next((r for g in config.gates for r in g.readers if r.id == reader_id), None)
    if not isinstance(rc, OsdpReaderConfig):
        out(f"no OSDP reader {reader_id!r} in the configuration")
        return 2
    key = rc.key()
    if key is None:
        out(f"reader {reader_id} has no scbk or scbk_file: generate a key first (docs/hardware.md)")
        return 2
    if daemon_running(config):
        out("the daemon is running and holds the RS-485 port: stop it first (systemctl stop gated)")
        return 1
    from drivers.readers.osdp_reader import SerialChannel, install_key

    out(f"{reader_id}: OSDP address {rc.address} on {rc.device} at {rc.baudrate} baud; loading its key")
    try:
        problem = install_key(lambda: SerialChannel(rc.device, rc.baudrate), address=rc.address, scbk=key,
                              timeout=timeout)
    except Exception as e:  # the port: absent, busy, no permission
        out(f"FAILED: cannot open {rc.device}: {e}")
        return 1
    if problem is not None:
        out(f"FAILED: {problem}")
        return 1
    out("key loaded and secure channel verified: the reader is ready for the daemon")
    return 0


def format_table(rows: list[list[str]], head: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(head)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return lines


RTU_UNITS = 247  # a serial line's addresses: 0 broadcast, 1..247
TCP_UNITS = 255  # Modbus TCP boards and gateways also answer 255 (the "unit ignored" id)


def parse_units(text: str, highest: int = RTU_UNITS) -> list[int]:
    """"1-10,20" -> [1, ..., 10, 20] (unit ids 0..`highest`)."""
    units: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"unit ids are numbers or ranges such as 1-16, not {part!r}") from None
        if not 0 <= a <= b <= highest:
            raise ValueError(f"unit ids are 0..{highest}, not {part!r}")
        units.extend(range(a, b + 1))
    if not units:
        raise ValueError("no unit ids given")
    if len(units) > highest + 1:
        raise ValueError(f"at most {highest + 1} unit ids")
    return units


async def count_points(read: Callable[[int], Any], limit: int = 64) -> int:
    """How many coils/inputs a board has from address 0: the largest count it accepts."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            resp = await read(mid)
            ok = resp is not None and not resp.isError()
        except Exception:
            ok = False
        if ok:
            lo = mid
        else:
            hi = mid - 1
    return lo


async def probe_tcp(host: str, port: int, units: list[int], timeout: float = 1.0) -> list[list[str]]:
    """Rows (unit, answer, coils, inputs) for a Modbus TCP board."""
    from pymodbus.client import AsyncModbusTcpClient

    quiet_libraries()
    client = AsyncModbusTcpClient(host, port=port, timeout=timeout, retries=0, reconnect_delay=0)
    rows: list[list[str]] = []
    try:
        if not await client.connect():
            return [["-", f"no connection to {host}:{port}", "", ""]]
        for unit in units:
            try:
                resp = await client.read_coils(0, count=1, device_id=unit)
            except Exception as e:
                rows.append([str(unit), f"no answer ({type(e).__name__})", "", ""])
                continue
            if resp.isError():
                code = getattr(resp, "exception_code", None)
                rows.append([str(unit), describe(code) if isinstance(code, int) else f"refused: {resp!r}", "", ""])
                continue
            def coils_of(n: int, u: int = unit) -> Any:
                return client.read_coils(0, count=n, device_id=u)

            def inputs_of(n: int, u: int = unit) -> Any:
                return client.read_discrete_inputs(0, count=n, device_id=u)

            coils = await count_points(coils_of)
            inputs = await count_points(inputs_of)
            rows.append([str(unit), "answers", str(coils), str(inputs)])
    finally:
        client.close()
    return rows
