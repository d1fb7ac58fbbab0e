"""What the sans-I/O decoders return: a decoded read, or a counted error (never raised)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from rules.credential import Card, Credential, CredentialKind


@dataclass(frozen=True, slots=True)
class CredentialRead:
    """A decoded credential not yet tied to a reader or a time (the parser has neither)."""

    kind: CredentialKind
    value: str  # the card's identifier text (Card.legacy) or the QR text
    meta: Mapping[str, str] = field(default_factory=dict, compare=False)
    card: Card | None = None  # the typed card (cards only)

    @classmethod
    def of_card(cls, card: Card, meta: Mapping[str, str] | None = None) -> CredentialRead:
        return cls(CredentialKind.CARD, card.legacy, dict(meta or {}), card)

    @property
    def debounce_key(self) -> str:
        """Same card, same key: two readers' spellings of one card debounce together."""
        return self.card.key if self.card is not None else self.value

    def to_credential(self, reader_id: str, at: datetime | None) -> Credential:
        if self.kind is CredentialKind.CARD:
            base = Credential.card(self.card if self.card is not None else self.value, reader_id, at)
        else:
            base = Credential.qr(self.value, reader_id, at)
        return Credential(base.kind, base.value, base.reader_id, base.at, dict(self.meta), base.typed)


class FrameErrorReason(StrEnum):
    OVERLONG = "overlong"  # frame longer than max_frame_length: dropped whole
    TRUNCATED = "truncated"  # a new STX before the ETX of the previous frame
    NOISE = "noise"  # bytes outside STX..ETX framing
    GAP = "gap"  # a partial frame followed by silence longer than frame_gap: discarded
    CHECKSUM = "checksum"
    PARITY = "parity"  # Wiegand parity bit wrong
    FORMAT = "format"  # payload is not what the configured format expects
    ENCODING = "encoding"  # payload is not valid UTF-8 text


@dataclass(frozen=True, slots=True)
class FrameError:
    reason: FrameErrorReason
    detail: str
    raw: bytes = b""
