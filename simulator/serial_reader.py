"""A virtual serial card/QR reader on a pseudo-terminal.

The reader side (gated, or any serial tool) opens `path` (a symlink to the pty slave,
like /dev/serial/by-id/...); the simulator writes frames on the master. `unplug()` and
`replug()` imitate pulling the USB adapter: the master closes (reads on the slave get
EIO), the link vanishes, then a new pty appears behind the same link.

Installers can script taps from a shell:

    python -m simulator.serial_reader --link /tmp/reader1 --format hex
    > 04A1B2C3          (a card)
    > qr:HELLO-TOKEN    (a QR code)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tty
from pathlib import Path

from drivers.readers.frames import Checksum, FrameConfig, Framing, Terminator, encode_frame
from drivers.readers.payloads import WIEGAND_BITS, ByteOrder, PayloadFormat
from drivers.readers.wiegand import encode_frame as wiegand_frame
from drivers.readers.wiegand import encode_wiegand
from rules.credential import Card, CardFormat


class VirtualSerialReader:
    def __init__(
        self, link: str | os.PathLike[str] | None = None, frame: FrameConfig | None = None
    ):
        self.frame = frame or FrameConfig()
        self.link = Path(link) if link is not None else None
        self._master: int | None = None
        self._slave: int | None = None
        self.slave_name = ""
        self.plug()

    @property
    def path(self) -> str:
        """What a reader should open: the stable link if any, else the pty slave."""
        return str(self.link) if self.link is not None else self.slave_name

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        if self._master is not None:
            return
        master, slave = os.openpty()
        # Raw mode: no echo back to the master, no CR/LF translation of our frames.
        tty.setraw(slave)
        tty.setraw(master)
        self._master, self._slave = master, slave
        self.slave_name = os.ttyname(slave)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link.with_name(self.link.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self.slave_name)
            tmp.replace(self.link)  # atomic: a reader never sees a half-made link

    def unplug(self) -> None:
        if self.link is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    replug = plug

    def close(self) -> None:
        self.unplug()

    def __enter__(self) -> VirtualSerialReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        """Raw bytes on the line (garbage, half frames...)."""
        if self._master is None:
            raise RuntimeError("reader is unplugged")
        view = memoryview(data)
        while view:
            n = os.write(self._master, view)
            view = view[n:]

    def send(self, payload: str, frame: FrameConfig | None = None) -> bytes:
        data = encode_frame(frame or self.frame, payload)
        self.write(data)
        return data

    def tap(self, card: str, frame: FrameConfig | None = None) -> bytes:
        """Present a card whose payload is already in the reader's format: a hex UID,
        a decimal number, or for Wiegand either "FC:CARD" or the raw bits/hex."""
        cfg = frame or self.frame
        return self.send(card_payload(card, cfg.format), cfg)

    def scan_qr(self, text: str, frame: FrameConfig | None = None) -> bytes:
        return self.send(text, frame)

    def present(self, card: Card, frame: FrameConfig | None = None) -> bytes:
        """Hold a physical card to this reader: it sends what a reader of its format
        reads of that card (an EM card on a decimal reader: its 32-bit number...)."""
        cfg = frame or self.frame
        return self.send(reads_as(card, cfg.format, cfg.byte_order), cfg)


def card_payload(card: str, fmt: PayloadFormat) -> str:
    """Wiegand converters send bits; let callers say "123:45678" and encode it here."""
    if fmt in WIEGAND_BITS and ":" in card:
        nbits = WIEGAND_BITS[fmt]
        facility, number = (int(part) for part in card.split(":", 1))
        # Whole bytes of hex, as converters send (and as an xor-hex checksum needs).
        return f"{encode_wiegand(facility, number, nbits):0{2 * ((nbits + 7) // 8)}X}"
    return card


def reads_as(card: Card, fmt: PayloadFormat, order: ByteOrder = ByteOrder.FORWARD) -> str:
    """The payload a reader of format `fmt` sends for a physical card; ValueError when
    that kind of reader cannot read that card."""
    seen = {c.format if c.format is not CardFormat.WIEGAND else f"w{c.bits}": c
            for c in (card, *card.projections())}  # fmt: skip
    uid = seen.get(CardFormat.UID)
    if fmt in WIEGAND_BITS:
        w = seen.get(f"w{WIEGAND_BITS[fmt]}")
        if w is None:
            raise ValueError(f"a {fmt} reader cannot read {card.key}")
        nbits = w.bits
        return f"{wiegand_frame(w):0{2 * ((nbits + 7) // 8)}X}"
    if fmt in (PayloadFormat.EM, PayloadFormat.HEX) and CardFormat.EM in seen:
        return f"{seen[CardFormat.EM].value:010X}"
    if fmt in (PayloadFormat.EM_DECIMAL, PayloadFormat.DECIMAL) and CardFormat.EM32 in seen:
        return f"{seen[CardFormat.EM32].value:010d}"
    if fmt in (PayloadFormat.UID, PayloadFormat.HEX, PayloadFormat.UID_DECIMAL) and uid is not None:
        data = uid.uid_bytes[::-1] if order is ByteOrder.REVERSED else uid.uid_bytes
        if fmt is PayloadFormat.UID_DECIMAL:
            return str(int.from_bytes(data, "big"))
        return data.hex().upper()
    raise ValueError(f"a {fmt} reader cannot read {card.key}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--link", required=True, help="path of the symlink to create")
    parser.add_argument("--framing", choices=[f.value for f in Framing], default="line")
    parser.add_argument("--terminator", choices=[t.value for t in Terminator], default="crlf")
    parser.add_argument("--checksum", choices=[c.value for c in Checksum], default="none")
    parser.add_argument("--format", choices=[f.value for f in PayloadFormat], default="hex")
    args = parser.parse_args(argv)
    frame = FrameConfig(
        framing=Framing(args.framing),
        terminator=Terminator(args.terminator),
        checksum=Checksum(args.checksum),
        format=PayloadFormat(args.format),
    )
    with VirtualSerialReader(args.link, frame) as reader:
        print(f"virtual reader at {reader.path} -> {reader.slave_name}", file=sys.stderr)
        print("type a card per line, or qr:TEXT; Ctrl-D to stop", file=sys.stderr)
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            if line.startswith("qr:"):
                reader.scan_qr(line[3:])
            else:
                reader.tap(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
