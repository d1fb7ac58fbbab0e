"""The console's HTML pages: shells whose data comes from the API (static/console.js)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gated.console.auth import operator, requires
from gated.console.state import console_of
from gated.console.templates import render

PAGES = {
    "feed": ("Live feed", "feed.html"),
    "members": ("Members", "members.html"),
    "classes": ("Today's classes", "classes.html"),
    "reports": ("Reports", "reports.html"),
    "audit": ("Audit log", "audit.html"),
}


def shell(request: Request, page: str) -> Response:
    user = operator(request)
    site = console_of(request).backend.config.site
    title, content = PAGES[page]
    html = render(
        "base.html",
        page=page,
        title=title,
        csrf=user.csrf,
        user=user.name,
        role=user.role,
        site=site.name or site.id,
        content=render(content),
        **{f"nav_{p}": ("page" if p == page else "false") for p in PAGES},
    )
    return Response(html, media_type="text/html; charset=utf-8")


@requires(page=True)
async def feed_page(request: Request) -> Response:
    return shell(request, "feed")


@requires(page=True)
async def members_page(request: Request) -> Response:
    return shell(request, "members")


@requires(page=True)
async def classes_page(request: Request) -> Response:
    return shell(request, "classes")


@requires(page=True)
async def reports_page(request: Request) -> Response:
    return shell(request, "reports")


@requires(page=True)
async def audit_page(request: Request) -> Response:
    return shell(request, "audit")


__all__ = ["audit_page", "classes_page", "feed_page", "members_page", "reports_page"]
