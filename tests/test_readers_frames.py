"""The sans-I/O serial frame parser and payload decoders, including hypothesis fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.readers.frames import (
    Checksum,
    FrameConfig,
    Framing,
    SerialFrameParser,
    Terminator,
    encode_frame,
)
from drivers.readers.payloads import (
    HEX_PAYLOADS,
    ByteOrder,
    PayloadFormat,
    decode_em_decimal,
    decode_hex,
    decode_payload,
    decode_wiegand,
)
from drivers.readers.reads import CredentialRead, FrameError, FrameErrorReason
from drivers.readers.wiegand import encode_wiegand
from rules.credential import Card, CredentialKind

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
        PayloadFormat.UID: "04A1B2C3D4E5F6",
        PayloadFormat.UID_DECIMAL: "3283263748",
        PayloadFormat.EM: "0A00BC614E",
        PayloadFormat.EM_DECIMAL: "0012345678",
        PayloadFormat.DECIMAL: "0012345678",
        PayloadFormat.WIEGAND26: f"{encode_wiegand(12, 3456, 26):08X}",
        PayloadFormat.WIEGAND34: f"{encode_wiegand(1234, 56789, 34):010X}",
        PayloadFormat.WIEGAND37: f"{encode_wiegand(1234, 456789, 37):010X}",
        PayloadFormat.QR: "GATE-TOKEN",
        PayloadFormat.AUTO: "A1B2C3D4",
    }[fmt]


def _kind_value(out: list[CredentialRead | FrameError]) -> list[tuple[str, str]]:
    return [
        (o.kind, o.value) if isinstance(o, CredentialRead) else ("error", o.reason) for o in out
    ]


# --- payloads ------------------------------------------------------------------------


def test_hex_is_uppercased_and_separators_dropped() -> None:
    read = decode_hex("04:a1:b2 c3")
    assert isinstance(read, CredentialRead)
    assert read.value == "04A1B2C3" and read.card == Card.uid(bytes.fromhex("04A1B2C3"))
    assert isinstance(decode_hex("04G1"), FrameError)


def test_decimal_normal_form_is_ten_digits() -> None:
    read = decode_em_decimal("12345678")
    assert isinstance(read, CredentialRead)
    assert read.value == "0012345678" and read.card == Card.em32(12345678)
    assert isinstance(decode_em_decimal("4294967296"), FrameError)  # above 32 bits
    assert isinstance(decode_em_decimal("12a"), FrameError)


def _key(fmt: PayloadFormat, text: str, **kw: ByteOrder) -> str:
    read = decode_payload(fmt, text, **kw)
    assert isinstance(read, CredentialRead) and read.card is not None, (fmt, text, read)
    return read.card.key


# The same digits are different cards on different readers: the format types them.
SAME_DIGITS = [
    (PayloadFormat.HEX, "0012345678", "em:0012345678"),
    (PayloadFormat.EM, "0012345678", "em:0012345678"),
    (PayloadFormat.DECIMAL, "0012345678", "em32:0012345678"),
    (PayloadFormat.EM_DECIMAL, "0012345678", "em32:0012345678"),
    (PayloadFormat.UID_DECIMAL, "0012345678", "uid:00BC614E"),
    (PayloadFormat.UID, "0012345678", "uid:0012345678"),
]


@pytest.mark.parametrize("fmt,text,key", SAME_DIGITS)
def test_same_digits_are_typed_by_the_reader_format(fmt: PayloadFormat, text: str, key: str) -> None:
    assert _key(fmt, text) == key


# One card, many readers: every way of reading it decodes to a card that matches.
ONE_EM_CARD = [
    (PayloadFormat.EM, "0A00BC614E"),  # RDM6300: all 40 bits
    (PayloadFormat.HEX, "0a:00:bc:61:4e"),
    (PayloadFormat.EM_DECIMAL, "12345678"),  # the number printed on the card
    (PayloadFormat.EM, "00BC614E"),  # readers printing the 32-bit number in hex
    (PayloadFormat.WIEGAND34, f"{encode_wiegand(188, 24910, 34):09X}"),
    (PayloadFormat.WIEGAND26, f"{encode_wiegand(188, 24910, 26):026b}"),
    (PayloadFormat.WIEGAND26, "188:24910"),  # converter in formatted mode
]


def test_one_em_card_read_every_way_matches_its_40_bit_id() -> None:
    from rules.credential import cards_match

    enrolled = Card.em(0x0A00BC614E)
    for fmt, text in ONE_EM_CARD:
        read = decode_payload(fmt, text)
        assert isinstance(read, CredentialRead) and read.card is not None
        assert cards_match(read.card, enrolled), (fmt, text, read.card.key)
    other = Card.em(0x0B00BC614E)  # same number, another version byte: another card
    assert not cards_match(Card.em(0x0A00BC614E), other)


def test_uid_byte_order_and_decimal() -> None:
    forward = _key(PayloadFormat.UID, "04A1B2C3")
    assert _key(PayloadFormat.UID, "C3B2A104", order=ByteOrder.REVERSED) == forward
    assert _key(PayloadFormat.UID_DECIMAL, str(0xC3B2A104), order=ByteOrder.REVERSED) == forward
    assert _key(PayloadFormat.UID_DECIMAL, str(0x04A1B2C3D4E5F6)) == "uid:04A1B2C3D4E5F6"


@pytest.mark.parametrize(
    "nbits,facility,card", [(26, 123, 45678), (26, 0, 0), (34, 65535, 1), (37, 65535, 524287)]
)
def test_wiegand_good_parity_gives_facility_and_card(nbits: int, facility: int, card: int) -> None:
    bits = encode_wiegand(facility, card, nbits)
    for text in (f"{bits:0{nbits}b}", f"{bits:X}", f"{bits:0{(nbits + 3) // 4}X}"):
        read = decode_wiegand(text, nbits)
        assert isinstance(read, CredentialRead), text
        assert read.value == f"{facility}:{card}"
        assert read.card == Card.wiegand(nbits, facility, card)
        assert read.meta["facility_code"] == str(facility)


@pytest.mark.parametrize("nbits", [26, 34, 37])
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
    assert isinstance(out[0], CredentialRead) and out[0].card == Card.em(0x62E3086CED)


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


# --- inter-character gap -------------------------------------------------------------


def test_partial_frame_then_silence_is_discarded_not_glued() -> None:
    # Seen on site: "04A1B2", then 5 s later a full frame, became 04A1B204A1B2C3D4.
    parser = SerialFrameParser(FrameConfig(frame_gap=0.1))
    assert parser.feed(b"04A1B2", now=100.0) == []
    assert parser.expires_at == pytest.approx(100.1)
    out = parser.feed(b"04A1B2C3D4\r\n", now=105.0)
    assert _kind_value(out) == [("error", FrameErrorReason.GAP), (CredentialKind.CARD, "04A1B2C3D4")]
    assert isinstance(out[0], FrameError) and out[0].raw == b"04A1B2"


def test_gap_is_reported_by_expire_once_and_blanks_are_not_partial_frames() -> None:
    parser = SerialFrameParser(FrameConfig(framing=Framing.STX_ETX, frame_gap=0.1))
    parser.feed(b"\x0204A1", now=0.0)
    assert parser.expire(0.05) == []  # not stale yet
    assert _kind_value(parser.expire(0.2)) == [("error", FrameErrorReason.GAP)]
    assert parser.expire(5.0) == [] and parser.expires_at is None
    parser.feed(b"\r\n", now=6.0)  # a stray line end after a frame is nothing
    assert parser.expires_at is None


def test_slow_chunks_within_the_gap_make_one_frame() -> None:
    parser = SerialFrameParser(FrameConfig(frame_gap=0.1))
    out: list[CredentialRead | FrameError] = []
    for i, byte in enumerate(b"04A1B2C3D4\r\n"):
        out += parser.feed(bytes([byte]), now=i * 0.09)
    assert _kind_value(out) == [(CredentialKind.CARD, "04A1B2C3D4")]


def test_no_gap_configured_keeps_the_old_behaviour() -> None:
    parser = SerialFrameParser(FrameConfig(frame_gap=None))
    parser.feed(b"04A1", now=0.0)
    assert _kind_value(parser.feed(b"B2\r\n", now=60.0)) == [(CredentialKind.CARD, "04A1B2")]


@settings(max_examples=200, deadline=None)
@given(cfg=config_strategy, data=st.binary(max_size=300), cut_seed=st.data())
def test_chunks_closer_than_the_gap_parse_like_the_whole(
    cfg: FrameConfig, data: bytes, cut_seed: st.DataObject
) -> None:
    whole = SerialFrameParser(cfg).feed(data)
    parser = SerialFrameParser(cfg)
    pieces: list[CredentialRead | FrameError] = []
    t = 0.0
    for chunk in cut_seed.draw(chunked(data)):
        if chunk:  # the gap counts from the last byte received
            t += cut_seed.draw(st.floats(0, 0.099))
        pieces.extend(parser.feed(chunk, now=t))
    assert pieces == whole
