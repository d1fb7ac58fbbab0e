"""Wiegand frames as integers: parity check and layout, both ways (sans-I/O).

A frame of n bits is sent MSB first: a leading even-parity bit, n-2 data bits (facility
code then card number), a trailing odd-parity bit. The leading bit covers the first half
of the data bits, the trailing bit the second half; with an odd number of data bits
(37-bit H10304) the halves share the middle bit. Serial converters and OSDP readers both
pass frames on, so both decode them here.
"""

from __future__ import annotations

from rules.credential import WIEGAND_LAYOUTS, Card, CardFormat


class ParityError(ValueError):
    pass


def _halves(nbits: int) -> tuple[int, int]:
    """(bits covered by the leading parity, by the trailing parity), from the data bits."""
    data = nbits - 2
    half = (data + 1) // 2
    return half, half


def _parity(value: int) -> int:
    return value.bit_count() & 1


def decode_frame(nbits: int, frame: int) -> Card:
    """The card in a frame of a known layout; ParityError / ValueError otherwise."""
    if nbits not in WIEGAND_LAYOUTS:
        raise ValueError(f"no known {nbits}-bit Wiegand layout")
    if not 0 <= frame < 1 << nbits:
        raise ValueError(f"frame wider than {nbits} bits")
    data_bits = nbits - 2
    data = (frame >> 1) & ((1 << data_bits) - 1)
    first, second = _halves(nbits)
    if _parity(data >> (data_bits - first)) != frame >> (nbits - 1):
        raise ParityError("even parity (leading bit) wrong")
    if _parity(data & ((1 << second) - 1)) ^ (frame & 1) != 1:
        raise ParityError("odd parity (trailing bit) wrong")
    _, n_bits = WIEGAND_LAYOUTS[nbits]
    return Card.wiegand(nbits, data >> n_bits, data & ((1 << n_bits) - 1))


def encode_frame(card: Card) -> int:
    """The frame a reader sends for a Wiegand card (simulators, tests)."""
    if card.format is not CardFormat.WIEGAND:
        raise ValueError("not a Wiegand card")
    nbits = card.bits
    _, n_bits = WIEGAND_LAYOUTS[nbits]
    data_bits = nbits - 2
    data = (card.facility << n_bits) | card.value
    first, second = _halves(nbits)
    leading = _parity(data >> (data_bits - first))
    trailing = 1 - _parity(data & ((1 << second) - 1))
    return (leading << (nbits - 1)) | (data << 1) | trailing


def frame_bytes(card: Card) -> bytes:
    """The frame as OSDP raw card data: MSB first, padded with zero bits to whole bytes."""
    nbits = card.bits
    pad = (-nbits) % 8
    return (encode_frame(card) << pad).to_bytes((nbits + pad) // 8, "big")


def from_bytes(data: bytes, nbits: int) -> int:
    """The inverse of frame_bytes: the first `nbits` bits of `data` as an integer."""
    total = 8 * len(data)
    if not 0 < nbits <= total:
        raise ValueError(f"{nbits} bits do not fit in {len(data)} bytes")
    return int.from_bytes(data, "big") >> (total - nbits)


def encode_wiegand(facility: int, number: int, nbits: int) -> int:
    """The frame for facility + number in the nbits layout (simulators, tests)."""
    return encode_frame(Card.wiegand(nbits, facility, number))
