"""Installer-facing configuration of relay boards, turnstile controllers and fire inputs.

The field names are what an installer types in the YAML file, so they follow the words on a
relay board's datasheet (unit, coil, discrete input) rather than pymodbus parameter names.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rules.admission import FireInputPolicy

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host_problem(value: str) -> str | None:
    """Why `value` is no IP address or host name, or None. `192.168.1.300` looks like an
    address and is none; `gate-board.local` is a host name."""
    text = value.strip()
    if not text:
        return "an empty address"
    if re.fullmatch(r"[\d.]+", text) or ":" in text:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return f"{value!r} is not a valid IP address"
        return None
    labels = text.rstrip(".").split(".")
    if len(text) > 253 or not all(_HOSTNAME.fullmatch(label) for label in labels):
        return f"{value!r} is neither an IP address nor a host name"
    return None


PARITY_LETTER = {"none": "N", "even": "E", "odd": "O", "n": "N", "e": "E", "o": "O"}


class OutputTransport(StrEnum):
    TCP = "tcp"
    RTU = "rtu"


class DoorMode(StrEnum):
    """What the door does when power is lost or the fire alarm is raised."""

    FAIL_SAFE = "fail_safe"
    FAIL_SECURE = "fail_secure"


class ModbusLinkConfig(BaseModel):
    """How to reach one Modbus device (a relay board, a turnstile controller, an I/O module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: OutputTransport = Field(
        OutputTransport.TCP,
        description="'tcp' for Modbus TCP over Ethernet, 'rtu' for Modbus RTU over RS-485.",
    )
    host: str | None = Field(
        None, description="IP address or host name of a Modbus TCP board (transport: tcp)."
    )
    port: int = Field(502, ge=1, le=65535, description="TCP port of the board (transport: tcp).")
    device: str | None = Field(
        None,
        description=(
            "Serial device of the RS-485 adapter (transport: rtu); prefer a stable "
            "/dev/serial/by-id/... path over /dev/ttyUSB0."
        ),
    )
    baudrate: int = Field(9600, gt=0, description="RS-485 line speed, as set on the board.")
    parity: Literal["N", "E", "O", "none", "even", "odd"] = Field(
        "N", description="Parity: N (none), E (even), O (odd); none/even/odd as for readers."
    )
    stopbits: int = Field(1, ge=1, le=2, description="Stop bits: 1 or 2.")
    unit: int = Field(
        1,
        ge=0,
        le=247,
        description="Modbus unit id (slave/device address) set on the board, usually by DIP switch.",
    )
    timeout: float = Field(
        0.5, gt=0, le=10, description="Seconds to wait for the board to answer one request."
    )
    retries: int = Field(
        1,
        ge=0,
        le=5,
        description="How many times a request is repeated before the board is considered offline.",
    )
    reconnect_max: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Longest pause, in seconds, between attempts to reach a board that stopped "
        "answering (the pause starts short and doubles).",
    )
    bus_load_warning: float = Field(
        0.7,
        gt=0,
        le=1,
        description="Warn when the line is busier than this share of the time (RS-485: wire "
        "time of the requests and answers at the line settings). Taps wait longer on a busy "
        "line.",
    )

    @field_validator("parity", mode="before")
    @classmethod
    def _parity_letter(cls, value: object) -> object:
        # one spelling inside, whichever the installer used (readers say none/even/odd)
        return PARITY_LETTER.get(value.lower(), value) if isinstance(value, str) else value

    @field_validator("host")
    @classmethod
    def _host_is_an_address(cls, value: str | None) -> str | None:
        # 192.168.1.300 looks like an address and is none: refused here, not at the first tap
        if value is None:
            return None
        why = host_problem(value)
        if why is not None:
            raise ValueError(why)
        return value.strip()

    @model_validator(mode="after")
    def _endpoint_matches_transport(self) -> Self:
        if self.transport is OutputTransport.TCP and not self.host:
            raise ValueError("transport 'tcp' needs 'host' (the board's IP address)")
        if self.transport is OutputTransport.RTU and not self.device:
            raise ValueError(
                "transport 'rtu' needs 'device' (the RS-485 adapter, e.g. /dev/ttyUSB0)"
            )
        return self

    def link_key(self) -> tuple[str, str]:
        """Identify the physical line, so boards on one RS-485 bus share one serial port."""
        if self.transport is OutputTransport.RTU:
            return ("rtu", str(self.device))
        return ("tcp", f"{self.host}:{self.port}")


# Seconds between two reads of a gate's inputs while a granted person is expected.
FAST_POLL = 0.02


