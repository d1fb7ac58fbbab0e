"""What a reader produces: a credential presented at a gate.

Readers (drivers/) only know how to turn bytes into these; what a credential *means*
is decided by rules.decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class CredentialKind(StrEnum):
    CARD = "card"
    QR = "qr"
    DESK = "desk"  # the front desk checked the member in by name (no card read)


def normalise_card(value: str) -> str:
    """Card identifiers are matched case-insensitively and without surrounding blanks."""
    return value.strip().upper()


@dataclass(frozen=True, slots=True)
class Credential:
    """A raw read: a card identifier or the text of a QR code.

    `value` for a card is the identifier as read (normalised with normalise_card before
    lookup); for a QR code it is the token text, verified by the shell before deciding.
    """

    kind: CredentialKind
    value: str
    reader_id: str = ""
    at: datetime | None = None
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def card(cls, value: str, reader_id: str = "", at: datetime | None = None) -> Credential:
        return cls(CredentialKind.CARD, normalise_card(value), reader_id, at)

    @classmethod
    def qr(cls, text: str, reader_id: str = "", at: datetime | None = None) -> Credential:
        return cls(CredentialKind.QR, text.strip(), reader_id, at)
