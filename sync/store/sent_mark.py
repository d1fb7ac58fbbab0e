"""The highest event seq that has left this daemon, kept on disk beside the ledger
(`<store.path>.sent`), so a ledger put back from a copy never hands out a number again.

The central system and the site's other daemons take an event's seq as its identity: one
they already hold is a repeat, and ignored. A ledger restored from its backup (docs/
operations.md, "A damaged store") ends where the backup did, before events that had been
sent since; numbering on from there would give new events — deductions among them — the
numbers of old ones, and the central system would drop every one of them as a repeat.
So before an event leaves the gate (sync/link/port.py: the uplink and the answers to the
other daemons' catch-up requests) its seq is written here and made durable, and at start
(Store) a ledger that ends below it is numbered on from it: the numbers in between become
`void` events (`reason: restored`; the central system keeps the events it has under them,
and applies nothing for the ones it never received) and an alarm `ledger_restored` says
how many.

Beside the seq, that event's own instant (`at`, as the gate stamped it): the edge of what
the lost part may have done that the others know of — a no-show it settled, a credit it
made, is known elsewhere only if its event was sent, and so stamped at or before it. The
daemon's clock at the restart is no measure of that (it may not be set yet).

The file is one fixed-width line, "<seq> <POSIX seconds>", written in place (a single
sector: it is written whole or not at all) and fdatasync'ed. A file that is missing or
cannot be read (`found` false) says nothing of what was sent: the ledger is then unsure of
its numbering until the central system says how far it got (sync/store/numbering.py).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

WIDTH = 20  # digits: any seq up to 2^63 - 1; the instant as many characters, to the microsecond


def sent_path(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".sent")


class SentMark:
    def __init__(self, ledger: Path):
        self.path = sent_path(ledger)
        self._lock = threading.Lock()  # written from worker threads
        self.found = False  # the file was there and held a number
        self.value, self.at = self._read()

    def _read(self) -> tuple[int, float | None]:
        """(the last seq sent, its event's instant in POSIX seconds; None: not known)."""
        try:
            text = self.path.read_bytes()[: 2 * WIDTH + 2]
        except FileNotFoundError:
            return 0, None
        except OSError as e:
            log.warning("%s cannot be read (%s): the events sent so far are not known", self.path, e)
            return 0, None
        try:
            fields = text.decode("ascii").split()
            seq = max(0, int(fields[0]))
            at = float(fields[1]) if len(fields) > 1 else None
        except (UnicodeDecodeError, ValueError, IndexError):
            log.warning("%s holds no number: the events sent so far are not known", self.path)
            return 0, None
        self.found = True
        return seq, at if at is not None and math.isfinite(at) else None

    def advance(self, seq: int, at: float) -> None:
        """Blocking (call it from a thread): on disk that events up to `seq`, the last
        stamped `at` (POSIX seconds), may have left — written even when `seq` is no higher,
        if the file was not there (so the numbering is known at the next start). Raises
        OSError when it cannot be written: then they must not leave."""
        with self._lock:
            if self.found and seq <= self.value:
                return
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o640)
            try:
                os.pwrite(fd, f"{seq:0{WIDTH}d} {at:0{WIDTH}.6f}\n".encode("ascii"), 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if created:  # the file's name too, before any number it holds is relied on
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            self.value, self.at, self.found = seq, at, True


__all__ = ["SentMark", "sent_path"]
