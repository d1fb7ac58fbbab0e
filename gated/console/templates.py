"""The console's HTML: a few files in templates/, filled with escaped values."""

from __future__ import annotations

import re
from functools import cache
from html import escape
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"

_SLOT = re.compile(r"\{\{(\{?)\s*(\w+)\s*\}?\}\}")


@cache
def _text(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def render(name: str, **ctx: Any) -> str:
    """`{{x}}` is replaced HTML-escaped, `{{{x}}}` raw (only for our own fragments)."""

    def sub(m: re.Match[str]) -> str:
        value = ctx.get(m.group(2), "")
        return str(value) if m.group(1) else escape(str(value), quote=True)

    return _SLOT.sub(sub, _text(name))


__all__ = ["STATIC", "TEMPLATES", "render"]
