"""The installer's configuration: every error at once with its line; the JSON Schema in
config/ matches the models; the shipped examples are valid."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gated.config import ConfigError, load_config

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


EXAMPLES = sorted(p for p in (ROOT / "config").glob("*.yaml") if not p.name.startswith("mosquitto"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_shipped_examples_are_valid(path: Path) -> None:
    load_config(path)


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
