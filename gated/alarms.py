"""Alarms: what a door, a relay board, a reader or the fire input reports, turned into an
`alarm` event (for the central system and the console), a log line and a metric.

News only: a device coming up for the first time is not an alarm, coming back after a
fault is; a reader stopped on purpose (a reload, shutdown) going offline is not either.
An alarm that cannot be written (the store at fault) is still logged and counted, and the
store's own health says why.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from drivers.outputs.gate import HealthAlarm
from drivers.readers.base import ReaderHealth
from gated.metrics import Metrics
from gated.storage_watch import StorageWatch
from sync.storage import STORAGE_ERRORS
from sync.store import Store

log = structlog.get_logger("gated")

UNRECORDED_MAX = 100  # alarms kept while no store is open (start-up, shutdown)


class Alarms:
    def __init__(self, metrics: Metrics, clock: Callable[[], datetime]):
        self.metrics = metrics
        self.clock = clock
        self.store: Store | None = None
        self.storage: StorageWatch | None = None
        self.reader_gates: dict[str, str] = {}  # reader id -> its gate
        self.readers_stopping: set[str] = set()  # stopped on purpose: going offline is no news
        self._relay_state: dict[str, str] = {}
        # raised before the store was open (the relays start first): recorded once it is
        self._unrecorded: list[tuple[datetime, str | None, str, str, dict[str, Any]]] = []
        self._reader_state: dict[str, ReaderHealth] = {}

    async def gate_alarm(self, gate_id: str, kind: str, detail: str) -> None:
        """From a gate's controller: door forced/held, not opened, relay offline/online."""
        if kind.startswith("relay_"):
            self.metrics.relay_up.labels(gate_id).set(1 if kind == HealthAlarm.RELAY_ONLINE else 0)
            previous = self._relay_state.get(gate_id)
            self._relay_state[gate_id] = kind
            if kind == HealthAlarm.RELAY_ONLINE and previous in (None, HealthAlarm.RELAY_ONLINE):
                return  # coming up as expected is not news; coming back after a fault is
        self.raise_(gate_id or None, kind, detail)

    def reader_health(self, reader_id: str, health: ReaderHealth) -> None:
        """A reader went offline, came back or refuses us: an event like a relay's."""
        previous = self._reader_state.get(reader_id)
        self._reader_state[reader_id] = health
        self.metrics.reader_up.labels(reader_id).set(1 if health == ReaderHealth.ONLINE else 0)
        if (previous is None and health == ReaderHealth.ONLINE) or reader_id in self.readers_stopping:
            return
        self.raise_(
            self.reader_gates.get(reader_id), f"reader_{health.value}", f"reader {reader_id} is {health.value}",
            reader=reader_id,
        )

    def reader_stopped(self, reader_id: str) -> None:
        """A reader stopped on purpose and forgotten: started again, it comes up quietly."""
        self.readers_stopping.discard(reader_id)
        self._reader_state.pop(reader_id, None)

    def attach(self, store: Store, storage: StorageWatch) -> None:
        """The store is open: alarms are recorded from now on, those raised before first."""
        self.store, self.storage = store, storage
        pending, self._unrecorded = self._unrecorded, []
        for at, gate_id, kind, detail, fields in pending:
            self._record(at, gate_id, kind, detail, fields)

    def raise_(self, gate_id: str | None, kind: str, detail: str, **fields: Any) -> None:
        self.metrics.alarms.labels(gate_id or "", kind).inc()
        log.warning("alarm", gate=gate_id, kind=kind, detail=detail, **fields)
        if self.store is None:
            if len(self._unrecorded) < UNRECORDED_MAX:
                self._unrecorded.append((self.clock(), gate_id, kind, detail, fields))
            return
        self._record(self.clock(), gate_id, kind, detail, fields)

    def _record(self, at: datetime, gate_id: str | None, kind: str, detail: str, fields: dict[str, Any]) -> None:
        if self.store is None:
            return
        try:
            self.store.emit("alarm", at, gate=gate_id, kind=kind, detail=detail, **fields)
        except STORAGE_ERRORS as e:
            if self.storage is not None:
                self.storage.failed(e, "alarm")


__all__ = ["Alarms"]
