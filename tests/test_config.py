"""The installer's configuration: every error at once with its line; the JSON Schema in
config/ matches the models; the shipped examples are valid."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gated.auth import hash_password
from gated.config import ConfigError, check_config, load_config

HERE = Path(__file__).parent
ROOT = HERE.parent
BROKEN = sorted((HERE / "configs" / "broken").glob("*.yaml"))


def expectations(path: Path) -> list[tuple[int, str]]:
    return [(int(m[1]), m[2]) for m in re.finditer(r"^# expect: (\d+) (\S+)$", path.read_text(), re.M)]


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_config_reports_each_error_with_line(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = [(line, key) for line, key, _ in info.value.problems]
    for line, key in expectations(path):
        assert (line, key) in found, f"{path.name}: expected {line} {key}, got {found}"


def test_check_config_cli_prints_all_errors() -> None:
    path = HERE / "configs" / "broken" / "two-errors.yaml"
    out = subprocess.run([sys.executable, "-m", "gated.cli", "check-config", str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f"{path}:3: error: site.timezone" in out.stdout
    assert f"{path}:6: error: gates[0].late_arrival" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_good_config_and_warnings() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gated.cli", "check-config", str(HERE / "configs" / "good.yaml")],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout
    assert "warning: console.users" in out.stdout
    assert "warning: mqtt" in out.stdout


EXAMPLES = sorted(p for p in (ROOT / "config").glob("*.yaml") if not p.name.startswith(("mosquitto", "members")))


def installed(example: Path, tmp: Path) -> Path:
    """The example as an installer finishes it: its credentials in credentials/ beside it
    (0600), its CA and client certificate where it says (here, in `tmp`)."""
    text = example.read_text()
    creds = tmp / "credentials"
    creds.mkdir(mode=0o700)
    for name in re.findall(r"\{credential: ([^}]+)\}", text):
        value = hash_password("a-good-password") if name.endswith(".hash") else (
            secrets.token_hex(16) if name.endswith(".scbk") else secrets.token_urlsafe(16))
        (creds / name).write_text(value + "\n")
        (creds / name).chmod(0o600)
    for path in set(re.findall(r"(/etc/gated/[\w.-]+\.pem)", text)):
        (tmp / Path(path).name).write_text("-----BEGIN CERTIFICATE-----\n")
        text = text.replace(path, str(tmp / Path(path).name))
    out = tmp / "gated.yaml"
    out.write_text(text)
    return out


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_shipped_examples_are_valid(path: Path, tmp_path: Path) -> None:
    if path.name == "demo.yaml":
        load_config(path)
        return
    # as shipped, only what an installer must give is missing: credentials and certificates
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert all("credential" in msg or "no such file: /etc/gated/" in msg for _, _, msg in info.value.problems), \
        info.value.problems
    config = load_config(installed(path, tmp_path))
    assert config.console.users and all(u.password_hash.startswith("$argon2") for u in config.console.users)
    # as shipped, with its errors, check-config already warns as it will once installed: a
    # warning it cannot know yet waits, named, at the error it depends on
    shipped, done = check_config(path, env={}), check_config(tmp_path / "gated.yaml", env={})
    assert set(shipped.warnings) <= set(done.warnings), (shipped.warnings, done.warnings)
    waiting = {key for _, key, _ in shipped.waiting}
    assert {key for _, key, _ in set(done.warnings) - set(shipped.warnings)} <= waiting, (done.warnings, shipped.waiting)


def test_examples_point_editors_at_the_installed_schema() -> None:
    for path in EXAMPLES:
        if path.name != "demo.yaml":
            assert path.read_text().startswith("# yaml-language-server: $schema=/usr/share/gated/gated.schema.json\n")


def test_fail_secure_escape_route_is_warned(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "site: {id: s1, timezone: Europe/Berlin}\n"
        "gates:\n"
        "  - id: fire-door\n"
        "    zone: studio\n"
        "    escape_route: true\n"
        "    output: {transport: tcp, host: 127.0.0.1, coil: 0, mode: fail_secure}\n"
    )
    warnings = dict(load_config(cfg).warnings())
    assert "gates[0].output.mode" in warnings


def test_schema_in_repo_matches_models() -> None:
    out = subprocess.run([sys.executable, "-m", "gated.cli", "schema", "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + " — run `gated schema` and commit config/gated.schema.json"


@pytest.mark.parametrize(
    ("stale_cache", "mqtt", "warned"),
    [
        ("{max_age: null, policy: deny}", True, True),  # never stale: the policy never applies
        ("{max_age: null, policy: bookings_and_time_passes}", True, True),
        ("{max_age: null, policy: keep}", True, True),
        ("{max_age: 30d, policy: keep}", True, True),
        ("{max_age: 24h, policy: keep}", True, False),
        ("{max_age: 24h, policy: deny}", True, False),
        ("{max_age: null, policy: keep}", False, False),  # no central: the seed is all there is
    ],
)
def test_a_cache_that_never_goes_stale_is_warned_whatever_its_policy(
        tmp_path: Path, stale_cache: str, mqtt: bool, warned: bool) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "site: {id: s1, timezone: Europe/Berlin}\n"
        "gates: [{id: g1, zone: main, output: {transport: tcp, host: 127.0.0.1, coil: 0}}]\n"
        f"stale_cache: {stale_cache}\n" + ("mqtt: {host: 127.0.0.1}\n" if mqtt else "")
    )
    warnings = dict(load_config(cfg).warnings())
    assert ("stale_cache" in warnings) is warned
    assert ("stale_cache does not apply" in warnings.get("mqtt", "")) is not mqtt


# the packages a wheel of gated holds (pyproject.toml: tool.setuptools.packages.find)
PACKAGES = [name.rstrip("*") for name in re.findall(
    r'"(\w+)\*"', re.search(r"include = \[(.*?)\]", (ROOT / "pyproject.toml").read_text())[1])]  # type: ignore[index]


def copy_code(to: Path) -> None:
    """gated's code as pip lays it in site-packages: the packages, nothing of the repository."""
    to.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, to / name, ignore=shutil.ignore_patterns("__pycache__"))


