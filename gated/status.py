"""What the daemon says about itself: `gated status` and the console's health panel, the
systemd STATUS line, the MQTT health message and the metrics' gauges. Read-only views of
the running parts; nothing here changes them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from drivers.outputs.links import lines_in_use
from drivers.outputs.modbus import OutputHealth
from drivers.readers.base import ReaderHealth
from gated import memory
from sync.store.faults import STORAGE_ERRORS

if TYPE_CHECKING:
    from gated.daemon import Daemon


MEMORY_EVERY = 10.0  # seconds between readings of the memory gauges (a scrape is rarer)
_memory_due = [0.0]


def status_line(d: Daemon) -> str:
    """systemd's STATUS= line: what `systemctl status` shows, problems first to last."""
    problems = []
    if d.storage is not None and not d.storage.ok:
        problems.append(f"STORAGE FAULT ({d.storage.guard.problem}): entries refused")
    if d.safety is not None:
        if d.safety.lockdown.active:
            problems.append("LOCKDOWN")
        if d.safety.released:
            problems.append("DOORS RELEASED")
        if d.safety.fire_configured and not d.safety.fire.known:
            problems.append("FIRE INPUT UNREACHABLE")
        if d.safety.not_durable:
            problems.append("SAFETY STATE NOT STORED: a restart would forget it")
    for gid, ctl in d.controllers.items():
        if ctl.passage_stuck:
            problems.append(f"PASSAGE INPUT STUCK ({gid})")  # no passage can be confirmed there
    for gap in d.knowledge.open.values():
        problems.append(gap.kind.upper().replace("_", " "))
    base = f"ready: {len(d.config.gates)} gates, {len(d.readers)} readers"
    if d.config.simulation is not None:
        base += " (SIMULATED CLOCK)"
    return base + ("; " + "; ".join(problems) if problems else "")


def update_gauges(d: Daemon) -> None:
    """The gauges a scrape reads (counters are counted where things happen)."""
    if d.store is None:
        return
    for rid, (_, r) in d.readers.items():
        d.metrics.reader_up.labels(rid).set(1 if r.health == ReaderHealth.ONLINE else 0)
    for gid, ctl in d.controllers.items():
        d.metrics.relay_up.labels(gid).set(1 if ctl.output.health == OutputHealth.ONLINE else 0)
    d.metrics.broker_up.set(1 if d.link is not None and getattr(d.link, "connected", False) else 0)
    if d.safety is not None:
        d.metrics.safety.labels("lockdown").set(int(d.safety.lockdown.active))
        d.metrics.safety.labels("emergency_release").set(int(d.safety.emergency.active))
        d.metrics.safety.labels("fire_alarm").set(int(d.safety.fire_alarm))
    d.metrics.outbox_depth.set(d.store.outbox_depth())
    now = time.monotonic()
    if now >= _memory_due[0]:
        _memory_due[0] = now + MEMORY_EVERY
        for part, value in memory.parts().items():
            if value is not None and part != "python_blocks":
                d.metrics.memory.labels(part).set(value)
    last = d.store.last_sync_at()
    if last is not None:
        d.metrics.last_sync.set(last.timestamp())


def link_health(d: Daemon) -> dict[str, Any]:
    """What the periodic MQTT health message says about this daemon's devices."""
    return {
        "readers": {rid: r.health.value for rid, (_, r) in d.readers.items()},
        "outputs": {gid: ctl.output.health.value for gid, ctl in d.controllers.items()},
        "lockdown": d.lockdown,
        "fire_alarm": d.fire_alarm,
        "storage": d.storage.as_dict() if d.storage is not None else None,
    }

def health(d: Daemon) -> dict[str, Any]:
    """`gated status`, the console's health panel: everything an installer or the desk asks
    about first. Never raises for a broken store (it says so instead)."""
    store = d.store

    def read(f: Callable[[], Any]) -> Any:
        try:
            return f()
        except STORAGE_ERRORS as e:  # a broken store must not break the status too
            return f"unreadable: {e}"

    last = read(store.last_sync_at) if store else None
    return {
        "site": d.config.site.id,
        "daemon": d.config.daemon_id,
        "ready": d.ready,
        "clock": "simulated" if d.config.simulation is not None else "real",
        "lockdown": d.lockdown,
        "fire_alarm": d.fire_alarm,
        "safety": d.safety.as_dict() if d.safety is not None else None,
        "storage": d.storage.as_dict() if d.storage is not None else None,
        "retention": d.retention.as_dict() if d.retention is not None else None,
        "readers": {rid: {"gate": g, "health": r.health.value, "stats": dict(r.stats)} for rid, (g, r) in d.readers.items()},
        "modbus_lines": lines_in_use(),
        "gates": {
            g.id: {
                "zone": g.zone,
                "direction": g.direction,
                "relay": d.controllers[g.id].output.health.value if g.id in d.controllers else "none",
                "state": d.controllers[g.id].state if g.id in d.controllers else {},
                "last_tap": d.last_tap.get(g.id),
                # whether rotations while the daemon is not running can be told (gated/while_down.py)
                "while_down": d.while_down.as_dict(g.id),
            }
            for g in d.config.gates
        },
        "console": d.console.stats if d.console is not None else None,
        "broker": "connected" if d.link is not None and getattr(d.link, "connected", False) else ("none" if d.link is None else "disconnected"),
        "outbox_depth": read(store.outbox_depth) if store else None,
        "memory": memory.parts(),
        "last_sync": last.isoformat() if isinstance(last, datetime) else last,
        "cache_stale": read(d.cache_stale) if store else None,
        "sync": (
            {"central_online": d.link.central_online, "awaiting_snapshot": d.link.awaiting_snapshot,
             "stats": dict(d.link.stats)}
            if d.link is not None else None
        ),
        # what the gate knows it is missing (gated/knowledge.py): open gaps with their
        # reasons, and how far each other daemon of the site is heard
        "knowledge": d.knowledge.as_dict(),
    }


__all__ = ["health", "link_health", "status_line", "update_gauges"]
