"""The desk's to-do list and faces, as JSON: *Needs attention* (denials by member or card,
unknown cards), alarm acknowledgements, and members' photos (read, and taken at the desk).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response

from gated.console.api import HttpError, as_json, body, done_answer, int_param
from gated.console.auth import operator, requires
from gated.console.state import console_of
from gated.console.views import photo_url
from sync.store import photos
from sync.store import read_models as rm

log = structlog.get_logger("gated.console")

PAGE = 25  # groups per page of *Needs attention* ("N more" reaches the rest)
MAX_KEYS = 500
# a photo's data: URL and the JSON around it (the rest of the API keeps to 16 KiB)
PHOTO_BODY_MAX = photos.PHOTO_MAX_TEXT + 1024


@requires()
async def denials(request: Request) -> Response:
    """A page of today's denial groups: `groups`, `total` groups, `denials` in all, `more`,
    and `last_seq`, the last event the answer has surely seen."""
    c = console_of(request)
    offset = int_param(request.query_params.get("offset"), 0, 0, 1 << 30)
    limit = int_param(request.query_params.get("limit"), PAGE, 1, 500)
    groups, seen = await asyncio.to_thread(c.attention.groups, frozenset(c.dismissed()))
    return as_json(c.attention.page(groups, seen, offset, limit))


def _keys(data: dict[str, Any]) -> set[str] | None:
    """The groups to mark done: a list of keys, or every group with `all: true`."""
    if data.get("all") is True:
        return None
    keys = data.get("groups")
    if not isinstance(keys, list) or not keys or len(keys) > MAX_KEYS or not all(
        isinstance(k, str) and 0 < len(k) <= 300 for k in keys
    ):
        raise HttpError(400, "groups: a list of group keys (or all: true)")
    return set(keys)


@requires(write=True)
async def dismiss_denials(request: Request) -> Response:
    """Done: `{"groups": [key, ...], "through": seq}` or `{"all": true, "through": seq}` marks
    every denial of those groups up to `through`; `{"seq": [...]}` marks events one by one."""
    c = console_of(request)
    data = await body(request)
    user = operator(request).name
    if "seq" in data:
        seqs = data["seq"]
        if not isinstance(seqs, list) or len(seqs) > 500 or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seqs
        ):
            raise HttpError(400, "seq: a list of event numbers")
        return as_json({"ok": True, "saved": c.dismiss(seqs, user), "dismissed": len(set(seqs))})
    keys = _keys(data)
    through = data.get("through")
    if not isinstance(through, int) or isinstance(through, bool) or through < 0:
        raise HttpError(400, "through: the newest event number on screen")
    groups, _ = await asyncio.to_thread(c.attention.groups, frozenset(c.dismissed()))
    seqs = c.attention.seqs_to_dismiss(groups, keys, through)
    saved = c.dismiss(seqs, user) if seqs else True
    log.info("console_denials_done", groups=len(keys) if keys is not None else "all", denials=len(seqs), operator=user)
    return as_json({"ok": True, "saved": saved, "dismissed": len(seqs)})


@requires()
async def unknown_cards(request: Request) -> Response:
    return as_json({"items": console_of(request).attention.unknown_cards()})


@requires(write=True)
async def acknowledge_alarm(request: Request) -> Response:
    c = console_of(request)
    data = await body(request)
    alarm_id = data.get("id")
    if not isinstance(alarm_id, str) or not 0 < len(alarm_id) <= 300:
        raise HttpError(400, "id: the alarm to acknowledge")
    alarm = c.acknowledge(alarm_id, operator(request).name)
    if alarm is None:
        raise HttpError(404, "no such alarm (resolved meanwhile?)")
    return as_json({"ok": True, "alarm": alarm})


@requires()
async def member_photo(request: Request) -> Response:
    c = console_of(request)
    photo = rm.member_photo(c.views.store.conn, request.path_params["member_id"])
    if photo is None:
        raise HttpError(404, "no photo")
    # the URL names the photo's version (views.photo_url): a browser keeps it, a new photo
    # is a new URL; `private`: behind a login, never in a shared cache
    return Response(photo.data, media_type=photo.mime, headers={"Cache-Control": "private, max-age=86400"})


@requires(write=True)
async def take_photo(request: Request) -> Response:
    """`{"photo": "data:image/jpeg;base64,..."}`, from the desk's camera (static/camera.js)."""
    c = console_of(request)
    data = await body(request, PHOTO_BODY_MAX)
    decoded = photos.decode(data.get("photo") if isinstance(data.get("photo"), str) else None)
    if decoded is None or decoded[0] != "image/jpeg":
        raise HttpError(400, f"photo: a JPEG data: URL of at most {photos.PHOTO_MAX_BYTES} bytes")
    member_id = request.path_params["member_id"]
    user = operator(request).name
    done = await c.backend.set_member_photo(member_id, decoded[1], user)
    log.info("console_member_photo", member=member_id, bytes=len(decoded[1]), operator=user, durable=done.durable)
    version = rm.photo_versions(c.views.store.conn, {member_id})[member_id]
    return as_json({"ok": True, "photo": photo_url(member_id, version), **done_answer(done)})


__all__ = ["acknowledge_alarm", "denials", "dismiss_denials", "member_photo", "take_photo", "unknown_cards"]
