"""Which broker next and how long to wait (sync/link/reconnect.py), the broker settings
(sync/link/settings.py), and that reading a configuration does not load the MQTT client."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from sync.link.reconnect import Attempt, Reconnect
from sync.link.settings import MqttSettings, parse_endpoint

A, B, C = ("a", 1883), ("b", 1884), ("c", 8883)


def plan(*endpoints: tuple[str, int], rand: float = 0.0) -> Reconnect:
    return Reconnect(endpoints, initial=0.1, maximum=1.0, refused=30.0, rand=lambda: rand)


def test_brokers_in_turn_then_a_doubling_wait_capped() -> None:
    p = plan(A, B, C)
    assert p.first() == Attempt(A, 0.0)
    assert p.failed() == Attempt(B, 0.0)  # the next broker at once
    assert p.failed() == Attempt(C, 0.0)
    delays = []
    for _ in range(6):  # whole rounds failing: 0.1, 0.2, 0.4, 0.8, 1.0, 1.0
        a = p.failed()  # C failed too: the round is over
        assert a.endpoint == A
        delays.append(a.delay)
        assert p.failed() == Attempt(B, 0.0)
        assert p.failed() == Attempt(C, 0.0)
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_lost_connection_goes_back_to_the_primary_soon() -> None:
    p = plan(A, B)
    p.failed()  # A down: B
    p.connected()
    assert p.lost() == Attempt(A, 0.1)
    for _ in range(10):
        p.failed()
    p.connected()
    assert p.lost().delay == 0.1  # the wait starts small again after a connection that worked


def test_every_broker_refusing_waits_long_jitter_shortens_waits() -> None:
    p = plan(A, B)
    p.failed(refused=True)
    assert p.failed(refused=True) == Attempt(A, 30.0)
    p.failed(refused=True)
    assert p.failed() == Attempt(A, 0.1)  # one merely down: the short wait
    assert plan(A, rand=0.999).failed().delay == pytest.approx(0.05, abs=1e-3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("broker", ("broker", 1883)), ("broker:8883", ("broker", 8883)), ("10.0.0.2:1", ("10.0.0.2", 1)),
     ("[::1]:1884", ("::1", 1884)), ("[fe80::1]", ("fe80::1", 1883)), ("fe80::1", ("fe80::1", 1883))],
)
def test_endpoints(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "bad", ["", "host:", "host:0", "host:70000", "host:x", "[::1", "[::1]x", ":1883", "host:\u00b2", "[::1]:\u0661\u0662"],
)
def test_bad_endpoints(bad: str) -> None:
    with pytest.raises(ValidationError):
        MqttSettings(site="s", daemon="d", hosts=[bad])


def test_settings_list_their_brokers() -> None:
    assert MqttSettings(site="s", daemon="d", port=1999).endpoints() == [("127.0.0.1", 1999)]
    s = MqttSettings(site="s", daemon="d", port=8883, hosts=["n1", "n2:1883"])
    assert s.endpoints() == [("n1", 8883), ("n2", 1883)]
    assert s.client_id() == "gated-s-d"


def test_reading_a_configuration_loads_no_mqtt_client_nor_modbus() -> None:
    code = ("import sys, gated.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiomqtt', 'paho', 'pymodbus')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
