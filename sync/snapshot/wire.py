"""The wire between the daemon's SnapshotImporter (sync/snapshot/importer.py) and its worker process
(sync/snapshot/worker.py), sans-I/O in the manner of h11: bytes in, events out; what to
say, bytes out. Both sides frame and parse with this module only.

Down, on the worker's stdin (`CommandReader` parses it):

    chunk LENGTH\\n<LENGTH bytes>   one snapshot chunk's payload, exactly as received
    end\\n                          the last chunk is in: build
    abort\\n                        give up; end of input without `end` means the same

Up, on the worker's stdout (`EventReader` parses it): one JSON object a line,

    {"event": "progress", "chunks": N}                 every so often
    {"event": "built", ...counts and timings}          the replica file is ready
    {"event": "error", "message": "...", "chunk": N}   the snapshot is rejected (chunk: or null)

The readers never raise on input and hold a bounded number of bytes: a command line of
at most MAX_COMMAND bytes, a payload of at most `max_chunk`, an event line of at most
`max_line` (a longer one is skipped whole). Their result does not depend on how the
input was split (tests/test_snapshot_wire.py checks both with hypothesis).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_COMMAND = 32  # bytes of a command line, its newline included
# The link drops MQTT messages above its max_payload (4 MB by default, sync/link/settings.py);
# this bound only keeps a corrupted length from making the worker buffer without end.
MAX_CHUNK = 1 << 30
MAX_EVENT_LINE = 1 << 20

_CHUNK = re.compile(rb"chunk ([0-9]{1,10})")

END = b"end\n"
ABORT = b"abort\n"


def chunk_header(length: int) -> bytes:
    """What goes before a payload of `length` bytes (the payload follows as it is)."""
    return b"chunk %d\n" % length


def event_line(event: str, **fields: Any) -> bytes:
    return json.dumps({"event": event, **fields}).encode() + b"\n"


# -- down: the importer's commands, as the worker reads them ---------------------------------


@dataclass(frozen=True, slots=True)
class Chunk:
    payload: bytes


@dataclass(frozen=True, slots=True)
class End:
    pass


@dataclass(frozen=True, slots=True)
class Abort:
    reason: str  # "abort" when asked to; otherwise what was wrong with the input


Command = Chunk | End | Abort


class CommandReader:
    """The worker's side of the down direction. After End or Abort it is closed: the rest
    of the input is not looked at."""

    def __init__(self, max_chunk: int = MAX_CHUNK):
        self.max_chunk = max_chunk
        self._buf = bytearray()
        self._need: int | None = None  # payload bytes expected, after a `chunk` line
        self.closed = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Command]:
        if self.closed:
            return []
        self._buf += data
        out: list[Command] = []
        while not self.closed:
            if self._need is not None:
                if len(self._buf) < self._need:
                    break
                out.append(Chunk(bytes(self._buf[: self._need])))
                del self._buf[: self._need]
                self._need = None
                continue
            nl = self._buf.find(b"\n", 0, MAX_COMMAND)
            if nl < 0:
                if len(self._buf) >= MAX_COMMAND:
                    out.append(self._close(f"a command line longer than {MAX_COMMAND - 1} bytes"))
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line == b"end":
                out.append(End())
                self._close()
            elif line == b"abort":
                out.append(Abort("abort"))
                self._close()
            elif (m := _CHUNK.fullmatch(line)) is not None:
                length = int(m[1])
                if length > self.max_chunk:
                    out.append(self._close(f"a chunk of {length} bytes (at most {self.max_chunk})"))
                else:
                    self._need = length
            else:
                out.append(self._close(f"not a command: {line[:MAX_COMMAND]!r}"))
        return out

    def feed_eof(self) -> list[Command]:
        """The input ended (the daemon closed the pipe, or died): without `end` it is an abort."""
        if self.closed:
            return []
        cut = " in a chunk" if self._need is not None or self._buf else ""
        return [self._close(f"input ended without end{cut}")]

    def _close(self, reason: str = "") -> Abort:
        self.closed = True
        self._buf = bytearray()
        self._need = None
        return Abort(reason)


# -- up: the worker's events, as the importer reads them -------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    chunks: int


@dataclass(frozen=True, slots=True)
class Built:
    report: dict[str, Any] = field(hash=False)


@dataclass(frozen=True, slots=True)
class Failed:
    message: str
    chunk: int | None


WorkerEvent = Progress | Built | Failed


class EventReader:
    """The importer's side of the up direction. A line that is not one of the events (not
    JSON, an unknown event, a field of the wrong type, too long) is skipped: the worker's
    exit status is what says it failed."""

    def __init__(self, max_line: int = MAX_EVENT_LINE):
        self.max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside an overlong line: drop up to its newline

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[WorkerEvent]:
        out: list[WorkerEvent] = []
        start = len(self._buf)
        self._buf += data
        while True:
            nl = self._buf.find(b"\n", start)
            if nl < 0:
                if len(self._buf) > self.max_line:
                    self._buf.clear()
                    self._skipping = True
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            start = 0
            if self._skipping:
                self._skipping = False
                continue
            if len(line) <= self.max_line and (event := _event(line)) is not None:
                out.append(event)
        return out


def _event(line: bytes) -> WorkerEvent | None:
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):  # deep nesting: the C decoder recurses
        return None
    if not isinstance(msg, dict):
        return None
    kind = msg.get("event")
    if kind == "progress" and type(msg.get("chunks")) is int:
        return Progress(msg["chunks"])
    if kind == "built":
        return Built(msg)
    if kind == "error":
        chunk = msg.get("chunk")
        return Failed(str(msg.get("message")), chunk if type(chunk) is int else None)
    return None


__all__ = [
    "ABORT",
    "END",
    "Abort",
    "Built",
    "Chunk",
    "Command",
    "CommandReader",
    "End",
    "EventReader",
    "Failed",
    "Progress",
    "WorkerEvent",
    "chunk_header",
    "event_line",
]
