"""What the sans-I/O decoders return: a decoded read, or a counted error (never raised)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from rules.credential import Credential, CredentialKind


@dataclass(frozen=True, slots=True)
class CredentialRead:
    """A decoded credential not yet tied to a reader or a time (the parser has neither)."""

    kind: CredentialKind
    value: str  # already in its normal form (see payloads.py)
    meta: Mapping[str, str] = field(default_factory=dict, compare=False)

    def to_credential(self, reader_id: str, at: datetime | None) -> Credential:
        if self.kind is CredentialKind.CARD:
            base = Credential.card(self.value, reader_id, at)
        else:
            base = Credential.qr(self.value, reader_id, at)
        return Credential(base.kind, base.value, base.reader_id, base.at, dict(self.meta))


class FrameErrorReason(StrEnum):
    OVERLONG = "overlong"  # frame longer than max_frame_length: dropped whole
    TRUNCATED = "truncated"  # a new STX before the ETX of the previous frame
    NOISE = "noise"  # bytes outside STX..ETX framing
    CHECKSUM = "checksum"
    PARITY = "parity"  # Wiegand parity bit wrong
    FORMAT = "format"  # payload is not what the configured format expects
    ENCODING = "encoding"  # payload is not valid UTF-8 text


@dataclass(frozen=True, slots=True)
class FrameError:
    reason: FrameErrorReason
    detail: str
    raw: bytes = b""
