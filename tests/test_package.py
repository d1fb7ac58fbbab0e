"""The Debian package as an installer gets it (issue 23): `make deb` builds it once per
session; its contents and lintian's verdict are checked; it is installed with `apt install`
into a throwaway root (tests/package_root.py: this machine's / behind an overlay, in a
mount namespace: the host is untouched), where every shell block of
docs/installer-guide.md runs in order against simulated boards and readers, and the
installed `gated check-config`, `gated seed`, `gated run` and `gated relock` do their work;
then an upgrade keeps the store and the configuration, a rollback is the older package
installed over it, and a purge removes both.

There is no systemd as PID 1 here (nor in CI), so the guide's `systemctl` blocks are marked
(`<!-- guide-test: systemd -->`) and checked another way: `systemd-analyze verify` of the
installed unit, then what the unit says is run as it says — `ExecStart=` as an
unprivileged user in the unit's supplementary groups, with `StateDirectory=` and
`RuntimeDirectory=` made and handed to that user (/var/lib/private made traversable, as
the service's own mount namespace does), the credentials of
`LoadCredential=gated:/etc/gated/credentials` copied to `$CREDENTIALS_DIRECTORY` as
`gated_<file>` readable by that user alone, `NOTIFY_SOCKET` for READY=1 and STATUS=,
`ExecReload=`'s SIGHUP, and after the stop `ExecStopPost=`. What systemd itself adds (the
sandbox, DynamicUser's allocation) is not exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from gated.auth import hash_password
from simulator.turnstile import Person, SimRtuLine, SimTurnstile
from sync.store.schema import SCHEMA_VERSION
from tests.package_root import OverlayRoot, available
from tests.test_demo import free_port

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "installer-guide.md"
VERSION = re.search(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]  # type: ignore[index]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


# the package's version names its build (Makefile DEB_VERSION): every build newer than the last
DEB_VERSION = f"{VERSION}+git{_git('rev-list', '--count', 'HEAD')}.g{_git('rev-parse', '--short=7', 'HEAD')}"
UNIT_UID = 61234  # in systemd's DynamicUser= range (61184-65519)
PASSWORD = "desk-password-1"  # what the installer types at `gated hash-password`


# -- the package, built once -----------------------------------------------------------------


@dataclass
class Built:
    deb: Path
    lintian: subprocess.Popen[str]  # runs while the install tests do (2 cores)
    build_seconds: float


@pytest.fixture(scope="session")
def built() -> Iterator[Built]:
    why = available()
    if why is not None:
        pytest.skip(f"the package tests {why}")
    t0 = time.monotonic()
    out = subprocess.run(["make", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    debs = sorted((ROOT / "dist").glob(f"gated_{DEB_VERSION}_*.deb"))
    assert len(debs) == 1, debs
    lintian = subprocess.Popen(["lintian", "--no-tag-display-limit", str(debs[0])], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    yield Built(debs[0], lintian, time.monotonic() - t0)
    if lintian.poll() is None:
        lintian.kill()
        lintian.wait()


def deb_files(deb: Path) -> dict[str, str]:
    """path -> the listing's line, for every file in the package."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
    files = {}
    for line in out.stdout.splitlines():
        name = line.split(None, 5)[5].split(" -> ")[0]
        files[name.removeprefix(".")] = line
    return files


