"""The console's JSON API: reads for the pages and the desk's actions.

Every action goes through the OperatorApi, which writes the effect, its events and the
audit row (with the operator's name) in one transaction; here are only the checks of what
the browser sent. Errors are `HttpError`s turned into `{"error": ...}` by the app.

About 520 lines: one handler per route of the desk's API, each a few lines of checks; they
read best side by side with the route table at the end.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, timedelta
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gated.console.auth import operator, requires
from gated.console.once import desk_request
from gated.console.security import SESSION_COOKIE
from gated.console.state import console_of
from gated.console.views import dumps
from gated.operator import Done
from rules.credential import normalise_card
from rules.timeutil import FIRST_YEAR, LAST_YEAR
from sync.store.desk_requests import DeskRequest, Seen

log = structlog.get_logger("gated.console")

MAX_BODY = 16 * 1024
REASON_MAX = 200
HEARTBEAT = 15.0
REPLAY_PAGE = 300  # events read from the store at a time, when a stream catches up
REPLAY_MAX = 5000  # events a stream catches up at most; before those, a `gap` message
CONFIRM = {"lockdown": "LOCKDOWN", "release": "RELEASE", "emergency": "EMERGENCY", "restore": "RESTORE"}
SWITCH_WORDS = {"lockdown": ("lockdown", "release"), "emergency": ("emergency", "restore")}
CARD_RE = re.compile(r"^[0-9A-Z:._-]{3,64}$")


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def as_json(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json")


async def body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    raw = bytearray()
    async for part in request.stream():  # read no further than the limit
        raw += part
        if len(raw) > limit:
            raise HttpError(413, "request too large")
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise HttpError(400, "invalid JSON") from None
    if not isinstance(data, dict):
        raise HttpError(400, "a JSON object expected")
    return data


def text_field(data: dict[str, Any], key: str, *, required: bool = True, limit: int = REASON_MAX) -> str:
    value = data.get(key)
    value = value.strip() if isinstance(value, str) else ""
    if required and not value:
        raise HttpError(400, f"a {key} is required")
    if len(value) > limit:
        raise HttpError(400, f"the {key} is longer than {limit} characters")
    return value


def optional_id(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 200:
        raise HttpError(400, f"{key}: an id expected")
    return value


def int_param(text: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return max(lo, min(hi, int(text))) if text else default
    except ValueError:
        return default


def date_param(text: str | None) -> date | None:
    """A day from the query, None when absent or not one the calendar can move from
    (`9999-12-31`: its next day overflowed, a 500)."""
    try:
        day = date.fromisoformat(text) if text else None
    except ValueError:
        return None
    return day if day is not None and FIRST_YEAR <= day.year < LAST_YEAR else None


def _seqs(done: Done) -> list[int]:
    return [e["seq"] for e in done.events]


# -- reads ------------------------------------------------------------------------------


@requires()
async def me(request: Request) -> Response:
    user = operator(request)
    return as_json({"user": user.name, "role": user.role, "csrf": user.csrf})


@requires()
async def health(request: Request) -> Response:
    c = console_of(request)
    h = c.views.health()
    h["alarms"] = c.current_alarms(h)
    return as_json(h)


@requires()
async def feed(request: Request) -> Response:
    c = console_of(request)
    limit = int_param(request.query_params.get("limit"), 50, 1, 500)
    return as_json({"items": c.views.recent_feed(limit), "last_seq": c.views.store.last_seq})


def _sse(item: dict[str, Any]) -> str:
    return f"id: {item['seq']}\nevent: feed\ndata: {dumps(item)}\n\n"


def _gap(first: int, last: int) -> str:
    """Events `first`..`last` the stream will not send (static/feed.js shows it: a hole is
    never shown as a continuous feed). Its id is `last`: a reconnection goes on after it."""
    data = {"from": first, "to": last, "missed": last - first + 1}
    return f"id: {last}\nevent: gap\ndata: {dumps(data)}\n\n"


async def replay(views: Any, after: int) -> AsyncIterator[tuple[int, str]]:
    """What happened after `after`, from the store, up to its head as it is now: in pages of
    REPLAY_PAGE, each followed by a turn of the event loop (taps go on). Past REPLAY_MAX
    events behind, or where the store no longer holds them (pruned after the central system
    had them), a `gap` message names those not sent. Yields (the last seq covered, text)."""
    store = views.store
    head = store.last_seq
    last = after
    if head - after > REPLAY_MAX:
        last = head - REPLAY_MAX
        yield last, _gap(after + 1, last)
    while last < head:
        page = store.events_after(last, REPLAY_PAGE)
        if not page:
            break
        if page[0]["seq"] > last + 1:  # no longer in the store
            yield page[0]["seq"] - 1, _gap(last + 1, page[0]["seq"] - 1)
        for item in views.feed_items(page):
            yield item["seq"], _sse(item)
        last = page[-1]["seq"]
        yield last, ""  # covered, events that are no feed line included
        await asyncio.sleep(0)


@requires()
async def events(request: Request) -> Response:
    c = console_of(request)
    c.views.store  # noqa: B018 - 503 while the daemon is starting or stopping
    given = request.headers.get("last-event-id") or request.query_params.get("after")
    after = int_param(given, 0, 0, 1 << 62)
    token = request.cookies.get(SESSION_COOKIE)
    q = c.hub.subscribe()

    async def stream() -> AsyncIterator[str]:
        last = after
        try:
            yield "retry: 2000\n\n"
            if given is not None:
                # what happened while the browser was away (network blip, page load, a
                # stream the hub cut for a browser too slow) — also after 0: a first tap
                # between the page's /api/feed and this stream
                async for seq, text in replay(c.views, after):
                    last = max(last, seq)
                    if text:
                        yield text
            while not c.hub.closed.is_set():
                try:
                    async with asyncio.timeout(HEARTBEAT):
                        pushed = await q.get()
                except TimeoutError:
                    if c.sessions.get(token) is None:
                        return  # logged out or expired: the stream ends too
                    yield ": keep-alive\n\n"
                    continue
                if pushed is None or c.sessions.get(token) is None:
                    return
                if pushed["seq"] is not None and pushed["seq"] <= last:
                    continue
                last = max(last, pushed["seq"] or 0)
                yield _sse(pushed)
        finally:
            c.hub.unsubscribe(q)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@requires()
async def members(request: Request) -> Response:
    c = console_of(request)
    q = request.query_params.get("q", "")[:100]
    results = await asyncio.to_thread(c.views.search_members, q)
    return as_json({"results": results})


@requires()
async def member(request: Request) -> Response:
    detail = console_of(request).views.member_detail(request.path_params["member_id"])
    if detail is None:
        raise HttpError(404, "no such member")
    return as_json(detail)


@requires()
async def classes(request: Request) -> Response:
    v = console_of(request).views
    day = date_param(request.query_params.get("day")) or v.today()
    return as_json(v.classes(day))


@requires()
async def occupancy(request: Request) -> Response:
    return as_json({"zones": console_of(request).views.occupancy()})


def audit_filters(request: Request) -> dict[str, Any]:
    p = request.query_params
    return {
        "operator": p.get("operator", "")[:100],
        "action": p.get("action", "")[:100],
        "q": p.get("q", "")[:100],
        "day_from": date_param(p.get("from")),
        "day_to": date_param(p.get("to")),
    }


@requires()
async def audit(request: Request) -> Response:
    from urllib.parse import urlencode

    c = console_of(request)
    f = audit_filters(request)
    rows = await asyncio.to_thread(lambda: c.views.audit_rows(**f))
    query = urlencode({k: v for k, v in request.query_params.items() if k in ("operator", "action", "q", "from", "to") and v})
    return as_json({"rows": rows, "facets": c.views.audit_facets(), "csv": "/audit.csv" + (f"?{query}" if query else "")})


def report_range(request: Request) -> tuple[date, date]:
    v = console_of(request).views
    today = v.today()
    day_to = date_param(request.query_params.get("to")) or today
    day_from = date_param(request.query_params.get("from")) or day_to.replace(day=1)
    if day_from > day_to:
        raise HttpError(400, "the start is after the end")
    if day_to - day_from > timedelta(days=3 * 366):
        raise HttpError(400, "at most three years at once")
    return day_from, day_to


@requires()
async def loyalty_report(request: Request) -> Response:
    c = console_of(request)
    day_from, day_to = report_range(request)
    lines = await asyncio.to_thread(c.views.loyalty_report, day_from, day_to)
    return as_json({
        "from": day_from.isoformat(), "to": day_to.isoformat(), "lines": lines,
        "totals": {k: sum(ln[k] for ln in lines) for k in ("credited", "adjusted", "total")},
        "csv": f"/reports/loyalty.csv?from={day_from.isoformat()}&to={day_to.isoformat()}",
    })


# -- actions ----------------------------------------------------------------------------


def _refused(result: dict[str, Any]) -> Response | None:
    if result.get("error"):
        status = 409 if result["error"] in ("lockdown", "no_relay", "emergency", "released") else 502
        return as_json({"error": result.get("message") or result["error"]}, status)
    return None


def _refuse(result: dict[str, Any]) -> None:
    """A gate's refusal (nothing opened, nothing charged) as an error: its request is
    forgotten, and a retry does it."""
    refused = _refused(result)
    if refused is not None:
        raise HttpError(refused.status_code, result.get("message") or result["error"])


@requires(write=True)
async def open_gate(request: Request) -> Response:
    """Open once: done once per request id — once the relay was pulsed, a retry never
    pulses again (gated/console/once.py)."""
    c = console_of(request)
    data = await body(request)
    reason = text_field(data, "reason")
    gate_id = request.path_params["gate_id"]
    user = operator(request).name

    async def open_(req: DeskRequest | None) -> dict[str, Any]:
        result = await c.backend.open_once(gate_id, user, reason, request=req)
        _refuse(result)
        log.info("console_open", gate=gate_id, operator=user)
        return {"ok": True, "result": result}

    def lost(seen: Seen) -> dict[str, Any]:
        return {"ok": True, "result": {"decision": "granted", "reason": "override", "message": "Opened by the front desk",
                                       "seq": seen.seqs}, "answer_lost": True}

    return await once(request, data, {"reason": reason}, open_, lost=lost)


@requires(write=True)
async def check_in(request: Request) -> Response:
    c = console_of(request)
    data = await body(request)
    reason = text_field(data, "reason", required=False) or "checked in at the desk"
    member_id = request.path_params["member_id"]
    gate_id = text_field(data, "gate", limit=100)
    store = c.views.store
    if store.member(member_id) is None:
        raise HttpError(404, "no such member")
    booking_id, pass_id = optional_id(data, "booking"), optional_id(data, "pass")
    if booking_id is not None:
        b = store.get_booking(booking_id)
        if b is None or b.member != member_id:
            raise HttpError(404, "no such booking for this member")
    if pass_id is not None:
        p = store.get_pass(pass_id)
        if p is None or p.member != member_id:
            raise HttpError(404, "no such pass for this member")
    user = operator(request).name

    async def check(req: DeskRequest | None) -> dict[str, Any]:
        result = await c.backend.check_in(gate_id, member_id, user, reason, booking_id=booking_id, pass_id=pass_id,
                                          request=req)
        _refuse(result)
        log.info("console_check_in", gate=gate_id, member=member_id, decision=result.get("decision"), operator=user)
        return {"ok": result.get("decision") == "granted", "result": result}

    def lost(seen: Seen) -> dict[str, Any]:
        return {"ok": True, "result": {"decision": "granted", "member": member_id, "message": "Checked in",
                                       "seq": seen.seqs}, "answer_lost": True}

    # done once the gate opened (a grant); a denial did nothing: its retry is decided afresh
    return await once(request, data, {"gate": gate_id, "booking": booking_id, "pass": pass_id, "reason": reason},
                      check, did=lambda answer: answer["ok"] is True, lost=lost)


NOT_DURABLE = ("Done — but not yet safe on disk: the gate has a storage fault (see its status). Do not do it "
               "again: it is recorded and will be sent; a power cut before the disk works again could lose it.")


def done_answer(done: Done) -> dict[str, Any]:
    """What a record's answer says of the disk: `not_durable` when its commit took effect
    but its flush failed (gated/operator.py, `Done`) — done, and said so."""
    return {"not_durable": True, "warning": NOT_DURABLE} if not done.durable else {"not_durable": False}


async def once(
    request: Request, data: dict[str, Any], asked: dict[str, Any],
    action: Callable[[DeskRequest | None], Awaitable[dict[str, Any]]], **kw: Any,
) -> Response:
    """An action done once per `request_id` the page sent, kept in the ledger with the
    record it produced (gated/console/once.py): `action(req)` carries the request into
    its commit."""
    c = console_of(request)
    req = desk_request(operator(request).name, request.url.path, data, asked)
    return as_json(await c.requests.once(c.views.store, req, action, **kw))


@requires(write=True)
async def attend(request: Request) -> Response:
    data = await body(request)
    refund = data.get("refund", False)
    if not isinstance(refund, bool):
        raise HttpError(400, "refund is true or false")
    booking_id = request.path_params["booking_id"]
    return await once(request, data, {"refund": refund}, lambda req: _attend(request, booking_id, refund, req))


async def _attend(request: Request, booking_id: str, refund: bool, req: DeskRequest | None) -> dict[str, Any]:
    c = console_of(request)
    booking = c.views.store.get_booking(booking_id)
    if booking is None:
        raise HttpError(404, "no such booking")
    if booking.status.value == "attended":
        raise HttpError(409, "this booking is already marked attended")
    if booking.status.value == "cancelled":
        raise HttpError(409, "this booking was cancelled")
    user = operator(request).name
    done = await c.backend.mark_attended(booking_id, user, refund=refund, request=req)
    # the walk-in given back (a no-show's fee stands: Ledger.keep_no_show_fees)
    refunded = next((e for e in done.events if e.get("type") == "deduction" and e.get("cause") == "refund"), None)
    given = None if refunded is None else {"pass": refunded.get("pass"), "amount": -refunded["amount"],
                                           "balance": refunded.get("balance")}
    waits = c.views.store.refund_wanted(booking_id) if refund and given is None else None
    if refund and given is None and waits is None:
        # a request that waited may have been settled while this answer waited for its flush
        given = c.views.store.refund_given(booking_id)
    log.info("console_attend", booking=booking_id, refund=refund, refunded=given is not None,
             refund_waiting=None if waits is None else list(waits.waiting), operator=user, durable=done.durable)
    return {
        "ok": True,
        "refunded": given,
        "refund_requested": refund,
        # the site's other gates (or this one's lost events) not all heard up to now: settled
        # once they are
        "refund_waiting": None if waits is None else {"for": list(waits.waiting)},
        "seq": _seqs(done),
        **done_answer(done),
    }


@requires(write=True)
async def points(request: Request) -> Response:
    c = console_of(request)
    data = await body(request)
    reason = text_field(data, "reason")
    pts = data.get("points")
    if isinstance(pts, str) and re.fullmatch(r"[+-]?\d{1,6}", pts.strip()):
        pts = int(pts)
    if not isinstance(pts, int) or isinstance(pts, bool) or pts == 0 or abs(pts) > 100_000:
        raise HttpError(400, "points: a whole number, not zero, at most 100000")
    member_id = request.path_params["member_id"]
    store = c.views.store
    if store.member(member_id) is None:
        raise HttpError(404, "no such member")
    user = operator(request).name

    async def adjust(req: DeskRequest | None) -> dict[str, Any]:
        done = await c.backend.adjust_points(member_id, pts, user, reason, request=req)
        log.info("console_points", member=member_id, points=pts, operator=user, durable=done.durable)
        return {"ok": True, "points": store.points(member_id), "seq": _seqs(done), **done_answer(done)}

    def lost(seen: Seen) -> dict[str, Any]:
        return {"ok": True, "points": store.points(member_id), "seq": seen.seqs, "answer_lost": True,
                "not_durable": False}

    return await once(request, data, {"points": pts, "reason": reason}, adjust, lost=lost)


@requires(write=True)
async def enrol_card(request: Request) -> Response:
    c = console_of(request)
    data = await body(request)
    card = normalise_card(text_field(data, "card", limit=64))
    if not CARD_RE.fullmatch(card):
        raise HttpError(400, "a card number: letters, digits, : . _ - (3 to 64)")
    member_id = request.path_params["member_id"]
    store = c.views.store
    if store.member(member_id) is None:
        raise HttpError(404, "no such member")
    try:
        store.card_key(card)  # typed key, or text this site's readers send (rules/credential.py)
    except ValueError as e:
        raise HttpError(400, f"not a card: {e}") from None
    holder = store.member_for_card(card)
    if holder == member_id:
        raise HttpError(409, "this card is already this member's")
    if holder is not None:
        raise HttpError(409, f"this card belongs to member {holder}")
    user = operator(request).name
    done = await c.backend.enrol_card(card, member_id, user)
    log.info("console_enrol_card", member=member_id, operator=user, durable=done.durable)
    return as_json({"ok": True, "seq": _seqs(done), **done_answer(done)})


def confirmed(data: dict[str, Any], word: str) -> None:
    if data.get("confirm") != word:
        raise HttpError(400, f"type {word} to confirm")


def on_flag(data: dict[str, Any]) -> bool:
    on = data.get("on")
    if not isinstance(on, bool):
        raise HttpError(400, "on is true or false")
    return on


async def _safety_switch(request: Request, which: str) -> Response:
    """Lockdown or emergency release, on or off: an admin, the word typed to confirm, and a
    reason to switch it on (recorded in the event, the audit log and the banner)."""
    c = console_of(request)
    data = await body(request)
    on = on_flag(data)
    confirmed(data, CONFIRM[SWITCH_WORDS[which][0 if on else 1]])
    reason = text_field(data, "reason", required=on)
    c.views.store  # noqa: B018 - 503 while the daemon is starting or stopping
    # not_durable: in force, not yet stored (a storage fault); a restart now would forget it
    if which == "lockdown":
        await c.backend.set_lockdown(on, operator(request).name, reason or None)
        return as_json({"ok": True, "lockdown": c.backend.lockdown, "not_durable": c.backend.not_durable})
    await c.backend.set_emergency(on, operator(request).name, reason or None)
    return as_json({"ok": True, "emergency": c.backend.emergency, "not_durable": c.backend.not_durable})


@requires("admin", write=True)
async def lockdown(request: Request) -> Response:
    return await _safety_switch(request, "lockdown")


@requires("admin", write=True)
async def emergency(request: Request) -> Response:
    return await _safety_switch(request, "emergency")
