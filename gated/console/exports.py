"""CSV downloads: the audit log and the loyalty report, as a spreadsheet opens them: UTF-8
with a byte-order mark (Excel reads "Díaz" right only with it), the columns in the order
the screen shows them, the report's totals as its last row, and text that a spreadsheet
would run as a formula neutralised."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gated.console.api import audit_filters, report_range
from gated.console.auth import requires
from gated.console.state import console_of

FORMULA_START = ("=", "+", "-", "@")


def cell(v: Any) -> str:
    """A CSV cell. Text that a spreadsheet would run as a formula — starting with = + - @,
    or with a tab or carriage return, also after leading spaces or line breaks, which
    spreadsheets skip — gets a leading apostrophe (OWASP's CSV injection advice). Numbers
    are numbers: a negative adjustment stays -3, not text."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int | float | Decimal):
        return str(v)
    s = str(v)
    if s[:1] in ("\t", "\r") or s.lstrip(" \t\r\n")[:1] in FORMULA_START:
        return "'" + s
    return s


def _csv(header: list[str], rows: list[list[Any]], filename: str) -> Response:
    buf = io.StringIO()
    buf.write("\ufeff")
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([cell(v) for v in r])
    return Response(buf.getvalue().encode("utf-8"), media_type="text/csv; charset=utf-8",
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
    # the screen's columns, in its order (the member's id after the name: for a lookup),
    # and its footer as the last row
    rows: list[list[Any]] = [
        [ln["name"], ln["member"], ln["classes"], ln["credited"], ln["adjustments"], ln["adjusted"], ln["total"]]
        for ln in lines
    ]
    rows.append([f"All members ({len(lines)})", "", "", sum(ln["credited"] for ln in lines), "",
                 sum(ln["adjusted"] for ln in lines), sum(ln["total"] for ln in lines)])
    return _csv(
        ["Member", "Member id", "Classes", "Credited", "Adjustments", "Adjusted", "Total"],
        rows,
        f"gated-loyalty-{site}-{day_from.isoformat()}-{day_to.isoformat()}.csv",
    )


__all__ = ["audit_csv", "cell", "loyalty_csv"]
