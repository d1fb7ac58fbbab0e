"""OSDP: our ControlPanel-based reader and a simulated PD in one process over an
in-memory bus, secure channel on."""

from __future__ import annotations

import asyncio
import secrets

import osdp
import pytest

from drivers.readers.base import ReaderHealth
from drivers.readers.osdp_reader import OsdpReader, generate_scbk
from rules.credential import CredentialKind
from simulator.osdp_reader import MemoryBus, SimulatedOsdpReader
from tests.readers_fixtures import Collector, HealthLog, running, wait_until


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


async def test_wrong_key_never_comes_online() -> None:
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
    assert reader.health is ReaderHealth.OFFLINE
    assert reader.stats["credentials"] == 0


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
