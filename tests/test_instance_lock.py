"""One daemon per store (gated/instance_lock.py). `gated sim day --short --seed 44`: two
faults at one gate (a kill and a power cut a simulated minute apart) each started its
daemon again, and two `gated run` ran on one ledger for the rest of the day — the second
took the broker connection from the first six times a minute, and thirteen events never
reached the central system. A second `gated run` on a store in use now exits 4 at once,
before it drives a relay, and the first goes on."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from gated import instance_lock
from gated.daemon import EXIT_ALREADY_RUNNING
from tests.gate_process import IN_CARD, gate_process
from tests.test_daemon import GATED


def test_the_lock_is_one_holders_and_freed_with_its_descriptor(tmp_path: Path) -> None:
    store = tmp_path / "state" / "gated.db"
    fd = instance_lock.hold(store)  # makes the folder, as the store does
    try:
        assert instance_lock.lock_path(store).read_text() == f"{os.getpid()}\n"
        with pytest.raises(instance_lock.AlreadyRunning, match=f"pid {os.getpid()}"):
            instance_lock.hold(store)
    finally:
        os.close(fd)
    os.close(instance_lock.hold(store))  # free again: a daemon killed lets it go with its descriptors


async def test_a_second_daemon_on_a_store_in_use_exits_before_touching_anything(tmp_path: Path) -> None:
    async with gate_process(tmp_path, tmp_path / "state") as gate:
        first = await gate.tap(IN_CARD)
        assert first["decision"] == "granted"
        await asyncio.sleep(1)  # the grant's pulse over
        writes = len(gate.turnstile.coil_history)
        second = subprocess.run([*GATED, "run", "-c", str(gate.config)], capture_output=True, text=True, timeout=60)
        assert second.returncode == EXIT_ALREADY_RUNNING, second.stderr
        assert "another gated runs on this store" in second.stderr and f"pid {gate.proc.pid}" in second.stderr
        assert '"ready"' not in second.stderr
        # the first daemon goes on as before: its relay untouched, its taps answered
        assert gate.alive() and len(gate.turnstile.coil_history) == writes
        again = await gate.tap(IN_CARD)
        assert again["decision"] == "granted" and gate.alive()
