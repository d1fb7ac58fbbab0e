"""Logging: JSON lines for journald and log shippers, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def setup(format: str = "auto", level: str = "info") -> None:
    as_json = format == "json" or (format == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s", force=True)
    # pymodbus dumps whole frames at error level when a board does not answer; the
    # daemon reports that itself (relay health, alarms), once.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def mask(credential: str) -> str:
    """Card numbers and tokens in logs: enough to recognise, not enough to clone."""
    if len(credential) <= 4:
        return "*" * len(credential)
    if len(credential) > 24:  # a QR token: its head says which key, nothing more
        return credential[:8] + "…"
    return "*" * (len(credential) - 4) + credential[-4:]
