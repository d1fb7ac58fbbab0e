"""Can the store record an entry right now? The storage health the gate opens by.

A gate that opens and then cannot write the deduction lets a member in for free and, for
a single-use QR code, lets it in twice. So before any relay is pulsed for an entry the
daemon asks `StorageGuard.ok`, then writes a durable grant intent (Store.open_intent);
any failure on the way denies the entry with `storage_fault`.

What goes wrong with a SQLite file on a small gate box, and how each is seen:
- the disk fills up (logs, a big WAL): writes fail with "database or disk is full". Seen
  earlier by watching free space against a reserve (`min_free`), so that the grants
  already under way, the denials and the exits can still be written from the reserve;
- the file or the file system turns read-only (an SD card remounted read-only after I/O
  errors, a wrong owner): "attempt to write a readonly database";
- the state directory is deleted while the daemon runs: every write still "succeeds",
  into a file nobody will ever see again. Seen by comparing the inode at the configured
  path with the one opened (the only way: nothing fails);
- the `-wal` file is deleted (a clean-up script, an installer removing "gated.db-*"):
  SQLite goes on appending to the open, unlinked file, and a crash loses every commit
  since the last checkpoint. A deleted `-shm` loses nothing by itself, but the next
  connection builds a second index of the same WAL. Seen the same way, by the inodes of
  the side files (recorded when first seen: SQLite creates them after the open);
- pages are overwritten or the file is truncated: "database disk image is malformed".

The guard is a small state machine: the shell feeds it what it observed (a write failed,
the file's identity, the free space, a probe write that worked) and reads `ok`, the
problem and the transitions to report as alarms. It never raises.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

# What a write to the store raises when the store, not the code, is at fault.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, OSError)

# The files SQLite keeps beside a database in WAL mode, for as long as a connection is open.
SIDE_FILES = ("-wal", "-shm")


class StorageProblem(StrEnum):
    LOW_SPACE = "low_space"  # free space below the reserve: entries stop before writes fail
    DISK_FULL = "disk_full"
    READ_ONLY = "read_only"
    FILE_GONE = "file_gone"  # the database file is no longer the one at the configured path
    CORRUPT = "corrupt"
    IO_ERROR = "io_error"


def classify(error: BaseException) -> StorageProblem:
    """Which problem a failed write or read points to."""
    text = str(error).lower()
    if isinstance(error, OSError) and error.errno == errno.ENOSPC or "disk is full" in text:
        return StorageProblem.DISK_FULL
    if isinstance(error, OSError) and error.errno == errno.EROFS or "readonly" in text or "read-only" in text:
        return StorageProblem.READ_ONLY
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return StorageProblem.CORRUPT
    return StorageProblem.IO_ERROR


_ADVICE = {
    StorageProblem.CORRUPT: "the database file is damaged; run `gated store check`, then restore "
    "the latest backup or rebuild the replica (docs/operations.md)",
    StorageProblem.READ_ONLY: "the database cannot be written (file system read-only, or the file "
    "owned by another user)",
    StorageProblem.DISK_FULL: "the disk is full",
}


def describe_store_error(error: BaseException, path: Path | None = None) -> str:
    """One line for an installer: what is wrong and what to do, never a traceback. With
    the database's `path`, a file that cannot be written or opened says why: SQLite only
    says "attempt to write a readonly database" or "unable to open database file"."""
    problem = classify(error)
    cause = why_unwritable(path) if path is not None and problem in (StorageProblem.READ_ONLY, StorageProblem.IO_ERROR) else None
    advice = cause or _ADVICE.get(problem)
    return f"{error}" + (f" — {advice}" if advice else "")


def why_unwritable(path: Path) -> str | None:
    """What in the file system keeps this process from writing the database at `path` (and
    the `-wal` and `-shm` files SQLite creates beside it): a read-only mount, a directory
    or a file it may not write. None when nothing visible does."""
    path = path.absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"{existing} is on a read-only file system"
    except OSError:
        return None
    me = f"this user (uid {os.geteuid()})"
    files = [path, *(Path(str(path) + s) for s in SIDE_FILES)]
    for f in files:
        if f.exists() and not os.access(f, os.W_OK):
            return f"{f} cannot be written by {me}: {_owner_mode(f)}"
    where = path.parent if path.exists() else existing  # the directory the missing ones go in
    if not all(f.exists() for f in files) and not os.access(where, os.W_OK):
        return f"the directory {where} cannot be written by {me}, and the files must be created in it: {_owner_mode(where)}"
    return None


def _owner_mode(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return str(e)
    return f"owner uid {st.st_uid}, mode {st.st_mode & 0o7777:04o}"


@dataclass(frozen=True, slots=True)
class FileIdentity:
    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_dev, st.st_ino)


@dataclass(frozen=True, slots=True)
class StorageChange:
    """A transition to report (alarm event, log line): `problem` None means recovered."""

    problem: StorageProblem | None
    detail: str | None
    at: datetime


class StorageGuard:
    """The storage health of one store file. `ok` is what an entry may open by."""

    def __init__(self, path: Path, *, min_free: int):
        self.path = path
        self.min_free = min_free
        self.opened: FileIdentity | None = FileIdentity.of(path)
        self.sides: dict[str, FileIdentity | None] = {s: FileIdentity.of(self._side(s)) for s in SIDE_FILES}
        self.problem: StorageProblem | None = None
        self.detail: str | None = None
        self.since: datetime | None = None
        self.free_bytes: int | None = None
        self._changes: list[StorageChange] = []

    @property
    def ok(self) -> bool:
        return self.problem is None

    # -- observations ----------------------------------------------------------------------

    def failed(self, error: BaseException, now: datetime) -> StorageProblem:
        """A write (or a read of the ledger) raised: the store cannot be trusted to record."""
        problem = classify(error)
        cause = why_unwritable(self.path) if problem == StorageProblem.READ_ONLY else None
        self._set(problem, f"{type(error).__name__}: {error}" + (f" ({cause})" if cause else ""), now)
        return problem

    def damaged(self, detail: str, now: datetime) -> None:
        """SQLite's own check found damaged pages (no write has failed, or none yet)."""
        self._set(StorageProblem.CORRUPT, detail, now)

    def check_file(self, now: datetime) -> bool:
        """Are the file at the configured path and its `-wal` and `-shm` still the ones
        open? False (and FILE_GONE) when one was deleted or replaced behind the daemon's
        back. (SQLite itself deletes them only when the last connection closes.)"""
        if self.opened is not None and FileIdentity.of(self.path) != self.opened:
            self._set(StorageProblem.FILE_GONE, f"{self.path} is gone or was replaced", now)
            return False
        for suffix, seen in self.sides.items():
            current = FileIdentity.of(self._side(suffix))
            if seen is None:
                self.sides[suffix] = current
            elif current != seen:
                self._set(
                    StorageProblem.FILE_GONE,
                    f"{self._side(suffix)} is gone or was replaced: what was committed since the last "
                    "checkpoint is only in the daemon's open file",
                    now,
                )
                return False
        return True

    def _side(self, suffix: str) -> Path:
        return Path(str(self.path) + suffix)

    def check_space(self, now: datetime) -> bool:
        try:
            st = os.statvfs(self.path.parent)
        except OSError as e:
            self._set(classify(e), f"statvfs: {e}", now)
            return False
        self.free_bytes = st.f_bavail * st.f_frsize
        if self.free_bytes < self.min_free:
            self._set(
                StorageProblem.LOW_SPACE,
                f"{self.free_bytes:,} bytes free, below the reserve of {self.min_free:,}",
                now,
            )
            return False
        return True

    def precheck(self, now: datetime) -> bool:
        """The cheap checks before an entry (four system calls): still ok?"""
        if self.problem is not None:
            return False
        return self.check_file(now) and self.check_space(now)

    def probe_succeeded(self, now: datetime) -> None:
        """A durable write went through and the cheap checks pass: recovered."""
        if self.problem is not None and self.check_file(now) and self.check_space(now):
            self._set(None, None, now)

    def reopened(self, now: datetime) -> None:
        """The store was re-created at its path (FILE_GONE rescued): watch the new files."""
        self.opened = FileIdentity.of(self.path)
        self.sides = {s: FileIdentity.of(self._side(s)) for s in SIDE_FILES}
        if self.problem == StorageProblem.FILE_GONE:
            self.problem = StorageProblem.IO_ERROR  # cleared by the next probe, not assumed

    # -- what changed ----------------------------------------------------------------------

    @property
    def has_changes(self) -> bool:
        return bool(self._changes)

    def take_changes(self) -> list[StorageChange]:
        out, self._changes = self._changes, []
        return out

    def _set(self, problem: StorageProblem | None, detail: str | None, now: datetime) -> None:
        if problem == self.problem:
            self.detail = detail
            return
        if self.problem is not None and problem is not None:
            # still at fault, for another reason now (low space, then the disk full): one
            # fault, one alarm; the status shows the latest reason. A file that is gone
            # stays the problem until it is rescued.
            if self.problem != StorageProblem.FILE_GONE:
                self.problem, self.detail = problem, detail
            return
        self.problem, self.detail = problem, detail
        self.since = now if problem is not None else None
        self._changes.append(StorageChange(problem, detail, now))

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "problem": self.problem.value if self.problem else None,
            "detail": self.detail,
            "since": self.since.isoformat() if self.since else None,
            "free_bytes": self.free_bytes,
            "min_free": self.min_free,
        }


__all__ = [
    "SIDE_FILES",
    "STORAGE_ERRORS",
    "FileIdentity",
    "StorageChange",
    "StorageGuard",
    "StorageProblem",
    "classify",
    "describe_store_error",
    "why_unwritable",
]
