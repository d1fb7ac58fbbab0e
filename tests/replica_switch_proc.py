"""A store importing a snapshot in its own process, SIGKILLed at a chosen step of the switch,
for tests/test_sync_kill.py.

    python -m tests.replica_switch_proc DB MEMBERS STEP

Imports a snapshot of MEMBERS members (a tap committed while the worker builds it) and
kills itself with SIGKILL at STEP:

- `attached`: the new replica attached in place of the old, before the ledger transaction;
- `in_tx`: inside the ledger transaction, the pointer written, before the COMMIT;
- `committed`: after the COMMIT, before the old file is deleted;
- `none`: not at all (exits 0 after the switch).

Prints `TAPPED <seq>` once the tap during the build is committed. Nothing here is a hook
in the daemon: the kill is patched in from outside, at the functions the switch calls.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gated.engine import Engine
from rules.credential import Credential
from sync.protocol import SnapshotChunk
from sync.snapshot import SnapshotHeader, SnapshotImporter, payload_of
from sync.store import REPLICA_FILE_KEY, Store
from sync.store import attach as attach_module
from sync.store.meta import Meta
from sync.store.replica_file import ReplicaFiles
from tests.broker import GATES, POLICY, site

NOW = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
WIN = {"mon-sun": "00:00-24:00"}


def chunks(n: int, snapshot_id: str, per_chunk: int = 500) -> list[SnapshotChunk]:
    rows: list[tuple[str, dict[str, Any]]] = []
    for i in range(n):
        rows.append(("members", {"id": f"m{i}", "cards": [f"K{i}"]}))
        rows.append(("passes", {"id": f"p{i}", "member": f"m{i}", "kind": "visits", "balance": 10,
                                "deduct_on": "access", "access_windows": WIN, "applied": {"gate-k": 0}}))
    count = (len(rows) + per_chunk - 1) // per_chunk
    return [
        SnapshotChunk.model_validate({
            "v": 1, "snapshot_id": snapshot_id, "chunk": c, "chunks": count, "delta_seq": 1,
            **{k: [r for kk, r in rows[c * per_chunk : (c + 1) * per_chunk] if kk == k] for k in ("members", "passes")},
        })
        for c in range(count)
    ]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def main(db: str, members: int, step: str) -> int:
    store = Store(Path(db), site(), daemon_id="gate-k", durable=True)
    engine = Engine(store, site(), GATES, POLICY)
    if step == "attached":
        attach = attach_module.attach

        def attach_then_die(conn: sqlite3.Connection, path: Path) -> None:
            attach(conn, path)
            if path != store.replica_path:
                die()

        attach_module.attach = attach_then_die
    elif step == "in_tx":
        put = Meta.put

        def put_then_die(self: Meta, key: str, value: str) -> None:
            put(self, key, value)
            if key == REPLICA_FILE_KEY:
                die()

        Meta.put = put_then_die  # type: ignore[method-assign]
    elif step == "committed":
        ReplicaFiles.remove = staticmethod(lambda path: die())  # type: ignore[method-assign]
    imp = SnapshotImporter(store, "gate-k")
    parts = chunks(members, f"snap-{members}")
    await imp.begin(SnapshotHeader.of(parts[0]), NOW)
    for c in parts:
        await imp.add(SnapshotHeader.of(c), payload_of(c))
    finishing = asyncio.create_task(imp.finish())
    # a tap while the worker builds: decided on the old replica, committed to the ledger
    _, committed = engine.tap("in-1", Credential.card("K1"), NOW)
    print("TAPPED", committed.events[-1]["seq"], flush=True)
    await finishing
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
