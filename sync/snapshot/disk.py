"""Pacing the disk while a snapshot is built (sync/snapshot/worker.py): the spool's pages
given back unwritten, the new replica written out in small pieces.

Taps commit with an fsync while this process writes up to a gigabyte (the spool, the new
replica). On ext4 an fsync waits for the data blocks allocated in the same journal
transaction, so a large burst of writeback — the kernel flushing 30-second-old dirty
pages, or one fdatasync of a whole file — holds every tap committed meanwhile (1.1 s
measured at 1M members). Writeback is started early and in small pieces instead, and
what is read and done with is given back before it is ever written.
"""

from __future__ import annotations

import ctypes
from typing import Any

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
SYNC_FILE_RANGE_WAIT_BEFORE = 0x01
SYNC_FILE_RANGE_WRITE = 0x02
SYNC_FILE_RANGE_WAIT_AFTER = 0x04
_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
            _libc.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
        except (OSError, AttributeError):
            _libc = False
    return _libc


def punch(fd: int, offset: int, length: int) -> None:
    """Free the range (fallocate PUNCH_HOLE): dirty pages are dropped unwritten. Where the
    call is missing or refused, the file keeps them until it is deleted."""
    if c := _c():
        c.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length)


def write_out(fd: int, offset: int, length: int) -> None:
    """Write the range out now and wait for it (sync_file_range, no journal commit): one
    small piece in flight at a time, instead of a burst later. Where the call is missing,
    the kernel writes it when it will."""
    if c := _c():
        c.sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER)

