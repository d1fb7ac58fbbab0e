"""Secrets as systemd credentials (issue 23): `{credential: NAME}` in the configuration,
read from `$CREDENTIALS_DIRECTORY` by the daemon (as systemd's `LoadCredential=` /
`LoadCredentialEncrypted=` fill it, `gated_<file>` for the unit's directory load, `NAME`
for one named in a drop-in) and from `credentials/` beside the file by the installer's
tools. Keys and hashes are made here; a real mosquitto checks the MQTT password and the
client key the daemon read from its credentials."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from gated.auth import hash_password
from gated.config import check_config, load_config
from tests.broker import Mosquitto, needs_mosquitto
from tests.test_daemon import GATED
from tests.test_sync_tls import make_pki

SITE = {"site": {"id": "s", "timezone": "Europe/Madrid"}, "daemon_id": "gate-a", "gates": [{"id": "g", "zone": "main"}]}


def write(tmp: Path, cfg: dict[str, Any]) -> Path:
    path = tmp / "gated.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def credential(directory: Path, name: str, value: str | bytes, mode: int = 0o600) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    path.write_bytes(value if isinstance(value, bytes) else value.encode())
    path.chmod(mode)
    return path


def test_each_kind_of_secret_from_a_credential_beside_the_file(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    desk = hash_password("desk-password")
    credential(creds, "desk.hash", desk + "\n")
    credential(creds, "mqtt-password", "s3cret with spaces")  # no newline: taken as is
    credential(creds, "client.key", "-----BEGIN PRIVATE KEY-----\n")
    credential(creds, "osdp-a.scbk", secrets.token_hex(16) + "\n")
    credential(creds, "display-token", secrets.token_urlsafe(24) + "\n")
    keys = [subprocess.run([*GATED, "qr", "pubkey", "--key", str(k)], capture_output=True, text=True, check=True).stdout.strip()
            for k in _qr_keys(tmp_path, 2)]
    credential(creds, "qr-keys", "# the central system's keys\n" + "\n".join(keys) + "\n\n")
    cfg = {**SITE, "gates": [{"id": "g", "zone": "main", "readers": [
        {"type": "osdp", "id": "osdp-1", "device": "/dev/null", "scbk": {"credential": "osdp-a.scbk"}}]}],
        "console": {"users": [{"name": "desk", "password_hash": {"credential": "desk.hash"}}],
                    "displays": [{"id": "d", "gate": "g", "token": {"credential": "display-token"}}]},
        "mqtt": {"host": "127.0.0.1", "username": "gate-a", "password": {"credential": "mqtt-password"},
                 "key_file": {"credential": "client.key"}},
        "qr": {"public_keys": {"credential": "qr-keys"}}}
    config = load_config(write(tmp_path, cfg))
    assert config.console.users[0].password_hash == desk
    assert config.mqtt is not None and config.mqtt.password is not None
    assert config.mqtt.password.get_secret_value() == "s3cret with spaces"
    assert config.mqtt.key_file == creds / "client.key"  # a file credential is its path
    assert config.qr.public_keys == keys
    reader = config.gates[0].readers[0]
    assert reader.key() == bytes.fromhex((creds / "osdp-a.scbk").read_text().strip())  # type: ignore[union-attr]
    # the schema lets editors accept the same
    schema = json.loads((Path(__file__).resolve().parent.parent / "config" / "gated.schema.json").read_text())
    user = schema["$defs"]["ConsoleUser"]["properties"]["password_hash"]
    assert {"$ref": "#/$defs/Credential"} in user["anyOf"]


def _qr_keys(tmp: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        key = tmp / f"qr{i}.pem"
        subprocess.run([*GATED, "qr", "keygen", "--out", str(key)], capture_output=True, check=True)
        out.append(key)
    return out


def test_credential_problems_each_at_its_line(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    credential(creds, "open.hash", hash_password("desk-password"), mode=0o644)
    creds.chmod(0o755)
    credential(creds, "big", b"x" * (65 * 1024))
    path = tmp_path / "gated.yaml"
    path.write_text(
        "site: {id: s, timezone: Europe/Madrid}\n"       # 1
        "gates: [{id: g, zone: main}]\n"                 # 2
        "console:\n"                                     # 3
        "  users:\n"                                     # 4
        "    - name: a\n"                                # 5
        "      password_hash: {credential: nope.hash}\n"  # 6
        "    - name: b\n"                                # 7
        "      password_hash: {credential: open.hash}\n"  # 8
        "    - name: c\n"                                # 9
        "      password_hash: {credential: ../etc/shadow}\n"  # 10
        "mqtt: {host: 127.0.0.1, password: {credential: big}}\n"  # 11
        "daemon_id: {credential: open.hash}\n"           # 12
    )
    report = check_config(path, env={})
    errors = {(line, key): msg for line, key, msg in report.errors}
    assert "no file" in errors[(6, "console.users[0].password_hash.credential")]
    assert "no credential name" in errors[(10, "console.users[2].password_hash.credential")]
    assert "larger than 64 KiB" in errors[(11, "mqtt.password.credential")]
    assert "a credential stands only for a secret" in errors[(12, "daemon_id")]
    assert len(report.errors) == 4, report.errors  # not also "Input should be a valid string"
    warnings = {(line, key): msg for line, key, msg in report.warnings}
    assert "can be read by every user" in warnings[(8, "console.users[1].password_hash")]
    out = subprocess.run([*GATED, "check-config", str(path)], capture_output=True, text=True, env={
        k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"})
    assert out.returncode == 2 and f"{path}:6: error: console.users[0].password_hash.credential:" in out.stdout


def test_under_the_unit_credentials_come_from_its_directory_only(tmp_path: Path) -> None:
    """Under systemd the plain files beside the configuration are not read: a credential
    the unit was not given is an error that says how to give it."""
    credential(tmp_path / "credentials", "desk.hash", hash_password("desk-password"))
    unit = tmp_path / "run-credentials"
    unit.mkdir()
    path = write(tmp_path, {**SITE, "console": {"users": [{"name": "desk", "password_hash": {"credential": "desk.hash"}}]}})
    report = check_config(path, env={"CREDENTIALS_DIRECTORY": str(unit)})
    assert len(report.errors) == 1 and "LoadCredential=gated:/etc/gated/credentials" in report.errors[0][2]
    credential(unit, "gated_desk.hash", hash_password("desk-password"), mode=0o400)
    assert check_config(path, env={"CREDENTIALS_DIRECTORY": str(unit)}).config is not None
    # a drop-in's LoadCredential(Encrypted)=desk.hash:… gives it under its own name, first
    other = hash_password("other-password")
    credential(unit, "desk.hash", other, mode=0o400)
    config = check_config(path, env={"CREDENTIALS_DIRECTORY": str(unit)}).config
    assert config is not None and config.console.users[0].password_hash == other


def notify_socket(tmp: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp / "notify.sock"))
    sock.settimeout(0.2)
    return sock


def wait_notify(sock: socket.socket, proc: subprocess.Popen[bytes], text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if text in sock.recv(4096).decode():
                return
        except TimeoutError:
            pass
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[0].decode(errors="replace")[-3000:])
    raise AssertionError(f"no {text}")


def test_the_daemon_reads_its_secrets_from_CREDENTIALS_DIRECTORY(tmp_path: Path) -> None:
    """As under the unit: nothing beside the configuration, the credentials where systemd
    puts them; the desk logs in with the password whose hash is a credential."""
    unit = tmp_path / "run-credentials"
    credential(unit, "gated_desk.hash", hash_password("desk-password"), mode=0o400)
    credential(unit, "boss.hash", hash_password("boss-password"), mode=0o400)  # a drop-in's, by its name
    cfg = {**SITE, "console": {"enabled": False, "users": [
        {"name": "desk", "password_hash": {"credential": "desk.hash"}},
        {"name": "boss", "role": "admin", "password_hash": {"credential": "boss.hash"}}]},
        "metrics": {"enabled": False}, "store": {"path": str(tmp_path / "g.db")},
        "control": {"socket": str(tmp_path / "c.sock")}}
    path = write(tmp_path, cfg)
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(unit), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    sock = notify_socket(tmp_path)
    proc = subprocess.Popen([*GATED, "run", "-c", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_notify(sock, proc, "READY=1")
        base = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}

        def as_user(*args: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*GATED, *args, "--user", user, "-c", str(path)], capture_output=True, text=True,
                                  env={**base, "GATED_PASSWORD": password, "CREDENTIALS_DIRECTORY": str(unit)})

        assert as_user("lockdown", "--reason", "drill", user="boss", password="boss-password").returncode == 0
        wrong = as_user("lockdown", "--off", user="boss", password="desk-password")
        assert wrong.returncode == 1 and "authentication failed" in wrong.stdout
        assert as_user("lockdown", "--off", user="boss", password="boss-password").returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        sock.close()


async def test_mqtt_password_and_client_key_as_credentials(tmp_path: Path) -> None:
    """mosquitto asks for both a client certificate and a password: the daemon reaches it
    only with the key and the password of its credentials."""
    needs_mosquitto()
    pki = make_pki(tmp_path / "pki")
    passwords = tmp_path / "broker" / "passwords"
    passwords.parent.mkdir(parents=True)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gate-a", "broker-pass"], check=True,
                   capture_output=True)
    broker = Mosquitto(tmp_path / "broker", tls={"cafile": str(pki["ca"]), "certfile": str(pki["server.crt"]),
                                                 "keyfile": str(pki["server.key"])},
                       extra=f"require_certificate true\npassword_file {passwords}\nallow_anonymous false\n")
    broker.start()
    try:
        unit = tmp_path / "run-credentials"
        credential(unit, "gated_mqtt-password", "broker-pass\n", mode=0o400)
        credential(unit, "gated_client.key", pki["gate-a.key"].read_bytes(), mode=0o400)
        credential(unit, "gated_client.crt", pki["gate-a.crt"].read_bytes(), mode=0o400)
        cfg = {**SITE, "console": {"enabled": False}, "metrics": {"enabled": False},
               "store": {"path": str(tmp_path / "g.db")}, "control": {"socket": str(tmp_path / "c.sock")},
               "mqtt": {"host": "127.0.0.1", "port": broker.port, "ca_file": str(pki["ca"]), "username": "gate-a",
                        "password": {"credential": "mqtt-password"}, "key_file": {"credential": "client.key"},
                        "cert_file": {"credential": "client.crt"}, "connect_timeout": 2, "backoff_refused": 0.5}}
        path = write(tmp_path, cfg)

        async def broker_state(credentials: Path, patience: float) -> str:
            env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
            proc = await asyncio.create_subprocess_exec(*GATED, "run", "-c", str(path), env=env,
                                                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            try:
                state = "none"
                deadline = time.monotonic() + patience
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                    out = await asyncio.to_thread(subprocess.run, [*GATED, "status", "-c", str(path)],
                                                  capture_output=True, text=True, env=env)
                    if out.returncode == 0:
                        state = json.loads(out.stdout)["broker"]
                        if state == "connected":
                            break
                return state
            finally:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()

        assert await broker_state(unit, patience=30) == "connected"
        # the same daemon with another password in its credentials: refused
        wrong = tmp_path / "wrong-credentials"
        for f in unit.iterdir():
            credential(wrong, f.name, f.read_bytes(), mode=0o400)
        (wrong / "gated_mqtt-password").chmod(0o600)
        (wrong / "gated_mqtt-password").write_text("not-the-password\n")
        assert await broker_state(wrong, patience=4) == "disconnected"
    finally:
        broker.stop()


def test_example_credentials_block_of_the_guide_makes_root_only_files(tmp_path: Path) -> None:
    """The guide's secrets block: files readable by their owner alone, whatever the umask."""
    guide = (Path(__file__).resolve().parent.parent / "docs" / "installer-guide.md").read_text()
    block = guide.split("### Secrets", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    assert all("| install -m 0600 /dev/stdin /etc/gated/credentials/" in ln
               or ln.startswith("gated hash-password --out /etc/gated/credentials/") for ln in block.splitlines())
    creds = tmp_path / "credentials"  # beside the configuration, as /etc/gated/credentials
    creds.mkdir(mode=0o700)
    script = block.replace("/etc/gated/credentials", str(creds)).replace("gated hash-password", " ".join(GATED) + " hash-password")
    out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "umask 022\n" + script], capture_output=True, text=True,
                         env={**os.environ, "GATED_PASSWORD": "desk-password"})
    assert out.returncode == 0, out.stderr
    for f in ("desk.hash", "osdp-a.scbk"):
        assert oct((creds / f).stat().st_mode & 0o777) == "0o600"
    assert check_config(write(tmp_path, {**SITE, "console": {"users": [
        {"name": "desk", "password_hash": {"credential": "desk.hash"}}]}}), env={}).errors == []
    # without a terminal and without GATED_PASSWORD, in an installer's shell (no pipefail):
    # the block stops there, and no empty hash is left to find later
    (creds / "desk.hash").unlink()
    out = subprocess.run(["bash", "-e", "-c", script], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         env={k: v for k, v in os.environ.items() if k != "GATED_PASSWORD"})
    assert out.returncode != 0 and "a password is needed" in out.stderr, out.stderr
    assert not (creds / "desk.hash").exists()
