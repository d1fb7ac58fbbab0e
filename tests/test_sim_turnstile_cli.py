"""`gated sim turnstile` as an installer runs it for a rehearsal (docs/installer-guide.md,
"Rehearse without hardware"): a subprocess serving a board over RTU on a socat pty pair,
asked by `gated discover` as a real line is, and stopped as a terminal stops it."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.outputs.refusals import describe
from drivers.outputs.rtu_probe import Answer, Reply, explain
from tests.test_daemon import GATED

WAIT_S = 20.0


def children(pid: int) -> list[int]:
    """The processes `pid` started (and still has)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # the name in parentheses may hold spaces: the parent's pid is the 2nd field after it
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@contextlib.contextmanager
def sim_turnstile(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`gated sim turnstile ARGS` until its ready line: the process and its device (RTU)."""
    proc = subprocess.Popen([*GATED, "sim", "turnstile", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    try:
        seen: list[str] = []
        deadline = time.monotonic() + WAIT_S
        while not any("simulated turnstile ready" in x for x in seen):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)
            seen.append(proc.stdout.readline())
        found = re.search(r"device: ([^,]+),", seen[-1])
        yield proc, found[1] if found else ""
    finally:
        if proc.poll() is None:
            proc.terminate()  # SIGKILL would leave its socat behind
        try:
            proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_discover_lists_only_the_unit_the_simulated_board_has() -> None:
    """The guide's `gated discover --modbus DEVICE --units 1-16` on the simulator lists the
    units that answer. The simulated board answered every unit id (15 of them "with an
    exception"); a real one answers its own and is silent for the others."""
    with sim_turnstile("--transport", "rtu", "--unit", "3") as (_, device):
        out = subprocess.run([*GATED, "discover", "--modbus", device, "--units", "1-16"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    section = out.stdout.split(f"Modbus {device}:")[1].split("\n\n")[0].splitlines()[3:]
    assert [row.split() for row in section] == [["3", "answers", "16", "16"]], out.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_its_socat_stops_with_it(sig: signal.Signals) -> None:
    """SIGTERM (systemd, kill), Ctrl-C and a closed terminal each stop the simulator and the
    socat pair it started: SIGTERM used to leave socat running, the pty pair with it."""
    with sim_turnstile("--transport", "rtu") as (proc, device):
        socats = [pid for pid in children(proc.pid) if "socat" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(socats) == 1, socats
        proc.send_signal(sig)
        assert proc.wait(WAIT_S) == 0
        deadline = time.monotonic() + 5
        while running(socats[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(socats[0]), f"socat {socats[0]} outlived gated sim turnstile ({sig.name})"
        assert not Path(device).parent.exists()  # its pty links went with it


def test_an_exception_answer_says_which_and_what_it_means() -> None:
    """`gated discover` printed a bare "exception 4"; now the code, its name and its meaning."""
    assert describe(4) == "exception 4 (server device failure): the board failed while carrying the request out"
    assert "(illegal data address)" in describe(2) and "coil/input numbers" in describe(2)
    assert "(gateway target device failed to respond)" in describe(11) and "unit id" in describe(11)
    assert describe(99).startswith("exception 99 (not a standard code)")
    said = explain(Reply(Answer.EXCEPTION, b"", 1, 2))
    assert said == f"the board answers with {describe(2)}"
