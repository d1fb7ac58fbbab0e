"""Exits let out during a storage fault and not yet in the store, mirrored to a small file
outside it, so that a restart of the daemon before the store works again does not forget
them (gated/storage_watch.py keeps them in memory: the held exits and the ones counted).

Somebody went out and the store does not know: forgotten, their entry still counts as
"inside" — hard anti-passback turns them away for the rest of the day, and the zone's
occupancy counts them. Read back at the next start, they are reported like the exits
counted beyond the bound (`exits_not_recorded`), without who they were (a held exit's
member is in the closure that would have written it, not worth a format of its own).

The file lives in the runtime directory (`/run/gated/`, a tmpfs, kept across restarts by
the unit's `RuntimeDirectoryPreserve=yes`): another file system than the store's, so a
full or read-only state disk does not take it down too, and gone after a power cut, which
also ends the fault's memory (docs/reliability.md, "Not covered"). Written whole and
renamed into place, not flushed: a tmpfs has nothing to flush to. Every failure here is
logged and counted, never raised: an exit stays free whatever this file does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

log = structlog.get_logger("gated.storage")

MAX_BYTES = 64 * 1024  # a gate a line of ~60 bytes: far beyond any site's gates
MAX_GATES = 256
MAX_COUNT = 10**9


@dataclass(frozen=True, slots=True)
class Mirrored:
    """Exits of one gate not in the store: how many, the first and the last."""

    count: int
    first: datetime
    last: datetime


class ExitsMirror:
    def __init__(self, path: Path, daemon_id: str):
        self.path = path
        self.daemon_id = daemon_id
        self.failures = 0  # writes that failed: shown in `gated status`

    def write(self, gates: dict[str, Mirrored]) -> None:
        """The whole state now; none left removes the file."""
        try:
            if not gates:
                self.path.unlink(missing_ok=True)
                return
            body = json.dumps({
                "daemon": self.daemon_id,
                "gates": {g: [m.count, m.first.timestamp(), m.last.timestamp()] for g, m in sorted(gates.items())},
            })
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(body)
            os.replace(tmp, self.path)
        except OSError as e:
            self.failures += 1
            log.error("exits_mirror_write_failed", path=str(self.path), error=str(e))

    def read(self) -> dict[str, Mirrored]:
        """What a run before this one left (nothing if there is no file). A file that cannot
        be read or is not ours is logged and kept aside (`.bad`), for a person to look at."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.error("exits_mirror_unreadable", path=str(self.path), error=str(e))
            return {}
        try:
            found = parse(raw, self.daemon_id)
        except ValueError as e:
            log.error("exits_mirror_damaged", path=str(self.path), error=str(e))
            try:
                os.replace(self.path, self.path.with_name(self.path.name + ".bad"))
            except OSError:
                pass  # said above; a later run tries again
            return {}
        if found:
            log.warning("exits_mirror_found", path=str(self.path), gates={g: m.count for g, m in found.items()})
        return found


def parse(raw: bytes, daemon_id: str | None = None) -> dict[str, Mirrored]:
    """The file's content, checked: a size, a number of gates, counts and instants in range,
    and, given `daemon_id`, written by that daemon (another's exits are not ours to report:
    a daemon id changed, two daemons sharing a runtime directory)."""
    if len(raw) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if daemon_id is not None and (not isinstance(doc, dict) or doc.get("daemon") != daemon_id):
        raise ValueError(f"written by daemon {str(doc.get('daemon') if isinstance(doc, dict) else None)[:100]!r}, "
                         f"not {daemon_id!r}")
    gates = doc.get("gates") if isinstance(doc, dict) else None
    if not isinstance(gates, dict) or len(gates) > MAX_GATES:
        raise ValueError("no `gates` object of at most 256 gates")
    found: dict[str, Mirrored] = {}
    for gate, value in gates.items():
        if not (isinstance(gate, str) and 0 < len(gate) <= 100 and isinstance(value, list) and len(value) == 3):
            raise ValueError(f"gate {str(gate)[:100]!r}: not [count, first, last]")
        count, first, last = value
        if not (isinstance(count, int) and not isinstance(count, bool) and 0 < count <= MAX_COUNT):
            raise ValueError(f"gate {gate!r}: count {count!r}")
        try:
            a = datetime.fromtimestamp(float(first), UTC)
            b = datetime.fromtimestamp(float(last), UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            raise ValueError(f"gate {gate!r}: instants {first!r}, {last!r}") from None
        if b < a:
            raise ValueError(f"gate {gate!r}: last before first")
        found[gate] = Mirrored(count, a, b)
    return found


__all__ = ["ExitsMirror", "Mirrored", "parse"]
