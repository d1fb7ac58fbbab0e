"""The desk's records done once, however often the page asks.

A page sends a `request_id` with "Mark attended" and "Adjust points", made once per action
of the person at the desk (static/core.js, `requestId`): a dialog submitted again after an
answer that never arrived, or after one that said the disk failed, carries the same id.
The console remembers the answers of the last `KEEP` ids (by operator and route) and gives
the same answer again (`repeated: true`) instead of doing it twice — +25 points asked twice
is +25. An id sent again with other values is refused: what the first asked is done. A
request that failed (nothing done) is forgotten, so its retry does it. Two requests with
one id at once: the second waits for the first's answer.

Kept in memory: a restart forgets them (the page's dialog does not outlive a restart's
minute-long wait in practice, and a record once done is in the store for the desk to see).
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from gated.operator import ActionRefused

KEEP = 1000
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")

Answer = dict[str, Any]
Key = tuple[str, str, str]  # operator, route, request id


def request_id(data: dict[str, Any]) -> str | None:
    """The page's request id, if it sent one (a tool or an old page may not)."""
    value = data.get("request_id")
    if value is None:
        return None
    if not isinstance(value, str) or not REQUEST_ID.fullmatch(value):
        raise ActionRefused("request_id: 8 to 64 letters, digits, - or _", 400)
    return value


class RecentRequests:
    def __init__(self, keep: int = KEEP):
        self.keep = keep
        # key -> (what was asked, its answer once there is one; None: it failed, not done)
        self._seen: OrderedDict[Key, tuple[str, asyncio.Future[Answer | None]]] = OrderedDict()

    async def once(self, key: Key | None, asked: str, action: Callable[[], Awaitable[Answer]]) -> Answer:
        if key is None:
            return await action()
        while (seen := self._seen.get(key)) is not None:
            was, answer = seen
            if was != asked:
                raise ActionRefused("this request was already made with other values, and done: close the "
                                    "dialog and look again before doing anything more")
            done = await asyncio.shield(answer)
            if done is not None:
                return {**done, "repeated": True}
            # the first one failed (nothing done) and is forgotten: this one tries
        answer = asyncio.get_running_loop().create_future()
        self._seen[key] = (asked, answer)
        while len(self._seen) > self.keep:
            self._seen.popitem(last=False)
        try:
            done = await action()
        except BaseException:
            if self._seen.get(key, (None, None))[1] is answer:
                del self._seen[key]
            answer.set_result(None)
            raise
        answer.set_result(done)
        return done


__all__ = ["KEEP", "RecentRequests", "request_id"]
