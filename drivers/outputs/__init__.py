"""Outputs: Modbus relay boards and turnstile controllers (TCP and RTU).

The daemon uses GateController (one per gate) and FireAlarmMonitor; the rest is exported for
tools and tests.
"""

from .config import (
    DoorMode,
    FireAlarmInputConfig,
    ModbusLinkConfig,
    ModbusOutputConfig,
    OutputTransport,
)
from .door import AlarmEvent, AlarmKind, DoorSupervisor, Observation
from .gate import (
    AlarmCallback,
    FireAlarmInput,
    FireAlarmMonitor,
    GateController,
    GrantRefused,
    HealthAlarm,
)
from .modbus import InputsSnapshot, ModbusDevice, ModbusGateOutput, OutputFault, OutputHealth

__all__ = [
    "AlarmCallback",
    "AlarmEvent",
    "AlarmKind",
    "DoorMode",
    "DoorSupervisor",
    "FireAlarmInput",
    "FireAlarmInputConfig",
    "FireAlarmMonitor",
    "GateController",
    "GrantRefused",
    "HealthAlarm",
    "InputsSnapshot",
    "ModbusDevice",
    "ModbusGateOutput",
    "ModbusLinkConfig",
    "ModbusOutputConfig",
    "Observation",
    "OutputFault",
    "OutputHealth",
    "OutputTransport",
]
