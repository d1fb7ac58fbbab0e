"""Logging: one pipeline. JSON lines for journald and log shippers, readable lines on a
terminal.

gated's own modules log through structlog; drivers/, sync/ and simulator/ use the
standard `logging` module (they are libraries: whoever embeds them chooses the output),
and so do pymodbus, aiomqtt and uvicorn. Both go through the same structlog processors,
rendered by `structlog.stdlib.ProcessorFormatter` on one handler: with `format: json` every
line on stderr is one JSON object with `timestamp`, `level`, `logger` and `event`, whoever
wrote it.

Libraries' debug chatter (pymodbus prints every frame, `>>>>> send`) is kept at WARNING
unless `logging.libraries: debug` asks for it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sys
import time
from typing import Any

import structlog
from structlog.typing import Processor

from rules.credential import mask

__all__ = ["mask", "setup"]

# What the daemon reports itself (relay health, alarms, dropped messages), once, where the
# library would say it at every request.
LIBRARIES = ("pymodbus", "aiomqtt", "paho", "asyncio", "uvicorn", "nfc", "osdp", "serial")


def setup(format: str = "auto", level: str = "info", libraries: str = "warning") -> None:
    as_json = format == "json" or (format == "auto" and not sys.stderr.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    lvl = getattr(logging, level.upper(), logging.INFO)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.PositionalArgumentsFormatter()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    lib_level = getattr(logging, libraries.upper(), logging.WARNING)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(max(lib_level, lvl))
    if lib_level > logging.INFO:
        # pymodbus dumps whole frames at error level when a board does not answer
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        cache_logger_on_first_use=True,
    )


_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class QuietResourceErrors:
    """The event loop's exception handler: an error for lack of descriptors or memory (an
    accept() that fails with EMFILE, say) is logged once per `every` seconds with how many
    there were, never once per try: a flood must not become a flood of log lines too
    (issue 22: 276,000 EMFILE lines in 10 s starved the loop the taps run on)."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.last = -every
        self.count = 0
        self.log = structlog.get_logger("gated")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS):
            loop.default_exception_handler(context)
            return
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every:
            self.log.error("out_of_resources", error=str(exc), where=str(context.get("message", ""))[:200],
                           times=self.count, per_seconds=self.every)
            self.last, self.count = now, 0
