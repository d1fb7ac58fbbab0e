"""Two boxes under one daemon id (a cloned SD card), on a real mosquitto with the reference
central system: two real `gated run` processes, each with its own state directory (a copy
of the same card), its own readers and simulated turnstiles.

What this found (mosquitto 2.0): a broker handing a client id to a second connection does
not tell the first one MQTT 5's reason 142 — it closes the socket (paho: "Unspecified
error") and publishes the first one's last will. Neither box raised `daemon_id_in_use`
(the will said `offline` without an `at`, and the online statuses were overwritten by the
wills before the other box subscribed), and the two took the connection from each other
about six times a second each, forever, each connection a resync at the central system.
Now a will carries its connection's `at` (Session.will), an `offline` under our id from a
connection this run never made is a takeover, and while a twin holds a lost connection is
tried again after a quarter of `twin_hold`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from simulator.central import Central
from tests.broker import Mosquitto
from tests.gate_process import IN_CARD, OUT_CARD, Gate, gate_process
from tests.test_daemon import SEED, wait_for

SITE_ID, DAEMON = "storage-site", "gate-s"  # tests/gate_process.py's
HOLD = 6.0  # mqtt.twin_hold: the test's; 60 s by default
WINDOW = 15.0  # the churn is counted over this long
# the backoff is the default (0.1 s after a lost connection, 1 s at most)
MQTT = {"ack_timeout": 1.0, "keepalive": 5, "resync_retry": 2.0, "twin_hold": HOLD}


def cpu_seconds(gate: Gate) -> float:
    fields = Path(f"/proc/{gate.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def knowledge(gate: Gate) -> dict[str, Any]:
    return {g["kind"]: g for g in (await gate.status())["knowledge"]["gaps"]}


async def stats(gate: Gate) -> Counter[str]:
    return Counter((await gate.status())["sync"]["stats"])


def alarms(gate: Gate, kind: str) -> list[dict[str, Any]]:
    return [e for e in gate.events() if e["type"] == "alarm" and e.get("kind") == kind]


async def poll(gates: list[Gate], kind: str, present: bool, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = [kind in await knowledge(g) for g in gates]
        if all(f == present for f in found):
            return
        assert time.monotonic() < deadline, f"{kind} {'raised' if present else 'ended'}: {found}"
        await asyncio.sleep(0.2)


async def test_two_boxes_under_one_daemon_id_both_hold_their_events_until_one_is_gone(
    tmp_path: Path, mosquitto: Mosquitto, central: Central
) -> None:
    central.load(SITE_ID, SEED["members"], SEED["passes"], SEED.get("bookings", []))
    mqtt = {"host": "127.0.0.1", "port": mosquitto.port, **MQTT}
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"

    def applied() -> int:
        return central.applied_seq(SITE_ID, DAEMON)

    # box A alone: a tap, acknowledged; then its SD card is cloned into box B
    async with gate_process(a_dir, a_dir / "state", extra={"mqtt": mqtt}) as a:
        await a.tap(IN_CARD)
        last = a.events()[-1]["seq"]
        await wait_for(lambda: applied() == last, 20, "box A's events at the central")
    shutil.copytree(a_dir / "state", b_dir / "state")
    cloned = applied()

    async with gate_process(a_dir, a_dir / "state", extra={"mqtt": mqtt}, seed=False) as a:
        async with gate_process(b_dir, b_dir / "state", extra={"mqtt": mqtt}, seed=False) as b:
            # both see the other: `daemon_id_in_use` in `gated status` and in their ledgers
            t0 = time.monotonic()
            await poll([a, b], "daemon_id_in_use", True, 10)
            detected = time.monotonic() - t0
            for g in (a, b):
                assert alarms(g, "daemon_id_in_use"), "the alarm is an event of the ledger"
            # churn over WINDOW: reconnects and CPU, while both decide taps
            before = [await stats(g) for g in (a, b)]
            cpu = [cpu_seconds(g) for g in (a, b)]
            t1 = time.monotonic()
            taps = []
            for g in (a, b):
                taps.append(await g.tap(IN_CARD))
                taps.append(await g.tap(OUT_CARD, exit_gate=True))
            assert [t["decision"] for t in taps] == ["granted"] * 4, taps
            await asyncio.sleep(WINDOW - (time.monotonic() - t1))
            span = time.monotonic() - t1
            after = [await stats(g) for g in (a, b)]
            used = [cpu_seconds(g) - c for g, c in zip((a, b), cpu, strict=True)]
            connects = [x["connects"] - y["connects"] for x, y in zip(after, before, strict=True)]
            # a connection taken from the other at most every HOLD/8 s (the wait's jitter);
            # before: about 6 a second each, with the central answering a resync each time
            assert all(n <= span / (HOLD / 8) for n in connects), connects
            assert all(u / span < 0.25 for u in used), used
            # still held at both after the window: signs keep coming at the slower pace
            await poll([a, b], "daemon_id_in_use", True, 1)
            # nothing of either box since the clone went to the central system
            assert applied() == cloned
            ids = {e["id"] for e in central.events(SITE_ID, DAEMON)}
            mine = {name: [e for e in g.events() if e["seq"] > cloned] for name, g in (("a", a), ("b", b))}
            assert all(mine.values()) and not ids & {e["id"] for evs in mine.values() for e in evs}
            b_only = {e["id"] for e in mine["b"]}
            print(f"detected in {detected:.1f} s; over {span:.0f} s: connects {connects}, "
                  f"cpu {[round(u / span, 3) for u in used]}")
        # box B gone: box A's hold ends (`daemon_id_in_use_ended`) and its events go out, once
        t2 = time.monotonic()
        await poll([a], "daemon_id_in_use", False, HOLD + 10)
        await wait_for(lambda: bool(alarms(a, "daemon_id_in_use_ended")), 5, "daemon_id_in_use_ended")
        last = a.events()[-1]["seq"]
        await wait_for(lambda: applied() == last, 10, "box A's held events at the central")
        print(f"recovered in {time.monotonic() - t2:.1f} s")
        sent = Counter(e["id"] for e in central.events(SITE_ID, DAEMON))
        assert all(sent[e["id"]] == 1 for e in a.events() if e["seq"] > cloned)
        assert not b_only & set(sent)  # box B's own, under the same numbers: never delivered
