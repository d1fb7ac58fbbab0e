"""`make demo` works: the demo site starts, the scripted taps are decided, the turnstile
opens for the granted ones and the events wait in the outbox."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
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
