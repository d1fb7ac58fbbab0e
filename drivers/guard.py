"""Awaiting a library's coroutine without giving it our cancellation.

pymodbus and aiomqtt await `asyncio.wait_for` inside their calls. On Python 3.11 (Debian
12's) `wait_for` returns the inner result when the task running it is cancelled at the
instant that result arrives, and the cancellation is lost. A long-lived task of ours (a
Modbus line's worker, a reconnect loop) that awaited such a call itself could then be
cancelled in vain, and whoever waited for it to end (a gate's stop) waited for ever.

`guarded` runs the call in a task of its own and waits on it with `asyncio.wait`, which
never swallows a cancellation: ours reaches us whatever the library does with the one it
is given. (sync/link/client.py's `mqtt_call` meets the same flaw in aiomqtt by checking
after the call; a Modbus exchange needs a task of its own anyway, to be bounded and to be
over before the next one goes on the wire.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

# After a cancellation, how long the call is given to finish (the line must be quiet before
# the next exchange; the library's own timeout ends a call that ignores the cancel).
SETTLE_S = 5.0


async def guarded(call: Awaitable[T], timeout: float | None = None) -> T:
    """`await call`, bounded by `timeout` (TimeoutError), in a task of its own. Cancelled,
    or out of time, the call is cancelled and waited for (at most SETTLE_S) before this
    returns: nothing of it is still running on the line."""
    task: asyncio.Future[T] = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task}, timeout=SETTLE_S)
        if task.done() and not task.cancelled():
            task.exception()  # seen: ours is the cancellation, not what the call ended with
        raise
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=SETTLE_S)
        if not task.done() or task.cancelled():
            raise TimeoutError
    return task.result()


__all__ = ["guarded"]
