"""`gated sim central` as docs/protocol.md tells an integrator to run it: a subprocess on a
real mosquitto, seeded from a scenario-format file for the site asked; a gate's link gets
the seed in its snapshot, its events are applied and acknowledged, Ctrl-C stops it."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from gated.engine import Engine
from rules.credential import Credential
from sync.link import SyncLink
from tests.broker import (
    GATES,
    POLICY,
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
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
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
