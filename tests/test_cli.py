"""Installer and front-desk command-line tools against real peers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gated.auth import hash_password
from simulator.turnstile import SimTurnstile
from sync import qrtoken
from tests.test_daemon import GATED, running_daemon, wait_for


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATED, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_qr_keygen_mint_and_verify(tmp_path: Path) -> None:
    key = tmp_path / "central.pem"
    out = run("qr", "keygen", "--out", str(key))
    assert out.returncode == 0 and "public key:" in out.stdout
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert run("qr", "keygen", "--out", str(key)).returncode == 2  # never overwrites a key
    public = run("qr", "pubkey", "--key", str(key)).stdout.strip()
    token = run("qr", "mint", "--key", str(key), "--member", "m1", "--booking", "b1", "--ttl", "60s").stdout.strip()
    claim = qrtoken.TrustedKeys.from_texts([public]).verify(token)
    assert claim is not None and claim.member == "m1" and claim.booking == "b1"
    assert qrtoken.TrustedKeys.of([qrtoken.generate_private_key().public_key()]).verify(token) is None


def test_hash_password_is_argon2() -> None:
    out = run("hash-password", env={"GATED_PASSWORD": "correct horse"})
    assert out.returncode == 0 and out.stdout.startswith("$argon2")
    assert run("hash-password", env={"GATED_PASSWORD": "short"}).returncode == 2


def _no_password_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GATED_PASSWORD"}


def test_hash_password_writes_the_credential_file_whole_or_not_at_all(tmp_path: Path) -> None:
    """The guide's `gated hash-password | install -m 0600 /dev/stdin …/desk.hash` wrote an
    empty file and succeeded when the command had no password (no terminal): `--out FILE`
    writes the file itself — 0600, whole — and on any failure writes nothing and says so."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    desk = creds / "desk.hash"
    out = run("hash-password", "--out", str(desk), env={"GATED_PASSWORD": "desk-password-1"})
    assert out.returncode == 0 and out.stdout == f"wrote {desk} (mode 0600)\n", out.stdout + out.stderr
    assert oct(desk.stat().st_mode & 0o777) == "0o600"
    first = desk.read_text()
    assert first.endswith("\n") and first.count("\n") == 1 and first.startswith("$argon2id$")
    path = tmp_path / "gated.yaml"
    path.write_text(yaml.safe_dump({"site": {"id": "s", "timezone": "Europe/Madrid"}, "gates": [{"id": "g", "zone": "z"}],
                                    "console": {"users": [{"name": "desk", "password_hash": {"credential": "desk.hash"}}]}}))
    from gated.auth import authenticate
    from gated.config import load_config

    assert authenticate(load_config(path).console.users, "desk", "desk-password-1") is not None
    # no password (a script, ssh without a terminal), one too short, a directory not there:
    # an error, and the hash already there untouched
    failed = subprocess.run([*GATED, "hash-password", "--out", str(desk)], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, env=_no_password_env())
    assert failed.returncode == 2 and "a password is needed" in failed.stderr, failed.stderr
    short = run("hash-password", "--out", str(desk), env={"GATED_PASSWORD": "short"})
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    nowhere = subprocess.run([*GATED, "hash-password", "--out", str(tmp_path / "none" / "desk.hash")], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL, env=_no_password_env())
    assert nowhere.returncode == 2 and f"{tmp_path / 'none'} is no directory" in nowhere.stderr, nowhere.stderr
    into_a_directory = run("hash-password", "--out", str(creds), env={"GATED_PASSWORD": "desk-password-2"})
    assert into_a_directory.returncode == 2 and "nothing written" in into_a_directory.stderr
    assert desk.read_text() == first and sorted(p.name for p in creds.iterdir()) == ["desk.hash"]  # no temporary left
    assert not (tmp_path / "none").exists()
    # a new password replaces the hash (a password changed), still 0600
    assert run("hash-password", "--out", str(desk), env={"GATED_PASSWORD": "desk-password-2"}).returncode == 0
    assert desk.read_text() != first and oct(desk.stat().st_mode & 0o777) == "0o600"


