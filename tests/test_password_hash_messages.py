"""`gated check-config` on a console password hash that is not one says what to do: an
empty credential file (what `gated hash-password | install … /dev/stdin FILE` leaves when
the command fails) and a placeholder were answered "String should have at least 20
characters (got '')" — the type's length check ran before the helpful one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gated.auth import hash_password
from gated.config import check_config

SITE = {"site": {"id": "s", "timezone": "Europe/Madrid"}, "daemon_id": "gate-a", "gates": [{"id": "g", "zone": "main"}]}
HOW = "write one with `gated hash-password --out /etc/gated/credentials/NAME` and give it here as `{credential: NAME}`"


def errors_of(tmp: Path, password_hash: object, **more: object) -> list[tuple[int | None, str, str]]:
    path = tmp / "gated.yaml"
    path.write_text(yaml.safe_dump({**SITE, **more, "console": {"users": [{"name": "desk", "password_hash": password_hash}]}}))
    return check_config(path, env={}).errors


def credential(tmp: Path, name: str, text: str) -> None:
    creds = tmp / "credentials"
    creds.mkdir(mode=0o700, exist_ok=True)
    (creds / name).write_text(text)
    (creds / name).chmod(0o600)


@pytest.mark.parametrize("value,what", [
    ("", "empty: no hash was written"),
    ("   ", "empty: no hash was written"),
    ("REPLACE_WITH_HASH", "a placeholder, not a hash"),
    ("<replace with the hash>", "a placeholder, not a hash"),
    ("desk-password", "not an argon2 hash (never the password itself)"),
    ("a password long enough to pass a length check", "not an argon2 hash (never the password itself)"),
])
def test_a_hash_that_is_none_says_how_to_make_one(tmp_path: Path, value: str, what: str) -> None:
    errors = errors_of(tmp_path, value)
    assert [(key, msg.split(":")[0]) for _, key, msg in errors] == [("console.users[0].password_hash", what.split(":")[0])], errors
    assert what in errors[0][2] and HOW in errors[0][2]
    assert "at least 20 characters" not in errors[0][2]


def test_an_empty_credential_file_names_itself_and_the_command(tmp_path: Path) -> None:
    credential(tmp_path, "desk.hash", "")
    errors = errors_of(tmp_path, {"credential": "desk.hash"})
    desk = tmp_path / "credentials" / "desk.hash"
    assert [(key, msg) for _, key, msg in errors] == [(
        "console.users[0].password_hash.credential",
        f"credential 'desk.hash': {desk} is empty: write the hash into it with `gated hash-password --out {desk}`")], errors


def test_a_placeholder_in_a_credential_file_says_what_to_do(tmp_path: Path) -> None:
    credential(tmp_path, "desk.hash", "REPLACE_WITH_HASH\n")
    errors = errors_of(tmp_path, {"credential": "desk.hash"})
    assert len(errors) == 1 and errors[0][1] == "console.users[0].password_hash", errors
    assert errors[0][2].startswith("a placeholder, not a hash: ") and HOW in errors[0][2]


def test_any_empty_secret_is_an_error_not_an_empty_secret(tmp_path: Path) -> None:
    credential(tmp_path, "desk.hash", hash_password("desk-password") + "\n")
    credential(tmp_path, "mqtt-password", "\n")
    errors = errors_of(tmp_path, {"credential": "desk.hash"},
                       mqtt={"host": "127.0.0.1", "username": "gate-a", "password": {"credential": "mqtt-password"}})
    assert [key for _, key, _ in errors] == ["mqtt.password.credential"], errors
    assert f"{tmp_path / 'credentials' / 'mqtt-password'} is empty: put the secret in it" in errors[0][2]


def test_a_hash_from_gated_hash_password_passes(tmp_path: Path) -> None:
    credential(tmp_path, "desk.hash", hash_password("desk-password") + "\n")
    assert errors_of(tmp_path, {"credential": "desk.hash"}) == []
    assert errors_of(tmp_path, hash_password("desk-password")) == []
