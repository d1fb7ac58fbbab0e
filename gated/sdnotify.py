"""systemd's notify protocol: READY=1, WATCHDOG=1, STATUS=..., RELOADING=1, STOPPING=1.

Written here rather than taken from a library on purpose: the libraries we tried
(cysystemd, sdnotify) send on a *blocking* socket, and a datagram socket whose reader is
slow then stalls the caller — here, the event loop that decides taps. This sends with
MSG_DONTWAIT: a notification systemd cannot take right now is dropped, never waited for.
The protocol is one datagram of KEY=VALUE lines to $NOTIFY_SOCKET (sd_notify(3)).

Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket

_sock: socket.socket | None = None


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):  # abstract namespace
        return "\0" + addr[1:]
    return addr


def notify(message: str) -> bool:
    """Send one notification; False when there is no systemd or it could not be sent now."""
    global _sock
    addr = _address()
    if addr is None:
        return False
    try:
        if _sock is None:
            _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        _sock.sendto(message.encode(), socket.MSG_DONTWAIT, addr)
        return True
    except OSError:
        return False


def ready() -> None:
    notify("READY=1")


def reloading() -> None:
    notify("RELOADING=1")


def stopping() -> None:
    notify("STOPPING=1")


def status(text: str) -> None:
    notify("STATUS=" + text.replace("\n", " "))


def watchdog() -> None:
    notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half the watchdog period systemd asked for, or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not os.environ.get("NOTIFY_SOCKET"):
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        return max(0.1, int(usec) / 1_000_000 / 2)
    except ValueError:
        return None
