"""Taking a new configuration while running (SIGHUP, `systemctl reload gated`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from drivers.outputs.gate import GateController
from drivers.readers.config import build_reader
from gated import sdnotify
from gated.config import ConfigError, load_config
from rules.admission import FireInputPolicy
from sync.store.faults import STORAGE_ERRORS

if TYPE_CHECKING:
    from gated.daemon import Daemon

log = structlog.get_logger("gated")

RELOAD_TIMEOUT = 10.0


async def reload_config(d: Daemon, path: Path) -> bool:
    """SIGHUP: a new configuration without dropping taps; a broken file is refused and the
    old one kept. Rules parameters swap at once; readers and outputs whose settings changed
    are restarted; a lockdown or release holds on a board started now."""
    # Parsed in a worker thread: the file is outside input, and even bounded (see
    # gated/yamlload.py) a big one takes a while; taps go on meanwhile.
    try:
        async with asyncio.timeout(RELOAD_TIMEOUT):
            new = await asyncio.to_thread(load_config, path)
    except ConfigError as e:
        log.error("reload_refused", problems=[f"{ln}:{k}: {m}" for ln, k, m in e.problems])
        sdnotify.status("reload refused: configuration invalid; running with the previous one")
        return False
    except TimeoutError:
        log.error("reload_refused", problems=[f"reading the file took longer than {RELOAD_TIMEOUT:.0f} s"])
        sdnotify.status("reload refused: configuration took too long to read; running with the previous one")
        return False
    sdnotify.reloading()
    assert d.store is not None
    old = d.config
    d.config = new
    # rules parameters swap atomically: a tap decided after this line uses the new ones
    d.engine = d.build_engine(new, d.store)
    if new.ten_digits() != d.store.ten_digits:  # EM readers swapped between decimal and hex
        try:
            d.store.set_ten_digits(new.ten_digits())
        except STORAGE_ERRORS as e:  # the store's own alarms say why; taps go on
            log.error("card_rule_not_changed", error=str(e), kept=d.store.ten_digits.value)
        if d.store.card_rule_changed:
            d.log_card_rule()
            if d.link is not None:
                await d.link.card_rule_changed()
    if d.retention is not None:  # the next sweep keeps what the new file says
        d.retention.keep, d.retention.keep_audit = new.store.retention_periods()
        d.retention.no_show_work = new.time_driven_work
    if d.storage is not None:  # a gate added or moved: its exits not recorded, in its zone
        d.storage.zones = {g.id: g.zone for g in new.gates}
    if d.taps is not None:
        d.taps.engine, d.taps.config = d.engine, new
        u = new.unknown_cards
        d.taps.unknown.individual, d.taps.unknown.window, d.taps.unknown.quiet = u.individual, u.window, u.quiet
    old_gates = {g.id: g for g in old.gates}
    for g in new.gates:
        before = old_gates.get(g.id)
        if before is None or before.readers != g.readers:
            if before is not None:
                for rc in before.readers:
                    await d.stop_reader(rc.id)
            for rc in g.readers:
                d.start_reader(g.id, build_reader(rc, on_health=d.reader_health, now=d.clock))
        if (before is None or before.output != g.output):
            if g.id in d.controllers:
                await d.controllers.pop(g.id).stop()
            if g.output is not None:
                ctl = GateController(g.id, g.output, on_alarm=d.on_alarm)
                # started as the site is (a door in a fire alarm is not locked first)
                await ctl.start(d.safety.site if d.safety is not None else None)
                d.controllers[g.id] = ctl
                if d.safety is not None:
                    await d.safety.apply_to(ctl)  # a lockdown holds on a new board too
    if new.fire_alarm != old.fire_alarm:
        # the fire state holds until the new monitor reads: the old one stops silently (its
        # board closing is no lost input) and watch_fire_input keeps what it read
        if d.fire_monitor is not None:
            await d.fire_monitor.stop()
            d.fire_monitor = None
        assert d.safety is not None
        d.safety.fire_policy = new.fire_alarm.on_unknown if new.fire_alarm else FireInputPolicy.KEEP
        if new.fire_alarm is not None:
            d.safety.watch_fire_input()
            await d.start_fire_monitor()
        else:
            d.safety.fire_configured = False
            await d.safety.fire_input_read(False)
    for gid, g in old_gates.items():
        if gid not in {x.id for x in new.gates}:
            for rc in g.readers:
                await d.stop_reader(rc.id)
            if gid in d.controllers:
                await d.controllers.pop(gid).stop()
    sdnotify.ready()
    sdnotify.status("ready: configuration reloaded")
    log.info("reloaded", gates=len(new.gates))
    return True


__all__ = ["RELOAD_TIMEOUT", "reload_config"]
