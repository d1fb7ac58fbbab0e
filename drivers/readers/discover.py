"""What readers are plugged in: for `gated discover` and installers. Plain data out.

Best effort and quick: every probe is optional (a missing library or permission gives
an empty list and a note), and NFC probing runs in a thread abandoned after 2 s so a
wedged USB stack can't hang the command.
"""

from __future__ import annotations

import glob
import os
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

NFC_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class SerialPortInfo:
    path: str  # what to put in the config: the by-id link when there is one
    device: str  # the kernel name behind it (/dev/ttyUSB0)
    description: str = ""
    hwid: str = ""
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None


@dataclass(frozen=True)
class NfcDeviceInfo:
    path: str  # nfcpy path, e.g. usb:001:004
    vendor_id: int
    product_id: int
    driver: str  # nfcpy driver module (pn533, acr122, rcs380...)


@dataclass(frozen=True)
class InputDeviceInfo:
    path: str  # by-id link when there is one
    device: str  # /dev/input/eventN
    name: str
    phys: str = ""


@dataclass
class Discovery:
    serial: list[SerialPortInfo] = field(default_factory=list)
    nfc: list[NfcDeviceInfo] = field(default_factory=list)
    input: list[InputDeviceInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _by_id_links(pattern: str) -> dict[str, str]:
    """Real device -> stable link (the first one, sorted, if several)."""
    links: dict[str, str] = {}
    for link in sorted(glob.glob(pattern)):
        links.setdefault(os.path.realpath(link), link)
    return links


def discover_serial() -> list[SerialPortInfo]:
    from serial.tools import list_ports

    by_id = _by_id_links("/dev/serial/by-id/*")
    ports = []
    for port in list_ports.comports():
        real = os.path.realpath(port.device)
        ports.append(
            SerialPortInfo(
                path=by_id.get(real, port.device),
                device=port.device,
                description=port.description or "",
                hwid=port.hwid or "",
                vid=port.vid,
                pid=port.pid,
                serial_number=port.serial_number,
            )
        )
    # by-id paths first: those are the ones to copy into the config.
    ports.sort(key=lambda p: (not p.path.startswith("/dev/serial/by-id/"), p.path))
    return ports


def _nfc_usb_devices() -> list[NfcDeviceInfo]:
    """USB devices nfcpy has a driver for. Matching IDs only, no opening: a reader in
    use by the daemon must not be disturbed."""
    import usb1
    from nfc.clf.device import usb_device_map

    found = []
    with usb1.USBContext() as context:
        for dev in context.getDeviceIterator(skip_on_error=True):
            key = (dev.getVendorID(), dev.getProductID())
            if key in usb_device_map:
                found.append(
                    NfcDeviceInfo(
                        path=f"usb:{dev.getBusNumber():03d}:{dev.getDeviceAddress():03d}",
                        vendor_id=key[0],
                        product_id=key[1],
                        driver=usb_device_map[key],
                    )
                )
    return found


def discover_nfc(timeout: float = NFC_TIMEOUT_S) -> tuple[list[NfcDeviceInfo], str | None]:
    result: list[NfcDeviceInfo] = []
    error: list[str] = []

    def probe() -> None:
        try:
            result.extend(_nfc_usb_devices())
        except Exception as exc:  # no libusb, no permission...: report, don't fail
            error.append(f"NFC probe failed: {exc}")

    worker = threading.Thread(target=probe, name="discover-nfc", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return [], f"NFC probe gave no answer within {timeout:g} s"
    return result, (error[0] if error else None)


def _looks_like_scanner(capabilities: dict[int, list[int]]) -> bool:
    from evdev import ecodes

    keys = set(capabilities.get(ecodes.EV_KEY, []))
    # Typing digits and Enter is what a wedge does; mice and power buttons don't.
    return ecodes.KEY_ENTER in keys and {ecodes.KEY_0, ecodes.KEY_1, ecodes.KEY_9} <= keys


def discover_input() -> list[InputDeviceInfo]:
    import evdev

    by_id = _by_id_links("/dev/input/by-id/*")
    found = []
    for path in evdev.list_devices():
        try:
            dev = evdev.InputDevice(path)
        except OSError:
            continue  # vanished, or not ours to read (input group)
        try:
            if _looks_like_scanner(dev.capabilities()):
                found.append(
                    InputDeviceInfo(
                        path=by_id.get(os.path.realpath(path), path),
                        device=path,
                        name=dev.name,
                        phys=dev.phys or "",
                    )
                )
        finally:
            dev.close()
    return found


def discover(nfc_timeout: float = NFC_TIMEOUT_S) -> Discovery:
    found = Discovery()
    try:
        found.serial = discover_serial()
    except Exception as exc:
        found.notes.append(f"serial ports: {exc}")
    found.nfc, note = discover_nfc(nfc_timeout)
    if note:
        found.notes.append(note)
    try:
        found.input = discover_input()
    except Exception as exc:
        found.notes.append(f"input devices: {exc}")
    if not os.path.isdir("/dev/input"):
        found.notes.append("no /dev/input on this machine: keyboard wedges can't be used")
    return found
