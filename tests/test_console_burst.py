"""A 6 pm burst at the desk (issue 24, "Done when"): 200 taps in 2 minutes at three gates,
the console's live feed open in a real Chromium — every tap a row, each drawn within a
second of the gate's answer. The run is bench/console_burst.py's (the same figures go to
`make bench` and docs/performance.md); its median, p99 and max are printed.

Which part must stay under a second, and why: an entry at the turnstile is committed, and
so shown, after the person walked through (DESIGN.md, "The path of a tap") — a queue at the
turnstile is people, not the console. So the limit holds for *answer → row* (what the console
adds) and for *tap → row* of every tap without a rotation to wait for (exits, the door
without a relay, denials); entries at the turnstile are reported beside them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.console_burst import burst
from tests.test_console_browser import _playwright

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LIMIT_MS = 1000.0


@pytest.mark.timeout(600)
async def test_200_taps_in_2_minutes_each_drawn_within_a_second(tmp_path: Path) -> None:
    _playwright()  # skips where Chromium or Playwright is missing
    lines: list[str] = []
    r = await burst(tmp_path, taps=200, seconds=120.0, log=lines.append)
    print("\n".join(lines))
    print({k: r[k] for k in ("tap_to_row", "answer_to_row", "by_kind", "decisions", "over_1s")})
    assert r["page_errors"] == []
    assert r["missing"] == 0 and r["rows_in_page"] == 200  # nothing dropped
    assert r["decisions"]["granted"] > 100 and r["decisions"]["denied"] > 10
    assert r["answer_to_row"]["max"] < LIMIT_MS, r["answer_to_row"]
    for kind, figures in r["by_kind"].items():
        if kind != "turnstile":
            assert figures["max"] < LIMIT_MS, (kind, figures)
    assert r["tap_to_row"]["median"] < LIMIT_MS
