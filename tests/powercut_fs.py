"""A file system that loses at a power cut what was never made durable.

`kill -9` leaves the kernel's page cache behind: every write a killed daemon made is still
there for the next start, whether it was flushed or not. A power cut does not. This FUSE
file system shows the files of a backing directory, but holds every write and truncation
in its own memory until the file is fsync'd or fdatasync'd; kill this process (SIGKILL)
and what was not synced is gone, as it would be from a disk's volatile cache. The next
mount shows what was synced, and nothing else.

Creating, renaming and removing files and directories reach the backing directory at once
(a journalling file system commits them within seconds; gated promises nothing that rests
on a directory's fsync). Memory-mapped writes (SQLite's `-shm`) come here as writes too,
and are lost the same way; SQLite rebuilds that index from the log.

    python -m tests.powercut_fs BACKING MOUNT    # until killed; `ready` on stdout once mounted
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import mfusepy as fuse


class Held:
    """A file's content as the mount shows it, and the span not yet synced."""

    def __init__(self, data: bytearray) -> None:
        self.data = data
        self.lo: int | None = None  # the written span not yet on the backing file
        self.hi = 0
        self.resized = False

    def wrote(self, offset: int, end: int) -> None:
        self.lo = offset if self.lo is None else min(self.lo, offset)
        self.hi = max(self.hi, end)


class PowerCutFS(fuse.Operations):
    use_ns = True  # times in nanoseconds (mfusepy's float seconds are deprecated)

    def __init__(self, backing: Path) -> None:
        self.backing = backing
        self.files: dict[str, Held] = {}
        self._mutex = threading.Lock()

    def _real(self, path: str) -> str:
        return str(self.backing) + path

    def _held(self, path: str) -> Held:
        held = self.files.get(path)
        if held is None:
            with open(self._real(path), "rb") as f:
                held = Held(bytearray(f.read()))
            self.files[path] = held
        return held

    # -- what the mount shows --------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            try:
                st = os.lstat(self._real(path))
            except OSError as e:
                raise fuse.FuseOSError(e.errno or errno.EIO) from None
            attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_atime", "st_mtime", "st_ctime")}
            held = self.files.get(path)
            attrs["st_size"] = len(held.data) if held is not None and stat.S_ISREG(st.st_mode) else st.st_size
            return attrs

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._real(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._real(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def open(self, path: str, flags: int) -> int:
        if not os.path.exists(self._real(path)):
            raise fuse.FuseOSError(errno.ENOENT)
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return bytes(self._held(path).data[offset:offset + size])

    # -- held until synced -----------------------------------------------------------------

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mutex:
            os.close(os.open(self._real(path), os.O_CREAT | os.O_WRONLY, mode))
            self.files[path] = Held(bytearray())
            return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            held = self._held(path)
            end = offset + len(data)
            if end > len(held.data):
                held.data.extend(bytes(end - len(held.data)))
                held.resized = True
            held.data[offset:end] = data
            held.wrote(offset, end)
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            held = self._held(path)
            if length < len(held.data):
                del held.data[length:]
            else:
                held.data.extend(bytes(length - len(held.data)))
            held.resized = True
            if held.lo is not None:
                held.hi = min(held.hi, length)
            return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            held = self.files.get(path)
            if held is None or (held.lo is None and not held.resized):
                return 0
            fd = os.open(self._real(path), os.O_WRONLY)
            try:
                if held.resized:
                    os.ftruncate(fd, len(held.data))
                if held.lo is not None and held.lo < held.hi:
                    os.pwrite(fd, bytes(held.data[held.lo:held.hi]), held.lo)
            finally:
                os.close(fd)
            held.lo, held.hi, held.resized = None, 0, False
            return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # a close is no sync

    def release(self, path: str, fh: int) -> int:
        return 0  # what was not synced stays held, for the file's next reader

    # -- at once: the names ----------------------------------------------------------------

    def unlink(self, path: str) -> int:
        with self._mutex:
            os.unlink(self._real(path))
            self.files.pop(path, None)
            return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            os.rename(self._real(old), self._real(new))
            self.files.pop(new, None)
            held = self.files.pop(old, None)
            if held is not None:
                self.files[new] = held
            return 0

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        return 0


def main(argv: list[str]) -> None:
    backing, mount = Path(argv[0]).resolve(), argv[1]

    class Ready(PowerCutFS):
        def init(self, path: str) -> None:
            print("ready", flush=True)

    # kernel_cache: every change comes through this mount, so the kernel's cache of a
    # file need not be dropped when another process opens it (SQLite's -shm is mapped)
    fuse.FUSE(Ready(backing), mount, foreground=True, nothreads=True, kernel_cache=True, allow_other=False)


if __name__ == "__main__":
    main(sys.argv[1:])
