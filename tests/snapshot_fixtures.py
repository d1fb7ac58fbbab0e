"""Snapshots made for tests: a small site's chunks, as the central system sends them."""

from __future__ import annotations

from sync.protocol import SnapshotChunk

WIN = {"mon-sun": "00:00-24:00"}


def chunks(n_members: int, balance: int, applied: int, per_chunk: int = 50) -> list[SnapshotChunk]:
    rows: list[tuple[str, dict[str, object]]] = []
    for i in range(n_members):
        rows.append(("members", {"id": f"m{i}", "cards": [f"K{i}"]}))
        rows.append(("passes", {"id": f"p{i}", "member": f"m{i}", "kind": "visits", "balance": balance,
                                "deduct_on": "access", "access_windows": WIN, "applied": {"gate-a": applied}}))
        rows.append(("bookings", {"id": f"b{i}", "member": f"m{i}", "pass": f"p{i}", "zone": "main",
                                  "starts_at": "2026-11-18T10:00", "ends_at": "2026-11-18T11:00", "deducted": True}))
    n = (len(rows) + per_chunk - 1) // per_chunk
    out = []
    for c in range(n):
        part = rows[c * per_chunk : (c + 1) * per_chunk]
        out.append(SnapshotChunk.model_validate({
            "v": 1, "snapshot_id": "snap", "chunk": c, "chunks": n, "delta_seq": 4,
            **{k: [r for kk, r in part if kk == k] for k in ("members", "passes", "bookings")},
        }))
    return out
