"""`gated sim day --short` as a user runs it (make test's variant of make soak): two sites,
six gate daemons, the central system, a morning of traffic with every kind of fault, and
every invariant held. Then the check itself is shown to catch what it is for: the run's
data tampered with the ways a bug would (an event lost on the way, a balance gone wrong,
a turnstile turned with nothing recorded), `gated sim day --check` exits 1 and names the
invariant with the events around it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from simulator.day import plan as P
from simulator.day import procfs
from simulator.day.population import generate
from simulator.power_cut import PowerCutDisk
from tests.broker import needs_mosquitto
from tests.test_daemon import GATED


def test_population_and_plan_are_the_seeds() -> None:
    a, b = generate(300, seed=5), generate(300, seed=5)
    assert a.records == b.records and a.cards == b.cards
    kinds = {p["kind"] for s in a.records.values() for p in s["passes"]}
    assert kinds == {"time", "visits", "credits", "marketplace"}
    assert any(m["status"] == "blocked" for s in a.records.values() for m in s["members"])
    chain = [m for m, h in a.home.items() if all(m in a.members_at(s.id) for s in a.sites)]
    assert chain  # members who visit either site
    assert all(a.bookings_at(s.id) for s in a.sites)
    pa, pb = P.make_plan(a, seed=5), P.make_plan(b, seed=5)
    assert pa.to_json() == pb.to_json()
    assert {c.kind for c in pa.chaos} == set(P.CHAOS_KINDS)
    assert {v.kind for v in pa.visits} >= {"walk_in", "booking", "early", "late", "forgot_card"}
    assert any(v.reentry for v in pa.visits) and any(v.qr for v in pa.visits)
    # one body: no member has two visits at once
    by_member: dict[str, list[P.Visit]] = {}
    for v in pa.visits:
        by_member.setdefault(v.member, []).append(v)
    for vs in by_member.values():
        vs.sort(key=lambda v: v.arrive)
        assert all(x.leave <= y.arrive for x, y in zip(vs, vs[1:], strict=False))
    assert P.plan_from_json(json.loads(json.dumps(pa.to_json()))).to_json() == pa.to_json()
    assert generate(300, seed=6).records != a.records
    assert a.day == date(2026, 11, 18)


@pytest.fixture(scope="module")
def short_day(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any], str]]:
    needs_mosquitto()
    d = tmp_path_factory.mktemp("simday") / "run"
    report = d.parent / "report.json"
    out = subprocess.run([*GATED, "sim", "day", "--short", "--seed", "3", "--dir", str(d), "--json", str(report)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]
    yield d, json.loads(report.read_text()), out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_short_day_with_every_fault_keeps_the_books(short_day: tuple[Path, dict[str, Any], str]) -> None:
    d, r, out = short_day
    assert r["violations_total"] == 0, out[-6000:]
    assert "No violation: every invariant held." in out
    print("SIMDAY", json.dumps({"run": r["run"], "latency": r["latency"]["tap_to_coil_ms"]}))
    checked = {i["name"]: i["checked"] for i in r["invariants"]}
    for name in ("rotations", "exactly_once", "balances", "attendance", "fees", "loyalty", "grants",
                 "refusals", "expected_denials", "settled"):
        assert checked[name] > 0, name
    # the day really had its traffic and its faults
    outcomes = r["traffic"]["by_outcome"]
    assert sum(outcomes.values()) > 150
    for key in ("granted:walk_in", "granted:booking", "granted:exit", "denied:unknown_card"):
        assert outcomes.get(key, 0) > 0, key
    done = {c["kind"] for c in r["chaos"] if "skipped" not in c}
    # only a kernel without FUSE has the power cut reported skipped (with why): make test
    # installs the rest
    no_fuse = not os.path.exists("/dev/fuse")
    assert no_fuse or PowerCutDisk.missing() is None, PowerCutDisk.missing()
    assert done == set(P.CHAOS_KINDS) - ({P.POWER_CUT} if no_fuse else set()), done
    if not no_fuse:
        # the power cut came while a member was in the turnstile, and the daemon came back
        cut = next(c for c in r["chaos"] if c["kind"] == P.POWER_CUT)
        assert cut["released"] and cut["alive"], cut
    # the fire drill: people inside went out (some through the released turnstiles, each
    # rotation reported, none charged) and came back in after the all-clear, free
    h = json.loads((d / "harness.json").read_text())
    assert h["evacuees"], "nobody was inside when the fire alarm sounded"
    back = [t for t in h["taps"] if t["purpose"] == "after_evacuation" and t["decision"] == "granted"]
    assert any(t["reason"] == "reentry" for t in back), back
    assert outcomes.get("denied:fire_alarm", 0) > 0  # arrivals during the alarm waited outside
    # a box replaced (its ledger, mark and replica wiped): the new one numbered on after what
    # the central system held, its own events after them — and got the old box's back from
    # the central system, in the ledger under their numbers, its charges with them
    box = next(c for c in r["chaos"] if c["kind"] == P.REPLACE_BOX)
    daemon, holds = P.daemon_id(box["site"], box["gate"]), box["central_holds"]
    assert box["alive"] and f"{daemon}.db.sent" in box["removed"], box
    with contextlib.closing(sqlite3.connect(P.gate_store(d, daemon))) as c:
        held = c.execute("SELECT seq, id FROM events WHERE seq <= ? ORDER BY seq", (holds,)).fetchall()
        restored = c.execute("SELECT COUNT(*) FROM events WHERE json_extract(body, '$.kind') = 'ledger_restored'"
                             ).fetchone()[0]
        wanted = c.execute("SELECT COUNT(*) FROM meta WHERE key = 'own_history_wanted'").fetchone()[0]
        back = [s for (s,) in c.execute("SELECT seq FROM deductions WHERE seq <= ? ORDER BY seq", (holds,))]
    with contextlib.closing(sqlite3.connect(d / "central" / "central.db")) as c:
        central = c.execute("SELECT seq, id FROM events WHERE daemon = ? AND seq <= ? ORDER BY seq",
                            (daemon, holds)).fetchall()
        charged = [s for (s,) in c.execute(
            "SELECT seq FROM events WHERE daemon = ? AND type = 'deduction' AND seq <= ? ORDER BY seq", (daemon, holds))]
    assert [s for s, _ in central] == list(range(1, holds + 1)) and restored == (1 if holds else 0), box
    assert wanted == 0 and held == central and back == charged, (held[:5], central[:5], back, charged)
    rot = next(i for i in r["invariants"] if i["name"] == "rotations")["figures"]
    assert rot["rotations"] > 100 and rot["rotations"] <= rot["committed"] + rot["unconfirmed"]
    assert r["latency"]["tap_to_coil_ms"]["n"] > 50 and r["latency"]["tap_to_coil_ms"]["p99"] is not None
    assert (d / "report.txt").exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [7, 12])
def test_short_days_with_other_seeds_keep_the_books(seed: int, tmp_path: Path) -> None:
    """Two more mornings, other populations and other fault instants (the first seed
    alone once hid a bug that other days showed: after a failover the site's daemons sat
    on two brokers and the one finalising no-shows stopped hearing the others)."""
    needs_mosquitto()
    report = tmp_path / "report.json"
    out = subprocess.run([*GATED, "sim", "day", "--short", "--seed", str(seed), "--dir", str(tmp_path / "run"),
                          "--json", str(report)], capture_output=True, text=True, timeout=900)
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(report.read_text())
    assert r["violations_total"] == 0, (out.stdout + out.stderr)[-6000:]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is gone; only its exit status waits to be read


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sigterm_takes_the_whole_day_down(tmp_path: Path) -> None:
    """Found by killing a soak with `kill`: the daemons, brokers and central it had started
    ran on, orphaned, and a daemon retrying its reader's path opened a later test's pty
    that had been given the same number. Now SIGTERM ends the day as Ctrl-C does: nothing
    it started outlives it, and no power-cut mount is left behind."""
    needs_mosquitto()
    d = tmp_path / "run"
    proc = subprocess.Popen([*GATED, "sim", "day", "--short", "--seed", "3", "--dir", str(d)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("day: ready"):
            break
    kids = procfs.descendants(proc.pid)
    assert len(kids) >= 10, "".join(seen)  # six daemons, three brokers, the central, ...
    mounts = [g for g in (d / "gates").iterdir() if os.path.ismount(g)]
    assert mounts or not os.path.exists("/dev/fuse"), "the power-cut gate's store is not mounted"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(120) == 143, rest[-3000:]
    assert "stopped (SIGTERM)" in rest
    left = [k for k in kids if _running(k)]
    assert not left, [Path(f"/proc/{k}/cmdline").read_bytes()[:200] for k in left]
    assert not [m for m in mounts if os.path.ismount(m)]


def test_a_random_seed_is_picked_and_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from simulator.day.args import _seed

    picked = {_seed("random") for _ in range(5)}
    printed = capsys.readouterr().out
    assert all(f"seed {s} (random)" in printed for s in picked) and len(picked) > 1
    assert _seed("42") == 42
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        _seed("tomorrow")


def _tampered(src: Path, dst: Path) -> Path:
    # WAL files too (a copy reads as the original); not a socket a killed process left
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.sock"))
    return dst


def _check(d: Path) -> tuple[int, dict[str, Any], str]:
    report = d / "recheck.json"
    out = subprocess.run([*GATED, "sim", "day", "--check", str(d), "--json", str(report)], capture_output=True,
                         text=True, timeout=300)
    return out.returncode, json.loads(report.read_text()), out.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_check_catches_a_lost_event_a_wrong_balance_and_a_silent_rotation(
    short_day: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    d, _, _ = short_day
    rc, r, _ = _check(d)
    assert rc == 0 and r["violations_total"] == 0  # the untouched run checks clean again

    # an event lost on its way to the central system
    lost = _tampered(d, tmp_path / "lost")
    with sqlite3.connect(lost / "central" / "central.db") as c:
        site, daemon, seq = c.execute(
            "SELECT site, daemon, seq FROM events WHERE type = 'deduction' ORDER BY seq DESC LIMIT 1").fetchone()
        c.execute("DELETE FROM events WHERE site = ? AND daemon = ? AND seq = ?", (site, daemon, seq))
    rc, r, text = _check(lost)
    assert rc == 1
    names = {v["invariant"] for v in r["violations"]}
    assert "exactly_once" in names and "balances" in names
    v = next(v for v in r["violations"] if v["invariant"] == "exactly_once")
    assert v["gate"] == daemon and seq in v["detail"]["missing"]
    assert "VIOLATIONS" in text

    # a gate that missed a top-up: its balance is not the central's
    wrong = _tampered(d, tmp_path / "wrong")
    gate_db = next((wrong / "gates").glob("*-in-1.db"))
    with sqlite3.connect(gate_db) as c:
        replica = gate_db.parent / c.execute("SELECT value FROM meta WHERE key = 'replica.file'").fetchone()[0]
    with sqlite3.connect(replica) as c:
        pid = c.execute("SELECT id FROM passes WHERE central_balance IS NOT NULL ORDER BY id LIMIT 1").fetchone()[0]
        c.execute("UPDATE passes SET central_balance = CAST(central_balance AS INTEGER) - 1 WHERE id = ?", (pid,))
    rc, r, _ = _check(wrong)
    assert rc == 1
    v = next(v for v in r["violations"] if v["invariant"] == "balances")
    assert v["detail"]["first"][0]["pass"] == pid

    # a gate that refused members its rules let in (walk-ins recorded as "no pass"): every
    # view it could have had grants them
    refused = _tampered(d, tmp_path / "refused")
    with sqlite3.connect(refused / "central" / "central.db") as c:
        rows = c.execute("SELECT rowid, daemon, seq, body FROM events WHERE type = 'access' ORDER BY site, daemon, seq"
                         ).fetchall()
        walk_ins = [(rowid, daemon, seq, json.loads(body)) for rowid, daemon, seq, body in rows
                    if json.loads(body).get("reason") == "walk_in"][:5]
        for rowid, _, _, body in walk_ins:
            body.update(decision="denied", reason="no_pass", passed=False)
            c.execute("UPDATE events SET body = ? WHERE rowid = ?", (json.dumps(body), rowid))
    rc, r, _ = _check(refused)
    assert rc == 1
    wrong_refusals = {(v["gate"], v["at"]) for v in r["violations"] if v["invariant"] == "refusals"}
    assert wrong_refusals and wrong_refusals <= {(daemon, body["at"]) for _, daemon, _, body in walk_ins}, r

    # the replaced box's numbers: the old box's events back at the gate, or — where they did
    # not come back — a void of reason `restored` (the central system keeps its own event
    # there); any other void (or event) under them is another event there
    box = next(c for c in r["chaos"] if c["kind"] == P.REPLACE_BOX)
    name = P.daemon_id(box["site"], box["gate"])
    for reason, caught in (("restored", False), ("seq_lost", True)):
        voided = _tampered(d, tmp_path / f"voided-{reason}")
        with sqlite3.connect(P.gate_store(voided, name)) as c:
            c.execute("UPDATE events SET id = 'tampered', type = 'void', body = json_object('id', 'tampered', 'seq', 1, "
                      "'type', 'void', 'at', at, 'reason', ?) WHERE seq = 1", (reason,))
        rc, r, _ = _check(voided)
        if box["central_holds"] and caught:
            assert rc == 1 and any(v["invariant"] == "exactly_once" and v["gate"] == name for v in r["violations"]), r
        else:
            assert rc == 0, r

    # a turnstile that turned once more than anything recorded: the events around it shown
    silent = _tampered(d, tmp_path / "silent")
    h = json.loads((silent / "harness.json").read_text())
    name = next(iter(sorted(h["turnstiles"])))
    h["turnstiles"][name]["rotations"] += 1 + next(
        i for i in r["invariants"] if i["name"] == "rotations")["figures"]["per_gate"][name]["unconfirmed"]
    (silent / "harness.json").write_text(json.dumps(h))
    rc, r, _ = _check(silent)
    assert rc == 1
    v = next(v for v in r["violations"] if v["invariant"] == "rotations")
    assert v["gate"] == name and v["around"], v


def test_a_daemon_under_tracemalloc_reports_what_grew(tmp_path: Path) -> None:
    """`gated sim day --trace-memory` runs each daemon as simulator/day/harness/traced.py does: the
    daemon as usual, and what its heap grew by, line by line, in a file."""
    import os
    import signal
    import sys
    import time

    import yaml

    cfg = tmp_path / "gated.yaml"
    cfg.write_text(yaml.safe_dump({
        "site": {"id": "s", "timezone": "Europe/Madrid"}, "daemon_id": "traced",
        "gates": [{"id": "g1", "zone": "main"}],
        "store": {"path": str(tmp_path / "g.db"), "backup_interval": None},
        "control": {"socket": str(tmp_path / "c.sock")},
        "console": {"enabled": False}, "metrics": {"enabled": False}, "logging": {"format": "json"},
    }))
    out = tmp_path / "growth.json"
    env = {**os.environ, "GATED_TRACE_WARMUP": "0.5", "GATED_TRACE_EVERY": "0.5"}
    proc = subprocess.Popen([sys.executable, "-X", "tracemalloc=4", "-m", "simulator.day.harness.traced", str(out), "-m", "gated.cli", "run", "-c",
                             str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and (tmp_path / "c.sock").exists()):  # reported, and the daemon up
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no growth report"
            time.sleep(0.1)
        report = json.loads(out.read_text())
        assert report["traced_kb"] > 0 and isinstance(report["top"], list)
        assert all("tracemalloc.py" not in " ".join(x["stack"]) for x in report["top"])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_make_soak_is_the_documented_day() -> None:
    """docs/reliability.md: `make soak` = `.venv/bin/gated sim day --seed 1`. The full day
    takes ~15 minutes, so the suite runs its --short variant above and checks here that
    the target runs the documented command (make -n prints it without running it)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-n", "soak"], cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert ".venv/bin/gated sim day --seed 1" in out.stdout.splitlines(), out.stdout
    seeded = subprocess.run(["make", "-n", "soak", "SEED=7"], cwd=root, capture_output=True, text=True, timeout=60)
    assert ".venv/bin/gated sim day --seed 7" in seeded.stdout.splitlines(), seeded.stdout


