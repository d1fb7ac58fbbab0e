"""A throwaway root to install the Debian package into, without touching this machine.

`OverlayRoot` is this machine's own / seen through an overlay whose writable layer is a
tmpfs, in a mount namespace of its own (a process holds it open): inside it `apt install`,
the maintainer scripts, the installed `gated` and `dpkg --purge` run for real, as root, on
the real paths (/opt/venvs/gated, /etc/gated, /var/lib/gated), with Debian's Python 3.11
from the lower layer; everything they write vanishes with the namespace. The network is
this machine's: simulated boards on 127.0.0.1 answer inside too. /dev, /proc and /sys are
the host's; /run is a tmpfs of its own (no systemd as PID 1 in there, as here anyway); the
manual-page index is not rebuilt after installs (man-db's auto-update switch).

It needs root (mount namespaces, overlayfs); `available()` says why not otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def available() -> str | None:
    """None when an overlay root can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (a mount namespace and an overlay file system for the throwaway root)"
    for tool in ("unshare", "nsenter", "chroot"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux)"
    return None


class OverlayRoot:
    def __init__(self, workdir: Path, shared: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"  # the merged view, a path only the namespace sees
        self.shared = shared  # a host directory seen at the same path inside
        self.holder: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> OverlayRoot:
        self.root.mkdir(parents=True)
        (self.workdir / "layer").mkdir()
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        layer, root = self.workdir / "layer", self.root
        script = f"""
            set -e
            mount -t tmpfs -o size=2g,mode=0755 gated-test {layer}
            mkdir {layer}/upper {layer}/work
            mount -t overlay overlay -o lowerdir=/,upperdir={layer}/upper,workdir={layer}/work {root}
            mount -t proc proc {root}/proc
            mount --rbind /dev {root}/dev
            mount --rbind /sys {root}/sys
            mount -t tmpfs -o mode=0755 run {root}/run
            mount -t tmpfs -o mode=1777 tmp {root}/tmp
            mkdir -p {root}{self.shared}
            mount --bind {self.shared} {root}{self.shared}
            # man-db's own switch: no manual-page index rebuilt after each install (seconds
            # of every apt run here, and nothing the package's behaviour depends on)
            rm -f {root}/var/lib/man-db/auto-update
        """
        # The namespace is ready once unshare has exec'd sleep (after its unshare() and the
        # private propagation) and the holder's namespace is not ours. Entered before that
        # (on a busy machine), the script would mount the overlay, /dev and /sys in the
        # host's own namespace: it must never run there.
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{self.holder.pid}/comm").read_text().strip()
                if comm == "sleep" and os.readlink(f"/proc/{self.holder.pid}/ns/mnt") != ours:
                    break
            if time.monotonic() > deadline or self.holder.poll() is not None:
                self.__exit__()
                raise RuntimeError("cannot make the overlay root: unshare made no mount namespace")
            time.sleep(0.01)
        out = self._nsenter(["sh", "-c", script])
        if out.returncode != 0:
            self.__exit__()
            raise RuntimeError(f"cannot make the overlay root: {out.stderr.decode(errors='replace')}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.holder is not None:
            # every process in the namespace was started by the tests (a test that failed
            # half-way may leave one): they end by their ids, then the holder, and the
            # namespace with the tmpfs of all that was installed goes with the last of them
            ours = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
            for pid in self.processes(ours):
                if pid != self.holder.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self.holder.kill()
            self.holder.wait()
            self.holder = None

    @staticmethod
    def processes(namespace: str) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/mnt") == namespace:
                        found.append(int(entry))
        return found

    def _nsenter(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        assert self.holder is not None
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv],
                              capture_output=True, timeout=60, **kw)  # type: ignore[call-overload]

    def argv(self, command: str, *, cwd: str = "/", user: str | None = None) -> list[str]:
        """The argv that runs `command` (bash) inside the root, as root or as `user`
        (setpriv uid:gid:groups)."""
        assert self.holder is not None
        inner = ["bash", "-e", "-o", "pipefail", "-c", f"cd {shlex.quote(cwd)}\n{command}"]
        if user is not None:
            uid, gid, groups = user.split(":")
            inner = ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={groups}", "--inh-caps=-all",
                     "--bounding-set=-all", *inner]
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", "chroot", str(self.root), *inner]

    def run(self, command: str, *, cwd: str = "/", env: dict[str, str] | None = None, timeout: float = 120,
            user: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, cwd=cwd, user=user), capture_output=True, text=True, timeout=timeout,
            env=self.env(env), input=stdin,
        )

    def popen(self, command: str, *, cwd: str = "/", env: dict[str, str] | None = None,
              user: str | None = None) -> subprocess.Popen[str]:
        # `exec`: the process we signal is the command itself, not a shell around it
        return subprocess.Popen(self.argv(f"exec {command}", cwd=cwd, user=user), env=self.env(env), text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    @staticmethod
    def env(extra: dict[str, str] | None) -> dict[str, str]:
        # a login's environment, not the test's (no venv, no pytest variables)
        return {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                "DEBIAN_FRONTEND": "noninteractive", **(extra or {})}

    def read(self, path: str) -> str:
        out = self.run(f"cat {shlex.quote(path)}")
        assert out.returncode == 0, out.stderr
        return out.stdout

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        out = self.run(f"install -m {mode} /dev/stdin {shlex.quote(path)}", stdin=text)
        assert out.returncode == 0, out.stderr

    def exists(self, path: str) -> bool:
        return self.run(f"test -e {shlex.quote(path)} || test -L {shlex.quote(path)}").returncode == 0


__all__ = ["OverlayRoot", "available"]
