"""The behaviour contract, through the real CLI: `gated scenario run FILE...`.

- every file in tests/scenarios/ holds (exit 0);
- the shared scenarios from the source documents hold (exit 0), when that folder exists;
- every file in tests/scenarios/invalid/ is rejected with exit 2 and ONE stderr line naming
  the file, the line and the key, never a traceback;
- a failed expectation gives exit 1 and a readable line (key, expected, actual); the runner
  goes on through later files and exits with the highest status.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OWN = ROOT / "tests" / "scenarios"
INVALID = OWN / "invalid"
SHARED = ROOT.parent / "shared" / "scenarios"


def run(*files: Path | str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gated.cli", "scenario", "run", *map(str, files)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _records(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


OWN_FILES = sorted(OWN.glob("*.yaml"))


@pytest.fixture(scope="module")
def own_run() -> subprocess.CompletedProcess[str]:
    """All our scenario files in one run (one interpreter start instead of one per file)."""
    return run(*OWN_FILES)


def test_own_scenarios_exist() -> None:
    assert len(OWN_FILES) >= 15


def test_own_scenarios_all_hold(own_run: subprocess.CompletedProcess[str]) -> None:
    assert own_run.returncode == 0, own_run.stderr
    assert own_run.stderr == ""


@pytest.mark.parametrize("path", OWN_FILES, ids=lambda p: p.name)
def test_own_scenario_holds(path: Path, own_run: subprocess.CompletedProcess[str]) -> None:
    records = [rec for rec in _records(own_run.stdout) if rec["file"] == str(path)]
    assert records, "one JSON line per step"
    assert [rec["step"] for rec in records] == list(range(1, len(records) + 1))
    bad = [rec.get("failures") for rec in records if not rec["ok"]]
    assert not bad, bad


def test_shared_scenarios_hold() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (CI has it); tests/scenarios holds our own copy of every rule")
    files = sorted(SHARED.glob("*.yaml"))
    assert files
    r = run(*files)
    assert r.returncode == 0, r.stderr


# file -> (line, key) the one stderr line must name
INVALID_CASES: dict[str, tuple[int, str]] = {
    "unknown-enum.yaml": (5, "gates[0].direction"),
    "unknown-timezone.yaml": (3, "site.timezone"),
    "missing-gate.yaml": (14, "steps[0].tap.gate"),
    "misspelled-key.yaml": (9, "passes[0].balnce"),
    "dangling-pass-member.yaml": (9, "passes[0].member"),
    "dangling-booking-pass.yaml": (11, "bookings[0].pass"),
    "repeated-id.yaml": (8, "members[1].id"),
    "steps-backwards.yaml": (18, "steps[2].at"),
    "bad-duration.yaml": (5, "gates[0].late_arrival"),
    "unparsable-yaml.yaml": (11, "YAML does not parse"),
    "tap-card-and-qr.yaml": (14, "steps[0].tap"),
    "missing-required.yaml": (11, "bookings[0].zone"),
    "wrong-type.yaml": (9, "passes[0].balance"),
    "balance-on-time-pass.yaml": (9, "passes[0].balance"),
    "step-booking-removed.yaml": (19, "steps[2].mark_attended.booking"),
    "expect-unknown-reason.yaml": (18, "steps[1].expect.reason"),
    "unreadable-card.yaml": (12, "steps[0].tap.card"),  # was a traceback while running
    "adjust-points-out-of-range.yaml": (10, "steps[0].adjust_points.points"),  # was a traceback
    "expect-daemon-only-reason.yaml": (8, "steps[0].expect.reason"),
    "member-unknown-key.yaml": (4, "members[0].email"),  # was accepted: the central's record has an email
    "booking-ends-before-start-in-the-fold.yaml": (8, "bookings[0].ends_at"),  # was accepted: compared clock faces
    "lone-surrogate.yaml": (6, "members[0].name"),  # was a traceback while running
    "card-longer-than-the-store-keeps.yaml": (4, "members[0].cards[0]"),  # was a traceback while running
    "key-by-field-name.yaml": (10, "bookings[0].pass_"),  # was accepted: the models took field names too
}


def test_every_invalid_file_has_a_case() -> None:
    assert {p.name for p in INVALID.glob("*.yaml")} == set(INVALID_CASES)


@pytest.fixture(scope="module")
def invalid_run() -> subprocess.CompletedProcess[str]:
    return run(*(INVALID / name for name in sorted(INVALID_CASES)))


def test_invalid_files_exit_2(invalid_run: subprocess.CompletedProcess[str]) -> None:
    assert invalid_run.returncode == 2
    assert "Traceback" not in invalid_run.stderr
    assert invalid_run.stdout == ""  # nothing of an invalid file runs
    assert len(invalid_run.stderr.splitlines()) == len(INVALID_CASES)


@pytest.mark.parametrize("name", sorted(INVALID_CASES))
def test_invalid_file_names_file_line_and_key(name: str, invalid_run: subprocess.CompletedProcess[str]) -> None:
    line, key = INVALID_CASES[name]
    path = INVALID / name
    mine = [x for x in invalid_run.stderr.splitlines() if x.startswith(f"{path}:")]
    assert len(mine) == 1, invalid_run.stderr
    assert mine[0].startswith(f"{path}:{line}: "), mine[0]
    assert key in mine[0], mine[0]


@pytest.mark.parametrize("name", ["unparsable-yaml.yaml", "misspelled-key.yaml"])
def test_invalid_file_alone_is_one_stderr_line(name: str) -> None:
    r = run(INVALID / name)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n"), r.stderr
    assert "Traceback" not in r.stderr


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


PASSING = """\
name: passes
site: {timezone: Europe/Madrid}
gates: [{id: g1, zone: main}]
members: [{id: m1, name: Ana, cards: ["C1"]}]
passes: [{id: p1, member: m1, name: Visits, kind: visits, balance: 3, access_windows: {mon-sun: "06:00-22:00"}}]
steps:
  - {at: 2026-11-18T10:00, tap: {gate: g1, card: "C1"}, expect: {decision: granted, balances: {p1: 2}}}
