"""The simulated clock of `gated sim day` cannot be switched on by accident: the
configuration's `simulation:` section alone is refused by `gated run`."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from gated.clock import SimulatedClock
from rules.clock import SimulatedTime
from tests.gate_process import IN_CARD, gate_process
from tests.test_daemon import GATED


def test_a_simulated_clock_runs_fast_from_its_start() -> None:
    start = datetime(2026, 11, 18, 6, 0, tzinfo=UTC)
    epoch = time.time() - 10
    clock = SimulatedClock(start, 60, epoch)
    assert timedelta(minutes=9, seconds=59) <= clock() - start <= timedelta(minutes=11)
    assert abs((SimulatedClock(start, 60, epoch)() - clock()).total_seconds()) < 1  # two processes agree


def test_simulated_time_is_one_formula_for_every_process() -> None:
    """The daemons and the sim day's harness and central system each read the real clock
    and map it through rules.clock.SimulatedTime: the same real instant, the same time."""
    start = datetime(2026, 11, 18, 6, 0, tzinfo=UTC)
    sim = SimulatedTime(start, 72, 1_000.0)
    assert sim.at(1_000.0) == start
    assert sim.at(1_010.0) == start + timedelta(minutes=12)
    assert sim.at(990.0) == start - timedelta(minutes=12)  # before the epoch: the setup minutes
    with pytest.raises(ValueError):
        SimulatedTime(datetime(2026, 11, 18, 6, 0), 72, 1_000.0)


def test_run_refuses_a_simulated_clock_without_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "gated.yaml"
    cfg.write_text(yaml.safe_dump({
        "site": {"id": "s", "timezone": "Europe/Madrid"},
        "gates": [{"id": "g1", "zone": "main"}],
        "store": {"path": str(tmp_path / "g.db")},
        "control": {"socket": str(tmp_path / "c.sock")},
        "console": {"enabled": False}, "metrics": {"enabled": False},
        "simulation": {"clock_start": "2026-11-18T06:00:00+01:00", "clock_epoch": time.time()},
    }))
    env = {k: v for k, v in os.environ.items() if k != "GATED_SIMULATION"}
    out = subprocess.run([*GATED, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "GATED_SIMULATION=1" in out.stderr, out.stdout + out.stderr
    check = subprocess.run([*GATED, "check-config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert "simulated clock" in check.stdout + check.stderr


async def test_a_daemon_on_a_simulated_clock_lives_in_the_simulated_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATED_SIMULATION", "1")  # the daemon process inherits it
    start = "2030-03-04T07:00:00+00:00"
    sim = {"simulation": {"clock_start": start, "clock_speed": 60.0, "clock_epoch": time.time()}}
    async with gate_process(tmp_path, tmp_path / "state", extra=sim) as gate:
        st = await gate.status()
        assert st["clock"] == "simulated"
        await gate.tap(IN_CARD)
        access = [e for e in gate.events() if e["type"] == "access"]
        at = datetime.fromisoformat(access[-1]["at"].replace("Z", "+00:00"))
        assert datetime(2030, 3, 4, 7, 0, tzinfo=UTC) <= at <= datetime(2030, 3, 4, 8, 0, tzinfo=UTC)
