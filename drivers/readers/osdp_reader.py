"""OSDP readers over RS-485 through libosdp: we are the Control Panel (CP), the reader is
a Peripheral Device (PD).

libosdp runs its own refresh thread; its event callback runs there and hands events to
the event loop with call_soon_threadsafe. Supervision: libosdp parks a PD that stopped
answering for minutes before trying again, far too long for a turnstile, so when the PD
is not online within `online_grace` seconds we tear the CP down and build a new one,
with our own capped backoff in between.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import osdp
import serial

from rules.credential import WIEGAND_LAYOUTS, Card, card_from_text

from .base import OnCredential, ReaderBase, ReaderHealth
from .reads import CredentialRead
from .wiegand import ParityError, decode_frame, from_bytes

log = logging.getLogger(__name__)

ChannelFactory = Callable[[], osdp.Channel]
SUPERVISE_TICK_S = 0.2


def _card_bytes(data: object) -> bytes:
    """The card data of an event as bytes, or b"" when it is not card data."""
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in data):
        return bytes(data)
    return b""


def card_from_osdp(data: bytes, bit_count: int, card_data: str = "wiegand") -> Card:
    """The card in an OSDP raw card read: `bit_count` bits, MSB first, padded to bytes.

    card_data "wiegand": a frame of a known Wiegand length with good parity is that card
    (so an OSDP reader and a Wiegand converter agree on it); anything else stays raw
    bits. card_data "uid": whole bytes are the card's UID (readers that send the CSN).
    ValueError when the data does not hold `bit_count` bits.
    """
    if not data:
        raise ValueError("no card data")
    if not 0 < bit_count <= 8 * len(data):
        bit_count = 8 * len(data)  # a PD that reports no (or a wrong) count: the bytes
    bits = from_bytes(data, bit_count)
    if card_data == "uid" and bit_count % 8 == 0:
        return Card.uid(bits.to_bytes(bit_count // 8, "big"))
    if card_data == "wiegand" and bit_count in WIEGAND_LAYOUTS:
        try:
            return decode_frame(bit_count, bits)
        except ParityError:
            pass  # not that layout after all: keep every bit
    return Card.raw(bit_count, bits)


def generate_scbk() -> str:
    """A fresh Secure Channel Base Key, as the hex an installer pastes into the config."""
    return secrets.token_bytes(16).hex().upper()


class SerialChannel(osdp.Channel):  # type: ignore[misc]  # libosdp ships no types
    """RS-485 through pyserial. libosdp calls these from its thread and must never see
    an exception: a failure marks the channel broken and the supervisor reconnects."""

    def __init__(self, device: str, baudrate: int = 9600) -> None:
        super().__init__()
        self.device = device
        self.broken = threading.Event()
        self._port = serial.Serial(device, baudrate=baudrate, timeout=0, exclusive=True)

    def read(self, max_bytes: int) -> bytes:
        if self.broken.is_set():
            return b""
        try:
            return bytes(self._port.read(max_bytes))
        except (serial.SerialException, OSError):
            self.broken.set()
            return b""

    def write(self, buf: bytes) -> int:
        if self.broken.is_set():
            return len(buf)
        try:
            return int(self._port.write(buf) or 0)
        except (serial.SerialException, OSError):
            self.broken.set()
            return len(buf)  # pretend sent: the supervisor is about to rebuild anyway

    def flush(self) -> None:
        try:
            self._port.reset_input_buffer()
        except (serial.SerialException, OSError):
            self.broken.set()

    def close(self) -> None:
        self._port.close()


class _Watched(osdp.Channel):  # type: ignore[misc]  # libosdp ships no types
    """The bus as libosdp sees it, counting what the reader sends back: a reader that
    answers but never gets a secure channel up has another key than ours."""

    def __init__(self, inner: osdp.Channel) -> None:
        super().__init__()
        self.inner = inner
        self.received = 0
        self.broken = getattr(inner, "broken", None)

    def read(self, max_bytes: int) -> bytes:
        data = bytes(self.inner.read(max_bytes))
        self.received += len(data)
        return data

    def write(self, buf: bytes) -> int:
        return int(self.inner.write(buf))

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


KEY_REFUSED = (
    "reader {id}: answers but refuses the secure channel: its key is not the scbk "
    "configured for it (a new reader in install mode: `gated osdp-install {id} -c FILE` "
    "loads the configured key into it)"
)


class OsdpReader(ReaderBase):
    def __init__(
        self,
        id: str,
        channel_factory: ChannelFactory,
        *,
        address: int = 0,
        scbk: bytes | None = None,
        secure_channel: bool = True,
        reader_number: int = 0,
        feedback_seconds: float = 2.0,
        online_grace: float = 3.0,
        # libosdp writes its own log lines to stderr, outside our log pipeline; what it
        # would say at error level (a refused key, a silent reader) we say ourselves.
        log_level: int = osdp.LogLevel.Emergency,
        card_data: str = "wiegand",
        display: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(id, **kwargs)
        if secure_channel and (scbk is None or len(scbk) != 16):
            raise ValueError("secure channel needs a 16-byte SCBK")
        self.channel_factory = channel_factory
        self.address = address
        self.scbk = scbk if secure_channel else None
        self.secure_channel = secure_channel
        self.reader_number = reader_number
        self.feedback_seconds = feedback_seconds
        self.online_grace = online_grace
        self.log_level = log_level
        self.card_data = card_data
        self.display = display
        self._cp: osdp.ControlPanel | None = None
        self._pd_online = False
        # The reader answered but the secure channel never came up: the wrong key.
        self.key_refused = False
        self._refusals = 0  # attempts in a row that ended so (one can be a reader booting)

    async def run(self, on_credential: OnCredential) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_event(pd: int, event: dict[str, Any]) -> int:
            loop.call_soon_threadsafe(events.put_nowait, event)
            return 0

        while True:
            try:
                channel = _Watched(self.channel_factory())
            except (serial.SerialException, OSError) as exc:
                self.stats.bump("device_errors")
                log.debug("reader %s: cannot open OSDP bus: %s", self.id, exc)
                self._set_health(ReaderHealth.OFFLINE)
                await self._wait_before_retry()
                continue
            flags = [osdp.LibFlag.EnableNotification]
            if self.secure_channel:
                # Never fall back to plain text: a tapped RS-485 line must not leak cards.
                flags.append(osdp.LibFlag.EnforceSecure)
            info = osdp.PDInfo(self.address, channel, scbk=self.scbk, name=self.id, flags=flags)
            cp = osdp.ControlPanel([info], log_level=self.log_level, event_handler=on_event)
            cp.start()
            self._cp = cp
            try:
                await self._supervise(cp, channel, events, on_credential)
            finally:
                self._cp = None
                self._pd_online = False
                # teardown joins libosdp's thread: not on the event loop.
                await asyncio.shield(asyncio.to_thread(cp.teardown))
                close = getattr(channel, "close", None)
                if close is not None:
                    close()
                if not self.key_refused:
                    self._set_health(ReaderHealth.OFFLINE)
                while not events.empty():  # stale events of the old CP
                    events.get_nowait()
            await self._wait_before_retry()

    async def _supervise(
        self,
        cp: osdp.ControlPanel,
        channel: osdp.Channel,
        events: asyncio.Queue[dict[str, Any]],
        on_credential: OnCredential,
    ) -> None:
        """Returns when the bus broke or the PD stayed offline past the grace time."""
        offline_since = time.monotonic()
        heard_before = 0  # bytes from the reader before this offline spell
        broken = getattr(channel, "broken", None)
        while True:
            try:
                async with asyncio.timeout(SUPERVISE_TICK_S):
                    event = await events.get()
            except TimeoutError:
                event = None
            if event is not None:
                await self._on_event(event, on_credential)
            if broken is not None and broken.is_set():
                self.stats.bump("device_errors")
                return
            online = await asyncio.to_thread(self._is_online, cp)
            if online and not self._pd_online:
                self.key_refused = False
                self._refusals = 0
                self._mark_opened()
            elif not online:
                if self._pd_online:
                    offline_since = time.monotonic()
                    heard_before = channel.received if isinstance(channel, _Watched) else 0
                    self._set_health(ReaderHealth.OFFLINE)
                if time.monotonic() - offline_since > self.online_grace:
                    self.stats.bump("device_errors")
                    self._check_key(channel, heard_before)
                    return
            self._pd_online = online

    def _check_key(self, channel: osdp.Channel, heard_before: int) -> None:
        answered = isinstance(channel, _Watched) and channel.received > heard_before
        if not (self.secure_channel and answered):
            self._refusals = 0
            return
        self._refusals += 1
        if self._refusals < 2:
            return
        if not self.key_refused:
            log.error(KEY_REFUSED.format(id=self.id))
        self.key_refused = True
        self._set_health(ReaderHealth.ERROR)

    def _is_online(self, cp: osdp.ControlPanel) -> bool:
        if not cp.is_online(self.address):
            return False
        return not self.secure_channel or cp.is_sc_active(self.address)

    async def _on_event(self, event: dict[str, Any], on_credential: OnCredential) -> None:
        if event.get("event") != osdp.Event.CardRead:
            return  # notifications (command/SC/PD status), keypad: supervision polls
        self.stats.bump("frames")
        data = _card_bytes(event.get("data"))
        if not data:  # absent, empty or not bytes at all: never trust the shape of an event
            self.stats.bump("rejected_frames")
            return
        length = event.get("length")
        bit_count = length if isinstance(length, int) else 8 * len(data)
        meta = {
            "format": "osdp",
            "osdp_format": str(event.get("format", "")),
            "bits": str(bit_count),
            "pd_address": str(self.address),
        }
        try:
            if event.get("format") == osdp.CardFormat.ASCII:
                card = card_from_text(data.decode("ascii"))
            else:
                card = card_from_osdp(data, bit_count, self.card_data)
        except ValueError as exc:  # UnicodeDecodeError is one too
            self.stats.bump("rejected_frames")
            log.warning("reader %s: rejected OSDP card read (%s)", self.id, exc)
            return
        await self._emit(on_credential, CredentialRead.of_card(card, meta))

    async def feedback(self, granted: bool, message: str) -> None:
        """Green LED + one short beep on grant, red LED + three beeps on deny, and the
        message on readers with a display. Best effort: a lost command is not an error
        worth more than a log line."""
        cp = self._cp
        if cp is None or not self._pd_online:
            return
        await asyncio.to_thread(self._send_feedback, cp, granted, message)

    def _send_feedback(self, cp: osdp.ControlPanel, granted: bool, message: str) -> None:
        tenths = max(1, min(255, round(self.feedback_seconds * 10)))
        color = osdp.CommandLEDColor.Green if granted else osdp.CommandLEDColor.Red
        commands: list[dict[str, Any]] = [
            {
                "command": osdp.Command.LED,
                "reader": self.reader_number,
                "led_number": 0,
                "control_code": 2,  # temporary state, start the timer now
                "on_count": tenths,
                "off_count": 0,  # solid colour for the whole timer
                "on_color": color,
                "off_color": osdp.CommandLEDColor.Black,
                "timer_count": tenths,
                "temporary": True,
            },
            {
                "command": osdp.Command.Buzzer,
                "reader": self.reader_number,
                "control_code": 2,  # default tone
                "on_count": 1 if granted else 2,
                "off_count": 0 if granted else 1,
                "rep_count": 1 if granted else 3,
            },
        ]
        if message and self._shows_text(cp):
            commands.append(
                {
                    "command": osdp.Command.Text,
                    "reader": self.reader_number,
                    "control_code": 3,  # temporary text, no wrap
                    "temp_time": max(1, round(self.feedback_seconds)),
                    "offset_row": 1,
                    "offset_col": 1,
                    "data": message[:32],
                }
            )
        for command in commands:
            try:
                if not cp.submit_command(self.address, command):
                    log.info("reader %s: PD refused %s", self.id, command["command"])
            except Exception:  # libosdp raises on odd dicts; feedback must not kill us
                log.exception("reader %s: feedback command failed", self.id)

    def _shows_text(self, cp: osdp.ControlPanel) -> bool:
        if self.display != "auto":
            return self.display == "on"
        try:
            _, items = cp.check_capability(self.address, osdp.Capability.TextOutput)
        except Exception:
            return False
        return bool(items)


def install_key(
    channel_factory: ChannelFactory,
    *,
    address: int,
    scbk: bytes,
    timeout: float = 10.0,
    log_level: int = osdp.LogLevel.Emergency,
) -> str | None:
    """Load `scbk` into a reader in install mode (or check a reader that has it already),
    then prove it with a secure channel on that key alone. Blocking (run in a thread).

    A control panel in install mode falls back to the default key SCBK-D and sends ours
    with osdp_KEYSET (libosdp does both); it is a provisioning-time mode only — a panel
    left in it would hand the key to any reader in install mode on the line — so the
    daemon never runs in it. Returns None on success, else what went wrong.
    """
    if len(scbk) != 16:
        return "the key must be 16 bytes (32 hex digits)"

    def session(flags: list[int]) -> tuple[bool, bool]:
        channel = _Watched(channel_factory())
        info = osdp.PDInfo(address, channel, scbk=scbk, name="install", flags=flags)
        cp = osdp.ControlPanel([info], log_level=log_level)
        cp.start()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if cp.is_online(address) and cp.is_sc_active(address):
                    return True, True
                time.sleep(0.05)
            return False, channel.received > 0
        finally:
            cp.teardown()
            channel.close()

    ok, answered = session([osdp.LibFlag.InstallMode])
    if not ok:
        if not answered:
            return (
                "no answer from the reader: check the address, the baud rate, the wiring "
                "(A/B) and the reader's power"
            )
        return (
            "the reader answers but took neither our key nor the install key: it holds "
            "another key; reset it to install mode (vendor tool or reset card) and try again"
        )
    ok, _ = session([osdp.LibFlag.EnforceSecure])
    if not ok:
        return "the key was sent but the reader does not use it: try again, or reset the reader"
    return None
