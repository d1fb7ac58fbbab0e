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
