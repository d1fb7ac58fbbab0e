"""The installer's tools, run as an installer runs them (subprocesses with the arguments
docs/installer-guide.md gives), against simulated boards and readers on real protocols."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from drivers.outputs.rtu_probe import Answer, classify, read_request, with_crc
from gated.auth import hash_password
from simulator.turnstile import Person, SimRtuLine, SimTurnstile
from tests.test_daemon import GATED, wait_for
from tests.test_daemon import running_daemon as running_gated

NOISE = ("pymodbus", ">>>>>", "Traceback", "online (None)", "DEBUG")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATED, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


async def arun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run, *args, env=env)


def quiet(out: subprocess.CompletedProcess[str]) -> None:
    text = out.stdout + out.stderr
    assert not [n for n in NOISE if n in text], text


def write_config(tmp: Path, output: dict[str, Any] | None, readers: list[dict[str, Any]] | None = None,
                 **extra: Any) -> Path:
    cfg = {
        "site": {"id": "s", "timezone": "Europe/Madrid"},
        "gates": [{"id": "g1", "zone": "main", "readers": readers or [], **({"output": output} if output else {})}],
        "store": {"path": str(tmp / "g.db")},
        "control": {"socket": str(tmp / "control.sock")},
        **extra,
    }
    path = tmp / "gated.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tcp_output(sim: SimTurnstile, **over: Any) -> dict[str, Any]:
    return {"transport": "tcp", "host": sim.host, "port": sim.port, "unit": sim.unit, "coil": 0,
            "passage_input": 0, "door_contact": 1, "pulse": 0.3, "passage_timeout": 1.5, **over}


# -- test-relay --------------------------------------------------------------------------------


async def test_test_relay_sees_the_passage_quietly(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, person=Person(delay=0.1)) as sim:
        cfg = write_config(tmp_path, tcp_output(sim))
        out = await arun("test-relay", "g1", "-c", str(cfg))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passage seen: yes" in out.stdout and "passage (input 0): active 1×" in out.stdout
    assert sim.unlocks == 1 and not sim.unlocked
    quiet(out)


async def test_test_relay_reads_the_boards_pulse_counter(tmp_path: Path) -> None:
    """With passage_counter the counter is what decides (as in the daemon), and a counter
    register that does not count the passage input is named."""
    async with SimTurnstile(port=0, person=Person(delay=0.1), passage_counter=8) as sim:
        cfg = write_config(tmp_path, tcp_output(sim, passage_counter=8))
        out = await arun("test-relay", "g1", "-c", str(cfg))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "passage counter (register 8): 0 -> 1 (+1)" in out.stdout and "passage seen: yes" in out.stdout
        quiet(out)
        cfg = write_config(tmp_path, tcp_output(sim, passage_counter=7))  # a register that counts nothing
        out = await arun("test-relay", "g1", "-c", str(cfg))
        assert out.returncode == 1 and "counter did not move" in out.stdout, out.stdout


async def test_test_relay_fails_without_a_passage_unless_none_is_expected(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, person=Person(turns=False)) as sim:
        cfg = write_config(tmp_path, tcp_output(sim))
        out = await arun("test-relay", "g1", "-c", str(cfg))
        assert out.returncode == 1 and "no input changed at all" in out.stdout, out.stdout
        out = await arun("test-relay", "g1", "-c", str(cfg), "--no-passage")
        assert out.returncode == 0 and "none expected" in out.stdout, out.stdout


async def test_test_relay_spots_swapped_and_dead_inputs(tmp_path: Path) -> None:
    # wired: passage on input 1, door on input 0; configured the other way round
    async with SimTurnstile(port=0, passage_input=1, door_contact=0,
                            person=Person(delay=0.1, hold_door=3.0)) as sim:
        cfg = write_config(tmp_path, tcp_output(sim, passage_input=0, door_contact=1))
        out = await arun("test-relay", "g1", "-c", str(cfg), "--watch", "4")
    assert "look swapped" in out.stdout, out.stdout
    # the passage sensor not wired at all: only the door moves
    async with SimTurnstile(port=0, passage_input=5, door_contact=1, person=Person(delay=0.1)) as sim:
        cfg = write_config(tmp_path, tcp_output(sim, passage_input=0))
        out = await arun("test-relay", "g1", "-c", str(cfg), "--watch", "1.5")
    assert "passage sensor is dead" in out.stdout, out.stdout


async def test_test_relay_names_the_likely_rtu_fault(tmp_path: Path) -> None:
    async with SimRtuLine([SimTurnstile(transport="rtu", unit=2)], baudrate=9600) as line:
        rtu = {"transport": "rtu", "device": line.device, "baudrate": 9600, "coil": 0, "passage_input": 0,
               "timeout": 0.3, "retries": 0}
        out = await arun("test-relay", "g1", "-c", str(write_config(tmp_path, {**rtu, "unit": 7})))
        assert out.returncode == 1 and "nothing answers: check the unit id" in out.stdout, out.stdout
        quiet(out)
        assert line.line is not None
        line.line.mismatched_slave = True  # as if the board ran at another baud rate
        out = await arun("test-relay", "g1", "-c", str(write_config(tmp_path, {**rtu, "unit": 2})))
        assert out.returncode == 1 and "baud rate or parity" in out.stdout, out.stdout


async def test_test_relay_refuses_while_the_daemon_runs(tmp_path: Path) -> None:
    """It would pulse the live gate behind the daemon's back, with nothing recorded."""
    async with running_gated(tmp_path) as d:
        unlocks = d.turnstile.unlocks
        out = await arun("test-relay", "turnstile-1", "-c", str(d.config), "--no-passage")
        assert out.returncode == 1 and "the daemon is running and drives this relay" in out.stdout, out.stdout
        assert "gated relay GATE pulse" in out.stdout
        await asyncio.sleep(0.3)
        assert d.turnstile.unlocks == unlocks and not d.turnstile.unlocked


