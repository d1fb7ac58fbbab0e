"""`gated store balance PASS -c FILE` as docs/protocol.md tells a central engineer to run it
("Reading a pass's balance at the gate"): a subprocess, on a store that heard another
daemon of its site."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.test_daemon import GATED
from tests.test_peers import IN1, IN2, at, share, site_store, tap


def test_gated_store_balance_shows_what_the_balance_is_made_of(tmp_path: Path) -> None:
    """docs/protocol.md, "Reading a pass's balance at the gate", run as documented."""
    in2, desk = site_store(tmp_path, "s1-in-2"), site_store(tmp_path, "s1-in-1")
    _, committed = tap(in2, IN2, at(9, 20))  # a walk-in at the other turnstile, heard here
    share(in2, desk, committed.events, {"in-2": "main"})
    tap(desk, IN1, at(12, 20))  # and one here
    path = desk.path
    desk.close()
    cfg = tmp_path / "gated.yaml"
    cfg.write_text(yaml.safe_dump({
        "site": {"id": "s1", "timezone": "Europe/Madrid"}, "daemon_id": "s1-in-1",
        "gates": [{"id": "in-1", "zone": "main"}], "store": {"path": str(path)},
    }))
    out = subprocess.run([*GATED, "store", "balance", "p1", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "pass p1 (visits) of member m1"
    assert lines[1] == "central balance 10, applied: this daemon up to seq 0"
    assert "not yet applied: this daemon's seq" in out.stdout and "not yet applied: s1-in-2's seq 2, walk_in 1" in out.stdout
    assert lines[-1] == "balance 8"
    missing = subprocess.run([*GATED, "store", "balance", "p9", "-c", str(cfg)], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and "no such pass" in missing.stderr
