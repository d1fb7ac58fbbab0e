"""The link over TLS with client certificates: a CA, a server and client certificates made
here with `cryptography` (nothing secret in the repository), mosquitto requiring them."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gated.engine import Engine
from rules.credential import Credential
from simulator.central import Central, CentralSettings
from sync.link import SyncLink
from tests.broker import (
    GATES,
    POLICY,
    SEED,
    SITE,
    WAIT_S,
    clock,
    make_store,
    running,
    settings_for,
    site,
    wait_until,
)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("gated test CA"))
        .issuer_name(_name("gated test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = {"ca": d / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(cn: str, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        cert = b.sign(ca_key, hashes.SHA256())
        out[f"{cn}.crt"] = d / f"{cn}.crt"
        out[f"{cn}.key"] = d / f"{cn}.key"
        out[f"{cn}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[f"{cn}.key"].write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        out[f"{cn}.key"].chmod(0o600)

    leaf("server", True)
    leaf("gate-a", False)
    leaf("central", False)
    return out


async def test_link_over_mutual_tls(mosquitto_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pki = make_pki(tmp_path / "pki")
    broker = mosquitto_factory(
        tls={"cafile": str(pki["ca"]), "certfile": str(pki["server.crt"]), "keyfile": str(pki["server.key"]),
             "require_certificate": "1"}
    )
    central = Central(
        CentralSettings(port=broker.port, ca_file=pki["ca"], cert_file=pki["central.crt"], key_file=pki["central.key"]),
        tmp_path / "central.db",
    )
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    store = make_store(tmp_path / "a.db", "gate-a")
    now = clock()
    tls = {"ca_file": pki["ca"], "cert_file": pki["gate-a.crt"], "key_file": pki["gate-a.key"]}
    link = SyncLink(store, settings_for(broker, "gate-a", **tls), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    # without a client certificate the broker refuses: the link keeps trying, never connects
    bare = SyncLink(make_store(tmp_path / "b.db", "gate-b"), settings_for(broker, "gate-b", ca_file=pki["ca"], connect_timeout=1.0), now=now)
    async with running(central.run(), link.run(), bare.run()):
        await central.wait_connected(WAIT_S)
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] == 1)
        _, committed = engine.tap("in-1", Credential.card("C1"), now())
        await wait_until(lambda: store.acked_seq == committed.events[-1]["seq"], what="ack over TLS")
        assert central.balance(SITE, "p1") == 999
        # it tried, more than once, and the broker refused it every time
        await wait_until(lambda: bare.stats["connect_failed"] >= 1, what="the certificate-less link refused")
        assert not bare.connected and bare.stats["connects"] == 0