"""

FAILING = """\
name: fails
site: {timezone: Europe/Madrid}
gates: [{id: g1, zone: main}]
members: [{id: m1, name: Ana, cards: ["C1"]}]
passes: [{id: p1, member: m1, name: Visits, kind: visits, balance: 3, access_windows: {mon-sun: "06:00-22:00"}}]
steps:
  - {at: 2026-11-18T10:00, tap: {gate: g1, card: "C1"}, expect: {decision: granted, reason: walk_in}}
  - {at: 2026-11-18T10:01, tap: {gate: g1, card: "C1"}, expect: {reason: booking, balances: {p1: 7}}}
  - {at: 2026-11-18T10:02, tick: {}}
"""


def test_failed_expectation_exit_1_with_a_readable_diff(tmp_path: Path) -> None:
    bad = _write(tmp_path, "fails.yaml", FAILING)
    r = run(bad)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    fails = [line for line in r.stderr.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 2, r.stderr
    reason = next(line for line in fails if "reason" in line)
    assert str(bad) in reason and "step 2" in reason and "line 8" in reason
    assert 'reason: expected "booking", actual "walk_in"' in reason
    balance = next(line for line in fails if "balances.p1" in line)
    assert "balances.p1: expected 7, actual 1" in balance
    records = _records(r.stdout)
    assert [rec["ok"] for rec in records] == [True, False, True]  # every step still runs
    failures = records[1]["failures"]
    assert isinstance(failures, list)
    assert {"key": "reason", "expected": "booking", "actual": "walk_in"} in failures


def test_runner_goes_on_and_exits_with_the_highest_status(tmp_path: Path) -> None:
    good = _write(tmp_path, "good.yaml", PASSING)
    bad = _write(tmp_path, "bad.yaml", FAILING)
    invalid = INVALID / "unknown-enum.yaml"

    r = run(bad, good)
    assert r.returncode == 1
    assert {rec["file"] for rec in _records(r.stdout)} == {str(bad), str(good)}

    r = run(invalid, bad, good)
    assert r.returncode == 2
    assert {rec["file"] for rec in _records(r.stdout)} == {str(bad), str(good)}
    assert sum(line.startswith(f"{invalid}:") for line in r.stderr.splitlines()) == 1
    assert any(line.startswith(f"FAIL {bad}") for line in r.stderr.splitlines())

    r = run(good, invalid)
    assert r.returncode == 2

    r = run(good, good)
    assert r.returncode == 0


def test_a_missing_file_is_invalid_not_a_traceback(tmp_path: Path) -> None:
    r = run(tmp_path / "nope.yaml", _write(tmp_path, "good.yaml", PASSING))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_undecodable_file_names_its_line(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"name: ok\nsite: {timezone: Europe/Madrid}\nsteps: []\n# caf\xe9\n")
    r = run(p)
    assert r.returncode == 2
    assert r.stderr.startswith(f"{p}:4: ")
    assert len(r.stderr.splitlines()) == 1


def test_yaml_words_reach_the_models_as_written(tmp_path: Path) -> None:
    """`none` stays the word none (anti_passback), and a timestamp stays the site's wall time."""
    text = """\
site: {timezone: America/New_York}
gates: [{id: g1, zone: main, anti_passback: none}]
members: [{id: m1, cards: [0042]}]
passes: [{id: p1, member: m1, kind: time, access_windows: {mon-sun: "09:00-10:00"}}]
steps:
  - {at: 2026-11-18 09:30, tap: {gate: g1, card: "0042"}, expect: {decision: granted, reason: walk_in}}
  - {at: 2026-11-18T14:30:00Z, tap: {gate: g1, card: "0042"}, expect: {decision: granted, reason: walk_in}}
  - {at: 2026-11-18T10:00, tap: {gate: g1, card: "0042"}, expect: {decision: denied, reason: outside_window}}
"""
    r = run(_write(tmp_path, "words.yaml", text))
    assert r.returncode == 0, r.stderr


def test_recursive_alias_is_invalid_not_a_traceback(tmp_path: Path) -> None:
    r = run(_write(tmp_path, "alias.yaml", "name: ok\nsite: &s {timezone: UTC, x: [*s]}\n"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_key_too_long_to_parse_is_named_at_once_not_searched_for_minutes(tmp_path: Path) -> None:
    """A quoted key of 100,000 letters (YAML's implicit keys stop at 1,024): naming the key
    where YAML gave up searched the whole line with a backtracking pattern — minutes of CPU
    for one file (an outside review's hang). Now a window of the line is searched."""
    base = ("name: k\nsite: {timezone: UTC}\ngates: [{id: g1, zone: main, direction: in}]\n"
            "steps:\n  - {at: 2026-11-18T10:00, tick: {}, expect: {balances: {\"%s\": 8}}}\n")
    f = _write(tmp_path, "long-key.yaml", base % ("L" * 100_000))
    r = subprocess.run([sys.executable, "-m", "gated.cli", "scenario", "run", str(f)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)  # a hang, not a budget: minutes before
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1 and "long-key.yaml:5: invalid" in r.stderr, r.stderr
