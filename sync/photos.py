"""Members' photos: what the desk sees beside a tap, so a lent card shows.

Two sources, one format — an image inline as a `data:` URL (`data:image/jpeg;base64,...`),
at most PHOTO_MAX_BYTES decoded:
- the central system's member record (`photo`, docs/protocol.md "Members"), kept in the
  replica's `members.photo`;
- the desk's webcam: a row of `member_photos` in the ledger (sync/store/photos.py; it
  survives snapshots, which replace the replica), sent upstream as a `member_photo` event
  in the same transaction.

The desk's photo is shown in preference: it is what staff at this site took of the person
in front of them; the central system's is shown where the desk never took one.

Inline rather than a URL: the gate works offline and the console loads nothing from
elsewhere (its Content-Security-Policy), so a photo must be on the gate itself. A value that
is not an acceptable photo (a URL, another image type, broken base64, too big, bytes that
are not the image they claim) is *dropped*, never a reason to refuse the member: a member
without a face still gets in.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

PHOTO_MAX_BYTES = 32 * 1024
# base64 of PHOTO_MAX_BYTES, plus the longest prefix
PHOTO_MAX_TEXT = len("data:image/jpeg;base64,") + 4 * ((PHOTO_MAX_BYTES + 2) // 3)
PHOTO_PATTERN = r"^data:image/(jpeg|png|webp);base64,[A-Za-z0-9+/]+={0,2}$"
_DATA_URL = re.compile(PHOTO_PATTERN)
# what each type's bytes begin with: a photo whose bytes are another format is refused
# (the browser is told the type; `nosniff` would not save a mislabelled one)
_MAGIC = {"jpeg": (b"\xff\xd8\xff",), "png": (b"\x89PNG\r\n\x1a\n",), "webp": (b"RIFF",)}


@dataclass(frozen=True, slots=True)
class Photo:
    mime: str  # image/jpeg, image/png, image/webp
    data: bytes
    version: str  # changes when the photo does: the console's URLs carry it (cacheable)


def decode(text: str | None) -> tuple[str, bytes] | None:
    """(mime type, bytes) of an acceptable photo `data:` URL, else None."""
    if text is None or len(text) > PHOTO_MAX_TEXT:
        return None
    m = _DATA_URL.match(text)
    if m is None:
        return None
    try:
        data = base64.b64decode(text[text.index(",") + 1 :], validate=True)
    except (binascii.Error, ValueError):
        return None
    kind = m.group(1)
    if not data or len(data) > PHOTO_MAX_BYTES or not data.startswith(_MAGIC[kind]):
        return None
    if kind == "webp" and data[8:12] != b"WEBP":
        return None
    return f"image/{kind}", data


def photo_or_none(text: str | None) -> str | None:
    """The member record's `photo` as the gate keeps it: the value when acceptable, else
    None (module doc: a bad photo is dropped, the member kept)."""
    return text if decode(text) is not None else None


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def jpeg(data: bytes) -> bool:
    """A whole JPEG within the bound: its start and end markers (what a canvas's
    `toBlob('image/jpeg')` writes); the browser decodes it, never the gate."""
    return 0 < len(data) <= PHOTO_MAX_BYTES and data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")


__all__ = ["PHOTO_MAX_BYTES", "PHOTO_MAX_TEXT", "PHOTO_PATTERN", "Photo", "data_url", "decode", "jpeg", "photo_or_none"]
