"""The test fixtures' own broker (tests/broker.py): a test must talk to the broker it started.

A port picked free may be bound by someone else (another xdist worker's broker or server)
before mosquitto binds it; a connect then succeeds against the other listener and the test
runs against a foreign broker — suspected behind a once-in-fifteen CI failure of
test_sync_replay (a snapshot with other members, no charge moved a balance)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.broker import Mosquitto, needs_mosquitto


def test_a_port_taken_before_mosquitto_binds_it_is_picked_again(tmp_path: Path) -> None:
    needs_mosquitto()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        m = Mosquitto(tmp_path, port=taken)
        m.start()
        try:
            assert m.port != taken and m.running
            with socket.create_connection(("127.0.0.1", m.port), timeout=1):
                pass
        finally:
            m.stop()
