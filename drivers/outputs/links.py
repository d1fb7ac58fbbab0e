"""The Modbus lines of an event loop: one pymodbus client and one request line per
physical line (an RS-485 port can be opened once; the boards on it take turns), shared by
every device on it and closed with the last one.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU

from .bus import LineTiming, ModbusLine
from .config import ModbusLinkConfig, OutputTransport

ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient


class SharedLink:
    """One pymodbus client and one request line per physical line: an RS-485 port can be
    opened only once, and its devices take turns on the wire."""

    def __init__(self, cfg: ModbusLinkConfig) -> None:
        # Every answer the line hears, taken for a request or not: on RTU an answer that
        # comes after its try timed out is dropped by pymodbus when no request waits, and
        # would be taken for the next request's when one does (its framer checks the unit
        # id only). ModbusDevice waits for it after a timeout instead (late_answer).
        self.heard = 0
        self.last_heard: ModbusPDU | None = None
        self._heard_event = asyncio.Event()
        self.client: ModbusClient = make_client(cfg, trace_pdu=self._trace_pdu)
        timing = None
        if cfg.transport is OutputTransport.RTU:
            timing = LineTiming(cfg.baudrate, cfg.parity, cfg.stopbits)
        self.line = ModbusLine(where(cfg), timing, load_warning=cfg.bus_load_warning)
        self.users = 0
        # Serialises connects so two outputs on one bus do not open the port twice.
        self.connect_lock = asyncio.Lock()

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.heard += 1
            self.last_heard = pdu
            self._heard_event.set()
        return pdu

    async def late_answer(self, heard: int, within: float) -> ModbusPDU | None:
        """The first answer heard after `heard` answers, waiting up to `within` seconds for
        it; None if none came."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.heard == heard:
            self._heard_event.clear()
            left = deadline - loop.time()
            if left <= 0:
                return None
            try:
                async with asyncio.timeout(left):
                    await self._heard_event.wait()
            except TimeoutError:
                return None
        return self.last_heard


# Per event loop: a pymodbus client is bound to the loop it was created in.
_links: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], SharedLink]] = (
    weakref.WeakKeyDictionary()
)


def where(cfg: ModbusLinkConfig) -> str:
    if cfg.transport is OutputTransport.TCP:
        return f"{cfg.host}:{cfg.port}"
    return str(cfg.device)


def lines_in_use(loop: asyncio.AbstractEventLoop | None = None) -> dict[str, dict[str, Any]]:
    """Every open line of `loop` (default: the running one) and its figures (load, queue,
    counters). Safe from another thread (a metrics scrape): a line opened or closed
    meanwhile is simply missed."""
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return {}
    for _ in range(3):
        try:
            links = list(_links.get(loop, {}).values())
            return {link.line.name: link.line.snapshot() for link in links}
        except RuntimeError:  # changed size during iteration (another thread)
            continue
    return {}


def make_client(
    cfg: ModbusLinkConfig, trace_pdu: Callable[[bool, ModbusPDU], ModbusPDU] | None = None
) -> ModbusClient:
    # reconnect_delay=0 turns pymodbus's own reconnect off: ours re-asserts the coil and
    # tracks health, which pymodbus's cannot.
    if cfg.transport is OutputTransport.TCP:
        assert cfg.host is not None
        return AsyncModbusTcpClient(
            cfg.host,
            port=cfg.port,
            timeout=cfg.timeout,
            retries=cfg.retries,  # TCP: transaction ids tell a late answer from the next
            reconnect_delay=0,
            name=f"gated-{cfg.host}:{cfg.port}",
            trace_pdu=trace_pdu,
        )
    assert cfg.device is not None
    return AsyncModbusSerialClient(
        cfg.device,
        baudrate=cfg.baudrate,
        parity=cfg.parity,
        stopbits=cfg.stopbits,
        timeout=cfg.timeout,
        # RTU: pymodbus resends on a timeout and takes the first answer for the resend; the
        # resend's own answer then lands in the unit's next request (a release's echo read
        # as the passage input: a member charged with nobody through). ModbusDevice retries
        # itself, after waiting for the late answer (modbus.py, _exchange).
        retries=0,
        reconnect_delay=0,
        name=f"gated-{cfg.device}",
        trace_pdu=trace_pdu,
    )


def _loop_links() -> dict[tuple[str, str], SharedLink]:
    loop = asyncio.get_running_loop()
    links = _links.get(loop)
    if links is None:
        links = _links[loop] = {}
    return links


def acquire_link(cfg: ModbusLinkConfig) -> SharedLink:
    links = _loop_links()
    key = cfg.link_key()
    link = links.get(key)
    if link is None:
        link = links[key] = SharedLink(cfg)
    link.users += 1
    return link


async def release_link(cfg: ModbusLinkConfig, link: SharedLink) -> None:
    link.users -= 1
    if link.users <= 0:
        links = _loop_links()
        if links.get(cfg.link_key()) is link:
            del links[cfg.link_key()]
        await link.line.close()
        link.client.close()
