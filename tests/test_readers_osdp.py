"""OSDP: our ControlPanel-based reader and a simulated PD in one process over an
in-memory bus, secure channel on."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator

import osdp
import pytest

from drivers.readers.base import ReaderHealth
from drivers.readers.osdp_reader import OsdpReader, generate_scbk
from rules.credential import CredentialKind
from simulator.osdp_reader import MemoryBus, SimulatedOsdpReader
from tests.readers_fixtures import Collector, HealthLog, running, wait_until


@pytest.fixture(autouse=True)
def no_osdp_thread_left() -> Iterator[None]:
    """libosdp's refresh threads are not daemons: one left running keeps the test
    process from ever exiting. Each test ends with none (a few seconds' grace for a
    teardown still joining)."""
    yield
    deadline = time.monotonic() + 5
    while (left := [t.name for t in threading.enumerate() if t.name in ("cp", "pd")]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"libosdp threads still running after the test: {left}"


def is_led(color: int):  # noqa: ANN201 - a predicate factory
    return lambda c: c["command"] == osdp.Command.LED and c["on_color"] == color


async def test_card_at_pd_arrives_and_feedback_reaches_pd() -> None:
    key = secrets.token_bytes(16)
    bus = MemoryBus()
    with SimulatedOsdpReader(bus.pd_channel(), address=5, scbk=key) as pd:
        reader = OsdpReader("osdp1", bus.cp_channel, address=5, scbk=key)
        got = Collector()
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            assert pd.secure  # online means the secure channel is up
            pd.present_card("04A1B2C3D4E5F6")
            credential = await got.next()

            await reader.feedback(True, "Welcome")
            green = await asyncio.to_thread(pd.wait_command, is_led(osdp.CommandLEDColor.Green))
            await reader.feedback(False, "No booking")
            red = await asyncio.to_thread(pd.wait_command, is_led(osdp.CommandLEDColor.Red))
            beep = await asyncio.to_thread(
                pd.wait_command, lambda c: c["command"] == osdp.Command.Buzzer
            )
            text = await asyncio.to_thread(
                pd.wait_command, lambda c: c["command"] == osdp.Command.Text
            )
    assert credential.kind is CredentialKind.CARD
    assert credential.value == "04A1B2C3D4E5F6"
    assert credential.reader_id == "osdp1"
    assert credential.meta["bits"] == "56"
    assert green["timer_count"] == 20 and red["temporary"]
    assert beep["rep_count"] == 1
    assert text["data"] == "Welcome"


async def test_wrong_key_never_comes_online_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    with SimulatedOsdpReader(bus.pd_channel(), address=1, scbk=secrets.token_bytes(16)):
        reader = OsdpReader(
            "osdp1", bus.cp_channel, address=1, scbk=secrets.token_bytes(16), online_grace=1.0
        )
        got = Collector()
        async with running(reader, got) as task:
            # Several rebuild cycles (grace, then backoff) without ever coming online.
            await wait_until(lambda: reader.stats["device_errors"] >= 2)
            assert not task.done()
    # It answers, so it is there: the installer's problem (ERROR), with the reason.
    assert reader.health is ReaderHealth.ERROR and reader.key_refused
    assert reader.stats["credentials"] == 0
    assert any("refuses the secure channel" in r.getMessage() for r in caplog.records)


async def test_silent_bus_is_offline_not_a_key_problem() -> None:
    bus = MemoryBus()  # nobody on the line
    reader = OsdpReader("osdp1", bus.cp_channel, scbk=secrets.token_bytes(16), online_grace=0.5)
    async with running(reader, Collector()):
        await wait_until(lambda: reader.stats["device_errors"] >= 1)
    assert reader.health is ReaderHealth.OFFLINE and not reader.key_refused


async def test_install_mode_loads_the_configured_key() -> None:
    from drivers.readers.osdp_reader import install_key

    key = secrets.token_bytes(16)
    bus = MemoryBus()
    with SimulatedOsdpReader(bus.pd_channel(), address=3, install_mode=True) as pd:
        assert await asyncio.to_thread(install_key, bus.cp_channel, address=3, scbk=key) is None
        # the daemon's reader, secure channel enforced, now comes online with that key
        reader = OsdpReader("osdp1", bus.cp_channel, address=3, scbk=key)
        got = Collector()
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            pd.present_card(bytes.fromhex("BDD93740"), bits=26)
            credential = await got.next()
    assert credential.typed is not None and credential.typed.key == "w26:123:45678"
    # a reader that holds another key is refused with the reason; no reader: no answer
    with SimulatedOsdpReader(bus.pd_channel(), address=3, scbk=secrets.token_bytes(16)):
        why = await asyncio.to_thread(install_key, bus.cp_channel, address=3, scbk=key, timeout=2)
    assert why is not None and "another key" in why
    why = await asyncio.to_thread(install_key, MemoryBus().cp_channel, address=3, scbk=key, timeout=1)
    assert why is not None and "no answer" in why


@pytest.mark.parametrize("display,shown", [("off", False), ("on", True), ("auto", True)])
async def test_member_text_on_the_display_is_configurable(display: str, shown: bool) -> None:
    key = secrets.token_bytes(16)
    bus = MemoryBus()
    with SimulatedOsdpReader(bus.pd_channel(), address=0, scbk=key) as pd:
        reader = OsdpReader("osdp1", bus.cp_channel, scbk=key, display=display)
        async with running(reader, Collector()):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            await reader.feedback(False, "Your pass expired on 3 Nov")
            await reader.feedback(True, "Welcome")
            # commands arrive in order: once a later one is in, every earlier text is too
            await reader.feedback(True, "")
            green = is_led(osdp.CommandLEDColor.Green)
            await wait_until(lambda: sum(1 for c in list(pd.commands) if green(c)) == 2)
            texts = [c["data"] for c in pd.commands if c["command"] == osdp.Command.Text]
    assert texts == (["Your pass expired on 3 Nov", "Welcome"] if shown else [])


async def test_pd_power_cycle_is_supervised_offline_then_online() -> None:
    key = bytes.fromhex(generate_scbk())
    bus = MemoryBus()
    health = HealthLog()
    pd = SimulatedOsdpReader(bus.pd_channel(), address=0, scbk=key).start()
    try:
        reader = OsdpReader(
            "osdp1", bus.cp_channel, scbk=key, on_health=health, online_grace=1.0, reconnect_max=0.5
        )
        got = Collector()
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            await asyncio.to_thread(pd.stop)
            await wait_until(lambda: reader.health is ReaderHealth.OFFLINE)
            # A fresh PD (power-on resets its secure channel state too).
            pd = SimulatedOsdpReader(bus.pd_channel(), address=0, scbk=key).start()
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            pd.present_card("CAFE")
            assert (await got.next()).value == "CAFE"
    finally:
        await asyncio.to_thread(pd.stop)
    assert health.changes[:3] == [ReaderHealth.ONLINE, ReaderHealth.OFFLINE, ReaderHealth.ONLINE]
    assert reader.stats["reconnects"] >= 1


def test_secure_channel_requires_a_16_byte_key() -> None:
    with pytest.raises(ValueError):
        OsdpReader("x", MemoryBus().cp_channel, scbk=b"short")
    OsdpReader("x", MemoryBus().cp_channel, secure_channel=False)  # plain text is explicit