def test_the_rollback_check_tells_a_build_that_reads_the_sent_mark(built: Built) -> None:
    """docs/operations.md, "Upgrade and roll back": roll back only to a build that reads
    gated.db.sent, which `dpkg -c ./gated_OLD_amd64.deb | grep -q sent_mark.py` tells — run
    as written on this build (which does) and on the same listing without that file."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    command = "dpkg -c ./gated_OLD_amd64.deb | grep -q sent_mark.py"
    assert f"`{command}`" in guide
    ran = subprocess.run(command.replace("./gated_OLD_amd64.deb", str(built.deb)), shell=True, timeout=120)
    assert ran.returncode == 0
    older = subprocess.run(command.replace("./gated_OLD_amd64.deb", str(built.deb)).replace(
        "| grep -q", "| grep -v sent_mark.py | grep -q"), shell=True, timeout=120)
    assert older.returncode == 1


def test_the_package_holds_what_an_installer_needs(built: Built, tmp_path: Path) -> None:
    files = deb_files(built.deb)
    for path in ("/opt/venvs/gated/bin/gated", "/lib/systemd/system/gated.service", "/etc/gated/gated.yaml",
                 "/usr/share/gated/gated.schema.json", "/usr/share/gated/examples/turnstile-serial-tcp.yaml",
                 "/usr/share/gated/examples/members.example.yaml", "/usr/share/doc/gated/installer-guide.md",
                 "/usr/share/doc/gated/operations.md", "/usr/share/doc/gated/copyright",
                 "/usr/share/man/man1/gated.1.gz"):
        assert path in files, path
    assert "/usr/bin/gated -> /opt/venvs/gated/bin/gated" in files["/usr/bin/gated"]
    assert "-> /usr/bin/python3" in files["/opt/venvs/gated/bin/python3"]  # Debian's Python
    assert not [p for p in files if "__pycache__" in p]  # compiled by postinst, where it runs
    assert not [p for p in files if p.endswith("/pip") or "/site-packages/pip/" in p]
    info = subprocess.run(["dpkg-deb", "-f", str(built.deb), "Version", "Depends"], capture_output=True,
                          text=True, check=True).stdout
    assert f"Version: {DEB_VERSION}\n" in info and "python3 (<< 3.12)" in info
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(built.deb), str(control)], check=True)
    assert (control / "conffiles").read_text().split() == ["/etc/gated/gated.yaml"]
    preinst, postinst, postrm = ((control / n).read_text() for n in ("preinst", "postinst", "postrm"))
    assert "deb-systemd-invoke stop 'gated.service'" in preinst  # stopped before an upgrade
    assert "gated store upgrade" in postinst and "deb-systemd-invoke start" in postinst
    assert "rm -rf /etc/gated" in postrm and "/var/lib/private/gated" in postrm
    # the example in /etc is all comments: the daemon cannot start on it by mistake
    example = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(built.deb)], capture_output=True, check=True).stdout
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(example)) as tar:
        member = tar.extractfile("./etc/gated/gated.yaml")
        assert member is not None
        text = member.read().decode()
        unit = tar.extractfile("./lib/systemd/system/gated.service")
        assert unit is not None
        unit_text = unit.read().decode()
    assert all(not ln.strip() or ln.startswith("#") for ln in text.splitlines())
    assert "ExecStart=/usr/bin/gated run -c /etc/gated/gated.yaml" in unit_text
    assert "ExecStopPost=/usr/bin/gated relock -c /etc/gated/gated.yaml" in unit_text
    assert "LoadCredential=gated:/etc/gated/credentials" in unit_text


# -- the installer guide, run -----------------------------------------------------------------


@dataclass
class Block:
    line: int
    mark: str | None
    body: str


def guide_blocks(text: str) -> list[Block]:
    out = []
    for m in re.finditer(r"(?:<!-- guide-test: (?P<mark>[\w-]+) -->\n)?```sh\n(?P<body>.*?)```", text, re.S):
        out.append(Block(text[: m.start("body")].count("\n") + 1, m["mark"], m["body"]))
    return out


@dataclass
class Unit:
    """The installed gated.service, run as it says (see the module doc)."""

    root: OverlayRoot
    shared: Path
    settings: dict[str, list[str]] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    notify: socket.socket | None = None
    statuses: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def load(self) -> None:
        text = self.root.read("/lib/systemd/system/gated.service")
        for line in text.splitlines():
            if "=" in line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                self.settings.setdefault(key.strip(), []).append(value.strip())

    def one(self, key: str) -> str:
        assert len(self.settings.get(key, [])) == 1, (key, self.settings.get(key))
        return self.settings[key][0]

    @property
    def user(self) -> str:
        groups = [str(grp.getgrnam(g).gr_gid) for g in self.one("SupplementaryGroups").split()]
        return f"{UNIT_UID}:{UNIT_UID}:{','.join(groups)}"

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": str(self.shared / "notify.sock"), "CREDENTIALS_DIRECTORY": "/run/credentials/gated.service",
                "WATCHDOG_USEC": str(int(float(self.one("WatchdogSec")) * 1_000_000))}

    def start(self) -> None:
        assert self.one("DynamicUser") == "yes" and self.one("Type") == "notify"
        state, runtime = self.one("StateDirectory"), self.one("RuntimeDirectory")
        name, _, source = self.one("LoadCredential").partition(":")
        uid = UNIT_UID
        # systemd with DynamicUser=: a state directory made before (gated seed, as root) is
        # moved under /var/lib/private and handed, whole, to the service's user
        setup = f"""
            if [ -d /var/lib/{state} ] && [ ! -L /var/lib/{state} ]; then
                install -d -m 0700 /var/lib/private && mv /var/lib/{state} /var/lib/private/{state}
                ln -s private/{state} /var/lib/{state}
            fi
            install -d -m 0700 /var/lib/private /var/lib/private/{state}
            [ -L /var/lib/{state} ] || ln -s private/{state} /var/lib/{state}
            # systemd shows the service its own directory under /var/lib/private (0700 for
            # everyone else); without the service's own mount namespace: traversable, not listable
            chmod 0711 /var/lib/private
            chown -R {uid}:{uid} /var/lib/private/{state}
            install -d -m 0755 -o {uid} -g {uid} /run/{runtime}
            creds=/run/credentials/gated.service
            rm -rf $creds && install -d -m 0500 -o {uid} -g {uid} $creds
            for f in {source}/*; do
                [ -f "$f" ] || continue
                install -m 0400 -o {uid} -g {uid} "$f" "$creds/{name}_$(basename "$f")"
            done
        """
        out = self.root.run(setup)
        assert out.returncode == 0, out.stderr
        if self.notify is not None:
            self.notify.close()
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock = self.shared / "notify.sock"
        sock.unlink(missing_ok=True)
        self.notify.bind(str(sock))
        sock.chmod(0o777)
        self.notify.settimeout(0.2)
        self.proc = self.root.popen(self.one("ExecStart"), user=self.user, env=self.env())
        self.expect("READY=1")

    def expect(self, text: str, timeout: float = 30) -> None:
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                msg = self.notify.recv(4096).decode()
                for line in msg.splitlines():
                    if line.startswith("STATUS="):
                        self.statuses.append(line.removeprefix("STATUS="))
                if text in msg:
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited {self.proc.returncode}: {self.output()}")
        raise AssertionError(f"no {text!r} from the daemon within {timeout} s; statuses {self.statuses}")

    def reload(self) -> None:
        assert self.proc is not None
        assert self.one("ExecReload") == "/bin/kill -HUP $MAINPID"
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> subprocess.CompletedProcess[str]:
        """SIGTERM (KillSignal=), then ExecStopPost= as the same user."""
        assert self.proc is not None and self.one("KillSignal") == "SIGTERM"
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=float(self.one("TimeoutStopSec")))
        assert code == 0, self.output()
        self.proc = None
        after = self.root.run(self.one("ExecStopPost"), user=self.user, env=self.env())
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        return after

    def output(self) -> str:
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout is not None:
            self.log.append(self.proc.stdout.read())
        return "".join(self.log)[-4000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def open_to_dialout(*devices: str) -> None:
    """What a udev rule does for a USB serial adapter: the device to the dialout group."""
    gid = grp.getgrnam("dialout").gr_gid
    for device in devices:
        real = os.path.realpath(device)
        os.chown(real, -1, gid)
        os.chmod(real, 0o660)


class Site:
    """The hardware on the installer's bench, simulated: a turnstile on Modbus TCP, a board
    on an RS-485 line, a serial card reader, an OSDP reader fresh from its box."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self.stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Site:
        from drivers.readers.osdp_reader import SerialChannel
        from simulator.osdp_reader import SimulatedOsdpReader
        from simulator.serial_reader import VirtualSerialReader
        from simulator.socat_pair import socat_pty_pair

        self.turnstile = await self.stack.enter_async_context(SimTurnstile(port=0, person=Person(delay=0.3)))
        self.line = await self.stack.enter_async_context(SimRtuLine([SimTurnstile(transport="rtu", unit=2)]))
        self.reader = self.stack.enter_context(VirtualSerialReader(self.shared / "reader-1"))
        pair = await self.stack.enter_async_context(socat_pty_pair())
        # the pty itself: socat's links are in this machine's /tmp, which the root does not share
        self.osdp_device = os.path.realpath(pair.client_end)
        channel = SerialChannel(pair.server_end)
        self.stack.callback(channel.close)
        self.osdp = self.stack.enter_context(SimulatedOsdpReader(channel, address=0, install_mode=True))
        open_to_dialout(str(self.reader.path), self.osdp_device)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()


def installers_edit(example: str, site: Site) -> str:
    """What the installer types into /etc/gated/gated.yaml after copying the example: the
    devices found in step 2, no central system (members from a file), an OSDP reader with
    its key as a credential, ports free on this machine, tap injection for commissioning."""
    cfg = yaml.safe_load(example)
    # this bench is open whenever the tests run (the example's hours closed it at 23:24 in
    # Madrid, and on its closed dates)
    cfg["site"].pop("opening_hours", None)
    cfg["site"].pop("closed_dates", None)
    gate = cfg["gates"][0]
    gate["readers"][0]["device"] = str(site.reader.path)
    gate["readers"].append({"type": "osdp", "id": "osdp-a", "device": site.osdp_device, "address": 0,
                            "scbk": {"credential": "osdp-a.scbk"}})
    gate["output"].update(host="127.0.0.1", port=site.turnstile.port, passage_timeout=1.5)
    del cfg["mqtt"]
    cfg["console"]["port"] = free_port()
    cfg["metrics"] = {"port": free_port()}
    cfg["control"]["injected_reads"] = True
    return "# yaml-language-server: $schema=/usr/share/gated/gated.schema.json\n" + yaml.safe_dump(cfg, sort_keys=False)


def run_block(root: OverlayRoot, block: Block, subs: dict[str, str], shared: Path) -> subprocess.CompletedProcess[str]:
    body = block.body
    for placeholder, value in subs.items():
        body = body.replace(placeholder, value)
    return root.run(body, cwd=str(shared), env={"GATED_PASSWORD": PASSWORD}, timeout=180)


async def test_the_installer_guide_runs_as_written(built: Built, tmp_path: Path) -> None:
    shared = tmp_path / "bench"
    shared.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    (shared / built.deb.name).write_bytes(built.deb.read_bytes())
    text = GUIDE.read_text()
    blocks = guide_blocks(text)
    commands = [ln.strip() for b in blocks for ln in b.body.splitlines() if ln.strip()]
    # the guide's steps, in order (what the installer could not finish)
    for needed in ("apt install ./gated_*.deb", "gated check-config /etc/gated/gated.yaml", "gated seed -c",
                   "gated osdp-install osdp-a", "gated tap turnstile-1"):
        assert any(c.startswith(needed) for c in commands), needed
    async with Site(shared) as site:
        subs = {"/dev/serial/by-id/usb-FTDI_…-port0": os.path.realpath(site.line.device),  # the RS-485 adapter
                "192.0.2.10": f"127.0.0.1:{site.turnstile.port}"}  # the TCP board
        for placeholder in subs:
            assert placeholder in text, placeholder
        with OverlayRoot(tmp_path / "overlay", shared) as root:
            unit = Unit(root, shared)
            try:
                await asyncio.to_thread(walk_the_guide, root, unit, site, blocks, subs, shared)
            finally:
                unit.kill()


def walk_the_guide(root: OverlayRoot, unit: Unit, site: Site, blocks: list[Block], subs: dict[str, str],
                   shared: Path) -> None:
    said: dict[str, str] = {}
    for block in blocks:
        where = f"installer-guide.md:{block.line}"
        if block.mark == "systemd":
            systemd_block(root, unit, block, said)
            continue
        if block.mark == "interrupt":  # a live view: Ctrl-C once it shows something
            # SIGINT as on a terminal (a test run in the background inherits it ignored)
            proc = root.popen(f"env --default-signal=INT {block.body.strip()}", cwd=str(shared))
            assert proc.stdout is not None
            seen = []
            while not any("coil=" in x for x in seen):
                line = proc.stdout.readline()
                assert line, (where, seen, proc.wait(timeout=30))
                seen.append(line)
            proc.send_signal(signal.SIGINT)
            output = "".join(seen) + proc.communicate(timeout=30)[0]
            assert proc.returncode in (0, 130) and "Traceback" not in output, (where, output)
            said[block.body] = output
            continue
        assert block.mark is None, (where, block.mark)
        out = run_block(root, block, subs, shared)
        assert out.returncode == 0, f"{where}:\n{block.body}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stdout + out.stderr, (where, out.stderr)
        said[block.body] = out.stdout + out.stderr
        if block.body.startswith("apt install"):
            # what the package put in /etc: an example the daemon cannot run on, saying why
            for command in ("gated check-config /etc/gated/gated.yaml", "gated run -c /etc/gated/gated.yaml"):
                shipped = root.run(command)
                assert shipped.returncode == 2 and "every line a comment?): start from an example" in shipped.stdout, \
                    (command, shipped.stdout + shipped.stderr)
            assert root.run("stat -c %a /etc/gated/credentials").stdout.strip() == "700"
        if "cp /usr/share/gated/examples/turnstile-serial-tcp.yaml" in block.body:
            # the installer's part: the example copied, now edited for this bench
            root.write("/etc/gated/gated.yaml", installers_edit(root.read("/etc/gated/gated.yaml"), site))
    # what each step should have shown
    text = "\n".join(said.values())
    assert f"gated {DEB_VERSION}" in text  # the build, as the central system hears it too
    assert "answers" in said[next(b for b in said if "--units 1-16" in b)]
    assert "OK (1 gates" in said[next(b for b in said if b.startswith("gated check-config"))]
    seeded = said[next(b for b in said if "gated seed" in b)]
    assert '"members": 3' in seeded and "has no access_windows" in seeded
    assert "coil=off (locked)" in said[next(b for b in said if "gated monitor" in b)]
    hardware = said[next(b for b in said if "gated test-relay" in b)]
    assert "passage seen: yes" in hardware and "secure channel verified" in hardware
    # the OSDP key step worked as written: the key is the credential's, root's alone
    key = root.run("stat -c '%a %U' /etc/gated/credentials/osdp-a.scbk /etc/gated/credentials/desk.hash")
    assert key.stdout.split("\n")[:2] == ["600 root", "600 root"], key.stdout
    tap = json.loads(said[next(b for b in said if "gated tap" in b)].splitlines()[0])
    assert tap["decision"] == "granted" and tap["member"] == "m-ana", tap
    assert site.turnstile.unlocks >= 3  # relay pulse, test-relay, the tap
    # after the reload the tap injection is refused, as the guide says
    refused = root.run("gated tap turnstile-1 04A1B2C3D4 -c /etc/gated/gated.yaml")
    assert refused.returncode == 1 and "injected_reads" in refused.stdout, refused.stdout
    # a secret kept encrypted at rest (the guide's systemd-creds paragraph): check-config, as
    # root, decrypts it to check it (the host key it makes stays in the throwaway root)
    boss = hash_password("boss-password")
    enc = root.run("install -d -m 0700 /etc/gated/credentials.encrypted && systemd-creds encrypt --name=boss.hash - "
                   "/etc/gated/credentials.encrypted/boss.hash", stdin=boss)
    assert enc.returncode == 0, enc.stderr
    assert boss not in root.read("/etc/gated/credentials.encrypted/boss.hash")
    cfg = yaml.safe_load(root.read("/etc/gated/gated.yaml"))
    cfg["console"]["users"].append({"name": "boss", "role": "admin", "password_hash": {"credential": "boss.hash"}})
    root.write("/etc/gated/gated.yaml", yaml.safe_dump(cfg, sort_keys=False))
    checked = root.run("gated check-config /etc/gated/gated.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    root.run("echo garbage > /etc/gated/credentials.encrypted/boss.hash")
    checked = root.run("gated check-config /etc/gated/gated.yaml")
    assert checked.returncode == 2 and "credential 'boss.hash': cannot decrypt" in checked.stdout, checked.stdout
    root.run("rm /etc/gated/credentials.encrypted/boss.hash")
    cfg["console"]["users"].pop()
    root.write("/etc/gated/gated.yaml", yaml.safe_dump(cfg, sort_keys=False))
    # a card at the real (simulated) reader opens too, and lands in the store the unit's user owns
    unlocks = site.turnstile.unlocks
    site.reader.tap("04A1B2C3D5")  # Carla: blocked
    site.reader.tap("04A1B2C3D4")  # Ana
    deadline = time.monotonic() + 10
    while site.turnstile.unlocks == unlocks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert site.turnstile.unlocks == unlocks + 1
    # a crash mid-pulse (nobody turns the turnstile): ExecStopPost relocks
    site.turnstile.set_person(turns=False)
    site.reader.tap("04A1B2C3D4")
    deadline = time.monotonic() + 10
    while not site.turnstile.unlocked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert unit.proc is not None and site.turnstile.unlocked
    unit.proc.send_signal(signal.SIGKILL)
    unit.proc.wait()
    unit.proc = None
    assert site.turnstile.unlocked  # the end of the pulse died with the daemon
    out = root.run(unit.one("ExecStopPost"), user=unit.user, env=unit.env())
    assert out.returncode == 0 and "turnstile-1: locked" in out.stdout, out.stdout + out.stderr
    assert not site.turnstile.unlocked
    upgrade_rollback_purge(root, unit, shared)


def systemd_block(root: OverlayRoot, unit: Unit, block: Block, said: dict[str, str]) -> None:
    """The lines systemd would carry out, each checked the way the module doc says."""
    for line in block.body.splitlines():
        command = line.split("#")[0].strip()
        if not command:
            continue
        if command == "systemctl enable --now gated":
            verify = root.run("systemd-analyze verify /lib/systemd/system/gated.service")
            assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
            unit.load()
            unit.start()
        elif command == "systemctl status gated":
            assert unit.proc is not None and unit.proc.poll() is None
            if not any(s.startswith("ready: 1 gates") for s in unit.statuses):
                unit.expect("STATUS=ready: 1 gates")
        elif command == "systemctl reload gated":
            # the guide's "then off again": the installer turns tap injection off first
            cfg = yaml.safe_load(root.read("/etc/gated/gated.yaml"))
            cfg["control"]["injected_reads"] = False
            root.write("/etc/gated/gated.yaml", yaml.safe_dump(cfg, sort_keys=False))
            unit.reload()
            unit.expect("configuration reloaded")
        else:
            raise AssertionError(f"installer-guide.md:{block.line}: no check for {command!r}")
    said[block.body] = "\n".join(unit.statuses)


def upgrade_rollback_purge(root: OverlayRoot, unit: Unit, shared: Path) -> None:
    """docs/operations.md, "Upgrade and roll back", on the site the guide set up. The newer
    package is this one with its version raised (dpkg-deb repack): what is tested is the
    package's upgrade path — maintainer scripts, conffile, store — not newer code."""
    count = ("/opt/venvs/gated/bin/python -c \"import sqlite3; print(sqlite3.connect("
             "'file:/var/lib/gated/gated.db?mode=ro', uri=True).execute('SELECT count(*) FROM events').fetchone()[0])\"")
    events_before = root.run(count)
    assert events_before.returncode == 0 and int(events_before.stdout) > 0, events_before.stderr
    config_before = root.read("/etc/gated/gated.yaml")
    newer = shared / "newer"
    repack = root.run(
        f"mkdir -p {newer} && dpkg-deb -R ./gated_{DEB_VERSION}_*.deb {newer}/tree && sed -i 's/^Version: .*/Version: {DEB_VERSION}+1/' "
        f"{newer}/tree/DEBIAN/control && dpkg-deb --root-owner-group -b -Zgzip -z1 {newer}/tree {newer}/ >/dev/null",
        cwd=str(shared),
    )
    assert repack.returncode == 0, repack.stderr
    up = root.run("apt install -y ./newer/gated_*.deb", cwd=str(shared), timeout=300)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    assert f"schema {SCHEMA_VERSION}: up to date" in up.stdout + up.stderr, up.stdout[-2000:]
    assert root.run("dpkg-query -W -f '${Version}' gated").stdout == f"{DEB_VERSION}+1"
    assert root.read("/etc/gated/gated.yaml") == config_before
    assert root.run("gated store check -c /etc/gated/gated.yaml").stdout.strip().endswith(": ok")
    # the store still belongs to the unit's user: postinst ran as root on it
    owners = root.run("stat -c '%u' /var/lib/private/gated/*").stdout.split()
    assert owners and set(owners) == {str(UNIT_UID)}, owners
    unit.start()  # the new version runs on the kept store, with every event of before
    after = unit.stop()
    assert after.returncode == 0, after.stdout + after.stderr
    assert int(root.run(count).stdout) >= int(events_before.stdout)
    down = root.run("apt install -y --allow-downgrades ./gated_*.deb", cwd=str(shared), timeout=300)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
    assert root.run("dpkg-query -W -f '${Version}' gated").stdout == DEB_VERSION
    assert root.read("/etc/gated/gated.yaml") == config_before
    purge = root.run("apt purge -y gated", timeout=300)
    assert purge.returncode == 0, purge.stdout[-2000:] + purge.stderr[-2000:]
    for path in ("/etc/gated", "/var/lib/gated", "/var/lib/private/gated", "/opt/venvs/gated", "/usr/bin/gated"):
        assert not root.exists(path), path


