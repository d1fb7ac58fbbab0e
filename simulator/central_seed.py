"""Generated data for the reference central system: a deterministic chain-sized data set
(benchmarks). A seed file (`gated sim central --seed`) is read as `gated seed` reads it:
sync/records.py's CentralSeedFile, through gated/seed.py."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any


def generate(
    n_members: int,
    *,
    passes_per_member: float = 1.5,
    bookings_per_member: float = 3.0,
    seed: int = 1,
    day: str = "2026-11-18",
    prefix: str = "",
) -> dict[str, list[dict[str, Any]]]:
    """A deterministic chain-sized data set (bench: 100,000 members, 150,000 passes,
    300,000 bookings)."""
    rnd = random.Random(seed)
    members = [
        {"id": f"{prefix}m{i}", "name": f"Member {i}", "cards": [f"{prefix.upper()}{i:010X}"]} for i in range(n_members)
    ]
    passes = []
    for i in range(int(n_members * passes_per_member)):
        kind = rnd.choice(["visits", "visits", "credits", "time"])
        p: dict[str, Any] = {
            "id": f"{prefix}p{i}",
            "member": f"{prefix}m{i % n_members}",
            "name": kind,
            "kind": kind,
            "deduct_on": "access",
            "access_windows": {"mon-fri": "06:00-22:00", "sat-sun": "08:00-20:00"},
        }
        if kind == "visits":
            p["balance"] = rnd.randint(0, 20)
        elif kind == "credits":
            p["balance"] = rnd.randint(0, 100)
            p["walk_in_cost"] = 5
        passes.append(p)
    base = datetime.fromisoformat(day + "T06:00")
    bookings = []
    for i in range(int(n_members * bookings_per_member)):
        start = base + timedelta(minutes=30 * rnd.randint(0, 30))
        bookings.append(
            {
                "id": f"{prefix}b{i}",
                "member": f"{prefix}m{i % n_members}",
                "pass": f"{prefix}p{i % max(1, len(passes))}",
                "class": rnd.choice(["Spinning", "Yoga", "Pilates", "HIIT"]),
                "zone": "main",
                "starts_at": start.strftime("%Y-%m-%dT%H:%M"),
                "ends_at": (start + timedelta(minutes=45)).strftime("%Y-%m-%dT%H:%M"),
            }
        )
    return {"members": members, "passes": passes, "bookings": bookings}
