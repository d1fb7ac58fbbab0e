"""Reader configuration as installers write it in YAML, and the factory that builds a
Reader from it. The daemon's config embeds `ReaderConfig` under each gate:

    gates:
      - id: turnstile-1
        readers:
          - {type: serial, id: r1, device: /dev/serial/by-id/usb-..., format: hex}
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from .base import Reader
from .frames import DEFAULT_FRAME_GAP, Checksum, FrameConfig, Framing, Terminator
from .payloads import CARD_FORMATS, HEX_PAYLOADS, ByteOrder, PayloadFormat

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _ReaderConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(
        pattern=_ID_PATTERN,
        description="Name of this reader, unique on the site; appears in events and logs "
        "(letters, digits, '-', '_', '.').",
    )
    debounce: float = Field(
        2.0,
        ge=0,
        le=60,
        description="Seconds during which the same card or QR code on this reader is "
        "ignored after it was last seen (0 turns debouncing off).",
    )
    reconnect_max: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Longest wait in seconds between attempts to reopen a device that "
        "disappeared (attempts start fast and double up to this).",
    )
    max_reads_per_second: float | None = Field(
        10.0,
        gt=0,
        le=10_000,
        description="Reads taken from this reader per second on average (twice as many at once); "
        "more are dropped and counted (`rate_limited`): a flood of cards at full baud is not a "
        "decision and a recorded denial each. null: no limit.",
    )


class SerialReaderConfig(_ReaderConfigBase):
    """A reader that sends one frame per card or QR code on a serial line (USB-serial,
    RS-232 or TTL): EM4100/Mifare UID readers, Wiegand-to-serial converters, QR
    scanners in serial mode."""

    type: Literal["serial"]
    device: str = Field(
        description="Serial device; prefer the stable /dev/serial/by-id/... path over "
        "/dev/ttyUSB0, which can change after a reboot or replug."
    )
    baudrate: int = Field(9600, gt=0, description="Line speed in baud (reader manual).")
    parity: Literal["none", "even", "odd", "N", "E", "O"] = Field(
        "none", description="Parity bit: none, even, odd (or N, E, O as for Modbus lines)."
    )
    stopbits: int = Field(1, ge=1, le=2, description="Stop bits: 1 or 2.")
    framing: Framing = Field(
        Framing.LINE,
        description="'line': payload then a line terminator; 'stx-etx': payload between "
        "0x02 and 0x03 bytes (RDM6300-style EM4100 modules).",
    )
    terminator: Terminator = Field(
        Terminator.CRLF, description="Line terminator for 'line' framing: cr, lf or crlf."
    )
    checksum: Checksum = Field(
        Checksum.NONE,
        description="'none'; 'xor': two hex digits, XOR of the payload characters; "
        "'xor-hex': two hex digits, XOR of the bytes the payload's hex pairs encode "
        "(EM4100/RDM6300).",
    )
    format: PayloadFormat = Field(
        PayloadFormat.HEX,
        description="What the payload is (docs/hardware.md, \"Card identity\"): uid (13.56 MHz "
        "UID in hex), uid-decimal (the UID as one decimal number), em (EM4100: 10 hex "
        "digits), em-decimal (EM4100 card number, up to 10 digits), wiegand26/34/37 "
        "(converter output: bit string, hex of the bits, or FC:NUMBER), hex (earlier "
        "versions: 10 hex digits are EM4100, others a UID), decimal (= em-decimal), qr "
        "(text), auto (card-looking lines are cards in card_format, anything else QR).",
    )
    card_format: PayloadFormat = Field(
        PayloadFormat.HEX,
        description="With format auto: what card-looking lines are (any card format).",
    )
    byte_order: ByteOrder = Field(
        ByteOrder.FORWARD,
        description="uid formats: 'forward' (bytes in the card's order, as NFC readers "
        "report them) or 'reversed' (least significant byte first, as some readers print).",
    )
    max_frame_length: int = Field(
        256, ge=8, le=8192, description="Longest frame in bytes; longer garbage is dropped."
    )
    frame_gap: float | None = Field(
        DEFAULT_FRAME_GAP,
        gt=0,
        le=10,
        description="Seconds of silence after which a partial frame is discarded (and "
        "counted): a frame cut short must not glue onto the next card's. null: never.",
    )

    @field_validator("parity", mode="before")
    @classmethod
    def _parity_word(cls, value: object) -> object:
        # one spelling inside, whichever the installer used (Modbus lines say N/E/O)
        words = {"n": "none", "e": "even", "o": "odd", "none": "none", "even": "even", "odd": "odd"}
        return words.get(value.lower(), value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _checksum_fits_format(self) -> SerialReaderConfig:
        if self.checksum is Checksum.XOR_HEX and self.format not in HEX_PAYLOADS:
            raise ValueError("checksum 'xor-hex' needs format hex, uid, em or wiegand26/34/37")
        if self.card_format not in CARD_FORMATS:
            raise ValueError("card_format must be a card format (not qr or auto)")
        return self

    def frame_config(self) -> FrameConfig:
        return FrameConfig(
            framing=self.framing,
            terminator=self.terminator,
            checksum=self.checksum,
            format=self.format,
            max_frame_length=self.max_frame_length,
            byte_order=self.byte_order,
            card_format=self.card_format,
            frame_gap=self.frame_gap,
        )


NfcTarget = Literal["106A", "106B", "212F", "424F"]


def _default_nfc_targets() -> list[NfcTarget]:
    return ["106A", "106B", "212F"]


class NfcReaderConfig(_ReaderConfigBase):
    """A contactless reader driven by nfcpy (PN531/PN533/PN532, ACR122U, Sony RC-S380)."""

    type: Literal["nfc"]
    device: str = Field(
        "usb",
        description="nfcpy device path: 'usb' (first supported USB reader), "
        "'usb:072f:2200' (vendor:product), 'usb:001:004' (bus:device), "
        "'tty:USB0:pn532' (serial PN532), 'udp:127.0.0.1:54321' (simulator).",
    )
    targets: list[NfcTarget] = Field(
        default_factory=_default_nfc_targets,
        min_length=1,
        description="Card technologies to poll: 106A (Mifare, NTAG, most ISO 14443 A "
        "cards), 106B (ISO 14443 B), 212F/424F (FeliCa).",
    )
    poll_interval: float = Field(
        0.1, gt=0, le=5, description="Seconds between polls when no card is present."
    )


class KeyboardReaderConfig(_ReaderConfigBase):
    """A USB scanner that types what it reads (HID keyboard wedge), read via evdev."""

    type: Literal["keyboard"]
    device: str = Field(
        description="Input device; prefer /dev/input/by-id/usb-...-event-kbd "
        "(see `gated discover`)."
    )
    grab: bool = Field(
        True,
        description="Take the device exclusively so scans don't also type into whatever "
        "has keyboard focus on this computer.",
    )
    format: PayloadFormat = Field(
        PayloadFormat.AUTO,
        description="What a typed line is: auto (card-looking lines are cards in "
        "card_format, anything else QR), or one format for every line (see serial readers).",
    )
    card_format: PayloadFormat = Field(
        PayloadFormat.HEX,
        description="With format auto: what card-looking lines are. Wedge RFID readers "
        "usually type em-decimal (125 kHz) or uid-decimal with byte_order reversed (13.56 MHz).",
    )
    byte_order: ByteOrder = Field(ByteOrder.FORWARD, description="uid formats: forward or reversed.")

    @model_validator(mode="after")
    def _card_format(self) -> KeyboardReaderConfig:
        if self.card_format not in CARD_FORMATS:
            raise ValueError("card_format must be a card format (not qr or auto)")
        return self


class OsdpReaderConfig(_ReaderConfigBase):
    """An OSDP reader (peripheral device) on an RS-485 line."""

    type: Literal["osdp"]
    device: str = Field(description="Serial device of the RS-485 adapter (by-id path).")
    baudrate: int = Field(9600, gt=0, description="Bus speed (OSDP default 9600).")
    address: int = Field(0, ge=0, le=126, description="OSDP address of the reader (0-126).")
    secure_channel: bool = Field(
        True,
        description="Encrypt and authenticate the line (OSDP Secure Channel). Turn off "
        "only for readers that cannot do it.",
    )
    scbk: str | None = Field(
        None,
        repr=False,
        description="Secure Channel Base Key of this reader: 32 hex digits, different for "
        "every reader. Generate one with `python -c 'import secrets; "
        "print(secrets.token_hex(16))'` and load the same key into the reader.",
    )
    scbk_file: str | None = Field(
        None,
        description="A file holding this reader's SCBK (32 hex digits), readable by the "
        "gated user only — keeps keys out of the configuration file. Use scbk or scbk_file.",
    )
    reader_number: int = Field(0, ge=0, le=255, description="Reader number on the PD.")
    feedback_seconds: float = Field(
        2.0, gt=0, le=25, description="How long the green/red LED and text stay on."
    )
    card_data: Literal["wiegand", "uid"] = Field(
        "wiegand",
        description="What the reader's raw card bits are: 'wiegand' (26/34/37-bit frames "
        "with good parity become facility + number, other lengths stay raw bits) or 'uid' "
        "(whole bytes are the card's UID, for readers set to send the CSN).",
    )
    display: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Show the member's message on the reader's display (OSDP TEXT): auto "
        "when the reader reports a text display, on always, off never.",
    )

    @field_validator("scbk")
    @classmethod
    def _scbk_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        compact = re.sub(r"[\s:]", "", value)
        if not re.fullmatch(r"[0-9A-Fa-f]{32}", compact):
            raise ValueError("scbk must be 32 hex digits (16 bytes)")
        return compact.upper()

    @model_validator(mode="after")
    def _key_when_secure(self) -> OsdpReaderConfig:
        if self.scbk is not None and self.scbk_file is not None:
            raise ValueError("give scbk or scbk_file, not both")
        if self.secure_channel and self.scbk is None and self.scbk_file is None:
            raise ValueError("secure_channel needs an scbk (32 hex digits) or an scbk_file")
        return self

    def key(self) -> bytes | None:
        """The SCBK as bytes, read from scbk_file when that is how it was given."""
        text = self.scbk
        if text is None and self.scbk_file is not None:
            with open(self.scbk_file, encoding="ascii") as f:
                text = self._scbk_hex(f.read().strip())
        return bytes.fromhex(text) if text else None


ReaderConfig = Annotated[
    SerialReaderConfig | NfcReaderConfig | KeyboardReaderConfig | OsdpReaderConfig,
    Field(discriminator="type"),
]
reader_config_adapter: TypeAdapter[ReaderConfig] = TypeAdapter(ReaderConfig)


def parse_reader_config(data: Any) -> ReaderConfig:
    """Validate one reader entry (a dict from YAML)."""
    return reader_config_adapter.validate_python(data)


def build_reader(cfg: ReaderConfig, **hooks: Any) -> Reader:
    """A Reader for the config. `hooks` go to the reader (on_health, clock, now).

    Device libraries are imported here, per type, so a box without NFC or OSDP readers
    never loads nfcpy or libosdp.
    """
    common: dict[str, Any] = {
        "debounce": cfg.debounce,
        "reconnect_max": cfg.reconnect_max,
        "max_reads_per_second": cfg.max_reads_per_second,
        **hooks,
    }
    if isinstance(cfg, SerialReaderConfig):
        from .serial_reader import SerialReader

        parity = {"none": "N", "even": "E", "odd": "O"}[cfg.parity]
        return SerialReader(
            cfg.id,
            cfg.device,
            frame=cfg.frame_config(),
            baudrate=cfg.baudrate,
            parity=parity,
            stopbits=cfg.stopbits,
            **common,
        )
    if isinstance(cfg, NfcReaderConfig):
        from .nfc_reader import NfcReader

        return NfcReader(
            cfg.id, cfg.device, targets=cfg.targets, poll_interval=cfg.poll_interval, **common
        )
    if isinstance(cfg, KeyboardReaderConfig):
        from .keyboard import KeyboardReader

        return KeyboardReader(
            cfg.id,
            cfg.device,
            grab=cfg.grab,
            format=cfg.format,
            card_format=cfg.card_format,
            byte_order=cfg.byte_order,
            **common,
        )
    if isinstance(cfg, OsdpReaderConfig):
        from .osdp_reader import OsdpReader, SerialChannel

        device, baudrate = cfg.device, cfg.baudrate
        return OsdpReader(
            cfg.id,
            lambda: SerialChannel(device, baudrate),
            address=cfg.address,
            scbk=cfg.key(),
            secure_channel=cfg.secure_channel,
            reader_number=cfg.reader_number,
            feedback_seconds=cfg.feedback_seconds,
            card_data=cfg.card_data,
            display=cfg.display,
            **common,
        )
    raise TypeError(f"unknown reader config {type(cfg).__name__}")
