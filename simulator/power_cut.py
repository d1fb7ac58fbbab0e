"""A power cut for a gate's disk: what was written but never synced is gone.

`kill -9` leaves the kernel's page cache behind: every write a killed daemon made is still
there at the next start, flushed or not, so it cannot tell a commit made durable from one
that was not. A power cut can. This FUSE file system is mounted over a directory and shows
that directory's own files (opened through a descriptor taken before the mount), but holds
every write and truncation in its memory until the file is fsync'd or fdatasync'd. Kill
its process and what it held is gone, as from a disk's volatile cache; the directory then
has what was synced, and nothing else. Unmounted cleanly (a shutdown), it writes what it
holds first.

Creating, renaming and removing files and directories reach the directory at once (a
journalling file system commits them within seconds; gated promises nothing that rests on
a directory's fsync). Memory-mapped writes (SQLite's `-shm`) come here as writes and are
lost the same way; SQLite rebuilds that index from its log.

    python -m simulator.power_cut DIR     # until unmounted or killed; `ready` on stdout

`PowerCutDisk` runs it: `mount()`, `cut()` (the power goes), `unmount()`. It needs
/dev/fuse, Debian's fuse3 and mfusepy (`missing()` says which is not there).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

FUSERMOUNT = "fusermount3"


class Held:
    """A file's content as the mount shows it, and what of it is not yet synced."""

    def __init__(self, data: bytearray) -> None:
        self.data = data
        self.lo: int | None = None  # the written span not yet in the directory's file
        self.hi = 0
        self.resized = False

    def wrote(self, offset: int, end: int) -> None:
        self.lo = offset if self.lo is None else min(self.lo, offset)
        self.hi = max(self.hi, end)


def _operations() -> Any:
    import mfusepy as fuse

    class PowerCutFS(fuse.Operations):  # type: ignore[misc]  # mfusepy ships no type information
        use_ns = True  # times in nanoseconds (float seconds are deprecated in mfusepy)

        def __init__(self, root: int) -> None:
            self.root = root  # the directory under the mount, opened before it
            self.files: dict[str, Held] = {}
            self._mutex = threading.Lock()  # not `lock`: that name is the FUSE operation

        @staticmethod
        def _rel(path: str) -> str:
            return path.lstrip("/") or "."

        def _err(self, e: OSError) -> Exception:
            return fuse.FuseOSError(e.errno or errno.EIO)  # type: ignore[no-any-return]

        def _held(self, path: str) -> Held:
            held = self.files.get(path)
            if held is None:
                fd = os.open(self._rel(path), os.O_RDONLY, dir_fd=self.root)
                try:
                    size = os.fstat(fd).st_size
                    held = Held(bytearray(os.pread(fd, size, 0)))
                finally:
                    os.close(fd)
                self.files[path] = held
            return held

        def _sync(self, path: str, held: Held) -> None:
            if held.lo is None and not held.resized:
                return
            fd = os.open(self._rel(path), os.O_WRONLY, dir_fd=self.root)
            try:
                if held.resized:
                    os.ftruncate(fd, len(held.data))
                if held.lo is not None and held.lo < held.hi:
                    os.pwrite(fd, bytes(held.data[held.lo:held.hi]), held.lo)
            finally:
                os.close(fd)
            held.lo, held.hi, held.resized = None, 0, False

        def init(self, path: str) -> None:
            print("ready", flush=True)

        def destroy(self, path: str) -> None:
            """A clean unmount (a shutdown): what is held is written first."""
            with self._mutex:
                for p, held in self.files.items():
                    try:
                        self._sync(p, held)
                    except FileNotFoundError:
                        pass

        # -- what the mount shows ----------------------------------------------------------

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            with self._mutex:
                try:
                    st = os.stat(self._rel(path), dir_fd=self.root, follow_symlinks=False)
                except OSError as e:
                    raise self._err(e) from None
                attrs = {k: getattr(st, k) for k in
                         ("st_mode", "st_nlink", "st_uid", "st_gid", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")}
                for k in ("atime", "mtime", "ctime"):
                    attrs[f"st_{k}"] = attrs.pop(f"st_{k}_ns")
                held = self.files.get(path)
                attrs["st_size"] = len(held.data) if held is not None and stat.S_ISREG(st.st_mode) else st.st_size
                return attrs

        def readdir(self, path: str, fh: int) -> list[str]:
            fd = os.open(self._rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.root)
            try:
                return [".", "..", *os.listdir(fd)]
            finally:
                os.close(fd)

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self.root)
            return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._rel(path), amode, dir_fd=self.root):
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        def open(self, path: str, flags: int) -> int:
            try:
                os.stat(self._rel(path), dir_fd=self.root)
            except OSError as e:
                raise self._err(e) from None
            return 0

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            with self._mutex:
                return bytes(self._held(path).data[offset:offset + size])

        # -- held until synced -------------------------------------------------------------

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            with self._mutex:
                os.close(os.open(self._rel(path), os.O_CREAT | os.O_WRONLY, mode, dir_fd=self.root))
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
                if held is not None:
                    self._sync(path, held)
                return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            return 0  # names are written at once (module doc)

        def flush(self, path: str, fh: int) -> int:
            return 0  # a close is no sync

        def release(self, path: str, fh: int) -> int:
            return 0  # what was not synced stays held, for the file's next reader

        # -- at once: the names ------------------------------------------------------------

        def unlink(self, path: str) -> int:
            with self._mutex:
                try:
                    os.unlink(self._rel(path), dir_fd=self.root)
                except OSError as e:
                    raise self._err(e) from None
                self.files.pop(path, None)
                return 0

        def rename(self, old: str, new: str) -> int:
            with self._mutex:
                try:
                    os.rename(self._rel(old), self._rel(new), src_dir_fd=self.root, dst_dir_fd=self.root)
                except OSError as e:
                    raise self._err(e) from None
                self.files.pop(new, None)
                held = self.files.pop(old, None)
                if held is not None:
                    self.files[new] = held
                return 0

        def mkdir(self, path: str, mode: int) -> int:
            try:
                os.mkdir(self._rel(path), mode, dir_fd=self.root)
            except OSError as e:
                raise self._err(e) from None
            return 0

        def rmdir(self, path: str) -> int:
            try:
                os.rmdir(self._rel(path), dir_fd=self.root)
            except OSError as e:
                raise self._err(e) from None
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._rel(path), mode, dir_fd=self.root)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.chown(self._rel(path), uid, gid, dir_fd=self.root)
            return 0

        def utimens(self, path: str, times: Any = None) -> int:
            return 0

    return PowerCutFS