def test_a_replay_held_past_its_codes_expiry_is_rightly_expired() -> None:
    """A replayed QR code that a loaded queue (x120: a real second is two simulated
    minutes) delivered after the code expired is refused qr_expired, and that is right —
    but only when the gate's own decision instant was past the expiry."""
    from types import SimpleNamespace

    from simulator.day.checks.gates import _expired_when_decided

    tap = {"sim": "2026-11-18T05:52:00+00:00", "site": "north", "gate": "in-1", "who": "m1",
           "expires": "2026-11-18T05:52:10+00:00"}

    def run(decided: str, reason: str = "qr_expired", member: str = "m1") -> Any:
        ev = {"type": "access", "gate": "in-1", "member": member, "reason": reason, "decided_at": decided,
              "at": decided}
        return SimpleNamespace(events={"north": [ev]})

    assert _expired_when_decided(run("2026-11-18T05:52:11+00:00"), tap)
    assert not _expired_when_decided(run("2026-11-18T05:52:05+00:00"), tap)  # still valid: a real failure
    assert not _expired_when_decided(run("2026-11-18T05:52:11+00:00", member="m2"), tap)
    assert not _expired_when_decided(run("2026-11-18T05:52:11+00:00", reason="qr_replayed"), tap)
    assert not _expired_when_decided(run("2026-11-18T05:52:11+00:00"), {**tap, "expires": None})
