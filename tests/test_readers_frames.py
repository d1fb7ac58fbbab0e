"""The sans-I/O serial frame parser and payload decoders, including hypothesis fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.readers.frames import (
    HEX_PAYLOADS,
    Checksum,
    FrameConfig,
    Framing,
    SerialFrameParser,
    Terminator,
    encode_frame,
)
from drivers.readers.payloads import (
    PayloadFormat,
    decode_decimal,
    decode_hex,
    decode_wiegand,
    encode_wiegand,
)
from drivers.readers.reads import CredentialRead, FrameError, FrameErrorReason
from rules.credential import CredentialKind

ALL_CONFIGS = [
    FrameConfig(framing=framing, terminator=term, checksum=cs, format=fmt, max_frame_length=m)
    for framing in Framing
    for term in (Terminator if framing is Framing.LINE else [Terminator.CRLF])
    for cs in Checksum
    for fmt in PayloadFormat
    for m in (16, 64)
    if cs is not Checksum.XOR_HEX or fmt in HEX_PAYLOADS
]


def _sample_payload(fmt: PayloadFormat) -> str:
    return {
        PayloadFormat.HEX: "04A1B2C3D4",
        PayloadFormat.DECIMAL: "0012345678",
        PayloadFormat.WIEGAND26: f"{encode_wiegand(12, 3456, 26):08X}",
        PayloadFormat.WIEGAND34: f"{encode_wiegand(1234, 56789, 34):010X}",
        PayloadFormat.QR: "GATE-TOKEN",
        PayloadFormat.AUTO: "A1B2C3D4",
    }[fmt]


def _kind_value(out: list[CredentialRead | FrameError]) -> list[tuple[str, str]]:
    return [
        (o.kind, o.value) if isinstance(o, CredentialRead) else ("error", o.reason) for o in out
    ]


# --- payloads ------------------------------------------------------------------------


def test_hex_is_uppercased_and_separators_dropped() -> None:
    assert decode_hex("04:a1:b2 c3") == CredentialRead(CredentialKind.CARD, "04A1B2C3")
    assert isinstance(decode_hex("04G1"), FrameError)


def test_decimal_normal_form_is_ten_digits() -> None:
    read = decode_decimal("12345678")
    assert isinstance(read, CredentialRead)
    assert read.value == "0012345678"
    assert isinstance(decode_decimal("4294967296"), FrameError)  # above 32 bits
    assert isinstance(decode_decimal("12a"), FrameError)


@pytest.mark.parametrize("nbits,facility,card", [(26, 123, 45678), (26, 0, 0), (34, 65535, 1)])
def test_wiegand_good_parity_gives_facility_and_card(nbits: int, facility: int, card: int) -> None:
    bits = encode_wiegand(facility, card, nbits)
    for text in (f"{bits:0{nbits}b}", f"{bits:X}", f"{bits:0{(nbits + 3) // 4}X}"):
        read = decode_wiegand(text, nbits)
        assert isinstance(read, CredentialRead), text
        assert read.value == f"{facility}:{card}"
        assert read.meta["facility_code"] == str(facility)


@pytest.mark.parametrize("nbits", [26, 34])
def test_wiegand_bad_leading_or_trailing_parity_is_rejected(nbits: int) -> None:
    bits = encode_wiegand(7, 4242, nbits)
    for flipped in (bits ^ 1, bits ^ (1 << (nbits - 1))):
        err = decode_wiegand(f"{flipped:0{nbits}b}", nbits)
        assert isinstance(err, FrameError)
        assert err.reason is FrameErrorReason.PARITY
    # A flipped data bit breaks the parity of its half.
    for data_bit in (2, nbits - 3):
        err = decode_wiegand(f"{bits ^ (1 << data_bit):0{nbits}b}", nbits)
        assert isinstance(err, FrameError) and err.reason is FrameErrorReason.PARITY


def test_wiegand_wrong_length_is_a_format_error() -> None:
    assert isinstance(decode_wiegand("1" * 27, 26), FrameError)
    assert isinstance(decode_wiegand("FFFFFFFF", 26), FrameError)  # 32 bits > 26
    assert isinstance(decode_wiegand("0" * 9, 26), FrameError)  # more than 4 bytes of hex


def test_xor_hex_checksum_needs_a_hex_payload() -> None:
    with pytest.raises(ValueError):
        FrameConfig(checksum=Checksum.XOR_HEX, format=PayloadFormat.QR)


# --- framing -------------------------------------------------------------------------


def test_em4100_stx_etx_with_xor_hex_checksum() -> None:
    # RDM6300-style frame: STX, 10 hex data digits, 2 hex checksum digits, ETX.
    cfg = FrameConfig(framing=Framing.STX_ETX, checksum=Checksum.XOR_HEX)
    frame = encode_frame(cfg, "62E3086CED")
    assert frame == b"\x0262E3086CED08\x03"
    out = SerialFrameParser(cfg).feed(b"\r\n" + frame + b"\r\n")
    assert _kind_value(out) == [(CredentialKind.CARD, "62E3086CED")]


def test_bad_checksum_is_counted_not_raised() -> None:
    cfg = FrameConfig(framing=Framing.STX_ETX, checksum=Checksum.XOR_HEX)
    out = SerialFrameParser(cfg).feed(b"\x0262E3086CED09\x03")
    assert _kind_value(out) == [("error", FrameErrorReason.CHECKSUM)]


def test_xor_ascii_checksum_line() -> None:
    cfg = FrameConfig(checksum=Checksum.XOR, format=PayloadFormat.QR)
    parser = SerialFrameParser(cfg)
    assert _kind_value(parser.feed(encode_frame(cfg, "HELLO"))) == [(CredentialKind.QR, "HELLO")]
    assert _kind_value(parser.feed(b"HELLO00\r\n")) == [("error", FrameErrorReason.CHECKSUM)]


def test_truncated_stx_frame_then_good_frame() -> None:
    cfg = FrameConfig(framing=Framing.STX_ETX)
    out = SerialFrameParser(cfg).feed(b"\x0204A1\x0204A1B2\x03")
    assert _kind_value(out) == [
        ("error", FrameErrorReason.TRUNCATED),
        (CredentialKind.CARD, "04A1B2"),
    ]


def test_noise_outside_frames_is_reported() -> None:
    cfg = FrameConfig(framing=Framing.STX_ETX)
    out = SerialFrameParser(cfg).feed(b"junk\x0204A1\x03")
    assert _kind_value(out) == [("error", FrameErrorReason.NOISE), (CredentialKind.CARD, "04A1")]


def test_overlong_line_dropped_once_and_parser_recovers() -> None:
    cfg = FrameConfig(max_frame_length=16)
    parser = SerialFrameParser(cfg)
    out = parser.feed(b"A" * 100)
    assert _kind_value(out) == [("error", FrameErrorReason.OVERLONG)]
    assert parser.buffered < 16
    out = parser.feed(b"B" * 50 + b"\r\n04A1\r\n")
    assert _kind_value(out) == [(CredentialKind.CARD, "04A1")]


def test_blank_lines_are_ignored_and_crlf_reader_on_cr_config_works() -> None:
    cfg = FrameConfig(terminator=Terminator.CR)
    out = SerialFrameParser(cfg).feed(b"04A1\r\n04B2\r\n\r\n")
    assert _kind_value(out) == [(CredentialKind.CARD, "04A1"), (CredentialKind.CARD, "04B2")]


def test_invalid_utf8_is_an_encoding_error() -> None:
    out = SerialFrameParser(FrameConfig(format=PayloadFormat.QR)).feed(b"\xff\xfe\r\n")
    assert _kind_value(out) == [("error", FrameErrorReason.ENCODING)]


# --- properties ----------------------------------------------------------------------

config_strategy = st.sampled_from(ALL_CONFIGS)


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(cfg=config_strategy, data=st.binary(max_size=600), cut_seed=st.data())
def test_any_bytes_any_chunking_never_raise_and_buffer_is_bounded(
    cfg: FrameConfig, data: bytes, cut_seed: st.DataObject
) -> None:
    whole = SerialFrameParser(cfg).feed(data)
    parser = SerialFrameParser(cfg)
    pieces: list[CredentialRead | FrameError] = []
    for chunk in cut_seed.draw(chunked(data)):
        pieces.extend(parser.feed(chunk))
        assert parser.buffered <= cfg.max_frame_length
    # Byte-wise parsing: chunking can never change the outcome, garbage included.
    assert pieces == whole


noisy_bytes = st.sampled_from([b"\x02", b"\x03", b"\r", b"\n", b"\r\n", b"x", b"", b"0"])


@settings(max_examples=300, deadline=None)
@given(cfg=config_strategy, data=st.data())
def test_valid_frame_split_anywhere_parses_like_whole(
    cfg: FrameConfig, data: st.DataObject
) -> None:
    payload = _sample_payload(cfg.format)
    frame = encode_frame(cfg, payload)
    expected = SerialFrameParser(cfg).feed(frame)
    if len(frame) <= cfg.max_frame_length:
        assert len(expected) == 1 and isinstance(expected[0], CredentialRead)
    else:
        assert _kind_value(expected) == [("error", FrameErrorReason.OVERLONG)]
    cut = data.draw(st.integers(0, len(frame)))
    parser = SerialFrameParser(cfg)
    assert parser.feed(frame[:cut]) + parser.feed(frame[cut:]) == expected
    # After arbitrary garbage and a resync point, a valid frame still parses.
    garbage = data.draw(st.binary(max_size=200))
    resync = b"\x03" if cfg.framing is Framing.STX_ETX else cfg.terminator.bytes
    parser = SerialFrameParser(cfg)
    parser.feed(garbage + resync)
    assert parser.feed(frame)[-1:] == expected
