"""What a reader produces: a credential presented at a gate, and a card's typed identity.

Readers (drivers/) turn bytes into these; what a credential *means* is decided by
rules.decide. A card is typed — technology and format, then its value — because the same
digits mean different cards on different readers (`0012345678` is EM4100 number
12,345,678 on a decimal reader and the 40-bit id 0x0012345678 on a hex one), and one card
reads differently on different readers (an EM4100 card is `0A00BC614E` on an RDM6300,
`0012345678` on a decimal reader, `188:24910` through a Wiegand 26 converter).

Every card has one canonical **key** (`em:0A00BC614E`, `em32:0012345678`, `w26:188:24910`,
`uid:04A1B2C3`, `raw:35:...`, `text:...`): the form stored, sent on the wire and shown.
A reader that reads fewer bits of a card than another sees a **projection** of it (the
decimal reader sees the 32-bit number of a 40-bit EM id; a Wiegand 26 output sees its low
24 bits). Two cards match when they agree on every bit both know: equal, or one is a
projection of the other (`cards_match`). Different cards never match unless a reader
cannot tell them apart (then the look-up refuses the read as ambiguous: `resolve`).

Pure: no I/O, no clock; every function here is total over its documented inputs and
raises ValueError (never anything else) on bad text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class CredentialKind(StrEnum):
    CARD = "card"
    QR = "qr"
    DESK = "desk"  # the front desk checked the member in by name (no card read)


class CardFormat(StrEnum):
    # ISO 14443 A/B, ISO 15693, FeliCa: the identifier's bytes in the order the card sends
    # them (Mifare 4/7/10 bytes, FeliCa IDm 8 bytes).
    UID = "uid"
    # EM4100/EM4102 (125 kHz): 40 bits, an 8-bit version/customer byte then a 32-bit number.
    EM = "em"
    # The 32-bit number of an EM4100 card alone (decimal readers; the number printed on it).
    EM32 = "em32"
    # Facility code + card number in a Wiegand layout (26, 34 or 37 bits on the wire).
    WIEGAND = "wiegand"
    # Bits in no layout we know (an OSDP reader's raw data of another length): count + value.
    RAW = "raw"
    # An identifier we cannot interpret (legacy strings, scenario files): matches only itself.
    TEXT = "text"


# Wiegand layouts we know: frame length -> (facility bits, number bits). Both parity bits
# are outside these. 26: HID H10301; 34: HID H10306; 37: HID H10304.
WIEGAND_LAYOUTS: dict[int, tuple[int, int]] = {26: (8, 16), 34: (16, 16), 37: (16, 19)}

MAX_UID_BYTES = 32  # longest identifier accepted (ISO UIDs are 4-10 bytes, FeliCa 8)
MAX_RAW_BITS = 256
MAX_TEXT = 200

_HEX = re.compile(r"[0-9A-F]+")
_DEC = re.compile(r"[0-9]+")
_GROUPED_HEX = re.compile(r"[0-9A-F]{2}(?:[:\- ][0-9A-F]{2})+")
_FACILITY_NUMBER = re.compile(r"([0-9]{1,5})[:,]([0-9]{1,7})")


@dataclass(frozen=True, slots=True)
class Card:
    """A card's identity as one reader read it. Build with the class methods (they check
    ranges); compare with `cards_match`, store and send `key`."""

    format: CardFormat
    value: int = 0  # uid bytes / em id / em32 number / wiegand card number / raw bits
    bits: int = 0  # uid: 8 x bytes; em: 40; em32: 32; wiegand: frame length; raw: bit count
    facility: int = 0  # wiegand only
    text: str = ""  # text only

    # -- construction -----------------------------------------------------------------

    @classmethod
    def uid(cls, data: bytes) -> Card:
        if not 1 <= len(data) <= MAX_UID_BYTES:
            raise ValueError(f"a UID has 1 to {MAX_UID_BYTES} bytes, not {len(data)}")
        return cls(CardFormat.UID, int.from_bytes(data, "big"), 8 * len(data))

    @classmethod
    def em(cls, value: int) -> Card:
        if not 0 <= value < 1 << 40:
            raise ValueError("an EM4100 id has 40 bits")
        return cls(CardFormat.EM, value, 40)

    @classmethod
    def em32(cls, number: int) -> Card:
        if not 0 <= number < 1 << 32:
            raise ValueError("an EM4100 card number has 32 bits (at most 4294967295)")
        return cls(CardFormat.EM32, number, 32)

    @classmethod
    def wiegand(cls, bits: int, facility: int, number: int) -> Card:
        layout = WIEGAND_LAYOUTS.get(bits)
        if layout is None:
            raise ValueError(f"no known {bits}-bit Wiegand layout (known: 26, 34, 37)")
        fc_bits, n_bits = layout
        if not 0 <= facility < 1 << fc_bits:
            raise ValueError(f"a {bits}-bit Wiegand facility code is 0..{(1 << fc_bits) - 1}")
        if not 0 <= number < 1 << n_bits:
            raise ValueError(f"a {bits}-bit Wiegand card number is 0..{(1 << n_bits) - 1}")
        return cls(CardFormat.WIEGAND, number, bits, facility)

    @classmethod
    def raw(cls, bits: int, value: int) -> Card:
        if not 1 <= bits <= MAX_RAW_BITS:
            raise ValueError(f"raw card data has 1 to {MAX_RAW_BITS} bits")
        if not 0 <= value < 1 << bits:
            raise ValueError(f"value does not fit in {bits} bits")
        return cls(CardFormat.RAW, value, bits)

    @classmethod
    def of_text(cls, text: str, *, exact: bool = False) -> Card:
        # Case-insensitive always. Blanks around a reader's untyped string are the line's,
        # not the card's (a wedge's padding); `exact` keeps them: a typed `text:` key and a
        # scenario's card are "any string", and " C1" is not "C1".
        norm = (text if exact else text.strip()).upper()
        if not norm or len(norm) > MAX_TEXT or not norm.isprintable():
            raise ValueError(f"a card identifier is 1 to {MAX_TEXT} printable characters")
        return cls(CardFormat.TEXT, text=norm)

    # -- forms ------------------------------------------------------------------------

    @property
    def uid_bytes(self) -> bytes:
        return self.value.to_bytes(self.bits // 8, "big")

    @property
    def key(self) -> str:
        """The canonical form: stored, sent to and from the central system, shown — the
        untyped form (`legacy`) behind its type: `uid:`, `em:`, `em32:`, `w26:`, `raw:35:`,
        `text:`."""
        match self.format:
            case CardFormat.WIEGAND:
                prefix = f"w{self.bits}"
            case CardFormat.RAW:
                prefix = f"raw:{self.bits}"
            case _:
                prefix = self.format.value
        return f"{prefix}:{self.legacy}"

    @property
    def legacy(self) -> str:
        """The untyped string gated used before typed cards (what readers sent as is)."""
        match self.format:
            case CardFormat.UID:
                return self.uid_bytes.hex().upper()
            case CardFormat.EM:
                return f"{self.value:010X}"
            case CardFormat.EM32:
                return f"{self.value:010d}"
            case CardFormat.WIEGAND:
                return f"{self.facility}:{self.value}"
            case CardFormat.RAW:
                return f"{self.value:0{(self.bits + 3) // 4}X}"
            case CardFormat.TEXT:
                return self.text
        raise AssertionError(self.format)  # pragma: no cover

    def __str__(self) -> str:
        return self.key

    def projections(self) -> tuple[Card, ...]:
        """What readers that read less of this card see (never the card itself).

        EM4100 readers differ only in how many of the card's low bits they pass on: all
        40 (hex modules), the 32-bit number (decimal readers, Wiegand 34 output), the low
        24 bits (Wiegand 26 output: facility = bits 16-23, number = bits 0-15).
        """
        match self.format:
            case CardFormat.EM:
                number = Card.em32(self.value & 0xFFFFFFFF)
                return (number, *number.projections())
            case CardFormat.EM32:
                n = self.value
                return (Card.wiegand(34, n >> 16, n & 0xFFFF), Card.wiegand(26, (n >> 16) & 0xFF, n & 0xFFFF))
            case CardFormat.WIEGAND if self.bits == 34:
                return (Card.wiegand(26, self.facility & 0xFF, self.value),)
        return ()


def cards_match(a: Card, b: Card) -> bool:
    """True when two reads can be the same physical card: they agree on every bit both
    readers know. Symmetric; equal cards match; two cards that differ on a bit both
    carry never do."""
    return a == b or a in b.projections() or b in a.projections()


# -- text ------------------------------------------------------------------------------

_PREFIXES = ("uid", "em", "em32", "raw", "text")


def parse_key(key: str) -> Card:
    """The inverse of Card.key (prefix case-insensitive). ValueError on anything else."""
    prefix, sep, rest = key.partition(":")
    p = prefix.strip().lower()
    if not sep:
        raise ValueError("a card key is FORMAT:VALUE (uid:, em:, em32:, w26:, raw:, text:)")
    if p == "text":
        return Card.of_text(rest, exact=True)  # the text is the card, to its last blank
    rest = rest.strip()
    body = rest.strip().upper()
    # the bytes as readers and card printers group them: 04:A1:B2, 04-A1-B2, 04 A1 B2
    if p in ("uid", "em") and _GROUPED_HEX.fullmatch(body):
        body = body.replace(":", "").replace("-", "").replace(" ", "")
    if p == "uid":
        if not body or len(body) % 2 or not _HEX.fullmatch(body):
            raise ValueError("uid: takes the UID's bytes in hex, e.g. uid:04A1B2C3 or uid:04:A1:B2:C3")
        return Card.uid(bytes.fromhex(body))
    if p == "em":
        if len(body) != 10 or not _HEX.fullmatch(body):
            raise ValueError("em: takes 10 hex digits (40 bits)")
        return Card.em(int(body, 16))
    if p == "em32":
        if not 1 <= len(body) <= 10 or not _DEC.fullmatch(body):
            raise ValueError("em32: takes the card number, up to 10 decimal digits")
        return Card.em32(int(body))
    if p == "raw":
        count, sep2, digits = body.partition(":")
        if not sep2 or not _DEC.fullmatch(count) or len(count) > 3 or not _HEX.fullmatch(digits):
            raise ValueError("raw: takes BITS:HEX")
        return Card.raw(int(count), int(digits, 16))
    if p.startswith("w") and _DEC.fullmatch(p[1:]) and len(p) <= 4:
        m = _FACILITY_NUMBER.fullmatch(body)
        if m is None:
            raise ValueError("wNN: takes FACILITY:NUMBER in decimal")
        return Card.wiegand(int(p[1:]), int(m[1]), int(m[2]))
    raise ValueError(f"unknown card format {prefix!r} (uid, em, em32, w26, w34, w37, raw, text)")


def _is_typed(text: str) -> bool:
    prefix, sep, _ = text.strip().partition(":")
    p = prefix.lower()
    return bool(sep) and (p in _PREFIXES or (p[:1] == "w" and len(p) in (3, 4) and _DEC.fullmatch(p[1:]) is not None))


class TenDigits(StrEnum):
    """What an untyped string of 10 decimal digits is: both kinds of EM4100 reader send 10
    digits, and about 1 EM card in 100 has a hex id without a letter in it."""

    EM32 = "em32"  # the card number from a decimal reader (or printed on the card)
    EM = "em"  # the 40-bit id from a hex reader


def card_from_text(text: str, ten_digits: TenDigits = TenDigits.EM32) -> Card:
    """A card from text: a typed key, or an untyped string as gated stored them before.

    Untyped strings are read by their shape (docs/hardware.md, "Card identity"):
    - `FC:NUMBER` / `FC,NUMBER` in decimal: Wiegand 26 when FC ≤ 255, else Wiegand 34;
    - 10 decimal digits up to 4294967295: `ten_digits` says (the site's readers decide:
      gated.config.Config.ten_digits), by default the EM4100 32-bit number;
    - 10 hex digits otherwise: the EM4100 40-bit id (hex readers);
    - an even number of hex digits (grouping by `:`, `-` or blanks allowed): a UID;
    - anything else: an opaque identifier that matches only itself, case-insensitively.
    ValueError only for a typed key that is malformed, or empty/overlong text.
    """
    if _is_typed(text):
        return parse_key(text)
    norm = text.strip().upper()
    m = _FACILITY_NUMBER.fullmatch(norm)
    if m is not None:
        facility, number = int(m[1]), int(m[2])
        if number <= 0xFFFF and facility <= 0xFFFF:
            return Card.wiegand(26 if facility <= 0xFF else 34, facility, number)
    compact = norm.replace(":", "").replace("-", "").replace(" ", "") if _GROUPED_HEX.fullmatch(norm) else norm
    if (
        ten_digits is TenDigits.EM32
        and len(compact) == 10
        and _DEC.fullmatch(compact)
        and int(compact) <= 0xFFFFFFFF
    ):
        return Card.em32(int(compact))
    if len(compact) == 10 and _HEX.fullmatch(compact):
        return Card.em(int(compact, 16))
    if compact and len(compact) % 2 == 0 and len(compact) <= 2 * MAX_UID_BYTES and _HEX.fullmatch(compact):
        return Card.uid(bytes.fromhex(compact))
    return Card.of_text(text)


def mask(text: str) -> str:
    """Card numbers and tokens where they could leak (logs): enough to recognise, not
    enough to clone. In rules, not the daemon's logging: the readers' warnings use it, and
    the sim day's harness finds its own tap's answer in a daemon's log by this form."""
    if len(text) <= 4:
        return "*" * len(text)
    if len(text) > 24:  # a QR token: its head says which key, nothing more
        return text[:8] + "…"
    return "*" * (len(text) - 4) + text[-4:]


