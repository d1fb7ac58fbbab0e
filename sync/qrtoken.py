"""Signed QR tokens: minted centrally with Ed25519, verified at the gate with public keys.

Format (printable, fits a QR code in byte mode, ~150 characters):

    GQ1.<kid>.<payload>.<signature>

- `GQ1` — format and version.
- `kid` — key id: the first 8 bytes of SHA-256 of the raw public key, hex (16 chars), so
  keys can rotate: the gate trusts a set of public keys, the central system signs with
  one private key at a time.
- `payload` — base64url (no padding) of compact JSON:
  `{"t": token id, "m": member id, "b": booking id (optional), "i": issued, "e": expires}`
  with times as integer Unix seconds.
- `signature` — base64url of the Ed25519 signature over the ASCII bytes `GQ1.<kid>.<payload>`.

The gate holds no secret that can mint access. Single use and expiry are enforced by the
gate (rules.decide and the store's used-token table), not by this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from rules.decide import QrClaim

PREFIX = "GQ1"
MAX_TOKEN_LENGTH = 1024  # anything longer is garbage from a scanner, not a token


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    if not text or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_" for c in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """The form a gate's configuration lists trusted keys in: base64url of the raw key."""
    return _b64e(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_public_key(text: str) -> Ed25519PublicKey:
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    raw = _b64d(text)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def mint(
    key: Ed25519PrivateKey,
    *,
    token_id: str,
    member: str,
    issued: datetime,
    expires: datetime,
    booking: str | None = None,
) -> str:
    kid = key_id(key.public_key())
    body: dict[str, object] = {"t": token_id, "m": member, "i": int(issued.timestamp()), "e": int(expires.timestamp())}
    if booking:
        body["b"] = booking
    payload = _b64e(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    signed = f"{PREFIX}.{kid}.{payload}"
    return f"{signed}.{_b64e(key.sign(signed.encode('ascii')))}"


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys this gate accepts, by key id."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def of(cls, keys: Iterable[Ed25519PublicKey]) -> TrustedKeys:
        return cls({key_id(k): k for k in keys})

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> TrustedKeys:
        return cls.of(load_public_key(t) for t in texts)

    def verify(self, token: str) -> QrClaim | None:
        """The token's claim if its signature is good under a trusted key, else None."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            return None
        parts = token.strip().split(".")
        if len(parts) != 4 or parts[0] != PREFIX:
            return None
        _, kid, payload, sig = parts
        key = self.keys.get(kid)
        if key is None:
            return None
        try:
            key.verify(_b64d(sig), f"{PREFIX}.{kid}.{payload}".encode("ascii"))
            body = json.loads(_b64d(payload))
        except (InvalidSignature, ValueError, binascii.Error, UnicodeError):
            return None
        return _claim(body)


def _claim(body: object) -> QrClaim | None:
    if not isinstance(body, dict):
        return None
    t, m, i, e, b = body.get("t"), body.get("m"), body.get("i"), body.get("e"), body.get("b")
    if not (isinstance(t, str) and t and isinstance(m, str) and m):
        return None
    if type(i) is not int or type(e) is not int or e < i:
        return None
    if b is not None and not isinstance(b, str):
        return None
    try:
        issued = datetime.fromtimestamp(i, UTC)
        expires = datetime.fromtimestamp(e, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return QrClaim(token_id=t, member=m, issued=issued, expires=expires, booking=b or None)
