"""Alarms the desk cannot miss: a banner on every page and an item in *Needs attention*
until the alarm is dealt with — resolved, or acknowledged by staff (an audit row).

Two kinds, by what "resolved" means:
- **conditions**, read from the daemon's health at each look: a relay board not answering,
  a door held open, a passage sensor stuck active, a reader offline, the store unable to record, the fire-alarm input
  unreachable, a lockdown or emergency release in force but not stored (a restart would
  forget it), a gap in what the gate knows (the clock untrusted, events not reaching the
  central system, ...). One lasts while the health says so and is gone when it does not.
- **incidents**, from `alarm` events: a door forced, a rotation nobody was granted, exits
  not recorded, a QR code used twice, an overdraft, an acknowledgement of events never
  sent. Over in a moment, so they stay until someone acknowledges them.

An acknowledgement quiets the banner (a muted line stays while a condition lasts); a
condition that comes back after it ended is a new alarm. Acknowledgements are audit rows
(`alarm_acknowledged`, who and when); an incident's is found again after a restart by its
event's seq. A condition is seen afresh after a restart (whoever restarted the daemon looks
again).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ACK_ACTION = "alarm_acknowledged"

# incidents: alarm kinds that report something that happened (latched until acknowledged)
INCIDENTS = {
    "door_forced": "Door forced open",
    "passage_without_grant": "Someone went through without a grant",
    "exits_not_recorded": "Exits were not recorded",
    "rotations_while_down": "People went through while the gate's daemon was not running",
    "rotations_while_down_unknown": "People may have gone through while the gate's daemon was not running — "
                                    "the board restarted, how many is not known",
    "qr_double_use": "A QR code was used twice",
    "overdraft": "A pass was charged below zero",
    "ack_beyond_last_seq": "The central system acknowledged events never sent",
    "ledger_restored": "The gate's ledger was put back from a copy",
    "snapshot_held": "A snapshot that would empty the site was held",
    "refund_unsettled": "A refund the desk asked for could not be settled",
    "double_refund": "A charge was refunded twice",
    "numbering_collision": "Another gate's events came under numbers held for others — a charge is missing here",
    "numbering_peers_unheard": "A replaced gate numbered its events without hearing every gate of the site",
    # found when a replaced gate's lost events of the day came back (rules/recheck.py)
    "anti_passback_missed": "Let in while already inside — anti-passback could not see the gate's lost taps",
    # not an `alarm` event but its own (gated/unknown_cards.py): reads past a quota, one
    # event for the burst — the desk sees the flood here, its cards are not each an item
    "unknown_cards": "A flood of unknown cards",
}
EVENT_TYPES = ("alarm", "unknown_cards")
# conditions: what the health says now
CONDITIONS = {
    "relay_offline": "Gate offline — its relay board does not answer",
    "door_held": "Door held open",
    "passage_input_stuck": "Passage sensor stuck — nobody going through can be seen; grants end unconfirmed",
    "reader_offline": "Card reader offline",
    "storage_fault": "GATES OUT OF ORDER — entries cannot be recorded; exits work",
    "fire_input_unreachable": "FIRE-ALARM INPUT UNREACHABLE",
    "lockdown_not_stored": "LOCKDOWN STATE NOT STORED — do not restart the gate",
    "emergency_not_stored": "EMERGENCY RELEASE STATE NOT STORED — do not restart the gate",
    "fire_state_not_stored": "Fire-alarm reading not stored — do not restart the gate",
    "clock_untrusted": "Clock fault — the gate's clock cannot be trusted",
    "clock_unconfirmed": "Clock not confirmed — no-shows and fees wait for NTP or `gated clock confirm`",
    "cache_stale": "Member data is stale — passes and balances as of the last sync; some passes are refused",
    "uplink_stalled": "Events are not reaching the central system",
    "deltas_behind": "Member data is behind the central system",
    "peers_unheard": "Another gate of the site is not heard",
    "peer_silent": "Another gate of the site has been silent for minutes — its taps are not known here",
    "numbering_unsure": "Events held — the gate waits for the central system to say how far it got",
    "own_history_missing": "Today's earlier taps at this gate not known yet — asked of the central system",
    "refunds_waiting": "A refund the desk asked for waits to hear a gate of the site",
    "two_workers": "Two gates say they settle the site's no-shows and loyalty — set time_driven_work: false on one",
    "daemon_id_in_use": "Another box runs under this gate's daemon id — its events are held; give one its own id",
}
# a sign that something is late rather than wrong: an amber banner, not a red one
WARNINGS = {"cache_stale", "uplink_stalled", "deltas_behind", "peers_unheard", "peer_silent", "numbering_unsure", "own_history_missing",
            "refunds_waiting", "clock_unconfirmed"}


@dataclass(frozen=True, slots=True)
class Condition:
    key: str  # what it is about: "relay_offline:turnstile-in"
    kind: str
    gate: str | None
    detail: str


@dataclass(slots=True)
class Alarm:
    id: str  # this occurrence (what an acknowledgement names)
    key: str
    kind: str
    gate: str | None
    detail: str
    since: datetime
    incident: bool
    active: bool = True
    acked_by: str | None = None
    acked_at: datetime | None = None

    def view(self, gate_names: dict[str, str], local: Any) -> dict[str, Any]:
        title = INCIDENTS.get(self.kind) or CONDITIONS.get(self.kind) or self.kind.replace("_", " ")
        return {
            "id": self.id, "kind": self.kind, "gate": self.gate,
            "gate_name": gate_names.get(self.gate or "", self.gate), "title": title, "detail": self.detail,
            "since": local(self.since), "active": self.active, "incident": self.incident,
            "severity": "warn" if self.kind in WARNINGS else "bad",
            "acked_by": self.acked_by, "acked_at": local(self.acked_at) if self.acked_at else None,
        }


def conditions(health: dict[str, Any]) -> list[Condition]:
    """The alarm conditions in a health report (gated/status.py's `health`)."""
    out: list[Condition] = []
    for gid, g in (health.get("gates") or {}).items():
        relay = g.get("relay")
        state = g.get("state") or {}
        if relay not in ("online", "none", None):
            error = state.get("relay_error")
            out.append(Condition(f"relay_offline:{gid}", "relay_offline", gid, f"relay {relay}" + (f": {error}" if error else "")))
        if state.get("door_held"):
            out.append(Condition(f"door_held:{gid}", "door_held", gid, "the door has been open too long"))
        if state.get("passage_input_stuck"):
            out.append(Condition(f"passage_input_stuck:{gid}", "passage_input_stuck", gid,
                                 "the passage input reads active for longer than any rotation: check the "
                                 "turnstile's passage output and the I/O board"))
    for rid, r in (health.get("readers") or {}).items():
        if r.get("health") != "online":
            out.append(Condition(f"reader_offline:{rid}", "reader_offline", r.get("gate"), f"reader {rid} is {r.get('health')}"))
    storage = health.get("storage") or {}
    if storage.get("ok") is False:
        detail = str(storage.get("problem") or "storage") + (f": {storage['detail']}" if storage.get("detail") else "")
        out.append(Condition("storage_fault", "storage_fault", None, detail))
    fire = (health.get("safety") or {}).get("fire_input")
    if fire and not fire.get("known"):
        out.append(Condition("fire_input_unreachable", "fire_input_unreachable", None,
                             f"{fire.get('error') or 'no answer'} (policy: {fire.get('policy')})"))
    out.extend(not_stored(health.get("safety") or {}))
    if health.get("cache_stale"):
        out.append(Condition("cache_stale", "cache_stale", None, stale_detail(health)))
    for gap in (health.get("knowledge") or {}).get("gaps") or []:
        kind = str(gap.get("kind"))
        out.append(Condition(kind, kind, None, str(gap.get("detail") or "")))
    return out


def not_stored(safety: dict[str, Any]) -> list[Condition]:
    """Safety switches in force but not on disk (`safety.not_durable`, a storage fault):
    a restart now would forget them — an admin restarting to clear a banner would unlock
    the site, or lock it again. Over once the store works and they are written."""
    out = []
    for name in safety.get("not_durable") or []:
        if name == "lockdown":
            on = bool((safety.get("lockdown") or {}).get("active"))
            detail = ("the lockdown is in force but not written to disk (a storage fault): a restart now would "
                      "UNLOCK the site" if on else
                      "the lockdown was lifted but that is not written to disk (a storage fault): a restart now "
                      "would lock the site down again")
            out.append(Condition("lockdown_not_stored", "lockdown_not_stored", None, detail + WRITTEN))
        elif name == "emergency_release":
            on = bool((safety.get("emergency_release") or {}).get("active"))
            detail = ("the emergency release is in force but not written to disk (a storage fault): a restart now "
                      "would LOCK the released doors again" if on else
                      "the emergency release was ended but that is not written to disk (a storage fault): a "
                      "restart now would release the doors again")
            out.append(Condition("emergency_not_stored", "emergency_not_stored", None, detail + WRITTEN))
        else:
            out.append(Condition(f"{name}_not_stored", "fire_state_not_stored", None,
                                 "the fire-alarm input's last reading is not written to disk (a storage fault): a "
                                 "restart now would start from the one before" + WRITTEN))
    return out


STALE_POLICY = {
    "keep": "the gate decides as usual, on data that may be out of date",
    "bookings_and_time_passes": "walk-ins on visit, credit and marketplace passes are refused (cache_stale); "
                                "bookings, re-entries and time passes are let in",
    "deny": "every entry is refused (cache_stale); exits work",
}


def stale_detail(health: dict[str, Any]) -> str:
    """No sync for longer than `stale_cache.max_age` (the status's `cache_stale`)."""
    age = health.get("cache_age_seconds")
    since = "never synced" if health.get("last_sync") is None else (
        f"last sync {age // 3600} h {age % 3600 // 60} min ago" if isinstance(age, int) else "last sync long ago")
    policy = STALE_POLICY.get(str(health.get("stale_policy")), "the gate applies stale_cache.policy")
    return f"{since}: passes, balances and bookings are as of then; {policy}"


WRITTEN = "; it is written as soon as the store works again (the storage fault banner)"


def incident_kind(ev: dict[str, Any]) -> str | None:
    """The incident an event reports, if it is one."""
    if ev.get("type") == "unknown_cards":
        return "unknown_cards"
    kind = str(ev.get("kind") or "")
    return kind if ev.get("type") == "alarm" and kind in INCIDENTS and kind != "unknown_cards" else None


def incident_detail(ev: dict[str, Any]) -> str:
    if ev.get("type") == "unknown_cards":
        cards = ", ".join(str(c) for c in (ev.get("cards") or [])[:5])
        return f"{ev.get('count')} unknown card reads in a burst" + (f" (among them {cards})" if cards else "")
    return str(ev.get("detail") or "")


def incident_id(ev: dict[str, Any]) -> str:
    return f"{incident_kind(ev)}:{ev.get('gate') or 'site'}@{ev.get('seq')}"


@dataclass
class AlarmBoard:
    """The open alarms of the site, as the console shows them (module doc)."""

    alarms: dict[str, Alarm] = field(default_factory=dict)  # by id, oldest first
    acked: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # id -> (who, when)

    def update(self, found: Iterable[Condition], now: datetime) -> None:
        """The conditions the health shows now: new ones open, gone ones close."""
        current = {c.key: c for c in found}
        # an acknowledgement is kept while its alarm is open, and a day for an incident
        # restored before its event is seen again
        for alarm_id, (_, at) in list(self.acked.items()):
            if alarm_id not in self.alarms and (now - at).total_seconds() > 86400:
                del self.acked[alarm_id]
        open_keys = {a.key: a for a in self.alarms.values() if not a.incident}
        for key, alarm in open_keys.items():
            if key not in current:
                del self.alarms[alarm.id]
            else:
                alarm.detail = current[key].detail
        for key, c in current.items():
            if key not in open_keys:
                alarm_id = f"{key}@{now.isoformat()}"
                self.alarms[alarm_id] = Alarm(alarm_id, key, c.kind, c.gate, c.detail, now, incident=False)
                self._apply_ack(self.alarms[alarm_id])

    def incident(self, ev: dict[str, Any], at: datetime) -> None:
        """An `alarm` event (or an `unknown_cards` one); an incident stays until acknowledged."""
        kind = incident_kind(ev)
        if kind is None:
            return
        alarm_id = incident_id(ev)
        if alarm_id in self.alarms:
            return
        gate = ev.get("gate")
        alarm = Alarm(alarm_id, f"{kind}:{gate or 'site'}", kind, gate, incident_detail(ev), at,
                      incident=True, active=False)
        self.alarms[alarm_id] = alarm
        self._apply_ack(alarm)

    def acknowledge(self, alarm_id: str, operator: str, now: datetime) -> Alarm | None:
        alarm = self.alarms.get(alarm_id)
        if alarm is None:
            return None
        self.acked[alarm_id] = (operator, now)
        self._apply_ack(alarm)  # an incident is then dealt with: gone
        return alarm

    def restore_ack(self, alarm_id: str, operator: str, at: datetime) -> None:
        self.acked[alarm_id] = (operator, at)
        alarm = self.alarms.get(alarm_id)
        if alarm is not None:
            self._apply_ack(alarm)

    def _apply_ack(self, alarm: Alarm) -> None:
        if alarm.id in self.acked:
            alarm.acked_by, alarm.acked_at = self.acked[alarm.id]
            if alarm.incident:
                self.alarms.pop(alarm.id, None)

    def views(self, gate_names: dict[str, str], local: Any) -> list[dict[str, Any]]:
        """Newest first; what still needs someone before what was acknowledged."""
        alarms = sorted(self.alarms.values(), key=lambda a: a.since, reverse=True)
        alarms.sort(key=lambda a: a.acked_by is not None)
        return [a.view(gate_names, local) for a in alarms]


__all__ = ["ACK_ACTION", "CONDITIONS", "EVENT_TYPES", "INCIDENTS", "Alarm", "AlarmBoard", "Condition", "conditions",
           "incident_id", "incident_kind", "not_stored", "stale_detail"]
