"""Sans-I/O parser for serial line readers, in the manner of h11: bytes in, events out.

`SerialFrameParser(config).feed(data, now)` returns decoded reads and counted errors; it
does no I/O, reads no clock (the shell passes `now`) and never raises on input. It walks
the input byte by byte so the result cannot depend on how the serial driver chunked the
stream (a property the tests check with hypothesis), and it holds at most
`max_frame_length` bytes.

A reader sends a frame in one burst. Bytes of a frame followed by silence longer than
`frame_gap` are the remains of a cut frame (a card pulled away mid-read, a reader reset):
they are discarded and counted (`gap`), so they cannot glue onto the next card's frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import reduce
from operator import xor

from .payloads import HEX_PAYLOADS, ByteOrder, PayloadFormat, decode_payload
from .reads import CredentialRead, FrameError, FrameErrorReason

STX = 0x02
ETX = 0x03
_BLANKS = frozenset(b" \t\r\n\x00")
_RAW_KEEP = 64  # bytes of a bad frame kept in the error, for logs

DEFAULT_FRAME_GAP = 0.1  # seconds; a frame at 1,200 baud has ~8 ms between characters


class Framing(StrEnum):
    LINE = "line"  # payload followed by a terminator
    STX_ETX = "stx-etx"  # 0x02 payload 0x03, as EM4100 modules (RDM6300 etc.) send


class Terminator(StrEnum):
    CR = "cr"
    LF = "lf"
    CRLF = "crlf"

    @property
    def bytes(self) -> bytes:
        return {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}[self.value]


class Checksum(StrEnum):
    NONE = "none"
    # Two hex digits at the end of the payload: XOR of the payload's ASCII bytes.
    XOR = "xor"
    # Two hex digits at the end: XOR of the bytes the payload's hex pairs encode
    # (the EM4100/RDM6300 convention: 10 hex digits of data, then 2 of checksum).
    XOR_HEX = "xor-hex"


@dataclass(frozen=True, slots=True)
class FrameConfig:
    framing: Framing = Framing.LINE
    terminator: Terminator = Terminator.CRLF
    checksum: Checksum = Checksum.NONE
    format: PayloadFormat = PayloadFormat.HEX
    max_frame_length: int = 256  # whole frame, framing bytes included
    byte_order: ByteOrder = ByteOrder.FORWARD  # uid formats
    card_format: PayloadFormat = PayloadFormat.HEX  # what card-looking lines are under auto
    frame_gap: float | None = DEFAULT_FRAME_GAP  # None: never discard a partial frame

    def __post_init__(self) -> None:
        if self.max_frame_length < 4:
            raise ValueError("max_frame_length must be at least 4")
        if self.checksum is Checksum.XOR_HEX and self.format not in HEX_PAYLOADS:
            raise ValueError("checksum xor-hex needs a hex payload (hex, uid, em, wiegand)")
        if self.frame_gap is not None and self.frame_gap <= 0:
            raise ValueError("frame_gap must be positive (or None)")


ParserOutput = CredentialRead | FrameError


class SerialFrameParser:
    def __init__(self, config: FrameConfig) -> None:
        self.config = config
        self._buf = bytearray()
        self._term = config.terminator.bytes
        self._discarding = False  # inside an overlong frame, dropping until its end
        self._in_frame = False  # STX/ETX: between an STX and its ETX
        self._noise = 0  # STX/ETX: non-blank bytes seen outside frames
        self._last_byte_at: float | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def expires_at(self) -> float | None:
        """When a partial frame now buffered becomes stale (for the shell's timer)."""
        gap = self.config.frame_gap
        if gap is None or self._last_byte_at is None or not self._partial():
            return None
        return self._last_byte_at + gap

    def _partial(self) -> bool:
        if self._in_frame:
            return True
        return any(b not in _BLANKS for b in self._buf)

    def expire(self, now: float) -> list[ParserOutput]:
        """Discard a partial frame older than frame_gap at `now`; counted as `gap`."""
        deadline = self.expires_at
        if deadline is None or now <= deadline:
            return []
        dropped = bytes(self._buf)
        self._buf.clear()
        self._in_frame = False
        self._discarding = False
        detail = f"partial frame discarded after {self.config.frame_gap:g} s of silence"
        return [_error(FrameErrorReason.GAP, detail + self._framing_hint(dropped), dropped)]

    def _framing_hint(self, dropped: bytes) -> str:
        """A line reader fed STX/ETX frames (an RDM6300-style EM4100 module) never sees a
        line end: say what to set rather than drop every card as a partial frame."""
        if self.config.framing is Framing.LINE and STX in dropped:
            return "; the reader frames its reads between 0x02 and 0x03 (STX/ETX): set framing: stx-etx"
        return ""

    def feed(self, data: bytes, now: float | None = None) -> list[ParserOutput]:
        """Bytes in, reads and errors out. Without `now` no gap is ever detected."""
        out: list[ParserOutput] = []
        if now is not None and data:
            out.extend(self.expire(now))
            self._last_byte_at = now
        if self.config.framing is Framing.LINE:
            for byte in data:
                self._line_byte(byte, out)
        else:
            for byte in data:
                self._stx_byte(byte, out)
        return out

    def _line_byte(self, byte: int, out: list[ParserOutput]) -> None:
        buf, term = self._buf, self._term
        buf.append(byte)
        if byte == term[-1] and buf.endswith(term):
            frame = bytes(buf[: -len(term)])
            buf.clear()
            if self._discarding:
                self._discarding = False
            else:
                out.extend(self._decode(frame))
            return
        # A frame that fits ends with its terminator at the latest at max length, so a
        # full buffer without one can only be an overlong frame (or a wrong terminator).
        if len(buf) >= self.config.max_frame_length:
            if not self._discarding:
                out.append(_error(FrameErrorReason.OVERLONG, "no terminator" + self._framing_hint(bytes(buf)), bytes(buf)))
                self._discarding = True
            # Keep what may be the start of a split terminator.
            keep = bytes(buf[len(buf) - (len(term) - 1) :]) if len(term) > 1 else b""
            buf[:] = keep

    def _stx_byte(self, byte: int, out: list[ParserOutput]) -> None:
        buf = self._buf
        if self._in_frame:
            if byte == ETX:
                self._in_frame = False
                out.extend(self._decode(bytes(buf)))
                buf.clear()
            elif byte == STX:
                out.append(_error(FrameErrorReason.TRUNCATED, "STX before ETX", bytes(buf)))
                buf.clear()
            else:
                buf.append(byte)
                if len(buf) > self.config.max_frame_length - 2:
                    out.append(_error(FrameErrorReason.OVERLONG, "no ETX", bytes(buf)))
                    buf.clear()
                    self._in_frame = False
                    self._discarding = True
            return
        if byte == STX:
            if self._noise:
                out.append(_error(FrameErrorReason.NOISE, f"{self._noise} bytes outside frames"))
                self._noise = 0
            self._discarding = False
            self._in_frame = True
            return
        if self._discarding:
            if byte == ETX:
                self._discarding = False
            return
        if byte in _BLANKS:  # CR/LF after ETX is common and harmless
            return
        self._noise += 1
        if self._noise >= self.config.max_frame_length:
            out.append(_error(FrameErrorReason.NOISE, f"{self._noise} bytes outside frames"))
            self._noise = 0

    def _decode(self, frame: bytes) -> list[ParserOutput]:
        try:
            text = frame.decode("utf-8").strip()
        except UnicodeDecodeError:
            return [_error(FrameErrorReason.ENCODING, "not UTF-8", frame)]
        if not text:
            return []  # an empty line (e.g. CRLF read as CR + empty LF line) means nothing
        body = _check(self.config.checksum, text)
        if isinstance(body, FrameError):
            return [body]
        cfg = self.config
        result = decode_payload(cfg.format, body, order=cfg.byte_order, card_format=cfg.card_format)
        if isinstance(result, FrameError) and not result.raw:
            return [_error(result.reason, result.detail, frame)]
        return [result]


def _error(reason: FrameErrorReason, detail: str, raw: bytes = b"") -> FrameError:
    return FrameError(reason, detail, raw[:_RAW_KEEP])


def _check(checksum: Checksum, text: str) -> str | FrameError:
    """Returns the payload without its checksum, or the error."""
    if checksum is Checksum.NONE:
        return text
    raw = text.encode()
    if len(text) < 3:
        return _error(FrameErrorReason.CHECKSUM, "too short for a checksum", raw)
    body, given = text[:-2], text[-2:]
    try:
        expected = int(given, 16)
    except ValueError:
        return _error(FrameErrorReason.CHECKSUM, "checksum is not hex", raw)
    if checksum is Checksum.XOR:
        actual = xor_ascii(body)
    else:
        try:
            actual = xor_hex_pairs(body)
        except ValueError:
            return _error(FrameErrorReason.CHECKSUM, "payload is not hex pairs", raw)
    if actual != expected:
        return _error(FrameErrorReason.CHECKSUM, f"expected {actual:02X}, got {given}", raw)
    return body


def xor_ascii(body: str) -> int:
    return reduce(xor, body.encode(), 0)


def xor_hex_pairs(body: str) -> int:
    if len(body) % 2 or not body.isascii():
        raise ValueError("odd number of hex digits")
    return reduce(xor, bytes.fromhex(body), 0)


def encode_frame(config: FrameConfig, payload: str) -> bytes:
    """The bytes a reader configured like `config` sends for `payload` (simulators, tests)."""
    text = payload
    if config.checksum is Checksum.XOR:
        text += f"{xor_ascii(payload):02X}"
    elif config.checksum is Checksum.XOR_HEX:
        text += f"{xor_hex_pairs(payload):02X}"
    body = text.encode()
    if config.framing is Framing.STX_ETX:
        return bytes([STX]) + body + bytes([ETX])
    return body + config.terminator.bytes
