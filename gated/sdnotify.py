"""systemd's notify protocol (READY=1, WATCHDOG=1, STATUS=...) through cysystemd.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os

try:
    from cysystemd.daemon import Notification
    from cysystemd.daemon import notify as _notify
except ImportError:  # pragma: no cover - cysystemd ships wheels for Linux only
    _notify = None
    Notification = None


def _send(*args: object) -> None:
    if not os.environ.get("NOTIFY_SOCKET") or _notify is None:
        return
    try:
        _notify(*args)
    except OSError:
        pass  # systemd gone away: nothing to tell


def ready() -> None:
    _send(Notification.READY)


def reloading() -> None:
    _send(Notification.RELOADING)


def stopping() -> None:
    _send(Notification.STOPPING)


def status(text: str) -> None:
    _send(Notification.STATUS, text)


def watchdog() -> None:
    _send(Notification.WATCHDOG)


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