class PowerCutDisk:
    """A directory behind the file system above, run in a process of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.cuts = 0

    @staticmethod
    def missing() -> str | None:
        """Why a power cut cannot be made here, or None."""
        if not os.path.exists("/dev/fuse"):
            return "no /dev/fuse on this kernel"
        if shutil.which(FUSERMOUNT) is None:
            return f"{FUSERMOUNT} missing (Debian's fuse3)"
        try:
            import mfusepy  # noqa: F401  (loads libfuse)
        except (ImportError, OSError) as e:
            return f"mfusepy cannot load libfuse: {e}"
        return None

    @property
    def mounted(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def mount(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "simulator.power_cut", str(self.directory)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        if self.proc.stdout.readline().strip() != b"ready":
            self.proc.kill()
            err = self.proc.stderr.read().decode(errors="replace")
            self.proc = None
            raise RuntimeError(f"the power-cut file system did not mount on {self.directory}: {err[-2000:]}")

    def cut(self) -> None:
        """The power goes: what the file system held unsynced is gone."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self.cuts += 1
        subprocess.run([FUSERMOUNT, "-u", "-z", str(self.directory)], capture_output=True)

    def unmount(self) -> None:
        """A clean shutdown: what is held is written, then the mount goes."""
        if self.proc is None:
            return
        subprocess.run([FUSERMOUNT, "-u", str(self.directory)], capture_output=True)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            subprocess.run([FUSERMOUNT, "-u", "-z", str(self.directory)], capture_output=True)
        self.proc = None


def _unmount_when_orphaned(directory: str) -> None:
    """Whoever mounted this went away without unmounting (killed outright): unmount
    (lazily: its daemon may still hold files open) rather than leave a mount behind."""
    parent = os.getppid()
    while os.getppid() == parent:
        threading.Event().wait(0.5)
    subprocess.run([FUSERMOUNT, "-u", "-z", directory], capture_output=True)


def main(argv: list[str]) -> None:
    import mfusepy as fuse

    directory = argv[0]
    root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)  # before the mount covers it
    threading.Thread(target=_unmount_when_orphaned, args=(directory,), daemon=True).start()
    # kernel_cache: every change comes through this mount, so the kernel's cache of a file
    # need not be dropped when another process opens it (SQLite maps its -shm)
    fuse.FUSE(_operations()(root), directory, foreground=True, nothreads=True, kernel_cache=True)


if __name__ == "__main__":
    main(sys.argv[1:])
