"""Secrets as systemd credentials: `{credential: NAME}` wherever the configuration takes a
secret, read from the unit's `$CREDENTIALS_DIRECTORY`.

The unit (systemd/gated.service) loads every file of /etc/gated/credentials with
`LoadCredential=gated:/etc/gated/credentials`: systemd copies each, readable by the
dynamic user alone, to `$CREDENTIALS_DIRECTORY/gated_<file>`. A credential given in a
drop-in of its own (`LoadCredential=NAME:PATH`, or `LoadCredentialEncrypted=NAME:PATH`
for one encrypted with `systemd-creds encrypt --name=NAME`) is `$CREDENTIALS_DIRECTORY/NAME`.
Either is found under its NAME.

Outside the unit (`gated check-config`, the installer's tools, run as root) the same files
are read where the unit loads them from: `credentials/NAME` beside the configuration file,
or `credentials.encrypted/NAME` decrypted with `systemd-creds decrypt`. A credential file
others may read is a warning.

What a credential stands for depends on the key (`KINDS`): text (a password hash, the MQTT
password, an OSDP key, a display token), a file (the MQTT client key and certificates, the
console's TLS key, an OSDP key file: the path of the credential), or lines (the trusted QR
keys, one a line). This runs on the YAML as loaded, before the models validate it, so the
models see plain values and keep their own checks (an argon2 hash, 32 hex digits).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

YamlPath = tuple[str | int, ...]


class Kind(StrEnum):
    TEXT = "text"  # the file's content, trailing newline removed
    FILE = "file"  # the credential's path
    LINES = "lines"  # non-empty, non-comment lines


KINDS: dict[str, Kind] = {
    "password_hash": Kind.TEXT,  # console.users[].password_hash
    "password": Kind.TEXT,  # mqtt.password
    "scbk": Kind.TEXT,  # gates[].readers[] (osdp)
    "token": Kind.TEXT,  # console.displays[].token
    "key_file": Kind.FILE,  # mqtt client key
    "cert_file": Kind.FILE,
    "ca_file": Kind.FILE,
    "scbk_file": Kind.FILE,
    "tls_key": Kind.FILE,  # console
    "tls_cert": Kind.FILE,
    "public_keys": Kind.LINES,  # qr.public_keys
}

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
MAX_BYTES = 64 * 1024  # systemd allows 1 MiB for all of a unit's credentials together
PREFIX = "gated_"  # LoadCredential=gated:/etc/gated/credentials names each file gated_<file>
ENV = "CREDENTIALS_DIRECTORY"


class CredentialError(ValueError):
    pass


@dataclass
class Credentials:
    """Where credentials are read from: the unit's directory when systemd gave one, else
    the files the unit loads (beside the configuration file)."""

    systemd_dir: Path | None
    plain_dir: Path
    encrypted_dir: Path
    warnings: list[tuple[YamlPath, str]] = field(default_factory=list)

    @classmethod
    def for_config(cls, config_path: Path, env: Mapping[str, str] = os.environ) -> Credentials:
        base = config_path.resolve().parent
        given = env.get(ENV)
        return cls(Path(given) if given else None, base / "credentials", base / "credentials.encrypted")

    def locate(self, name: str) -> tuple[Path, bool]:
        """(the credential's file, encrypted). CredentialError when there is none."""
        if not NAME.fullmatch(name):
            raise CredentialError(f"{name!r} is no credential name (letters, digits, _.@-; no '/')")
        if self.systemd_dir is not None:
            for candidate in (self.systemd_dir / name, self.systemd_dir / f"{PREFIX}{name}"):
                if candidate.is_file():
                    return candidate, False
            raise CredentialError(
                f"credential {name!r} was not given to the unit: put it in /etc/gated/credentials/{name} "
                f"(LoadCredential=gated:/etc/gated/credentials), or name it in a drop-in "
                f"(LoadCredential={name}:… or LoadCredentialEncrypted={name}:…)"
            )
        plain = self.plain_dir / name
        if plain.is_file():
            return plain, False
        encrypted = self.encrypted_dir / name
        if encrypted.is_file():
            return encrypted, True
        raise CredentialError(f"credential {name!r}: no file {plain} (nor {encrypted})")

    def read(self, path: Path, encrypted: bool, name: str) -> bytes:
        if encrypted:
            try:
                out = subprocess.run(
                    ["systemd-creds", "decrypt", f"--name={name}", str(path), "-"],
                    capture_output=True, timeout=30, check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as e:
                raise CredentialError(f"credential {name!r}: cannot decrypt {path}: {e}") from None
            if out.returncode != 0:
                why = out.stderr.decode(errors="replace").strip().splitlines()
                raise CredentialError(f"credential {name!r}: cannot decrypt {path}: {why[-1] if why else 'failed'}")
            data = out.stdout
        else:
            try:
                with path.open("rb") as f:
                    data = f.read(MAX_BYTES + 1)
            except OSError as e:
                raise CredentialError(f"credential {name!r}: cannot read {path}: {e.strerror}") from None
        if len(data) > MAX_BYTES:
            raise CredentialError(f"credential {name!r}: larger than {MAX_BYTES // 1024} KiB")
        return data

    def exposed(self, path: Path) -> bool:
        """Others than root could read this file (only for files outside the unit's own
        directory, which systemd makes readable by the service alone)."""
        try:
            mode = path.stat().st_mode
            parent = path.parent.stat().st_mode
        except OSError:
            return False
        return bool(mode & stat.S_IROTH) and bool(parent & stat.S_IXOTH)

    def value(self, name: str, kind: Kind, where: YamlPath) -> Any:
        path, encrypted = self.locate(name)
        if self.systemd_dir is None and not encrypted and self.exposed(path):
            self.warnings.append((where, f"{path} can be read by every user: chmod 600 it (or 700 its directory)"))
        if kind is Kind.FILE:
            self.read(path, encrypted, name)  # it can be read (and decrypted) at all
            return str(path)
        data = self.read(path, encrypted, name)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialError(f"credential {name!r}: not UTF-8 text") from None
        if kind is Kind.LINES:
            return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not text.strip():
            # what `gated hash-password | install … /dev/stdin FILE` leaves when the command
            # fails: install writes the empty pipe and succeeds
            key = next((p for p in reversed(where) if isinstance(p, str)), "")
            how = (f"write the hash into it with `gated hash-password --out {self.plain_dir / name}`"
                   if key == "password_hash" else 'put the secret in it (docs/installer-guide.md, "Secrets")')
            raise CredentialError(f"credential {name!r}: {path} is empty: {how}")
        return text.rstrip("\r\n")


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"credential"}


def resolve(data: Any, credentials: Credentials) -> list[tuple[YamlPath, str]]:
    """Replace every `{credential: NAME}` in `data` (in place) by what it stands for; the
    problems, each at the key of the reference."""
    problems: list[tuple[YamlPath, str]] = []

    def walk(node: Any, path: YamlPath) -> None:
        items: list[tuple[str | int, Any]]
        if isinstance(node, dict):
            items = list(node.items())
        elif isinstance(node, list):
            items = list(enumerate(node))
        else:
            return
        for key, value in items:
            here = (*path, key)
            if not is_reference(value):
                walk(value, here)
                continue
            # a reference in a list stands where its list's key allows one (qr.public_keys)
            owner = key if isinstance(key, str) else next((p for p in reversed(path) if isinstance(p, str)), "")
            kind = KINDS.get(owner)
            if kind is None:
                problems.append((here, "a credential stands only for a secret: "
                                       + ", ".join(sorted(KINDS))))
                continue
            name = value["credential"]
            if not isinstance(name, str):
                problems.append(((*here, "credential"), "the credential's name is text"))
                continue
            try:
                resolved = credentials.value(name, Kind.TEXT if isinstance(key, int) else kind, here)
            except CredentialError as e:
                problems.append(((*here, "credential"), str(e)))
                continue
            node[key] = resolved

    walk(data, ())
    return problems


__all__ = ["Credentials", "CredentialError", "KINDS", "Kind", "is_reference", "resolve"]
