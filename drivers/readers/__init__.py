"""Credential readers: serial line readers, NFC (nfcpy), USB keyboard wedges (evdev),
OSDP over RS-485 (libosdp). Build them from configuration with `build_reader`.

The device libraries are imported lazily by the concrete reader modules, so importing
this package (for the config models, the parsers) needs none of them.
"""

from .base import Backoff, Debouncer, OnCredential, Reader, ReaderHealth, ReaderStats
from .frames import Checksum, FrameConfig, Framing, SerialFrameParser, Terminator
from .payloads import PayloadFormat
from .reads import CredentialRead, FrameError, FrameErrorReason

__all__ = [
    "Backoff",
    "Checksum",
    "CredentialRead",
    "Debouncer",
    "FrameConfig",
    "FrameError",
    "FrameErrorReason",
    "Framing",
    "OnCredential",
    "PayloadFormat",
    "Reader",
    "ReaderHealth",
    "ReaderStats",
    "SerialFrameParser",
    "Terminator",
]
