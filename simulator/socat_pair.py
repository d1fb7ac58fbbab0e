"""A linked pair of pseudo-terminals from socat: a null-modem cable for RS-485 rehearsals.

A bare os.openpty() master has no path a Modbus server can open; socat gives both ends a
named link, so a server opens one end and a client the other, just as on a real RS-485 line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PtyPair:
    server_end: str
    client_end: str


@contextlib.asynccontextmanager
async def socat_pty_pair(
    directory: str | None = None, *, ready_timeout: float = 5.0
) -> AsyncIterator[PtyPair]:
    """Start socat, yield the two pty link paths, and stop socat on exit."""
    socat = shutil.which("socat")
    if socat is None:
        raise RuntimeError("socat is not installed (Debian: apt-get install socat)")
    owned_dir = directory is None
    base = tempfile.mkdtemp(prefix="gated-pty-") if directory is None else directory
    pair = PtyPair(os.path.join(base, "server"), os.path.join(base, "client"))
    proc = subprocess.Popen(
        [
            socat,
            f"pty,raw,echo=0,link={pair.server_end}",
            f"pty,raw,echo=0,link={pair.client_end}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout
        while not (os.path.exists(pair.server_end) and os.path.exists(pair.client_end)):
            if proc.poll() is not None:
                raise RuntimeError(f"socat exited with status {proc.returncode}")
            if loop.time() > deadline:
                raise RuntimeError("socat did not create the pty pair in time")
            await asyncio.sleep(0.01)
        yield pair
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if owned_dir:
            shutil.rmtree(base, ignore_errors=True)
