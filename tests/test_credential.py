"""Typed card credentials (rules/credential.py): keys, legacy strings, matching, resolution.

Table tests for the cases seen on site, hypothesis for the laws (a key reads back as the
same card; matching is symmetric; two cards that differ on a bit both readers carry never
match; no text makes the parser raise anything but ValueError).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.readers.osdp_reader import card_from_osdp
from drivers.readers.wiegand import decode_frame, encode_frame, frame_bytes
from rules.credential import (
    WIEGAND_LAYOUTS,
    Card,
    CardFormat,
    Credential,
    card_from_text,
    card_key,
    cards_match,
    index_keys,
    lookup_keys,
    mask,
    parse_key,
    resolve,
)

# -- what the issue reported --------------------------------------------------------------


def test_hex_and_decimal_reads_of_the_same_digits_are_different_cards() -> None:
    hex_read = Card.em(0x0012345678)  # a hex EM reader sent 0012345678
    decimal_card = Card.em32(12345678)  # the member's card printed 0012345678
    assert hex_read.key == "em:0012345678" and decimal_card.key == "em32:0012345678"
    assert not cards_match(hex_read, decimal_card)


def test_one_em_card_on_an_rdm6300_and_a_decimal_reader_matches() -> None:
    assert cards_match(Card.em(0x0A00BC614E), Card.em32(12345678))
    assert cards_match(Card.em32(12345678), Card.em(0x0A00BC614E))


def test_osdp_raw_wiegand_26_equals_the_converter_reading() -> None:
    osdp = card_from_osdp(bytes.fromhex("BDD93740"), 26)
    converter = card_from_text("123:45678")
    assert osdp == converter == Card.wiegand(26, 123, 45678)
    assert osdp.key == "w26:123:45678"


# -- keys ------------------------------------------------------------------------------

KEYS = [
    (Card.uid(bytes.fromhex("04A1B2C3D4E5F6")), "uid:04A1B2C3D4E5F6"),
    (Card.uid(b"\x00\x00\x00\x01"), "uid:00000001"),
    (Card.em(0x0A00BC614E), "em:0A00BC614E"),
    (Card.em32(12345678), "em32:0012345678"),
    (Card.wiegand(26, 123, 45678), "w26:123:45678"),
    (Card.wiegand(34, 65535, 1), "w34:65535:1"),
    (Card.wiegand(37, 1, 524287), "w37:1:524287"),
    (Card.raw(35, 0x1ABCDEF01), "raw:35:1ABCDEF01"),
    (Card.raw(3, 5), "raw:3:5"),
    (Card.of_text(" ana-card "), "text:ANA-CARD"),
]


@pytest.mark.parametrize("card,key", KEYS)
def test_key_and_back(card: Card, key: str) -> None:
    assert card.key == key
    assert parse_key(key) == card
    assert parse_key(key.upper()) == card  # stores upper-cased strings once
    assert card_from_text(key) == card


@pytest.mark.parametrize(
    "bad",
    ["", "uid:", "uid:ABC", "uid:XY", "em:123", "em32:4294967296", "w26:256:1", "w26:1:65536",
     "w30:1:2", "raw:0:0", "raw:3:8", "text:", "nope:12", "em32:-1", "w26:1"],
)
def test_malformed_keys_are_value_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_key(bad)


# -- untyped strings (stored before typed cards; old central systems) ----------------------

LEGACY = [
    # (string, key, why)
    ("04A1B2C3D4E5F6", "uid:04A1B2C3D4E5F6", "7 bytes: a 13.56 MHz UID"),
    ("04a1b2c3", "uid:04A1B2C3", "4 bytes: a UID (case does not matter)"),
    ("04:A1:B2:C3", "uid:04A1B2C3", "grouping means nothing"),
    ("0A00BC614E", "em:0A00BC614E", "10 hex digits: an EM4100 id"),
    ("0012345678", "em32:0012345678", "10 decimal digits: the printed EM4100 number"),
    ("9999999999", "em:9999999999", "10 digits above 32 bits: only hex fits"),
    ("123:45678", "w26:123:45678", "FC:NUMBER with FC < 256: Wiegand 26"),
    ("1234:5678", "w34:1234:5678", "FC above 255: Wiegand 34"),
    ("123,45678", "w26:123:45678", "some converters print a comma"),
    ("CARD-ANA", "text:CARD-ANA", "anything else matches only itself"),
    ("ABC", "text:ABC", "odd hex: not bytes"),
    ("w\u00b2\u00b2:1:2", "text:W\u00b2\u00b2:1:2", "superscript digits are not a Wiegand format"),
]


@pytest.mark.parametrize("text,key,why", LEGACY)
def test_untyped_strings_read_by_their_shape(text: str, key: str, why: str) -> None:
    assert card_key(text) == key, why


def test_a_credential_from_text_keeps_the_old_identifier_text() -> None:
    cred = Credential.card(" 04a1b2c3d4 ")
    assert cred.value == "04A1B2C3D4" and cred.typed == Card.em(0x04A1B2C3D4)
    assert Credential.card("w26:1:2").value == "1:2"


# -- matching ---------------------------------------------------------------------------


def test_projections_of_an_em_card() -> None:
    keys = [p.key for p in Card.em(0x0A00BC614E).projections()]
    assert keys == ["em32:0012345678", "w34:188:24910", "w26:188:24910"]
    assert Card.uid(b"\x04\xa1\xb2\xc3").projections() == ()


MATCHES = [
    (Card.em(0x0A00BC614E), Card.em(0x0A00BC614E), True),
    (Card.em(0x0A00BC614E), Card.em(0x0B00BC614E), False),  # same number, other version
    (Card.em(0x0A00BC614E), Card.wiegand(26, 188, 24910), True),  # Wiegand 26 output
    (Card.em(0x0A00BC614E), Card.wiegand(34, 188, 24910), True),
    (Card.em32(12345678), Card.wiegand(26, 188, 24911), False),
    (Card.wiegand(34, 0x01BC, 24910), Card.wiegand(26, 188, 24910), True),  # low 24 bits
    (Card.wiegand(26, 123, 45678), Card.wiegand(34, 124, 45678), False),
    (Card.wiegand(37, 123, 45678), Card.wiegand(26, 123, 45678), False),  # other layout
    (Card.uid(bytes.fromhex("00BC614E")), Card.em32(12345678), False),  # other technology
    (Card.raw(32, 0x00BC614E), Card.uid(bytes.fromhex("00BC614E")), False),
    (Card.of_text("0012345678"), Card.em32(12345678), False),
]


@pytest.mark.parametrize("a,b,expected", MATCHES)
def test_match_table(a: Card, b: Card, expected: bool) -> None:
    assert cards_match(a, b) is expected
    assert cards_match(b, a) is expected


def _lookup(rows: list[tuple[str, str, str, bool]], read: Card) -> set[tuple[str, str]]:
    """What the store's two indexed queries find: rows are (key, member, card key, own)."""
    key, coarser = lookup_keys(read)
    return {(m, c) for k, m, c, own in rows if k == key or (own and k in coarser)}


