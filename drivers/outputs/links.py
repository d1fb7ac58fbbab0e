"""The Modbus lines of an event loop: one pymodbus client and one request line per
physical line (an RS-485 port can be opened once; the boards on it take turns), shared by
every device on it and closed with the last one.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from .bus import LineTiming, ModbusLine
from .config import ModbusLinkConfig, OutputTransport

ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient


class SharedLink:
    """One pymodbus client and one request line per physical line: an RS-485 port can be
    opened only once, and its devices take turns on the wire."""

    def __init__(self, cfg: ModbusLinkConfig) -> None:
        self.client: ModbusClient = make_client(cfg)
        timing = None
        if cfg.transport is OutputTransport.RTU:
            timing = LineTiming(cfg.baudrate, cfg.parity, cfg.stopbits)
        self.line = ModbusLine(where(cfg), timing, load_warning=cfg.bus_load_warning)
        self.users = 0
        # Serialises connects so two outputs on one bus do not open the port twice.
        self.connect_lock = asyncio.Lock()


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


def make_client(cfg: ModbusLinkConfig) -> ModbusClient:
    # reconnect_delay=0 turns pymodbus's own reconnect off: ours re-asserts the coil and
    # tracks health, which pymodbus's cannot.
    if cfg.transport is OutputTransport.TCP:
        assert cfg.host is not None
        return AsyncModbusTcpClient(
            cfg.host,
            port=cfg.port,
            timeout=cfg.timeout,
            retries=cfg.retries,
            reconnect_delay=0,
            name=f"gated-{cfg.host}:{cfg.port}",
        )
    assert cfg.device is not None
    return AsyncModbusSerialClient(
        cfg.device,
        baudrate=cfg.baudrate,
        parity=cfg.parity,
        stopbits=cfg.stopbits,
        timeout=cfg.timeout,
        retries=cfg.retries,
        reconnect_delay=0,
        name=f"gated-{cfg.device}",
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
