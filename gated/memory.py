"""Where the daemon's memory is (`gated status` → `memory`, the metric
`gated_memory_bytes{part}`): a gate box runs for months, and a resident size that grows
is either a leak or a cache filling up to its bound — the parts tell which.

- `rss`: resident memory (/proc/self/status).
- `sqlite`: what SQLite has allocated now — mostly its page caches, bounded by each
  connection's `cache_size` per attached database; they fill as the ledger grows
  (`sqlite_peak`: its high-water mark).
- `heap_free`: memory the C allocator holds free (glibc's `mallinfo2`): freed but kept
  for reuse, so it stays resident; it follows the peak of use, not the use.
- `heap_in_use`: the C allocator's memory in use (SQLite's among it; Python's small
  objects live in arenas of their own, counted in `rss` only).
- `python_blocks`: objects Python has allocated (sys.getallocatedblocks()).
- `unexplained`: `rss − sqlite − heap_free`, what none of the bounded parts explain: a
  leak shows here, rising (simulator/day/checks/invariants.py judges the simulated day by
  it).

Each part is None where the platform does not say (no glibc, a SQLite without the symbol).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@cache
def _sqlite() -> Any:
    """The SQLite library the sqlite3 module uses (one copy per process: the dynamic
    loader hands back the library already loaded)."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        lib.sqlite3_memory_highwater.restype = ctypes.c_int64
        lib.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return lib


@cache
def _mallinfo2() -> Any:
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2  # glibc 2.33 and later
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


def rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def parts() -> dict[str, int | None]:
    """The parts above, in bytes (`python_blocks`: a count)."""
    out: dict[str, int | None] = {"rss": rss_bytes(), "sqlite": None, "sqlite_peak": None,
                                  "heap_in_use": None, "heap_free": None, "python_blocks": sys.getallocatedblocks()}
    lib = _sqlite()
    if lib is not None:
        out["sqlite"] = int(lib.sqlite3_memory_used())
        out["sqlite_peak"] = int(lib.sqlite3_memory_highwater(0))
    mallinfo = _mallinfo2()
    if mallinfo is not None:
        mi = mallinfo()
        out["heap_in_use"] = int(mi.uordblks) + int(mi.hblkhd)
        out["heap_free"] = int(mi.fordblks)
    rss, sqlite, free = out["rss"], out["sqlite"], out["heap_free"]
    # what neither SQLite's bounded caches nor the allocator's free memory explain
    out["unexplained"] = None if rss is None or sqlite is None or free is None else rss - sqlite - free
    return out


__all__ = ["parts", "rss_bytes"]
