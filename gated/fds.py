"""File descriptors: how many the process holds and may hold (issue 22).

What a stranger can open (console and metrics connections) is refused within a reserve of
the process's limit, so the relays, readers, store, MQTT and the control socket always
have descriptors left.
"""

from __future__ import annotations

import os
import resource


def open_fds() -> int | None:
    """Descriptors this process holds now (None where /proc does not say, or at EMFILE)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself held
    except OSError:
        return None


def fd_limit() -> int:
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def room_for(reserve: int) -> bool:
    """One more descriptor leaves at least `reserve` free."""
    used = open_fds()
    return used is not None and used + 1 + reserve <= fd_limit()


__all__ = ["fd_limit", "open_fds", "room_for"]