def mask_key(key: str) -> str:
    """A typed key masked after its prefix (`em:******C3D4`); anything else as `mask`."""
    prefix, sep, rest = key.partition(":")
    if sep and _is_typed(key):
        return f"{prefix}:{mask(rest)}"
    return mask(key)


def mask_bytes(raw: bytes) -> str:
    """What a reader sent, for a log line: its length and its last characters."""
    text = raw.decode("latin-1")
    shown = "".join(c if c.isprintable() else "." for c in text)
    return f"{len(raw)} bytes {mask(shown)!r}"


def card_key(text: str, ten_digits: TenDigits = TenDigits.EM32) -> str:
    """The canonical key a card string is stored under (console enrolment, the central
    system's member records, migration of stored strings). ValueError if it is no card.
    A store reads untyped strings with its site's rule: prefer Store.card_key."""
    return card_from_text(text, ten_digits).key


# -- look-up ---------------------------------------------------------------------------


def index_keys(card: Card) -> list[tuple[str, bool]]:
    """The keys an enrolled card is stored under: (key, own). Its own key, and the keys of
    what less-informed readers see of it, so those reads find it too."""
    return [(card.key, True), *((p.key, False) for p in card.projections())]


def lookup_keys(card: Card) -> tuple[str, tuple[str, ...]]:
    """How a read is looked up in rows stored by `index_keys`: (key, coarser keys).

    A row matches when its key equals `key` (the enrolled card is this read, or knows more
    and agrees), or when it is an *own* row whose key is one of the coarser keys (the
    enrolled card knows less, and agrees on what it knows). This is `cards_match` as two
    indexed queries.
    """
    return card.key, tuple(p.key for p in card.projections())


