"""One log pipeline: with `logging.format: json` every line a daemon writes is one JSON
object with a time, a level and an event — gated's own lines (structlog) and those of
drivers/, sync/ and the libraries (stdlib logging) alike."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.gate_process import IN_CARD, gate_process
from tests.test_daemon import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_every_line_of_a_json_daemon_is_json(tmp_path: Path) -> None:
    # an MQTT broker that is not there (sync/link/link.py logs), a relay board that goes away
    # (drivers/outputs logs), a reader unplugged (drivers/readers logs), a tap (gated)
    mqtt = {"mqtt": {"host": "127.0.0.1", "port": free_port(), "site": "storage-site", "daemon": "gate-s",
                     "backoff_initial": 0.05, "backoff_max": 0.2}}
    async with gate_process(tmp_path, tmp_path / "state", extra=mqtt) as gate:
        await gate.tap(IN_CARD)
        await gate.exit_turnstile.stop_server()
        gate.exit_reader.unplug()
        await wait_for(lambda: any("offline" in line for line in gate.text), 15, "an offline line")
        await wait_for(lambda: any(ln.get("logger", "").startswith("gated.sync") for ln in gate.lines), 15, "a link line")
    assert len(gate.text) >= 6
    loggers = set()
    for line in gate.text:
        obj = json.loads(line)  # every line, not only gated's own
        assert {"timestamp", "level", "event"} <= obj.keys(), line
        loggers.add(obj.get("logger", ""))
    assert any(name.startswith("drivers.") for name in loggers), loggers
    assert any(name.startswith("gated") for name in loggers), loggers
    assert not any(">>>>>" in line for line in gate.text)  # no pymodbus frame dumps
