"""Asking an RS-485 line who is there, byte by byte, for the installer's tools.

pymodbus hides what came back when an answer is wrong; an installer needs exactly that:
nothing at all (wrong unit id, A/B swapped, no power, no termination on a long line),
bytes that are no valid frame (baud rate or parity not the board's), or a valid answer
from another unit. The frames are built and read here (pure); `probe_unit` and `scan`
do blocking serial I/O, for a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from .refusals import describe

READ_COILS = 0x01
READ_DISCRETE_INPUTS = 0x02


def crc16(data: bytes) -> int:
    """Modbus RTU CRC (poly 0xA001, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def read_request(unit: int, function: int = READ_COILS, address: int = 0, count: int = 1) -> bytes:
    return with_crc(bytes([unit, function]) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


class Answer(StrEnum):
    OK = "ok"  # a valid answer from the unit asked
    EXCEPTION = "exception"  # a valid exception answer: the unit is there
    OTHER_UNIT = "other_unit"  # a valid frame from another unit id
    GARBLED = "garbled"  # bytes, but no valid frame: baud rate / parity, or noise
    SILENT = "silent"  # nothing at all


@dataclass(frozen=True, slots=True)
class Reply:
    answer: Answer
    raw: bytes = b""
    unit: int | None = None
    exception_code: int | None = None
    coils: int | None = None  # how many coils / discrete inputs from address 0 (scan)
    inputs: int | None = None


def largest_count(accepts: Callable[[int], bool], limit: int = 64) -> int:
    """The largest count from address 0 a board accepts (0..limit), by bisection."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if accepts(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def classify(unit: int, function: int, data: bytes) -> Reply:
    """What `data` (everything received after one request) says about the line."""
    if not data:
        return Reply(Answer.SILENT)
    # A valid frame may follow leading noise: look for one ending anywhere.
    for start in range(len(data)):
        for length in (5, *range(6, len(data) - start + 1)):
            frame = data[start : start + length]
            if len(frame) < 5 or crc16(frame[:-2]).to_bytes(2, "little") != frame[-2:]:
                continue
            who, fc = frame[0], frame[1]
            if who != unit:
                return Reply(Answer.OTHER_UNIT, data, who)
            if fc == function | 0x80 and length == 5:
                return Reply(Answer.EXCEPTION, data, who, frame[2])
            if fc == function and length == 5 + frame[2]:
                return Reply(Answer.OK, data, who)
    return Reply(Answer.GARBLED, data)


CAUSES = {
    Answer.SILENT: "nothing answers: check the unit id (DIP switches), that A/B are not "
    "swapped, the board's power, and 120 Ω termination at both ends of a long line",
    Answer.GARBLED: "bytes come back but no valid Modbus frame: the baud rate or parity "
    "differs from the board's (or A/B are swapped on an adapter that inverts)",
    Answer.OTHER_UNIT: "another unit id answers: the board's unit id is not the one configured",
    Answer.EXCEPTION: "the board answers with an exception",
    Answer.OK: "the board answers",
}


def explain(reply: Reply) -> str:
    """What one reply says, for the installer: an exception by its code and meaning."""
    if reply.answer is Answer.EXCEPTION and reply.exception_code is not None:
        return f"the board answers with {describe(reply.exception_code)}"
    if reply.answer is Answer.OTHER_UNIT:
        return f"{CAUSES[reply.answer]} (unit {reply.unit} answered)"
    return CAUSES[reply.answer]

SerialOpener = Callable[..., Any]


def _open(device: str, baudrate: int, parity: str, stopbits: int, opener: SerialOpener | None) -> Any:
    import serial

    return (opener or serial.Serial)(
        device, baudrate=baudrate, parity=parity, stopbits=stopbits, timeout=0, exclusive=True
    )


def _exchange(port: Any, request: bytes, timeout: float, silence: float) -> bytes:
    port.reset_input_buffer()
    port.write(request)
    got = bytearray()
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        chunk = port.read(256)
        now = time.monotonic()
        if chunk:
            got += chunk
            last = now
        elif last is not None and now - last > silence:
            break  # the frame has ended
        time.sleep(0.002)
    return bytes(got)


def probe_unit(
    device: str,
    unit: int,
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    timeout: float = 0.3,
    function: int = READ_COILS,
    opener: SerialOpener | None = None,
) -> Reply:
    port = _open(device, baudrate, parity, stopbits, opener)
    try:
        silence = max(0.01, 3.5 * 11 / baudrate)
        return classify(unit, function, _exchange(port, read_request(unit, function), timeout, silence))
    finally:
        port.close()


def scan(
    device: str,
    units: Iterable[int],
    *,
    baudrate: int = 9600,
    parity: str = "N",
    stopbits: int = 1,
    timeout: float = 0.1,
    opener: SerialOpener | None = None,
) -> dict[int, Reply]:
    """Every unit that answered (valid answer or exception), and what garbled lines said."""
    port = _open(device, baudrate, parity, stopbits, opener)
    found: dict[int, Reply] = {}
    try:
        silence = max(0.01, 3.5 * 11 / baudrate)
        for unit in units:
            reply = classify(unit, READ_COILS, _exchange(port, read_request(unit), timeout, silence))
            if reply.answer is Answer.OK:
                def accepts(count: int, function: int, u: int = unit) -> bool:
                    answer = _exchange(port, read_request(u, function, 0, count), timeout, silence)
                    return classify(u, function, answer).answer is Answer.OK

                reply = replace(reply, coils=largest_count(lambda n: accepts(n, READ_COILS)),
                                inputs=largest_count(lambda n: accepts(n, READ_DISCRETE_INPUTS)))
            if reply.answer is not Answer.SILENT:
                found[unit] = reply
    finally:
        port.close()
    return found
