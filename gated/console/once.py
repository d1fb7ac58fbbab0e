"""The desk's actions done once, however often the page asks — across restarts too.

A page sends a `request_id` with "Mark attended", "Adjust points", "Check in" and "Open
once", made once per action of the person at the desk (static/core.js, `requestId`): a
dialog submitted again after an answer that never arrived — the network, the daemon
restarted meanwhile — or after one that said the disk failed, carries the same id. The
request (operator, route, id, what was asked) is kept **in the ledger, in the transaction
of the record it produced** (sync/store/desk_requests.py): the attendance and its refund,
the points, the check-in's tap, the opening's override. So a crash leaves both or
neither, and a retry after a restart gives the first answer again (`repeated: true`)
instead of doing it twice — +25 points asked twice is +25, one check-in is one charge,
one "Open once" lets one person in.

What opens a gate is done once its relay is pulsed, before its record: its request is
written `begun` and flushed before the pulse (a check-in's with its grant intent, an
opening once's on its own) and made done by the commit. One found `begun` — a restart
cut it off between its pulse and its commit (the feed says `passage_unconfirmed` for a
check-in) — is refused (409), never pulsed again: the desk looks, and opens with a new
dialog if nobody went through. The window left: a crash after the `begun` row is on disk
and before the pulse refuses the retry too, though nothing opened.

An id sent again with other values is refused: what the first asked is done. A request
that did nothing (refused, failed, a check-in denied, a relay not pulsed) is forgotten,
so its retry does it. Two requests with one id at once: the second waits for the first's
answer (kept in memory for the last `KEEP`; the ledger keeps a day's, pruned by the
retention sweep). An answer lost between the record's commit and its saving (a crash in
those milliseconds) is rebuilt: done, with the record's seqs (`answer_lost: true`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from gated.operator import ActionRefused
from sync.store.desk_requests import BEGUN, DeskRequest, Seen
from sync.store.faults import STORAGE_ERRORS

if TYPE_CHECKING:
    from sync.store import Store

log = structlog.get_logger("gated.console")

KEEP = 1000
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
ACTION_MAX = 300  # a route naming one gate, member or booking

OTHER_VALUES = ("this request was already made with other values, and done: close the dialog and look again "
                "before doing anything more")
BEGUN_BEFORE = ("this request was begun before the gate restarted and may have opened the gate: it is not done "
                "again. Look at the feed; if nobody went through, close the dialog and start again")

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


def desk_request(operator: str, action: str, data: dict[str, Any], asked: dict[str, Any]) -> DeskRequest | None:
    """The request the page made, or None when it sent no id. `asked`: the values it asked,
    checked already (what a retry must ask again)."""
    rid = request_id(data)
    if rid is None:
        return None
    if len(action) > ACTION_MAX:
        raise ActionRefused("request_id: not for so long a path", 400)
    return DeskRequest(operator, action, rid, json.dumps(asked, sort_keys=True, separators=(",", ":"), default=str))


def lost_answer(seen: Seen) -> Answer:
    """A done request whose answer a crash lost before it was saved."""
    return {"ok": True, "seq": seen.seqs, "answer_lost": True, "not_durable": False}


class DeskRequests:
    def __init__(self, keep: int = KEEP):
        self.keep = keep
        # key -> (what was asked, its answer once there is one; None: nothing done)
        self._seen: OrderedDict[Key, tuple[str, asyncio.Future[Answer | None]]] = OrderedDict()

    async def once(
        self,
        store: Store,
        req: DeskRequest | None,
        action: Callable[[DeskRequest | None], Awaitable[Answer]],
        *,
        did: Callable[[Answer], bool] = lambda answer: True,
        lost: Callable[[Seen], Answer] = lost_answer,
    ) -> Answer:
        """`action(req)` once per request: it carries `req` into its record's transaction.
        `did(answer)`: something was done (a check-in's denial did nothing: forgotten).
        `lost(seen)`: the answer to give for a request done whose answer was not saved."""
        if req is None:
            return await action(None)
        key = (req.operator, req.action, req.request_id)
        while (mine := self._seen.get(key)) is not None:  # this run's, maybe still under way
            was, pending = mine
            if was != req.asked:
                raise ActionRefused(OTHER_VALUES)
            first = await asyncio.shield(pending)
            if first is not None:
                return {**first, "repeated": True}
            # the first one did nothing and is forgotten: this one tries
        before = store.desk_request(req)  # an earlier run's (no await since the look above)
        if before is not None:
            if before.asked != req.asked:
                raise ActionRefused(OTHER_VALUES)
            if before.state == BEGUN:
                raise ActionRefused(BEGUN_BEFORE)
            return {**(before.answer if before.answer is not None else lost(before)), "repeated": True}
        pending = asyncio.get_running_loop().create_future()
        self._seen[key] = (req.asked, pending)
        while len(self._seen) > self.keep:
            self._seen.popitem(last=False)
        try:
            answer = await action(req)
        except BaseException:
            self._forget(key, pending)
            raise
        if not did(answer):
            self._forget(key, pending)
            return answer
        pending.set_result(answer)
        try:
            store.save_desk_answer(req, answer)
        except STORAGE_ERRORS as e:  # done all the same: a retry after a restart is told so (`lost`)
            log.warning("desk_answer_not_saved", action=req.action, error=str(e))
        return answer

    def _forget(self, key: Key, pending: asyncio.Future[Answer | None]) -> None:
        if self._seen.get(key, (None, None))[1] is pending:
            del self._seen[key]
        pending.set_result(None)


__all__ = ["KEEP", "DeskRequests", "desk_request", "lost_answer", "request_id"]