class ModbusOutputConfig(ModbusLinkConfig):
    """The relay that releases one gate, and the sensors that report what happened."""

    coil: int = Field(
        0, ge=0, le=65535, description="Coil address of the relay that releases the gate (0-based)."
    )
    active_low: bool = Field(
        False,
        description="True if the relay releases the gate when the coil is OFF (inverted wiring or "
        "a normally-closed relay output).",
    )
    pulse: float = Field(
        1.0,
        gt=0,
        le=30,
        description="Seconds the relay is held to release the gate for one person.",
    )
    passage_input: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Discrete input that pulses when the turnstile completes a rotation. Leave "
        "empty if there is no passage sensor: then a door contact confirms passage, and without "
        "either the visit is recorded on grant.",
    )
    passage_active_low: bool = Field(
        False, description="True if the passage input reads OFF while a rotation is reported."
    )
    passage_counter: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Input register where the I/O board counts the passage input's pulses (a "
        "16-bit counter that wraps, as most boards' DI counters). With it every rotation is "
        "counted, even a pulse shorter than a poll; without it a pulse must outlast "
        "passage_poll_interval plus one read (on an RS-485 line, plus one exchange of each "
        "other device on it) to be seen.",
    )
    passage_pulse: float = Field(
        0.1,
        gt=0,
        le=10,
        description="Shortest time the controller holds its passage output per rotation, from "
        "its datasheet (commonly 0.1-0.5 s). `gated check-config` warns when the gate's RS-485 "
        "line cannot promise to read a pulse this short; a grant whose passage input went unread "
        "for longer than this (a loaded box) and that saw no passage ends unconfirmed, not "
        "'did not pass'.",
    )
    door_contact: int | None = Field(
        None, ge=0, le=65535, description="Discrete input wired to the door/gate position contact."
    )
    door_contact_active_low: bool = Field(
        False,
        description="True if the door contact input reads OFF when the door is open (a normally "
        "closed contact wired so the circuit breaks on opening).",
    )
    passage_timeout: float = Field(
        8.0,
        gt=0,
        le=120,
        description="Seconds a granted person has to pass before the grant lapses.",
    )
    held_open_after: float = Field(
        30.0, gt=0, le=3600, description="Seconds a door may stay open before a 'door held' alarm."
    )
    mode: DoorMode = Field(
        DoorMode.FAIL_SAFE,
        description="fail_safe: released on fire alarm and on power loss (required on escape "
        "routes). fail_secure: stays locked on fire alarm and power loss.",
    )
    poll_interval: float | None = Field(
        None,
        gt=0,
        le=5,
        description="Seconds between two reads of the inputs while no grant is pending (door "
        "supervision). Default: 0.05 over TCP, 0.25 over RTU, where every read takes the "
        "shared line for ~20 ms at 9600 baud.",
    )
    passage_poll_interval: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Seconds between two reads while a granted person is expected (default "
        "0.02). A passage pulse is sure to be seen when it lasts this plus one read, plus on an "
        "RS-485 line one exchange of each other device on the line (`gated check-config` "
        "works it out per line).",
    )

    def idle_poll(self) -> float:
        if self.poll_interval is not None:
            return self.poll_interval
        return 0.05 if self.transport is OutputTransport.TCP else 0.25

    def passage_poll(self) -> float:
        # 0.02 over RTU too: the line's turns (bus.RequestQueue) keep one gate's fast polls
        # from crowding the others out, and with three gates on a 9,600-baud line a longer
        # pause would leave a 100 ms pulse unseen at worst (docs/hardware-outputs.md)
        if self.passage_poll_interval is not None:
            return self.passage_poll_interval
        return FAST_POLL

    @model_validator(mode="after")
    def _inputs_distinct(self) -> Self:
        if self.passage_input is not None and self.passage_input == self.door_contact:
            raise ValueError("passage_input and door_contact must be different inputs")
        return self


class FireAlarmInputConfig(ModbusLinkConfig):
    """A dry contact from the fire panel, read through a Modbus I/O board."""

    input: int = Field(
        0, ge=0, le=65535, description="Discrete input wired to the fire panel relay."
    )
    active_low: bool = Field(
        True,
        description="True (the usual and recommended wiring) if the input reads OFF during an "
        "alarm, so a cut wire also releases fail-safe doors.",
    )
    poll_interval: float = Field(
        0.2, gt=0, le=5, description="Seconds between two reads of the fire input."
    )
    on_unknown: FireInputPolicy = Field(
        FireInputPolicy.KEEP,
        description="While the input cannot be read (board down, wrong address): `keep` the last "
        "known state (the last reading is stored: also after a restart, until the input reads "
        "again; the fire panel's own wiring stays the primary release), `deny_entries` "
        "(doors as they are, entries refused as hardware_fault), or `release` (act as if the "
        "alarm were active: fail-safe doors released, entries refused). Always an alarm.",
    )