def _rows(enrolled: list[tuple[str, Card]]) -> list[tuple[str, str, str, bool]]:
    return [(k, m, card.key, own) for m, card in enrolled for k, own in index_keys(card)]


def test_lookup_finds_every_matching_enrolled_card_and_nothing_else() -> None:
    enrolled = [
        ("ana", Card.em(0x0A00BC614E)),
        ("ben", Card.em32(99)),
        ("cai", Card.wiegand(26, 7, 42)),
        ("dora", Card.uid(bytes.fromhex("04A1B2C3"))),
    ]
    rows = _rows(enrolled)
    reads = [
        Card.em(0x0A00BC614E), Card.em32(12345678), Card.wiegand(26, 188, 24910),
        Card.em(0x0C00000063), Card.wiegand(34, 0, 99), Card.em(0x0000070029),
        Card.uid(bytes.fromhex("04A1B2C3")), Card.em(0x0B00BC614E),
    ]  # fmt: skip
    for read in reads:
        expected = {(m, c.key) for m, c in enrolled if cards_match(read, c)}
        assert _lookup(rows, read) == expected, read.key
    assert resolve(_lookup(rows, Card.em32(12345678))).member == "ana"
    assert resolve(_lookup(rows, Card.em(0x0B00BC614E))).member is None  # another card


