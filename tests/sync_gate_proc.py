"""A gate daemon's sync side in its own process, for the SIGKILL tests.

    python -m tests.sync_gate_proc DB PORT DAEMON MODE

MODE `tap`: commit a tap every few milliseconds while the link publishes; `drain`: no new
taps, exit 0 once every event is acknowledged and no snapshot is pending; `resync`: ask
for a snapshot at once, keep tapping meanwhile. Prints one line per tap (its seq).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from gated.engine import Engine
from rules.credential import Credential
from sync.link import SyncLink
from sync.store import Store
from tests.broker import GATES, POLICY, settings_for_port, site


async def main(db: str, port: int, daemon: str, mode: str) -> int:
    store = Store(Path(db), site(), daemon_id=daemon, durable=True)
    link = SyncLink(store, settings_for_port(port, daemon), now=lambda: datetime.now(UTC), gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    task = asyncio.create_task(link.run())
    await link.wait_connected(30)
    print("READY", flush=True)
    if mode == "resync":
        await link.request_resync("manual")
    if mode == "drain":
        while not (store.acked_seq == store.last_seq and not link.awaiting_snapshot and not link.snapshot_in_progress):
            await asyncio.sleep(0.05)
        print("DRAINED", store.last_seq, flush=True)
        task.cancel()
        return 0
    i = 0
    staging_seen = imported = False
    while True:
        if link.snapshot_in_progress and not staging_seen:
            staging_seen = True
            print("STAGING", flush=True)
        elif staging_seen and not link.snapshot_in_progress and not imported:
            imported = True
            print("IMPORTED", flush=True)
        card = ("C1", "C2")[i % 2]
        gate = "in-1" if (i // 2) % 2 == 0 else "out-1"
        _, committed = engine.tap(gate, Credential.card(card), datetime.now(UTC))
        print("SEQ", committed.events[-1]["seq"], flush=True)
        i += 1
        await asyncio.sleep(0.005)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])))
