"""The console's HTML pages: shells whose data comes from the API (static/console.js)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from gated.console.auth import operator, requires
from gated.console.state import console_of
from gated.console.templates import render
from sync.photos import PHOTO_MAX_TEXT

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
        photo_max=PHOTO_MAX_TEXT,
        **{f"nav_{p}": ("page" if p == page else "false") for p in PAGES},
    )
    return Response(html, media_type="text/html; charset=utf-8")


def page(name: str) -> Callable[[Request], Awaitable[Response]]:
    """The handler of one page of PAGES (a login is required, as for every page)."""

    @requires(page=True)
    async def handler(request: Request) -> Response:
        return shell(request, name)

    handler.__name__ = f"{name}_page"
    return handler


# path -> handler, in the order of the navigation
ROUTES = {"/": page("feed"), "/members": page("members"), "/classes": page("classes"),
          "/reports": page("reports"), "/audit": page("audit")}


__all__ = ["PAGES", "ROUTES", "page", "shell"]
