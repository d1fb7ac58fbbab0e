"""`make demo` works: the demo site starts, the scripted taps are decided, the turnstile
opens for the granted ones and the events wait in the outbox."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from sync.store import open_reader

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_runs_its_script(tmp_path: Path) -> None:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["gates"][0]["output"]["port"] = free_port()
    cfg["console"]["port"] = free_port()
    cfg["metrics"]["port"] = free_port()
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "gated.demo", "--config", str(path), "--workdir", str(tmp_path / "var" / "demo"), "--once"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gated demo is running" in out.stdout
    with contextlib.closing(sqlite3.connect(tmp_path / "var" / "demo" / "gated.db")) as c:
        events = [json.loads(r[0]) for r in c.execute("SELECT body FROM events ORDER BY seq")]
    access = [(e["gate"], e["member"], e["decision"], e["reason"]) for e in events if e["type"] == "access"]
    assert ("turnstile-in", "m-ana", "granted", "booking") in access
    assert ("turnstile-in", "m-lena", "granted", "booking") in access
    assert ("turnstile-in", "m-blocked", "denied", "member_blocked") in access
    assert ("turnstile-in", "m-bruno", "granted", "walk_in") in access
    assert ("turnstile-in", None, "denied", "unknown_card") in access
    assert ("exit", "m-ana", "granted", "exit") in access
    assert any(e["type"] == "deduction" and e["pass"] == "p-bruno" for e in events)


def test_demo_as_a_user_drives_it(tmp_path: Path) -> None:
    """`make demo` left running: ports from the environment (as README says), the console
    and the gate display answer, `gated tap` works, SIGHUP reloads instead of killing it,
    SIGTERM stops it cleanly; a second start begins afresh (balances not worn down)."""
    import os
    import signal
    import time
    import urllib.request

    ports = {"GATED_DEMO_CONSOLE_PORT": free_port(), "GATED_DEMO_MODBUS_PORT": free_port(),
             "GATED_DEMO_METRICS_PORT": free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    workdir = tmp_path / "var" / "demo"

    def start() -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, "-m", "gated.demo", "--workdir", str(workdir)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "display:" in line:
                return proc, line.split("display:", 1)[1].strip()
            if not line and proc.poll() is not None:
                break
        proc.kill()
        raise AssertionError("".join(lines)[-3000:])

    def balance(pass_id: str) -> str:
        with contextlib.closing(open_reader(workdir / "gated.db")) as c:
            return str(c.execute("SELECT balance FROM passes WHERE id = ?", (pass_id,)).fetchone()[0])

    gated = [sys.executable, "-m", "gated.cli"]
    proc, display = start()
    try:
        assert display.startswith(f"http://127.0.0.1:{ports['GATED_DEMO_CONSOLE_PORT']}/display/entrance?token=")
        with urllib.request.urlopen(display, timeout=10) as r:
            assert r.status == 200 and b"Tap your card" in r.read()
        proc.send_signal(signal.SIGHUP)  # reload, as the daemon does: the demo keeps running
        tap = subprocess.run([*gated, "tap", "-c", str(workdir / "gated.yaml"), "turnstile-in", "0499887766"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert tap.returncode == 0, tap.stdout + tap.stderr
        assert json.loads(tap.stdout)["decision"] == "granted"
        assert proc.poll() is None
        assert balance("p-bruno") != "10"  # the script and the tap took from Bruno's pass
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    restarted = time.time()
    proc, _ = start()  # afresh: nothing of the last run is replayed onto the new day's data
    try:
        with contextlib.closing(sqlite3.connect(workdir / "gated.db")) as c:
            ats = [r[0] for r in c.execute("SELECT at FROM events")]
            assert not c.execute("SELECT COUNT(*) FROM deductions WHERE at < ?", (restarted,)).fetchone()[0]
        assert all(a >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(restarted - 1)) for a in ats)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_make_demo_keep_1_keeps_the_last_runs_store(tmp_path: Path) -> None:
    """README: `make demo KEEP=1` keeps the last run's store. It said `--keep`, which make
    takes as its own --keep-going: the demo never saw it and wiped the store. Run through
    the repository's Makefile as a user runs it, stopped by Ctrl-C to its process group as
    a terminal sends it; in a directory of its own (the Makefile and the venv linked in),
    since the demo's paths are relative to where make runs and a developer's own demo
    store must not be touched."""
    import os
    import signal
    import time

    env, workdir = _demo_env(tmp_path)
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # a user's own shell, not the `make test` around us
        env.pop(name, None)
    for name in ("Makefile", "pyproject.toml", ".venv"):
        (tmp_path / name).symlink_to(ROOT / name)
    # -o: never reinstall the venv from a test (that would need the network); --workdir:
    # where the demo writes its gated.yaml (by default in the repository)
    make = ["make", "--no-print-directory", "-o", ".venv/.installed", "demo", "ARGS=--workdir var/demo"]

    def taps() -> int:
        return sum(e["type"] == "access" for e in _events(workdir))

    @contextlib.contextmanager
    def make_demo(*extra: str) -> Iterator[subprocess.Popen[str]]:
        proc = subprocess.Popen([*make, *extra], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):  # Ctrl-C in its terminal
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.communicate(timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError):  # never leave a demo behind, whatever failed
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def run_until_taps(*extra: str) -> None:
        with make_demo(*extra) as proc:
            assert proc.stdout is not None
            seen: list[str] = []
            deadline = time.monotonic() + 60
            while not any("display:" in x for x in seen):
                assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)[-3000:]
                seen.append(proc.stdout.readline())
            before = taps()
            deadline = time.monotonic() + 30
            while taps() < before + 3:  # the script of taps runs at once
                assert time.monotonic() < deadline, "the demo's script of taps"
                time.sleep(0.2)

    run_until_taps()
    first = {e["id"] for e in _events(workdir)}
    assert first

    # the old words: refused with the right ones, and the store left as it was
    with make_demo("--keep") as proc:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "make demo KEEP=1" in out, out[-3000:]
    assert {e["id"] for e in _events(workdir)} == first

    run_until_taps("KEEP=1")
    kept = {e["id"] for e in _events(workdir)}
    assert first < kept  # the last run's events, and this run's after them


def test_typed_lines_are_read_as_a_person_means_them() -> None:
    from gated.demo import typed_tap

    assert typed_tap("04a1b2c3d4") == ("turnstile-in", "04A1B2C3D4")
    assert typed_tap("out 04A1B2C3D4") == ("exit", "04A1B2C3D4")
    assert typed_tap("OUT  04A1B2C3D4 ") == ("exit", "04A1B2C3D4")  # two spaces: still the exit (issue 24)
    assert typed_tap("exit\t04A1B2C3D4") == ("exit", "04A1B2C3D4")
    for bad in ("in out 04A1", "out", "04A1-B2", "x" * 41, "café"):
        assert typed_tap(bad) is None, bad


def _demo_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    import os

    ports = {"GATED_DEMO_CONSOLE_PORT": free_port(), "GATED_DEMO_MODBUS_PORT": free_port(),
             "GATED_DEMO_METRICS_PORT": free_port()}
    return {**os.environ, **{k: str(v) for k, v in ports.items()}}, tmp_path / "var" / "demo"


def _events(workdir: Path) -> list[dict[str, object]]:
    with contextlib.closing(sqlite3.connect(workdir / "gated.db")) as c:
        return [json.loads(r[0]) for r in c.execute("SELECT body FROM events ORDER BY seq")]


def test_cards_piped_to_the_demo_are_tapped(tmp_path: Path) -> None:
    """`printf '…' | make demo`: the banner says lines from standard input are taps, and
    they are — `out  CARD` (two spaces) at the exit, not the entrance (issue 24)."""
    import signal
    import time

    env, workdir = _demo_env(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "gated.demo", "--workdir", str(workdir)], cwd=tmp_path, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while not any("Ctrl-C stops" in x for x in seen) and time.monotonic() < deadline:
            seen.append(proc.stdout.readline())
        assert any("lines from standard input" in x for x in seen), "".join(seen)
        proc.stdin.write("C0FFEE01\nout  C0FFEE01\n")
        proc.stdin.flush()
        proc.stdin.close()  # the end of the pipe is not the end of the demo
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            taps = [(e["gate"], e["member"], e["reason"]) for e in _events(workdir) if e["type"] == "access"]
            if ("exit", "m-jonas", "exit") in taps:
                break
            time.sleep(0.2)
        assert ("turnstile-in", "m-jonas", "walk_in") in taps and ("exit", "m-jonas", "exit") in taps, taps
        time.sleep(1.0)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_closing_the_demos_terminal_stops_it(tmp_path: Path) -> None:
    """Issue 24: the terminal closed, the demo spun at 80 % of a core on the end of input
    and held its ports. Now it stops, and a new demo can take the same ports."""
    import os
    import time

    env, workdir = _demo_env(tmp_path)
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gated.demo", "--workdir", str(workdir)], cwd=tmp_path, env=env,
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    try:
        out = b""
        deadline = time.monotonic() + 60
        while b"Ctrl-C stops" not in out and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                out += os.read(master, 4096)
        assert b"type a card number here" in out, out[-2000:]
        os.write(master, b"C0FFEE01\r")
        deadline = time.monotonic() + 30
        while not any(e["type"] == "access" and e["member"] == "m-jonas" for e in _events(workdir)):
            assert time.monotonic() < deadline, "the typed card"
            time.sleep(0.2)
    finally:
        os.close(master)  # the terminal goes away
        try:
            code = proc.wait(30)
        finally:
            if proc.poll() is None:  # never leave a demo behind, whatever failed
                proc.kill()
                proc.wait(10)
    assert code == 0
    with socket.socket() as s:  # its console's port is free again
        s.bind(("127.0.0.1", int(env["GATED_DEMO_CONSOLE_PORT"])))
