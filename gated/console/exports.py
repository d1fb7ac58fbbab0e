"""CSV downloads: the audit log and the loyalty report, as a spreadsheet opens them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gated.console.api import audit_filters, report_range
from gated.console.auth import requires
from gated.console.state import console_of


def cell(v: Any) -> str:
    """CSV cells that a spreadsheet would run as a formula get a leading apostrophe."""
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def _csv(header: list[str], rows: list[list[Any]], filename: str) -> Response:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([cell(v) for v in r])
    return Response(buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@requires(page=True)
async def audit_csv(request: Request) -> Response:
    c = console_of(request)
    f = audit_filters(request)
    rows = await asyncio.to_thread(lambda: c.views.audit_rows(limit=100_000, **f))
    site = c.backend.config.site.id
    return _csv(
        ["id", "at", "operator", "action", "detail", "seq"],
        [[r["id"], r["at"], r["operator"], r["action"], json.dumps(r["detail"], ensure_ascii=False), r["seq"]]
         for r in reversed(rows)],
        f"gated-audit-{site}-{c.views.today().isoformat()}.csv",
    )


@requires(page=True)
async def loyalty_csv(request: Request) -> Response:
    c = console_of(request)
    day_from, day_to = report_range(request)
    lines = await asyncio.to_thread(c.views.loyalty_report, day_from, day_to)
    site = c.backend.config.site.id
    return _csv(
        ["member", "name", "credited", "adjusted", "total", "classes", "adjustments"],
        [[ln["member"], ln["name"], ln["credited"], ln["adjusted"], ln["total"], ln["classes"], ln["adjustments"]]
         for ln in lines],
        f"gated-loyalty-{site}-{day_from.isoformat()}-{day_to.isoformat()}.csv",
    )


__all__ = ["audit_csv", "cell", "loyalty_csv"]
