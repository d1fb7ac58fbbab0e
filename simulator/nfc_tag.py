"""An NFC tag emulated over nfcpy's `udp` transport, for tests and demos.

nfcpy can only emulate Type 3 (FeliCa, 212F) tags, so the simulated identifier is the
8-byte IDm. Run a reader on `udp:127.0.0.1:PORT` and this tag with the same port.
The emulator binds to 127.0.0.1 only (nfcpy itself would bind 0.0.0.0).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from typing import Any

log = logging.getLogger(__name__)

# Manufacturer parameters (PMm) and system code of a FeliCa Standard card, as nfcpy's
# own examples use; any value works, readers only key on the IDm.
PMM = bytes.fromhex("03014B024F4993FF")
SYSTEM_CODE = bytes.fromhex("12FC")


class EmulatedNfcTag:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port, self.host = port, host
        self._idm: bytes | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.activations = 0  # times a reader polled and found the tag

    def present(self, idm: bytes | str) -> None:
        """Put a card on the reader (8-byte IDm, bytes or hex)."""
        raw = bytes.fromhex(idm) if isinstance(idm, str) else bytes(idm)
        if len(raw) != 8:
            raise ValueError("a FeliCa IDm is 8 bytes")
        with self._lock:
            self._idm = raw

    def remove(self) -> None:
        with self._lock:
            self._idm = None

    def start(self) -> EmulatedNfcTag:
        self._thread = threading.Thread(target=self._run, name="nfc-tag", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> EmulatedNfcTag:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        import nfc

        clf = nfc.ContactlessFrontend(f"udp:{self.host}:{self.port}")
        device = clf.device

        def bind_loopback(time_to_return: float = 0.0) -> bool:
            # nfcpy binds 0.0.0.0 on every listen and drops its socket now and then
            # (mute); keep the simulator on loopback and bind each new socket once.
            device._create_socket()
            if device.socket.getsockname()[1] == 0:
                device.socket.bind((self.host, self.port))
            return True

        device._bind_socket = bind_loopback
        try:
            while not self._stop.is_set():
                with self._lock:
                    idm = self._idm
                if idm is None:
                    # Bound even without a card, like a field that is on and empty:
                    # polls go unanswered instead of bouncing off a closed port.
                    bind_loopback()
                    self._drain(device.socket)
                    continue
                clf.connect(
                    card={
                        "on-startup": self._on_startup(idm),
                        "on-connect": self._on_connect,
                        "timeout": 0.2,
                    },
                    terminate=lambda idm=idm: self._stop.is_set() or self._idm != idm,
                )
        finally:
            with contextlib.suppress(Exception):
                clf.close()

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        """No card: swallow the reader's polls so they don't answer a later card."""
        if select.select([sock], [], [], 0.05)[0]:
            with contextlib.suppress(OSError):
                sock.recvfrom(1024)

    @staticmethod
    def _on_startup(idm: bytes) -> Any:
        def on_startup(target: Any) -> Any:
            target.brty = "212F"
            target.sensf_res = bytearray(b"\x01" + idm + PMM + SYSTEM_CODE)
            return target

        return on_startup

    def _on_connect(self, tag: Any) -> bool:
        self.activations += 1
        return True
