"""The text the desk's member search looks in, made once when a member is written.

Searching 100,000 members must not run Python for every row (a worker thread doing that
holds the GIL and slows taps): each member row carries `search`, its name and e-mail
folded (lower case, no accents), its phone's digits and its cards without separators,
and the search is one SQL `LIKE` over that column.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Protocol


class MemberLike(Protocol):
    """A member as rules objects (rules.model.Member) or as the central system sends it
    (sync.records.MemberIn): the search text is made the same from either."""

    @property
    def name(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def phone(self) -> str | None: ...
    @property
    def cards(self) -> Sequence[str]: ...


def fold(text: str | None) -> str:
    """Lower case without accents: "López" and "lopez" match (the desk types fast)."""
    if not text:
        return ""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def digits(text: str | None) -> str:
    return "".join(c for c in (text or "") if c.isdigit())


def alnum(text: str | None) -> str:
    """A card number without its separators ("A1:B2:C3:D4" -> "A1B2C3D4"), upper case."""
    if not text:
        return ""
    if text.isalnum() and text.isascii():
        return text.upper()
    return "".join(c for c in text if c.isalnum()).upper()


def member_search_text(m: MemberLike) -> str:
    """Name and e-mail folded, phone digits, cards: separated by '|' so that a search never
    matches across two of them."""
    return search_text(m.name, m.email, m.phone, m.cards)


def search_text(name: str, email: str | None, phone: str | None, cards: Sequence[str]) -> str:
    """`member_search_text` of the fields themselves (a snapshot's records are not models)."""
    parts = [fold(name), fold(email)]
    if phone:
        parts.append(digits(phone))
    parts.extend(alnum(c).lower() for c in cards)
    return "|".join(parts)


__all__ = ["alnum", "digits", "fold", "member_search_text", "search_text"]