def test_hash_password_on_a_terminal_asks_twice(tmp_path: Path) -> None:
    """As the guide's installer runs it: the password typed unseen, then again; two that
    differ write nothing (a typo would have locked the desk out)."""
    import time

    def typed(*lines: str) -> tuple[int, str]:
        master, slave = os.openpty()
        proc = subprocess.Popen([*GATED, "hash-password", "--out", str(tmp_path / "desk.hash")], stdin=slave, stdout=slave,
                                stderr=slave, env=_no_password_env(), start_new_session=True)
        os.close(slave)
        seen = b""
        try:
            for prompt, line in zip(("new password: ", "the same again: "), lines, strict=True):
                deadline = time.monotonic() + 30
                while prompt.encode() not in seen:
                    assert time.monotonic() < deadline, seen
                    seen += os.read(master, 4096)
                os.write(master, line.encode() + b"\r")
            code = proc.wait(60)
            with contextlib.suppress(OSError):  # the terminal's other end is gone once it exits
                seen += os.read(master, 4096)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return code, seen.decode(errors="replace")

    code, said = typed("desk-password-1", "desk-password-2")
    assert code == 2 and "the two passwords differ: nothing written" in said, said
    assert not (tmp_path / "desk.hash").exists() and "desk-password" not in said  # never echoed
    code, said = typed("desk-password-1", "desk-password-1")
    assert code == 0 and "wrote" in said, said
    assert oct((tmp_path / "desk.hash").stat().st_mode & 0o777) == "0o600"


async def test_test_relay_pulses_the_simulated_turnstile(tmp_path: Path) -> None:
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0) as sim:
        cfg = {
            "site": {"id": "s", "timezone": "Europe/Berlin"},
            "gates": [{"id": "g1", "zone": "z", "output": {"transport": "tcp", "host": "127.0.0.1", "port": sim.port,
                                                           "coil": 0, "passage_input": 0, "pulse": 0.5}}],
            "store": {"path": str(tmp_path / "g.db")},
        }
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out = await asyncio.to_thread(run, "test-relay", "g1", "-c", str(path))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "passage seen: yes" in out.stdout
        assert sim.unlocks == 1
    # the board gone: a clear failure, not a traceback
    out = await asyncio.to_thread(run, "test-relay", "g1", "-c", str(path))
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr


