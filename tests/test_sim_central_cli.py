"""`gated sim central` as docs/protocol.md tells an integrator to run it: a subprocess on a
real mosquitto, seeded from a scenario-format file for the site asked; a gate's link gets
the seed in its snapshot, its events are applied and acknowledged, Ctrl-C stops it. The
seed is the file `gated seed` reads (config/members.example.yaml as shipped), and a bad
one is its lines and exit 2 before anything starts."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gated.engine import Engine
from rules.credential import Credential
from rules.model import Site
from simulator.central_db import CentralDB
from sync.link import SyncLink
from sync.records import CentralSeedFile
from sync.store import Store
from tests.broker import (
    GATES,
    POLICY,
    TZ,
    WAIT_S,
    Mosquitto,
    clock,
    make_store,
    running,
    settings_for,
    site,
    wait_until,
)

GATED = str(Path(sys.executable).parent / "gated")
EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "members.example.yaml"
SEED = """\
members:
  - {id: m1, name: Ana, cards: [C1]}
passes:
  - {id: p1, member: m1, kind: visits, balance: 10, deduct_on: access, access_windows: {mon-sun: "00:00-24:00"}}
"""


async def test_gated_sim_central_serves_a_site(mosquitto: Mosquitto, tmp_path: Path) -> None:
    seed = tmp_path / "seed.yaml"
    seed.write_text(SEED)
    db = tmp_path / "central.db"
    proc = subprocess.Popen(
        [GATED, "sim", "central", "--host", "127.0.0.1", "--port", str(mosquitto.port), "--site", "s1",
         "--db", str(db), "--seed", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        store = make_store(tmp_path / "gate.db", "gate-a")
        now = clock()
        link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
        async with running(link.run()):
            await link.wait_connected(WAIT_S)
            await wait_until(lambda: link.stats["snapshots_applied"] >= 1 or proc.poll() is not None,
                             what="a snapshot from gated sim central")
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert store.member_for_card("C1") == "m1"  # the seed, under the site asked for
            pending, _ = Engine(store, site(), GATES, POLICY).tap("in-1", Credential.card("C1"), now())
            assert pending.decision.granted
            await wait_until(lambda: store.acked_seq == store.last_seq > 0, what="the ack")
            await wait_until(lambda: store.balance("p1") == 9 and link.delta_seq >= 1, what="the balance delta")
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT applied_seq FROM applied WHERE site = 's1' AND daemon = 'gate-a'").fetchone()[0] == 2
        assert conn.execute("SELECT balance FROM passes WHERE site = 's1' AND id = 'p1'").fetchone()[0] == "9"


async def test_a_stop_is_bounded_when_the_cleanup_never_ends() -> None:
    """`gated sim central`'s Ctrl-C (gated.sim_commands.until_stopped): the simulator is cancelled
    and waited for at most its grace, even when its cleanup never ends — as aiomqtt's
    disconnect, waiting with no limit for a broker that does not answer, once did in CI."""
    import asyncio
    import os
    import time

    from gated.sim_commands import until_stopped

    cleaned_up = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned_up.set()
            await asyncio.Event().wait()  # a disconnect nobody answers

    asyncio.get_running_loop().call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)
    t0 = time.monotonic()
    await asyncio.wait_for(until_stopped(stubborn(), grace=0.5), WAIT_S)
    assert cleaned_up.is_set() and time.monotonic() - t0 < WAIT_S


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out.decode(errors="replace") if out else ""


async def test_the_documented_rehearsal_seeds_from_the_shipped_members_file(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """docs/installer-guide.md's rehearsal with config/members.example.yaml as shipped (its
    `applied: {}` once stopped `gated sim central` with a traceback): the site's gate gets
    Ana's card and pass in its snapshot."""
    seed = tmp_path / "members.yaml"
    shutil.copy(EXAMPLE, seed)
    db = tmp_path / "central.db"
    proc = subprocess.Popen(
        [GATED, "sim", "central", "--host", "127.0.0.1", "--port", str(mosquitto.port), "--site", "downtown",
         "--db", str(db), "--seed", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    store = Store(tmp_path / "gate.db", Site(TZ, id="downtown"), daemon_id="gate-a", durable=False)
    try:
        link = SyncLink(store, settings_for(mosquitto, "gate-a", site="downtown"), now=clock(), gates=GATES)
        async with running(link.run()):
            await link.wait_connected(WAIT_S)
            await wait_until(lambda: link.stats["snapshots_applied"] >= 1 or proc.poll() is not None,
                             what="a snapshot from gated sim central")
            assert proc.poll() is None, _stop(proc)
            assert store.member_for_card("em:04A1B2C3D4") == "m-ana"
            assert store.balance("p-bruno") == 10
    finally:
        store.close()
        out = _stop(proc)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


def test_a_bad_seed_is_its_lines_and_exit_2(tmp_path: Path) -> None:
    """A seed file with a mistake stops `gated sim central` before it starts, the way
    `gated seed` reports it: the file, the line, the key; no traceback, no database."""
    seed = tmp_path / "members.yaml"
    seed.write_text(EXAMPLE.read_text().replace("kind: visits", "kind: visit", 1))
    db = tmp_path / "central.db"
    out = subprocess.run(
        [GATED, "sim", "central", "--port", "1", "--site", "downtown", "--db", str(db), "--seed", str(seed)],
        capture_output=True, text=True, timeout=WAIT_S,
    )
    assert out.returncode == 2, out
    line = next(n for n, text in enumerate(seed.read_text().splitlines(), 1) if "kind: visit" in text)
    assert f"{seed}:{line}: passes[1].kind:" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not db.exists()
    missing = subprocess.run(
        [GATED, "sim", "central", "--port", "1", "--site", "downtown", "--db", str(db), "--seed", str(tmp_path / "no.yaml")],
        capture_output=True, text=True, timeout=WAIT_S,
    )
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr, missing


def test_a_seeds_applied_is_the_central_systems_applied_seq(tmp_path: Path) -> None:
    """`applied` in a seed says the balances already hold those daemons' events: loaded
    into the central system's one applied seq per daemon, so those events resent are
    repeats; maps that disagree, or a scenario's `applied_seq` naming no daemon, cannot be
    held that way and are refused."""
    pass_ = {"member": "m1", "kind": "visits", "balance": "3", "applied": {"gate-a": "4"}}
    seed = CentralSeedFile.model_validate(
        {"members": [{"id": "m1"}], "passes": [{"id": "p1", **pass_}, {"id": "p2", **pass_}]}
    )
    db = CentralDB(tmp_path / "central.db")
    try:
        db.load("s1", seed.members, [p.record() for p in seed.passes], seed.bookings, applied=seed.site_applied())
        assert db.applied_seq("s1", "gate-a") == 4
    finally:
        db.conn.close()
    with pytest.raises(ValidationError, match="every pass's applied must agree"):
        CentralSeedFile.model_validate({"passes": [{"id": "p1", **pass_}, {"id": "p2", **pass_, "applied": {}}]})
    with pytest.raises(ValidationError, match="applied_seq names no daemon"):
        CentralSeedFile.model_validate({"passes": [{"id": "p1", **{**pass_, "applied": None}, "applied_seq": 4}]})