def test_rtu_answers_are_classified() -> None:
    ok = with_crc(bytes([3, 1, 1, 0]))
    assert classify(3, 1, ok).answer is Answer.OK
    assert classify(3, 1, b"\x00" + ok).answer is Answer.OK  # noise before the frame
    assert classify(3, 1, with_crc(bytes([3, 0x81, 2]))).answer is Answer.EXCEPTION
    assert classify(3, 1, with_crc(bytes([4, 1, 1, 0]))).unit == 4
    assert classify(3, 1, b"\xff\x13\x07\x99").answer is Answer.GARBLED
    assert classify(3, 1, b"").answer is Answer.SILENT
    assert read_request(1)[:2] == b"\x01\x01" and len(read_request(1)) == 8


# -- monitor, relay ------------------------------------------------------------------------------


async def test_monitor_shows_the_door_while_you_wire(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, passage_counter=4) as sim:
        sim.pulse_count = 41  # the board's count since its power-up
        cfg = write_config(tmp_path, tcp_output(sim, passage_counter=4))
        proc = await asyncio.create_subprocess_exec(
            *GATED, "monitor", "g1", "-c", str(cfg), "--duration", "20",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(20):
                while not any("door=closed" in x for x in lines):
                    lines.append((await proc.stdout.readline()).decode())
                sim.force_door_open()
                while not any("door=OPEN" in x for x in lines):
                    lines.append((await proc.stdout.readline()).decode())
        finally:
            proc.terminate()
            await proc.wait()
    assert any("coil=off (locked)" in x for x in lines), lines
    assert any("counter=41" in x for x in lines), lines


async def test_relay_by_hand_without_the_daemon(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, person=Person(turns=False)) as sim:
        cfg = str(write_config(tmp_path, tcp_output(sim)))
        out = await arun("relay", "g1", "on", "-c", cfg)
        assert out.returncode == 0 and sim.unlocked, out.stdout
        out = await arun("relay", "g1", "off", "-c", cfg)
        assert out.returncode == 0 and not sim.unlocked
        out = await arun("relay", "g1", "pulse", "--seconds", "0.2", "-c", cfg)
        assert out.returncode == 0 and not sim.unlocked
        assert [raw for _, raw in sim.coil_history] == [True, False, True, False]
        quiet(out)


async def test_relay_by_hand_through_the_daemon_needs_an_admin(tmp_path: Path) -> None:
    async with running_gated(tmp_path, person=Person(turns=False)) as d:
        cfg = yaml.safe_load(d.config.read_text())
        cfg["console"]["users"] = [
            {"name": "desk", "role": "staff", "password_hash": hash_password("desk-pass")},
            {"name": "fitter", "role": "admin", "password_hash": hash_password("fitter-pass")},
        ]
        d.config.write_text(yaml.safe_dump(cfg))
        import signal

        d.proc.send_signal(signal.SIGHUP)
        await d.expect_notify("configuration reloaded")
        c = str(d.config)
        out = await arun("relay", "turnstile-1", "on", "--user", "desk", "-c", c, env={"GATED_PASSWORD": "desk-pass"})
        assert out.returncode == 1 and "only an admin" in out.stdout and not d.turnstile.unlocked
        out = await arun("relay", "turnstile-1", "on", "--user", "fitter", "-c", c,
                         env={"GATED_PASSWORD": "fitter-pass"})
        assert out.returncode == 0 and d.turnstile.unlocked, out.stdout + out.stderr
        # the fitter opens the door the relay holds released: no door_forced (issue 24)
        d.turnstile.force_door_open()
        await asyncio.sleep(1.0)
        d.turnstile.close_door()
        out = await arun("relay", "turnstile-1", "off", "--user", "fitter", "-c", c,
                         env={"GATED_PASSWORD": "fitter-pass"})
        assert out.returncode == 0 and not d.turnstile.unlocked
        assert [e["action"] for e in d.events() if e["type"] == "relay_by_hand"] == ["on", "off"]
        assert not [e for e in d.events() if e["type"] == "alarm" and e["kind"] == "door_forced"]
        # the first reading after the relock may show an opening that began released (the
        # release's tail): the door is forced only once the daemon has read it shut since
        # (seen once on a loaded machine: the force came before that reading)
        reads = d.turnstile.input_reads
        await wait_for(lambda: d.turnstile.input_reads >= reads + 2, 10, "two readings after the relock")
        # at a turnstile the hold leaves one armed turn for passage_timeout: the fitter's
        # last one through (drivers/outputs/plan.py ReleaseTail); the next opening is forced
        d.turnstile.force_door_open()
        await wait_for(lambda: d.turnstile.input_reads >= reads + 4, 10, "the armed turn read")
        d.turnstile.close_door()
        reads = d.turnstile.input_reads
        await wait_for(lambda: d.turnstile.input_reads >= reads + 2, 10, "the door read shut")
        assert not [e for e in d.events() if e["type"] == "alarm" and e["kind"] == "door_forced"]
        d.turnstile.force_door_open()  # and with the relay back to locked, an opening is forced again
        await wait_for(lambda: any(e["type"] == "alarm" and e["kind"] == "door_forced" for e in d.events()), 10,
                       "door_forced once the relay is locked again")
        d.turnstile.close_door()


# -- discover ------------------------------------------------------------------------------------


async def test_discover_probes_a_tcp_board_and_scans_an_rtu_line(tmp_path: Path) -> None:
    async with SimTurnstile(port=0) as sim:
        out = await arun("discover", "--modbus", f"127.0.0.1:{sim.port}", "--units", "1")
    assert out.returncode == 0, out.stderr
    assert "Serial ports" in out.stdout and "Modbus 127.0.0.1" in out.stdout
    row = next(x for x in out.stdout.splitlines() if x.strip().startswith("1 "))
    assert "answers" in row and row.split()[-2:] == ["16", "16"]  # the simulator's 16 coils, 16 inputs
    units = [SimTurnstile(transport="rtu", unit=u) for u in (2, 5)]
    async with SimRtuLine(units, baudrate=19200) as line:
        out = await arun("discover", "--modbus", line.device, "--baudrate", "19200", "--units", "1-6")
    assert out.returncode == 0, out.stderr
    answering = [x.split() for x in out.stdout.splitlines() if "answers" in x]
    assert [row[0] for row in answering] == ["2", "5"], out.stdout
    # the coils and inputs columns, as for a TCP board (they stayed empty)
    assert all(row[-2:] == ["16", "16"] for row in answering), out.stdout


# -- OSDP install mode ---------------------------------------------------------------------------


async def test_osdp_install_loads_the_key_into_a_new_reader(tmp_path: Path) -> None:
    from drivers.readers.osdp_reader import SerialChannel
    from simulator.osdp_reader import SimulatedOsdpReader
    from simulator.socat_pair import socat_pty_pair

    key = secrets.token_hex(16)
    keyfile = tmp_path / "r1.scbk"
    keyfile.write_text(key + "\n")
    async with socat_pty_pair() as pair:
        reader = {"type": "osdp", "id": "r1", "device": pair.client_end, "address": 4, "scbk_file": str(keyfile)}
        cfg = str(write_config(tmp_path, None, readers=[reader]))
        channel = SerialChannel(pair.server_end)  # the reader's end of the RS-485 line
        try:
            with SimulatedOsdpReader(channel, address=4, install_mode=True):
                out = await arun("osdp-install", "r1", "-c", cfg)
            assert out.returncode == 0 and "secure channel verified" in out.stdout, out.stdout + out.stderr
            with SimulatedOsdpReader(channel, address=4, scbk=secrets.token_bytes(16)):
                out = await arun("osdp-install", "r1", "-c", cfg, "--timeout", "2")
            assert out.returncode == 1 and "holds another key" in out.stdout, out.stdout
        finally:
            channel.close()


@pytest.mark.parametrize("args", [["test-relay", "nope"], ["monitor", "nope"], ["relay", "nope", "on"]])
def test_unknown_gate_is_a_clear_error(tmp_path: Path, args: list[str]) -> None:
    out = run(*args, "-c", str(write_config(tmp_path, None)))
    assert out.returncode == 2 and "no gate 'nope'" in out.stdout


def test_discover_lists_devices_as_tables_and_json() -> None:
    out = run("discover")
    assert out.returncode == 0, out.stderr
    for title in ("Serial ports", "NFC readers", "Keyboard-wedge scanners"):
        assert title in out.stdout
    out = run("discover", "--json")
    import json

    assert set(json.loads(out.stdout)) >= {"serial", "nfc", "input", "notes"}


async def test_relay_pulse_takes_the_gates_pulse_by_default(tmp_path: Path) -> None:
    async with SimTurnstile(port=0, person=Person(turns=False)) as sim:
        out = await arun("relay", "g1", "pulse", "-c", str(write_config(tmp_path, tcp_output(sim, pulse=0.4))))
        assert out.returncode == 0 and "pulsed for 0.4 s" in out.stdout, out.stdout
        (on, t_on), (off, t_off) = [(raw, t) for t, raw in sim.coil_history]
        assert on and not off and t_off > t_on
