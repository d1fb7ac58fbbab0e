"""docs/operations.md, "On a virtual machine": the command it gives an installer, run as
they would (a root shell), on this machine's kernel when it has free page reporting, and
the setting put back afterwards."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
PARAM = Path("/sys/module/page_reporting/parameters/page_reporting_order")


def documented_command() -> str:
    text = DOC.read_text()
    section = text[text.index("### On a virtual machine"):]
    found = re.search(r"^    (echo \d+ > /sys/module/page_reporting/parameters/page_reporting_order)$", section, re.M)
    assert found, "the command is no longer in docs/operations.md"
    return found.group(1)


def test_the_documented_command_makes_the_blocks_coarse() -> None:
    command = documented_command()  # read whether or not this kernel can run it
    if not PARAM.exists():
        pytest.skip("this kernel has no free page reporting (no page_reporting module): nothing to tune")
    if os.geteuid() != 0:
        pytest.skip("the command is for root, as the guide says")
    before = PARAM.read_text().strip()
    try:
        subprocess.run(["sh", "-c", command], check=True, timeout=10)
        assert PARAM.read_text().strip() == "10"
    finally:
        PARAM.write_text(before)
    assert PARAM.read_text().strip() == before