async def test_open_and_lockdown_need_the_right_user(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as d:
        cfg = yaml.safe_load(d.config.read_text())
        cfg["console"]["users"] = [
            {"name": "desk", "role": "staff", "password_hash": hash_password("desk-pass")},
            {"name": "boss", "role": "admin", "password_hash": hash_password("boss-pass")},
        ]
        d.config.write_text(yaml.safe_dump(cfg))
        d.proc.send_signal(signal.SIGHUP)
        await d.expect_notify("configuration reloaded")
        c = str(d.config)
        bad = await asyncio.to_thread(run, "open", "turnstile-1", "--reason", "x", "--user", "desk", "-c", c,
                                      env={"GATED_PASSWORD": "wrong"})
        assert bad.returncode == 1 and "authentication failed" in bad.stdout
        unlocks = d.turnstile.unlocks
        ok = await asyncio.to_thread(run, "open", "turnstile-1", "--reason", "delivery", "--user", "desk", "-c", c,
                                     env={"GATED_PASSWORD": "desk-pass"})
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert json.loads(ok.stdout)["reason"] == "override"
        await wait_for(lambda: d.turnstile.unlocks > unlocks, what="the coil")
        types = [e["type"] for e in d.events()]
        assert "override" in types
        override = next(e for e in d.events() if e["type"] == "override")
        assert override["operator"] == "desk" and override["reason"] == "delivery"
        staff = await asyncio.to_thread(run, "lockdown", "--reason", "x", "--user", "desk", "-c", c, env={"GATED_PASSWORD": "desk-pass"})
        assert staff.returncode == 1 and "admin" in staff.stdout
        unsaid = await asyncio.to_thread(run, "lockdown", "--user", "boss", "-c", c, env={"GATED_PASSWORD": "boss-pass"})
        assert unsaid.returncode == 2 and "--reason" in unsaid.stderr and not [e for e in d.events() if e["type"] == "lockdown"]  # issue 24, bug 6
        boss = await asyncio.to_thread(run, "lockdown", "--reason", "police operation", "--user", "boss", "-c", c,
                                       env={"GATED_PASSWORD": "boss-pass"})
        assert boss.returncode == 0 and json.loads(boss.stdout) == {"lockdown": True}
        assert [e for e in d.events() if e["type"] == "lockdown"][-1]["reason"] == "police operation"
        out = await asyncio.to_thread(run, "tap", "-c", c, "turnstile-1", "04A1B2C3D4")
        assert json.loads(out.stdout)["reason"] == "lockdown"
        await asyncio.to_thread(run, "lockdown", "--off", "--user", "boss", "-c", c, env={"GATED_PASSWORD": "boss-pass"})
        out = await asyncio.to_thread(run, "tap", "-c", c, "turnstile-1", "04A1B2C3D4")
        assert json.loads(out.stdout)["decision"] == "granted"
        # the emergency release the same way, an admin's, with a reason to release the doors
        release = await asyncio.to_thread(run, "emergency", "--reason", "gas leak", "--user", "boss", "-c", c,
                                          env={"GATED_PASSWORD": "boss-pass"})
        assert release.returncode == 0 and json.loads(release.stdout) == {"emergency": True}
        fire = [e for e in d.events() if e["type"] == "fire_alarm"][-1]
        assert fire["active"] and fire["emergency_release"] and fire["reason"] == "gas leak"
        back = await asyncio.to_thread(run, "emergency", "--off", "--user", "boss", "-c", c, env={"GATED_PASSWORD": "boss-pass"})
        assert back.returncode == 0 and json.loads(back.stdout) == {"emergency": False}
        d.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(d.proc.wait, 20) == 0


def _site_on(socket_path: Path, where: Path) -> Path:
    cfg = {"site": {"id": "s", "timezone": "Europe/Berlin"}, "gates": [{"id": "g", "zone": "z"}],
           "control": {"socket": str(socket_path)}}
    path = where / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_without_daemon_says_so_and_what_to_do(tmp_path: Path) -> None:
    """The daemon stopped (a clean stop removes its socket): the errno alone left the
    installer guessing; now the command says to look at the unit, and where the socket is
    looked for."""
    sock = tmp_path / "none.sock"
    path = _site_on(sock, tmp_path)
    for command in (("status",), ("tap", "g", "04A1B2C3D4")):
        out = run(*command, "-c", str(path))
        assert out.returncode == 1 and f"cannot reach the daemon at {sock}: no socket there" in out.stderr, out.stderr
        assert "Is the daemon running? `systemctl status gated`" in out.stderr, out.stderr
        assert f"looked for where control.socket in {path} says" in out.stderr and "Traceback" not in out.stderr


def test_cli_at_a_socket_left_behind_says_the_daemon_is_not_running(tmp_path: Path) -> None:
    """A daemon killed (or crashed) leaves its socket file with nobody listening."""
    sock = tmp_path / "left.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))  # bound, never listening: what a dead daemon leaves
    path = _site_on(sock, tmp_path)
    out = run("tap", "g", "04A1B2C3D4", "-c", str(path))
    assert out.returncode == 1, out.stderr
    assert "nothing listens on it (connection refused): the daemon is not running" in out.stderr, out.stderr
    assert "`systemctl status gated`" in out.stderr


def test_cli_not_allowed_on_the_socket_says_to_run_as_root(tmp_path: Path) -> None:
    """The socket is 0660, the daemon's user's: another user is refused. Root passes any
    file's mode, so as root the command runs without that power (setpriv drops
    CAP_DAC_OVERRIDE), as an unprivileged user meets the socket."""
    sock = tmp_path / "control.sock"
    path = _site_on(sock, tmp_path)
    plain = [] if os.geteuid() != 0 else ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if plain and shutil.which("setpriv") is None:
        pytest.fail("as root, needs setpriv (util-linux, essential on Debian) to run a command without CAP_DAC_OVERRIDE")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(sock))
        s.listen()
        sock.chmod(0o000)
        out = subprocess.run([*plain, *GATED, "status", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"cannot reach the daemon at {sock}: permission denied" in out.stderr, out.stderr
    assert "run the command as root (sudo)" in out.stderr


def test_scenario_command_is_wired() -> None:
    out = subprocess.run([sys.executable, "-m", "gated.cli", "scenario", "run", "/nonexistent.yaml"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "/nonexistent.yaml" in out.stderr