# -- the README's quick start --------------------------------------------------------------------


def test_readme_quick_start_runs_what_the_tests_run() -> None:
    """README's first block, in the order a newcomer meets it: `make demo` runs the demo
    tests/test_demo.py runs; `make test` is this suite (run it inside itself it cannot);
    `make deb` is run for real above: each target's command, as make would run it."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block is not None
    targets = [m[1] for m in re.finditer(r"^make (\w+)", block[1], re.M)]
    assert targets == ["demo", "test", "deb"], targets
    expected = {"deb": "dpkg-buildpackage", "demo": "-m gated.demo", "test": "-m pytest"}
    for target in targets:
        out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and expected[target] in out.stdout, (target, out.stdout[-2000:])


def test_every_build_is_an_upgrade_of_the_one_before() -> None:
    """`apt install ./gated_NEW.deb` over an installed build: every build was 0.1.0, so apt
    took a newer one for the installed one and did nothing — no stop, no store upgrade, the
    old code running on (an outside tester's reading of the package). The version now
    names the build, newer than the build before it and than the unnumbered 0.1.0."""
    out = subprocess.run(["make", "-n", "deb"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = re.search(r"^cp build/deb/gated_(\S+)_\S+\.deb ", out.stdout, re.M)
    assert built is not None and built[1] == DEB_VERSION, out.stdout[-2000:]
    count = int(_git("rev-list", "--count", "HEAD"))
    before = f"{VERSION}+git{count - 1}.g{_git('rev-parse', '--short=7', 'HEAD~1')}" if count > 1 else VERSION
    for older in (before, VERSION):
        newer = subprocess.run(["dpkg", "--compare-versions", DEB_VERSION, "gt", older])
        assert newer.returncode == 0, (DEB_VERSION, older)
    # and the program says which build it is (PEP 440 allows the build as a local version)
    from packaging.version import Version

    assert str(Version(DEB_VERSION)) == DEB_VERSION


# -- the unit's memory limit, as docs/operations.md tells it ---------------------------------------


def test_the_memory_limit_is_the_one_the_operations_guide_sizes() -> None:
    """docs/operations.md "Memory" sizes MemoryMax by a measurement (the snapshot worker at a
    million members beside the daemon); the unit must carry the figure the guide names, and
    the drop-in the guide shows (`[Service] MemoryMax=…`) must be the unit's own key."""
    unit = (ROOT / "systemd" / "gated.service").read_text()
    limits = re.findall(r"^MemoryMax=(\S+)$", unit, re.M)
    guide = (ROOT / "docs" / "operations.md").read_text()
    section = guide.split("## Memory", 1)[1].split("\n## ", 1)[0]
    assert limits == ["512M"] and "`MemoryMax=512M`" in section, limits
    assert "[Service] MemoryMax=" in section and "[Service]" in unit


# -- lintian, last: it has run beside the install tests ----------------------------------------


def test_lintians_verdict(built: Built) -> None:
    """No error and no warning; the overrides (debian/gated.lintian-overrides) say why each
    is there (a dh-virtualenv package lives in /opt, with wheels as upstream built them)."""
    out, _ = built.lintian.communicate(timeout=300)
    tags = [ln for ln in out.splitlines() if re.match(r"^[EW]: ", ln)]
    assert tags == [], "\n".join(tags)
    assert built.lintian.returncode == 0, out