def test_a_read_two_members_cards_could_be_is_refused() -> None:
    # Two EM cards that differ only in the version byte: a decimal reader cannot tell them
    # apart, so neither member gets in on its read; the 40-bit reader still can.
    rows = _rows([("ana", Card.em(0x0A00BC614E)), ("ben", Card.em(0x0B00BC614E))])
    decimal_read = resolve(_lookup(rows, Card.em32(12345678)))
    assert decimal_read.member is None and decimal_read.ambiguous
    assert resolve(_lookup(rows, Card.em(0x0B00BC614E))).member == "ben"
    assert not resolve([]).ambiguous and resolve([]).member is None
    assert resolve([("ana", "em:1"), ("ana", "em32:1")]).member == "ana"  # two cards, one member


# -- laws (hypothesis) -------------------------------------------------------------------

wiegand_cards = st.sampled_from(sorted(WIEGAND_LAYOUTS)).flatmap(
    lambda n: st.tuples(
        st.integers(0, (1 << WIEGAND_LAYOUTS[n][0]) - 1),
        st.integers(0, (1 << WIEGAND_LAYOUTS[n][1]) - 1),
    ).map(lambda fc: Card.wiegand(n, *fc))
)
cards = st.one_of(
    st.binary(min_size=1, max_size=10).map(Card.uid),
    st.integers(0, (1 << 40) - 1).map(Card.em),
    st.integers(0, (1 << 32) - 1).map(Card.em32),
    wiegand_cards,
    st.integers(1, 64).flatmap(lambda n: st.integers(0, (1 << n) - 1).map(lambda v: Card.raw(n, v))),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20).map(
        Card.of_text
    ),
)


@settings(max_examples=400, deadline=None)
@given(card=cards)
def test_every_key_reads_back_as_the_same_card(card: Card) -> None:
    assert parse_key(card.key) == card
    assert card_from_text(card.key) == card


@settings(max_examples=400, deadline=None)
@given(a=cards, b=cards)
def test_matching_is_symmetric_and_distinct_cards_of_one_format_never_match(a: Card, b: Card) -> None:
    assert cards_match(a, b) == cards_match(b, a)
    if a.format is b.format and a.bits == b.bits:
        assert cards_match(a, b) == (a == b)
    assert cards_match(a, a)
    assert set(_lookup(_rows([("m", b)]), a)) == ({("m", b.key)} if cards_match(a, b) else set())


@settings(max_examples=400, deadline=None)
@given(text=st.text(max_size=80))
def test_any_text_is_a_card_or_a_value_error(text: str) -> None:
    try:
        card = card_from_text(text)
    except ValueError:
        return
    assert parse_key(card.key) == card
    assert card_from_text(card.legacy).format in CardFormat  # its text form reads again


@settings(max_examples=300, deadline=None)
@given(card=wiegand_cards)
def test_wiegand_frames_round_trip_through_osdp_bytes(card: Card) -> None:
    assert decode_frame(card.bits, encode_frame(card)) == card
    assert card_from_osdp(frame_bytes(card), card.bits) == card


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=1, max_size=16), bits=st.integers(-5, 200))
def test_any_osdp_card_data_is_a_card(data: bytes, bits: int) -> None:
    for mode in ("wiegand", "uid"):
        card = card_from_osdp(data, bits, mode)
        assert parse_key(card.key) == card


def test_a_credential_in_a_log_is_recognisable_not_clonable() -> None:
    assert mask("04A1B2C3") == "****B2C3"
    assert mask("abc") == "***"
    token = "v1.eyJ0b2tlbiI6ImRheS0zLTEiLCJtZW1iZXIiOiJtLTEifQ.c2lnbmF0dXJl"
    assert mask(token) == "v1.eyJ0b…"  # the first 8 characters
