"""The daemon and its devices (issue: stopping during a pending grant logged not_opened;
readers' offline/online were no events; reader counters were in neither /metrics nor
status): the Daemon in this loop, a simulated turnstile, readers on ptys."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import generate_latest

from simulator.turnstile import Person
from tests.test_daemon import wait_for
from tests.test_faults_devices import one_gate, running_site


async def test_stopping_during_a_pending_grant_waits_for_the_person_and_raises_no_alarm(
    tmp_path: Path,
) -> None:
    async with running_site(tmp_path, one_gate) as site:
        sim = site.sims["in"]
        sim.queue_people(Person(turns=True, delay=0.8), Person(turns=False))
        first = asyncio.create_task(site.tap("turnstile-1", "04A1B2C3D4"))
        await wait_for(lambda: sim.unlocked, what="the release")
        await site.daemon.stop()  # the person is still on the way: the tap is finished
        result = await first
        assert result["decision"] == "granted" and result["passed"] is True
    assert [e["type"] for e in _events(tmp_path) if e["type"] in ("access", "deduction")] == ["access", "deduction"]
    # the next one walks away while the daemon stops: no deduction and no not_opened
    async with running_site(tmp_path / "b", one_gate) as site:
        sim = site.sims["in"]
        sim.set_person(turns=False)
        second = asyncio.create_task(site.tap("turnstile-1", "0499887766"))
        await wait_for(lambda: sim.unlocked, what="the release")
        await site.daemon.stop()  # passage_timeout is 1.5 s: the grant lapses during the stop
        result = await second
        assert result["passed"] is False and not sim.unlocked
    kinds = [e.get("kind") for e in _events(tmp_path / "b") if e["type"] == "alarm"]
    assert "not_opened" not in kinds
    assert not [e for e in _events(tmp_path / "b") if e["type"] == "deduction"]


def _events(tmp: Path) -> list[dict[str, object]]:
    import contextlib
    import json
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{tmp / 'gated.db'}?mode=ro", uri=True)) as c:
        return [json.loads(r[0]) for r in c.execute("SELECT body FROM events ORDER BY seq")]


async def test_reader_offline_and_online_are_events_and_counters_are_exported(tmp_path: Path) -> None:
    async with running_site(tmp_path, one_gate, readers=("in",)) as site:
        pty = site.readers["in"]
        daemon = site.daemon
        reader = daemon.readers["r-in"][1]
        await wait_for(lambda: reader.health.value == "online", what="reader online")
        assert not site.alarms("reader_online")  # coming up at start is not news
        pty.write(b"\x01\x02garbage-that-is-no-card\r\n")
        await wait_for(lambda: reader.stats["rejected_frames"] >= 1, what="a rejected frame")
        pty.unplug()
        await wait_for(lambda: bool(site.alarms("reader_offline")), what="reader_offline event")
        pty.replug()
        await wait_for(lambda: bool(site.alarms("reader_online")), what="reader_online event")
        offline = site.alarms("reader_offline")[0]
        assert offline["gate"] == "turnstile-1" and offline["reader"] == "r-in"
        status = daemon.health()
        stats = status["readers"]["r-in"]["stats"]
        assert stats["rejected_frames"] >= 1 and stats["reconnects"] >= 1
        assert "modbus_lines" in status
        text = generate_latest(daemon.metrics.registry).decode()
        assert 'gated_reader_total{counter="rejected_frames",reader="r-in"}' in text
        assert 'gated_reader_total{counter="reconnects",reader="r-in"}' in text
        assert "gated_modbus_line_exchanges_total" in text