@dataclass(frozen=True, slots=True)
class Resolution:
    """Which member a read belongs to: one member, nobody, or several (ambiguous: the
    reader cannot tell their cards apart, so nobody is let in on it)."""

    member: str | None
    candidates: tuple[tuple[str, str], ...] = ()  # (member, enrolled card key) that matched

    @property
    def ambiguous(self) -> bool:
        return self.member is None and len({m for m, _ in self.candidates}) > 1


def resolve(candidates: Iterable[tuple[str, str]]) -> Resolution:
    """From the (member, card key) rows that matched a read, the member it belongs to."""
    found = tuple(sorted(set(candidates)))
    members = {m for m, _ in found}
    if len(members) == 1:
        return Resolution(next(iter(members)), found)
    return Resolution(None, found)


# -- the credential --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """A read: a typed card, or the text of a QR code.

    `value` for a card is its identifier as text (see Credential.card); `typed` is the
    card itself. For a QR code `value` is the token text, verified by the shell before
    deciding.
    """

    kind: CredentialKind
    value: str
    reader_id: str = ""
    at: datetime | None = None
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    typed: Card | None = None

    @classmethod
    def card(
        cls,
        value: str | Card,
        reader_id: str = "",
        at: datetime | None = None,
        ten_digits: TenDigits = TenDigits.EM32,
    ) -> Credential:
        """A card read; text is read with card_from_text (typed keys or untyped strings)."""
        typed = value if isinstance(value, Card) else card_from_text(value, ten_digits)
        return cls(CredentialKind.CARD, typed.legacy, reader_id, at, typed=typed)

    @classmethod
    def qr(cls, text: str, reader_id: str = "", at: datetime | None = None) -> Credential:
        return cls(CredentialKind.QR, text.strip(), reader_id, at)

    @property
    def key(self) -> str:
        """A card's typed key (what the store and the central system match on, and what
        the desk enrols); the value itself for anything else."""
        return self.typed.key if self.typed is not None else self.value


def normalise_card(value: str) -> str:
    """Card text as typed by hand, tidied: blanks around removed, upper case. A typed key
    stays typed (`EM:0A00BC614E`: prefixes are read case-insensitively); the store reads
    the text with its site's rules (Store.card_key / Store.read_card)."""
    return value.strip().upper()
