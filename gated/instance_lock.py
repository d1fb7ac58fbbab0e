"""One daemon per store: `gated run` holds an exclusive lock beside its ledger while it runs.

Two daemons on one ledger would number their events over each other, take the same
member's charge twice and drive the same relays (the relays are driven before the store
is opened: Daemon.start). It happens by hand — a `gated run` typed while the service runs —
and it happened in the simulated day, where two faults at one gate each started its
daemon again. A `flock` on `<ledger>.lock`: the kernel lets it go when the process ends,
however it ends (kill -9, a power cut), so a stale lock never keeps a gate down. Opened
close-on-exec: the snapshot worker (a process of its own) does not inherit it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class AlreadyRunning(Exception):
    """Another process holds the store's lock."""


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


def hold(store: Path) -> int:
    """Take the store's lock for this process; its descriptor (kept open for as long as
    the daemon runs). AlreadyRunning when another process has it (the message names its
    pid, as it wrote it); OSError when the lock file cannot be made (the store's folder
    not writable: opening the store then says why)."""
    path = lock_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)  # as the store makes its folder
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError):
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        who = f"pid {holder}" if holder.isdigit() else "another process"
        raise AlreadyRunning(
            f"{store}: another gated runs on this store ({who} holds {path}); stop it first "
            "(systemctl stop gated) — two daemons on one ledger would number events twice") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


__all__ = ["AlreadyRunning", "hold", "lock_path"]
