"""Turning a reader's payload text into a normalised card identifier (sans-I/O).

Normal forms (what members.card_id must hold to match):
- hex UIDs (Mifare/ISO 14443 UIDs, EM4100 hex, FeliCa IDm, OSDP raw card data):
  uppercase hex, no separators, e.g. ``04A1B2C3D4E5F6``;
- EM4100 decimal: the 32-bit card number as 10 zero-padded decimal digits, the number
  printed on most 125 kHz cards, e.g. ``0012345678``;
- Wiegand 26/34: ``FC:CARD`` in decimal without padding, e.g. ``123:45678``.
"""

from __future__ import annotations

import re
from enum import StrEnum

from rules.credential import CredentialKind

from .reads import CredentialRead, FrameError, FrameErrorReason


class PayloadFormat(StrEnum):
    HEX = "hex"
    DECIMAL = "decimal"
    WIEGAND26 = "wiegand26"
    WIEGAND34 = "wiegand34"
    QR = "qr"
    AUTO = "auto"  # card-looking (hex/decimal only) -> card, anything else -> QR


_SEPARATORS = re.compile(r"[\s:\-]")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_CARD_LOOKING = re.compile(r"[0-9A-Fa-f]{4,32}")
MAX_UID_HEX = 64  # longest identifier we accept (32 bytes); anything longer is garbage


def normalise_uid_bytes(uid: bytes) -> str:
    """UIDs from NFC/OSDP come as bytes; as text they are uppercase hex."""
    return uid.hex().upper()


def decode_hex(text: str) -> CredentialRead | FrameError:
    # Some readers group the UID ("04:A1:B2" or "04 A1 B2"); the grouping means nothing.
    compact = _SEPARATORS.sub("", text)
    if not compact or not _HEX.fullmatch(compact) or len(compact) > MAX_UID_HEX:
        return FrameError(FrameErrorReason.FORMAT, "not a hex UID", text.encode(errors="replace"))
    return CredentialRead(CredentialKind.CARD, compact.upper(), {"format": "hex"})


def decode_decimal(text: str) -> CredentialRead | FrameError:
    compact = text.strip()
    if not compact.isascii() or not compact.isdigit() or len(compact) > 10:
        return FrameError(FrameErrorReason.FORMAT, "not a decimal card number", compact.encode())
    number = int(compact)
    if number > 0xFFFFFFFF:
        return FrameError(FrameErrorReason.FORMAT, "card number above 32 bits", compact.encode())
    return CredentialRead(CredentialKind.CARD, f"{number:010d}", {"format": "decimal"})


def _wiegand_bits(text: str, nbits: int) -> int | None:
    """A converter sends either the raw bit string ("0110...", nbits chars) or the bits
    as one hex number, right-aligned (leading zeros optional, up to whole bytes: 26 bits
    are 7 or 8 hex digits, 34 bits 9 or 10)."""
    compact = text.strip()
    if len(compact) == nbits and set(compact) <= {"0", "1"}:
        return int(compact, 2)
    if compact[:2] in ("0x", "0X"):
        compact = compact[2:]
    if 0 < len(compact) <= 2 * ((nbits + 7) // 8) and _HEX.fullmatch(compact):
        value = int(compact, 16)
        if value >> nbits == 0:
            return value
    return None


def _parity(value: int) -> int:
    return value.bit_count() & 1


def decode_wiegand(text: str, nbits: int) -> CredentialRead | FrameError:
    """Wiegand 26 (H10301) and 34 (H10306): even parity over the first half of the data
    bits in the leading bit, odd parity over the second half in the trailing bit."""
    if nbits not in (26, 34):
        raise ValueError("only 26- and 34-bit Wiegand are supported")
    raw = text.encode(errors="replace")
    bits = _wiegand_bits(text, nbits)
    if bits is None:
        return FrameError(FrameErrorReason.FORMAT, f"not a {nbits}-bit Wiegand frame", raw)
    data_bits = nbits - 2
    half = data_bits // 2
    data = (bits >> 1) & ((1 << data_bits) - 1)
    leading = bits >> (nbits - 1)
    trailing = bits & 1
    first_half = data >> half
    second_half = data & ((1 << half) - 1)
    if (_parity(first_half) ^ leading) != 0:
        return FrameError(FrameErrorReason.PARITY, "even parity (leading bit) wrong", raw)
    if (_parity(second_half) ^ trailing) != 1:
        return FrameError(FrameErrorReason.PARITY, "odd parity (trailing bit) wrong", raw)
    card_bits = 16
    facility = data >> card_bits
    card = data & 0xFFFF
    return CredentialRead(
        CredentialKind.CARD,
        f"{facility}:{card}",
        {"format": f"wiegand{nbits}", "facility_code": str(facility), "card_number": str(card)},
    )


def encode_wiegand(facility: int, card: int, nbits: int) -> int:
    """The inverse of decode_wiegand, for simulators and tests."""
    fc_bits = nbits - 2 - 16
    if not (0 <= facility < (1 << fc_bits) and 0 <= card < (1 << 16)):
        raise ValueError(f"facility/card out of range for {nbits}-bit Wiegand")
    data = (facility << 16) | card
    half = (nbits - 2) // 2
    leading = _parity(data >> half)
    trailing = 1 - _parity(data & ((1 << half) - 1))
    return (leading << (nbits - 1)) | (data << 1) | trailing


def decode_qr(text: str) -> CredentialRead | FrameError:
    stripped = text.strip()
    if not stripped:
        return FrameError(FrameErrorReason.FORMAT, "empty QR text", b"")
    return CredentialRead(CredentialKind.QR, stripped, {"format": "qr"})


def looks_like_card(text: str) -> bool:
    return bool(_CARD_LOOKING.fullmatch(text.strip()))


def decode_auto(text: str) -> CredentialRead | FrameError:
    """For scanners that read both cards and QR codes: a hex/decimal-only line is a card
    (kept as typed, uppercased); anything else is QR text."""
    if looks_like_card(text):
        return CredentialRead(CredentialKind.CARD, text.strip().upper(), {"format": "auto"})
    return decode_qr(text)


def decode_payload(fmt: PayloadFormat, text: str) -> CredentialRead | FrameError:
    match fmt:
        case PayloadFormat.HEX:
            return decode_hex(text)
        case PayloadFormat.DECIMAL:
            return decode_decimal(text)
        case PayloadFormat.WIEGAND26:
            return decode_wiegand(text, 26)
        case PayloadFormat.WIEGAND34:
            return decode_wiegand(text, 34)
        case PayloadFormat.QR:
            return decode_qr(text)
        case PayloadFormat.AUTO:
            return decode_auto(text)
    raise AssertionError(fmt)  # pragma: no cover
