"""Serial readers on real pseudo-terminals, read through pyserial."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO

import pytest

from drivers.readers.base import ReaderHealth
from drivers.readers.frames import Checksum, FrameConfig, Framing, Terminator
from drivers.readers.payloads import PayloadFormat
from drivers.readers.serial_reader import SerialReader
from rules.credential import CredentialKind
from simulator.serial_reader import VirtualSerialReader
from tests.readers_fixtures import Collector, HealthLog, running, virtual_reader, wait_until

__all__ = ["virtual_reader"]  # a fixture, imported for pytest


async def test_frame_on_pty_becomes_credential(virtual_reader: VirtualSerialReader) -> None:
    reader = SerialReader("r1", virtual_reader.path, frame=virtual_reader.frame)
    got = Collector()
    async with running(reader, got):
        await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
        virtual_reader.tap("04a1b2c3")
        credential = await got.next()
    assert credential.kind is CredentialKind.CARD
    assert credential.value == "04A1B2C3"
    assert credential.reader_id == "r1"
    assert credential.at is not None
    assert reader.stats["frames"] == 1


@pytest.mark.parametrize(
    "frame,card,expected",
    [
        (
            FrameConfig(framing=Framing.STX_ETX, checksum=Checksum.XOR_HEX),
            "1A0012D6C5",
            "1A0012D6C5",
        ),
        (
            FrameConfig(terminator=Terminator.CR, format=PayloadFormat.DECIMAL),
            "12345678",
            "0012345678",
        ),
        (FrameConfig(format=PayloadFormat.WIEGAND26), "123:45678", "123:45678"),
        (
            FrameConfig(terminator=Terminator.LF, format=PayloadFormat.WIEGAND34),
            "4660:4242",
            "4660:4242",
        ),
    ],
)
async def test_formats_end_to_end(
    tmp_path: Path, frame: FrameConfig, card: str, expected: str
) -> None:
    with VirtualSerialReader(tmp_path / "reader", frame) as sim:
        reader = SerialReader("r1", sim.path, frame=frame)
        got = Collector()
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            sim.write(b"\x02garbage\r\n")  # counted, not fatal
            sim.tap(card)
            credential = await got.next()
    assert credential.value == expected
    assert reader.stats["rejected_frames"] >= 1


async def test_qr_scanner_in_serial_mode(tmp_path: Path) -> None:
    frame = FrameConfig(format=PayloadFormat.QR, terminator=Terminator.CR)
    with VirtualSerialReader(tmp_path / "qr", frame) as sim:
        reader = SerialReader("qr1", sim.path, frame=frame)
        got = Collector()
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            sim.scan_qr("v1.eyJtIjoxMjN9.c2ln")
            credential = await got.next()
    assert credential.kind is CredentialKind.QR
    assert credential.value == "v1.eyJtIjoxMjN9.c2ln"


async def test_debounce_drops_repeat_within_window(virtual_reader: VirtualSerialReader) -> None:
    now = [100.0]
    reader = SerialReader("r1", virtual_reader.path, clock=lambda: now[0], debounce=2.0)
    got = Collector()
    async with running(reader, got):
        await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
        virtual_reader.tap("AA11")
        await got.next()
        virtual_reader.tap("AA11")  # same card, same instant: dropped
        virtual_reader.tap("BB22")  # another card passes
        await got.next()
        now[0] += 2.5
        virtual_reader.tap("AA11")
        await got.next()
    assert [c.value for c in got.items] == ["AA11", "BB22", "AA11"]
    assert reader.stats["debounced"] == 1


async def test_unplug_replug_reconnects(virtual_reader: VirtualSerialReader) -> None:
    health = HealthLog()
    reader = SerialReader("r1", virtual_reader.path, on_health=health, reconnect_max=0.2)
    got = Collector()
    async with running(reader, got):
        await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
        virtual_reader.tap("0101")
        await got.next()

        virtual_reader.unplug()
        await wait_until(lambda: reader.health is ReaderHealth.OFFLINE)
        virtual_reader.replug()
        await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
        virtual_reader.tap("0202")
        credential = await got.next()
    assert credential.value == "0202"
    assert health.changes[:3] == [ReaderHealth.ONLINE, ReaderHealth.OFFLINE, ReaderHealth.ONLINE]
    assert reader.stats["reconnects"] >= 1


async def test_missing_device_keeps_retrying_then_comes_online(tmp_path: Path) -> None:
    link = tmp_path / "later"
    reader = SerialReader("r1", str(link), reconnect_max=0.1)
    got = Collector()
    async with running(reader, got) as task:
        await wait_until(lambda: reader.stats["device_errors"] >= 3)
        assert reader.health is ReaderHealth.OFFLINE and not task.done()
        with VirtualSerialReader(link) as sim:
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            sim.tap("CAFE")
            assert (await got.next()).value == "CAFE"


@pytest.mark.skipif(shutil.which("socat") is None, reason="Debian socat not installed")
async def test_socat_pty_link_unplug_replug(tmp_path: Path) -> None:
    """The same with socat's `link=`: killing socat is the unplug, a new socat the replug."""
    link, feed = tmp_path / "by-id-reader", tmp_path / "feed"

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["socat", f"pty,raw,echo=0,link={link}", f"pty,raw,echo=0,link={feed}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def open_feed() -> BinaryIO:
        # Held open while socat runs: closing a pty end can make socat exit early.
        return open(feed, "wb", buffering=0)  # noqa: SIM115

    reader = SerialReader("r1", str(link), reconnect_max=0.2)
    got = Collector()
    proc = start()
    try:
        await wait_until(lambda: link.exists() and feed.exists())
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            with open_feed() as other_end:
                other_end.write(b"11AA\r\n")
                assert (await got.next()).value == "11AA"
                proc.terminate()
                proc.wait()
            await wait_until(lambda: reader.health is ReaderHealth.OFFLINE)
            proc = start()
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            await wait_until(lambda: feed.exists())
            with open_feed() as other_end:
                other_end.write(b"22BB\r\n")
                assert (await got.next()).value == "22BB"
    finally:
        proc.terminate()
        proc.wait()


async def test_partial_frame_then_silence_is_dropped_and_counted(tmp_path: Path) -> None:
    frame = FrameConfig(frame_gap=0.1)
    with VirtualSerialReader(tmp_path / "reader", frame) as sim:
        reader = SerialReader("r1", sim.path, frame=frame)
        got = Collector()
        async with running(reader, got):
            await wait_until(lambda: reader.health is ReaderHealth.ONLINE)
            sim.write(b"04A1B2")  # the card left the field mid-frame
            # Counted while the line stays silent, not only when the next frame comes.
            await wait_until(lambda: reader.stats["rejected_frames"] == 1)
            sim.tap("04A1B2C3D4")
            credential = await got.next()
    assert credential.value == "04A1B2C3D4"
    assert reader.stats["rejected_frames"] == 1 and len(got.items) == 1


async def test_one_em_card_on_three_kinds_of_reader_is_one_card(tmp_path: Path) -> None:
    from rules.credential import Card, cards_match

    card = Card.em(0x0A00BC614E)
    frames = [
        FrameConfig(framing=Framing.STX_ETX, checksum=Checksum.XOR_HEX, format=PayloadFormat.EM),
        FrameConfig(terminator=Terminator.CR, format=PayloadFormat.EM_DECIMAL),
        FrameConfig(format=PayloadFormat.WIEGAND26),
    ]
    seen = []
    for i, frame in enumerate(frames):
        with VirtualSerialReader(tmp_path / f"reader{i}", frame) as sim:
            reader = SerialReader(f"r{i}", sim.path, frame=frame)
            got = Collector()
            async with running(reader, got):
                await wait_until(lambda r=reader: r.health is ReaderHealth.ONLINE)
                sim.present(card)
                seen.append(await got.next())
    assert [c.value for c in seen] == ["0A00BC614E", "0012345678", "188:24910"]
    for credential in seen:
        assert credential.typed is not None and cards_match(credential.typed, card)
    # and the hex digits of another card's decimal number are not this card
    assert not cards_match(Card.em(0x0012345678), Card.em32(12345678))
