"""Turning a reader's payload text into a typed card (sans-I/O).

The reader's `format` says what its digits are (docs/hardware.md, "Card identity"); the
result is a rules.credential.Card, whose key is what members' cards are stored under:
- `uid` / `uid-decimal`: a 13.56 MHz UID (Mifare, NTAG, DESFire, FeliCa IDm) in hex or as
  one decimal number, bytes in card order unless `byte_order: reversed`;
- `em` (10 hex digits: EM4100 40-bit id; 8: its 32-bit number) / `em-decimal` (the 32-bit
  number, the digits printed on the card);
- `wiegand26/34/37`: a converter's frame (bit string or hex of the bits, parity checked),
  or its `FC:NUMBER` text;
- `hex` / `decimal`: the formats of earlier versions (hex: 10 digits are an EM4100 id,
  any other even count a UID; decimal: em-decimal);
- `qr`, and `auto` (card-looking lines are cards in `card_format`, anything else QR).
"""

from __future__ import annotations

import re
from enum import StrEnum

from rules.credential import MAX_UID_BYTES, Card, CredentialKind

from .reads import CredentialRead, FrameError, FrameErrorReason
from .wiegand import ParityError, decode_frame


class PayloadFormat(StrEnum):
    UID = "uid"
    UID_DECIMAL = "uid-decimal"
    EM = "em"
    EM_DECIMAL = "em-decimal"
    WIEGAND26 = "wiegand26"
    WIEGAND34 = "wiegand34"
    WIEGAND37 = "wiegand37"
    HEX = "hex"
    DECIMAL = "decimal"
    QR = "qr"
    AUTO = "auto"  # card-looking (hex/decimal only) -> card in card_format, anything else QR


class ByteOrder(StrEnum):
    FORWARD = "forward"  # as the card sends them (ISO 14443, what NFC readers report)
    REVERSED = "reversed"  # least significant byte first, as some wedge readers print


CARD_FORMATS = frozenset(PayloadFormat) - {PayloadFormat.QR, PayloadFormat.AUTO}
# Payloads made of hex pairs, the only ones an xor-hex checksum makes sense for.
HEX_PAYLOADS = frozenset(
    {
        PayloadFormat.HEX,
        PayloadFormat.UID,
        PayloadFormat.EM,
        PayloadFormat.WIEGAND26,
        PayloadFormat.WIEGAND34,
        PayloadFormat.WIEGAND37,
    }
)
WIEGAND_BITS = {PayloadFormat.WIEGAND26: 26, PayloadFormat.WIEGAND34: 34, PayloadFormat.WIEGAND37: 37}

_SEPARATORS = re.compile(r"[\s:\-]")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_CARD_LOOKING = re.compile(r"[0-9A-Fa-f]{4,32}")
_FC_NUMBER = re.compile(r"([0-9]{1,5})\s*[:,/]\s*([0-9]{1,7})")


def _bad(detail: str, text: str) -> FrameError:
    return FrameError(FrameErrorReason.FORMAT, detail, text.encode(errors="replace")[:64])


def _card(card: Card, fmt: str) -> CredentialRead:
    return CredentialRead(CredentialKind.CARD, card.legacy, {"format": fmt}, card)


def _hex_compact(text: str) -> str | None:
    # Some readers group the UID ("04:A1:B2" or "04 A1 B2"); the grouping means nothing.
    compact = _SEPARATORS.sub("", text).upper()
    if not compact or not _HEX.fullmatch(compact) or len(compact) > 2 * MAX_UID_BYTES:
        return None
    return compact


def _ordered(data: bytes, order: ByteOrder) -> bytes:
    return data[::-1] if order is ByteOrder.REVERSED else data


def decode_uid(text: str, order: ByteOrder = ByteOrder.FORWARD) -> CredentialRead | FrameError:
    compact = _hex_compact(text)
    if compact is None or len(compact) % 2:
        return _bad("not a hex UID (an even number of hex digits)", text)
    return _card(Card.uid(_ordered(bytes.fromhex(compact), order)), "uid")


def decode_uid_decimal(text: str, order: ByteOrder = ByteOrder.FORWARD) -> CredentialRead | FrameError:
    compact = text.strip()
    if not compact.isascii() or not compact.isdigit() or len(compact) > 25:
        return _bad("not a decimal UID", text)
    number = int(compact)
    # ISO 14443 UIDs are 4, 7 or 10 bytes: the shortest that holds the number.
    size = next((n for n in (4, 7, 10) if number < 1 << (8 * n)), None)
    if size is None:
        return _bad("decimal UID longer than 10 bytes", text)
    return _card(Card.uid(_ordered(number.to_bytes(size, "big"), order)), "uid-decimal")


