"""The member-facing gate display: a page per gate for a screen mounted at the turnstile.

Opened with a per-display token from the configuration (console.displays), not a staff
login: it is on a public screen. It shows only the answer to the tap just made at its
gate — the same words the reader shows (rules/messages.py) — and clears itself after a
few seconds. Nothing else about any member reaches it: no history, no replay on connect,
no member id; a wrong or removed token gets nothing.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from gated.config import DisplayConfig
from gated.console.state import console_of
from gated.console.templates import render
from gated.console.views import dumps
from rules.messages import split_message

HEARTBEAT = 15.0


def _display(request: Request) -> DisplayConfig | None:
    """The configured display this request names, if its token is right (live config)."""
    console = console_of(request)
    wanted = request.path_params.get("display_id", "")
    token = request.query_params.get("token", "")
    for d in console.cfg.displays:
        if d.id == wanted and hmac.compare_digest(token.encode(), d.token.encode()):
            return d
    return None


def answer(item: dict[str, Any]) -> dict[str, Any]:
    """What a display shows of one access event: the words, granted or not. Nothing else."""
    granted = item.get("decision") == "granted"
    headline, detail = split_message(str(item.get("message") or ("Welcome" if granted else "Please see the front desk")))
    return {"seq": item.get("seq"), "granted": granted, "headline": headline, "detail": detail[:1].upper() + detail[1:],
            "exit": item.get("direction") == "out"}


async def display_page(request: Request) -> Response:
    d = _display(request)
    if d is None:
        return PlainTextResponse("This display link is not valid. Ask the front desk for the right one.", 403)
    console = console_of(request)
    gate = next((g for g in console.backend.config.gates if g.id == d.gate), None)
    site = console.backend.config.site
    html = render("display.html", site=site.name or site.id, gate=(gate.name if gate else "") or d.gate,
                  display=d.id, clear_after=d.clear_after, tz=site.timezone)
    return Response(html, media_type="text/html; charset=utf-8")


async def display_events(request: Request) -> Response:
    d = _display(request)
    if d is None:
        return PlainTextResponse("Forbidden", 403)
    console = console_of(request)
    display_id, token = d.id, d.token
    q = console.hub.subscribe(lambda item: item.get("type") == "access" and item.get("gate") == d.gate)

    def still_valid() -> bool:
        # a reload that removes the display or changes its token ends the stream
        return any(x.id == display_id and x.token == token for x in console.cfg.displays)

    async def stream() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            while not console.hub.closed.is_set():
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        item = await q.get()
                except TimeoutError:
                    if not still_valid():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if item is None or not still_valid():
                    return
                yield f"event: answer\ndata: {dumps(answer(item))}\n\n"
        finally:
            console.hub.unsubscribe(q)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


__all__ = ["answer", "display_events", "display_page"]
