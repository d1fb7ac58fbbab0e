"""`gated qr keygen` and `gated qr mint`: for the central side, installers and tests.

The gate itself only ever needs the public key printed by keygen.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rules.timeutil import parse_duration, parse_instant
from sync import qrtoken


def add_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    qr = sub.add_parser("qr", help="signed QR tokens (keys and minting)")
    qs = qr.add_subparsers(dest="qr_command", required=True)
    kg = qs.add_parser("keygen", help="make an Ed25519 key pair; prints the public key for gate configs")
    kg.add_argument("--out", required=True, help="file for the private key (PEM, mode 0600); keep it central")
    kg.set_defaults(func=func)
    mi = qs.add_parser("mint", help="mint a token (what the central system does for a member's app)")
    mi.add_argument("--key", required=True, help="private key PEM from keygen")
    mi.add_argument("--member", required=True)
    mi.add_argument("--booking")
    mi.add_argument("--ttl", default="60s")
    mi.add_argument("--issued", help="ISO time (default now, UTC)")
    mi.add_argument("--token-id", help="default: random")
    mi.set_defaults(func=func)
    pk = qs.add_parser("pubkey", help="print the public key of a private key file")
    pk.add_argument("--key", required=True)
    pk.set_defaults(func=func)


def run(args: argparse.Namespace) -> int:
    if args.qr_command == "keygen":
        out = Path(args.out)
        if out.exists():
            print(f"{out} exists; refusing to overwrite a key", file=sys.stderr)
            return 2
        key = qrtoken.generate_private_key()
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(qrtoken.private_key_pem(key))
        pub = key.public_key()
        print(f"key id:     {qrtoken.key_id(pub)}")
        print(f"public key: {qrtoken.public_key_text(pub)}")
        print("add the public key under qr.public_keys in the gate configuration")
        return 0
    key = qrtoken.load_private_key(Path(args.key).read_bytes())
    if args.qr_command == "pubkey":
        print(qrtoken.public_key_text(key.public_key()))
        return 0
    issued = parse_instant(args.issued, UTC) if args.issued else datetime.now(UTC).replace(microsecond=0)
    token = qrtoken.mint(
        key,
        token_id=args.token_id or secrets.token_hex(12),
        member=args.member,
        booking=args.booking,
        issued=issued,
        expires=issued + parse_duration(args.ttl),
    )
    print(token)
    return 0