def decode_em(text: str) -> CredentialRead | FrameError:
    compact = _hex_compact(text)
    if compact is None or len(compact) not in (8, 10):
        return _bad("not an EM4100 id (10 hex digits, or 8 for the number alone)", text)
    value = int(compact, 16)
    return _card(Card.em(value) if len(compact) == 10 else Card.em32(value), "em")


def decode_em_decimal(text: str) -> CredentialRead | FrameError:
    compact = text.strip()
    if not compact.isascii() or not compact.isdigit() or len(compact) > 10:
        return _bad("not a decimal card number", text)
    number = int(compact)
    if number > 0xFFFFFFFF:
        return _bad("card number above 32 bits", text)
    return _card(Card.em32(number), "em-decimal")


def decode_hex(text: str, order: ByteOrder = ByteOrder.FORWARD) -> CredentialRead | FrameError:
    """Earlier versions' `hex`: 5 bytes can only be an EM4100 id (ISO UIDs are 4, 7 or 10
    bytes, FeliCa 8), other whole bytes are a UID, an odd digit count an opaque id."""
    compact = _hex_compact(text)
    if compact is None:
        return _bad("not a hex UID", text)
    if len(compact) == 10:
        return _card(Card.em(int(compact, 16)), "hex")
    if len(compact) % 2:  # not bytes: an identifier that matches only itself, as before
        return _card(Card.of_text(compact), "hex")
    return _card(Card.uid(_ordered(bytes.fromhex(compact), order)), "hex")


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


def decode_wiegand(text: str, nbits: int) -> CredentialRead | FrameError:
    raw = text.encode(errors="replace")[:64]
    fmt = f"wiegand{nbits}"
    m = _FC_NUMBER.fullmatch(text.strip())
    if m is not None:  # converters in "formatted" mode print FC:NUMBER (no parity to check)
        try:
            return _card(Card.wiegand(nbits, int(m[1]), int(m[2])), fmt)
        except ValueError as exc:
            return FrameError(FrameErrorReason.FORMAT, str(exc), raw)
    frame = _wiegand_bits(text, nbits)
    if frame is None:
        return FrameError(FrameErrorReason.FORMAT, f"not a {nbits}-bit Wiegand frame", raw)
    try:
        card = decode_frame(nbits, frame)
    except ParityError as exc:
        return FrameError(FrameErrorReason.PARITY, str(exc), raw)
    return CredentialRead(
        CredentialKind.CARD,
        card.legacy,
        {"format": fmt, "facility_code": str(card.facility), "card_number": str(card.value)},
        card,
    )


def decode_qr(text: str) -> CredentialRead | FrameError:
    stripped = text.strip()
    if not stripped:
        return FrameError(FrameErrorReason.FORMAT, "empty QR text", b"")
    return CredentialRead(CredentialKind.QR, stripped, {"format": "qr"})


def looks_like_card(text: str) -> bool:
    return bool(_CARD_LOOKING.fullmatch(text.strip()))


def decode_auto(
    text: str, card_format: PayloadFormat = PayloadFormat.HEX, order: ByteOrder = ByteOrder.FORWARD
) -> CredentialRead | FrameError:
    """For scanners that read both cards and QR codes: a line of hex/decimal characters
    only that decodes as `card_format` is a card; anything else is QR text."""
    if looks_like_card(text) and card_format in CARD_FORMATS:
        read = decode_payload(card_format, text, order=order)
        if not isinstance(read, FrameError):
            return read
    return decode_qr(text)


def decode_payload(
    fmt: PayloadFormat,
    text: str,
    *,
    order: ByteOrder = ByteOrder.FORWARD,
    card_format: PayloadFormat = PayloadFormat.HEX,
) -> CredentialRead | FrameError:
    match fmt:
        case PayloadFormat.UID:
            return decode_uid(text, order)
        case PayloadFormat.UID_DECIMAL:
            return decode_uid_decimal(text, order)
        case PayloadFormat.EM:
            return decode_em(text)
        case PayloadFormat.EM_DECIMAL | PayloadFormat.DECIMAL:
            return decode_em_decimal(text)
        case PayloadFormat.HEX:
            return decode_hex(text, order)
        case PayloadFormat.WIEGAND26 | PayloadFormat.WIEGAND34 | PayloadFormat.WIEGAND37:
            return decode_wiegand(text, WIEGAND_BITS[fmt])
        case PayloadFormat.QR:
            return decode_qr(text)
        case PayloadFormat.AUTO:
            return decode_auto(text, card_format, order)
    raise AssertionError(fmt)  # pragma: no cover
