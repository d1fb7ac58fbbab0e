"""YAML is outside input: bombs, absurd nesting and huge files are refused cleanly, in
bounded time and memory, by `check-config`, the scenario runner and a SIGHUP reload."""

from __future__ import annotations

import asyncio
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from gated.yamlload import Limits, YamlError, load
from tests.test_daemon import GATED, running_daemon, wait_for

# nine levels of nine aliases: 9**9 = 387 million strings from 1.7 KB of text
BOMB_LINES = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'] + [
    f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)
]
BOMB = "\n".join(BOMB_LINES) + "\n"


def test_the_alias_bomb_is_refused_with_its_line() -> None:
    assert len(BOMB) < 2000
    with pytest.raises(YamlError) as e:
        load(BOMB)
    assert "expands to more than" in e.value.message
    assert e.value.line is not None and 1 <= e.value.line <= len(BOMB_LINES)


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(YamlError) as e:
        load("a: " + "[" * 100_000 + "]" * 100_000)
    assert "nests deeper than" in e.value.message and e.value.line == 1


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(YamlError):
        load("a: &x [1, *x]\n")


def test_too_many_aliases_and_too_big() -> None:
    text = "a: &x 1\nb: [" + ",".join(["*x"] * 20) + "]\n"
    assert load(text).data["b"] == ["1"] * 20
    with pytest.raises(YamlError, match="more than 10 aliases"):
        load(text, Limits(max_aliases=10))
    with pytest.raises(YamlError, match="larger than"):
        load(text, Limits(max_bytes=10))


def test_reasonable_aliases_still_work() -> None:
    text = "w: &w {mon-fri: '06:00-22:00'}\np1: {windows: *w}\np2: {windows: *w}\n"
    data = load(text).data
    assert data["p1"] == data["p2"] == {"windows": {"mon-fri": "06:00-22:00"}}


def _limited_memory() -> None:  # pragma: no cover - runs in the child
    # 1.5 GiB of address space: the interpreter and its libraries fit, an expanded bomb does not
    limit = 1536 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize(
    "text, words",
    [
        (BOMB, "expands to more than"),
        ("site: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests deeper than"),
    ],
    ids=["alias-bomb", "deep-nesting"],
)
def test_check_config_refuses_bombs_in_bounded_memory(tmp_path: Path, text: str, words: str) -> None:
    bad = tmp_path / "gated.yaml"
    bad.write_text(text)
    out = subprocess.run(
        [*GATED, "check-config", str(bad)], capture_output=True, text=True, timeout=60, preexec_fn=_limited_memory
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert words in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_check_config_refuses_a_huge_file_unread(tmp_path: Path) -> None:
    big = tmp_path / "gated.yaml"
    with big.open("wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: 64 MiB of nothing
    out = subprocess.run([*GATED, "check-config", str(big)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "larger than" in out.stdout + out.stderr


def test_scenario_runner_refuses_a_bomb(tmp_path: Path) -> None:
    bad = tmp_path / "bomb.yaml"
    bad.write_text(BOMB)
    out = subprocess.run(
        [*GATED, "scenario", "run", str(bad)], capture_output=True, text=True, timeout=60, preexec_fn=_limited_memory
    )
    assert out.returncode == 2 and "expands to more than" in out.stderr
    assert "Traceback" not in out.stderr


async def test_sighup_with_a_bomb_is_refused_and_taps_go_on(tmp_path: Path) -> None:
    async with running_daemon(tmp_path) as d:
        good = d.config.read_text()
        d.config.write_text(good + "\n" + BOMB)
        d.proc.send_signal(signal.SIGHUP)
        d.reader.tap("0499887766")
        await d.expect_notify("reload refused")
        await wait_for(lambda: any(e["type"] == "deduction" for e in d.events()), what="a tap during the refused reload")
        assert d.proc.poll() is None
        d.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(d.proc.wait, 20) == 0
