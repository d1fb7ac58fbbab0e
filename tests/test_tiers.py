"""The suite's tiers (tests/conftest.py) stay true: a file in the unit tier starts no
process, opens no network connection and drives no browser — what `make check` promises
— and `make check` is the documented quick loop."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.conftest import BROWSER, SLOW, UNIT

TESTS = Path(__file__).resolve().parent
# what a unit test file must not use: another process, a broker, a pty, a Modbus server,
# a whole daemon, a browser
OUTSIDE = re.compile(
    r"\b(subprocess|Popen|create_subprocess_exec|Mosquitto|mosquitto|SimTurnstile|VirtualSerialReader|openpty|"
    r"playwright|chromium|gate_process|running_site|running_daemon|Daemon\(|socat|aiomqtt)\b"
)


def test_every_tier_names_files_that_exist() -> None:
    files = {p.stem for p in TESTS.glob("test_*.py")}
    assert files >= UNIT and files >= BROWSER and files | {"test_package"} >= SLOW
    assert not UNIT & BROWSER and not UNIT & SLOW


def test_unit_files_need_nothing_outside_the_process() -> None:
    for name in sorted(UNIT):
        source = (TESTS / f"{name}.py").read_text(encoding="utf-8")
        found = OUTSIDE.findall(source)
        assert not found, f"{name}.py uses {sorted(set(found))}: not a unit test file (tests/conftest.py)"


def test_make_check_is_lint_typecheck_and_the_unit_tier() -> None:
    out = subprocess.run(["make", "-n", "check"], cwd=TESTS.parent, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ruff check" in out.stdout and "mypy" in out.stdout and "pytest -q -p no:cacheprovider -m unit" in out.stdout