def gated_from(code: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`gated ARGS` running the code in `code` (bytecode kept out of it)."""
    return subprocess.run([sys.executable, "-X", f"pycache_prefix={cwd / 'pycache'}", "-m", "gated.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(code)})


def files_under(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def test_schema_on_an_installed_box_is_printed_not_written_beside_the_code(tmp_path: Path) -> None:
    """Installed (/opt/venvs/gated/lib/python3.11/site-packages/gated), `gated schema` wrote
    site-packages/config/gated.schema.json: a file no package owns, that `apt purge` leaves
    behind with its directory. Now it prints the schema; --out FILE writes one."""
    from gated.config import json_schema

    site, home = tmp_path / "site-packages", tmp_path / "home"
    copy_code(site)
    home.mkdir()
    before = files_under(site)
    out = gated_from(site, "schema", cwd=home)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == json.loads(json.dumps(json_schema())), out.stdout[:200]
    assert files_under(site) == before and [p.name for p in home.iterdir() if p.name != "pycache"] == []
    check = gated_from(site, "schema", "--check", cwd=home)
    assert check.returncode == 2 and "--out FILE" in check.stderr, check.stderr
    written = home / "gated.schema.json"
    out = gated_from(site, "schema", "--out", str(written), cwd=home)
    assert out.returncode == 0 and out.stdout == f"wrote {written}\n", out.stdout + out.stderr
    assert json.loads(written.read_text()) == json.loads(json.dumps(json_schema()))
    assert oct(written.stat().st_mode & 0o777) == "0o644" and files_under(site) == before
    assert gated_from(site, "schema", "--check", "--out", str(written), cwd=home).returncode == 0


def test_schema_in_a_clone_is_written_into_its_config(tmp_path: Path) -> None:
    """README: from a clone, `gated schema` rewrites config/gated.schema.json (then commit it)."""
    clone, elsewhere = tmp_path / "clone", tmp_path / "elsewhere"
    copy_code(clone)
    (clone / "config").mkdir()
    (clone / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    elsewhere.mkdir()
    stale = gated_from(clone, "schema", "--check", cwd=elsewhere)
    assert stale.returncode == 1 and "differs from the models; run gated schema" in stale.stdout, stale.stdout
    out = gated_from(clone, "schema", cwd=elsewhere)
    schema = clone / "config" / "gated.schema.json"
    assert out.returncode == 0 and out.stdout == f"wrote {schema}\n", out.stdout + out.stderr
    assert schema.read_text() == (ROOT / "config" / "gated.schema.json").read_text()
    assert gated_from(clone, "schema", "--check", cwd=elsewhere).returncode == 0
