"""NFC readers through nfcpy (PN53x, ACR122U, RC-S380; `udp:` for the simulator).

nfcpy is blocking, so its connect() loop runs in a worker thread; reads and health
changes cross to the event loop with call_soon_threadsafe. Cancelling `run` sets a stop
flag that nfcpy's `terminate` callback polls, then waits for the thread to finish.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from typing import Any

from rules.credential import MAX_UID_BYTES, Card

from .base import Backoff, OnCredential, ReaderBase, ReaderHealth
from .reads import CredentialRead

log = logging.getLogger(__name__)

# nfcpy's names for the technologies to poll: ISO 14443 A (Mifare, NTAG), B, FeliCa.
DEFAULT_TARGETS = ("106A", "106B", "212F")


class NfcReader(ReaderBase):
    def __init__(
        self,
        id: str,
        device: str = "usb",
        *,
        targets: Sequence[str] = DEFAULT_TARGETS,
        poll_interval: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(id, **kwargs)
        self.device = device
        self.targets = list(targets)
        self.poll_interval = poll_interval

    async def run(self, on_credential: OnCredential) -> None:
        loop = asyncio.get_running_loop()
        reads: asyncio.Queue[CredentialRead] = asyncio.Queue()
        stop = threading.Event()

        def deliver(read: CredentialRead) -> None:
            loop.call_soon_threadsafe(reads.put_nowait, read)

        def health(state: ReaderHealth) -> None:
            loop.call_soon_threadsafe(self._on_thread_health, state)

        worker = threading.Thread(
            target=self._worker, args=(stop, deliver, health), name=f"nfc-{self.id}", daemon=True
        )
        worker.start()
        try:
            while True:
                read = await reads.get()
                await self._emit(on_credential, read)
        finally:
            stop.set()
            # nfcpy checks `terminate` between polls (~1 s on udp); don't block the loop.
            await asyncio.shield(asyncio.to_thread(worker.join, 10.0))
            self._set_health(ReaderHealth.OFFLINE)

    def _on_thread_health(self, state: ReaderHealth) -> None:
        if state is ReaderHealth.ONLINE:
            self._mark_opened()
        else:
            self._set_health(state)

    def _worker(self, stop: threading.Event, deliver: Any, health: Any) -> None:
        import nfc  # lazy: only NFC installations pay for importing nfcpy (and libusb)

        backoff = Backoff(cap=self._backoff.cap)
        while not stop.is_set():
            try:
                clf = nfc.ContactlessFrontend(self.device)
            except Exception as exc:  # IOError when absent, usb errors when busy...
                self.stats.bump("device_errors")
                log.debug("reader %s: cannot open %s: %s", self.id, self.device, exc)
                health(ReaderHealth.OFFLINE)
                stop.wait(backoff.next())
                continue
            backoff.reset()
            health(ReaderHealth.ONLINE)
            try:
                self._poll(clf, stop, deliver)
            except Exception:  # nfcpy raises assorted errors when a device drops
                self.stats.bump("device_errors")
                log.exception("reader %s: NFC device failed", self.id)
            finally:
                try:
                    clf.close()
                except Exception:
                    log.debug("reader %s: close failed", self.id, exc_info=True)
                health(ReaderHealth.OFFLINE)
            stop.wait(backoff.next())

    def _poll(self, clf: Any, stop: threading.Event, deliver: Any) -> None:
        def on_connect(tag: Any) -> bool:
            self.stats.bump("frames")
            identifier = bytes(getattr(tag, "identifier", b"") or b"")
            if not 0 < len(identifier) <= MAX_UID_BYTES:
                self.stats.bump("rejected_frames")
                return True
            deliver(
                CredentialRead.of_card(
                    Card.uid(identifier),
                    {"format": "nfc", "tag_type": str(getattr(tag, "type", ""))},
                )
            )
            # True: nfcpy waits until the tag leaves the field before polling again, so a
            # card left on the reader is one read, not a stream.
            return True

        options = {
            "targets": self.targets,
            "on-connect": on_connect,
            "iterations": 1,
            "interval": self.poll_interval,
            "beep-on-connect": False,
        }
        while not stop.is_set():
            # connect() returns False when the device fails (it logs the IOError).
            if clf.connect(rdwr=options, terminate=stop.is_set) is False:
                if stop.is_set():
                    return
                self.stats.bump("device_errors")
                return
