"""Operator identities for the console and the control CLI: argon2 hashes, roles."""

from __future__ import annotations

from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from gated.config import ConsoleUser

_hasher = PasswordHasher()


@cache
def _dummy() -> str:
    # verifying against this when the user does not exist keeps the timing the same; made
    # on first use, not at import: argon2 takes 64 MiB and a quarter second per hash
    return _hasher.hash("not a password")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def authenticate(users: list[ConsoleUser], name: str, password: str) -> ConsoleUser | None:
    user = next((u for u in users if u.name == name), None)
    try:
        _hasher.verify(user.password_hash if user else _dummy(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    return user
