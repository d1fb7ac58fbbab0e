"""Outputs: Modbus relay boards and turnstile controllers (TCP and RTU).

The daemon uses `gate.GateController` (one per gate) and `fire.FireAlarmMonitor`; the
Modbus side is `modbus.ModbusGateOutput` over `links`/`bus`. Only the configuration models
are exported here: reading a configuration (`gated check-config`, the installer tools)
must not load pymodbus, so the modules that drive hardware are imported by name.
"""

from .config import (
    DoorMode,
    FireAlarmInputConfig,
    ModbusLinkConfig,
    ModbusOutputConfig,
    OutputTransport,
)

__all__ = [
    "DoorMode",
    "FireAlarmInputConfig",
    "ModbusLinkConfig",
    "ModbusOutputConfig",
    "OutputTransport",
]
