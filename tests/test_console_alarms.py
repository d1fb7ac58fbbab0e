"""The console's alarm board and gate card as pure functions of a health report
(gated/console/alarms.py, views.open_once_offer): which states are alarms, how long each
stays, what an acknowledgement does; "Open once" offered only where the gate would open;
the gate display's footer readable (contrast of its CSS colours)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gated.console.alarms import AlarmBoard, conditions
from gated.console.views import open_once_offer

T0 = datetime(2026, 11, 18, 17, 0, tzinfo=UTC)
STATIC = Path(__file__).resolve().parent.parent / "gated" / "console" / "static"


def health(**parts: Any) -> dict[str, Any]:
    h: dict[str, Any] = {
        "gates": {"in": {"relay": "online", "direction": "in", "state": {}}, "out": {"relay": "none", "direction": "out"}},
        "readers": {"r1": {"gate": "in", "health": "online"}},
        "storage": {"ok": True},
        "safety": {"fire_input": None},
        "knowledge": {"gaps": []},
    }
    h.update(parts)
    return h


def kinds(h: dict[str, Any]) -> list[str]:
    return sorted(c.kind for c in conditions(h))


def test_a_healthy_site_has_no_alarm() -> None:
    assert conditions(health()) == []


@pytest.mark.parametrize(("part", "expected"), [
    ({"gates": {"in": {"relay": "offline", "state": {"relay_error": "timeout"}}}}, ["relay_offline"]),
    ({"gates": {"in": {"relay": "error", "state": {}}}}, ["relay_offline"]),
    ({"gates": {"in": {"relay": "online", "state": {"door_held": True}}}}, ["door_held"]),
    ({"readers": {"r1": {"gate": "in", "health": "offline"}}}, ["reader_offline"]),
    ({"storage": {"ok": False, "problem": "disk_full", "detail": "0 bytes free"}}, ["storage_fault"]),
    ({"safety": {"fire_input": {"known": False, "error": "timeout", "policy": "release"}}}, ["fire_input_unreachable"]),
    ({"knowledge": {"gaps": [{"kind": "clock_untrusted", "detail": "jumped 3600 s"}]}}, ["clock_untrusted"]),
    ({"knowledge": {"gaps": [{"kind": "uplink_stalled", "detail": "x"}, {"kind": "peers_unheard", "detail": "y"}]}},
     ["peers_unheard", "uplink_stalled"]),
])
def test_each_fault_is_an_alarm(part: dict[str, Any], expected: list[str]) -> None:
    assert kinds(health(**part)) == expected


def test_a_condition_lasts_while_the_health_says_so_and_an_ack_quiets_only_that_occurrence() -> None:
    board = AlarmBoard()
    offline = health(gates={"in": {"relay": "offline", "state": {}}})
    board.update(conditions(offline), T0)
    (a,) = board.alarms.values()
    assert a.kind == "relay_offline" and a.gate == "in" and a.acked_by is None
    board.update(conditions(offline), T0 + timedelta(seconds=3))
    assert list(board.alarms) == [a.id]  # the same occurrence, not a new one per look
    acked = board.acknowledge(a.id, "desk", T0 + timedelta(seconds=5))
    assert acked is not None and acked.acked_by == "desk"
    views = board.views({"in": "Main entrance"}, lambda at: at.strftime("%H:%M"))
    assert views[0]["acked_by"] == "desk" and views[0]["gate_name"] == "Main entrance"  # still shown, quietly
    board.update(conditions(health()), T0 + timedelta(seconds=10))
    assert board.alarms == {}  # resolved: gone
    board.update(conditions(offline), T0 + timedelta(seconds=20))
    (again,) = board.alarms.values()
    assert again.id != a.id and again.acked_by is None  # back again: a new alarm to deal with
    assert board.acknowledge("nope", "desk", T0) is None


def test_an_incident_stays_until_acknowledged_also_across_a_restart() -> None:
    board = AlarmBoard()
    forced = {"type": "alarm", "kind": "door_forced", "gate": "in", "seq": 7, "detail": "door opened without a grant"}
    board.incident(forced, T0)
    board.incident({"type": "alarm", "kind": "relay_online", "gate": "in", "seq": 8}, T0)  # news, not an alarm
    board.incident({"type": "access", "kind": "door_forced", "seq": 9}, T0)
    board.update(conditions(health()), T0 + timedelta(minutes=5))  # the door closed long ago
    (a,) = board.alarms.values()
    assert a.incident and a.kind == "door_forced"
    board.incident(forced, T0)  # the same event seen twice (feed and restore): one alarm
    assert len(board.alarms) == 1
    board.acknowledge(a.id, "desk", T0 + timedelta(minutes=6))
    assert board.alarms == {}
    # after a restart: the acknowledgement (audit log) is read back before the events
    restarted = AlarmBoard()
    restarted.restore_ack(a.id, "desk", T0 + timedelta(minutes=6))
    restarted.incident(forced, T0)
    restarted.incident({**forced, "seq": 12}, T0 + timedelta(minutes=9))
    assert [x.id for x in restarted.alarms.values()] == ["door_forced:in@12"]


def test_a_flood_of_unknown_cards_is_an_incident_too() -> None:
    """Past a quota the cards of a flood are one `unknown_cards` event, not a denial each:
    the desk sees the flood as an alarm to acknowledge (nothing dropped silently)."""
    board = AlarmBoard()
    flood = {"type": "unknown_cards", "gate": "in", "seq": 40, "count": 3812, "cards": ["uid:01", "uid:02"]}
    board.incident(flood, T0)
    (a,) = board.views({"in": "Main entrance"}, str)
    assert a["kind"] == "unknown_cards" and a["title"] == "A flood of unknown cards"
    assert "3812 unknown card reads" in a["detail"] and "uid:01" in a["detail"] and a["gate_name"] == "Main entrance"


def test_a_bad_alarm_comes_before_a_late_one_and_unacknowledged_before_acknowledged() -> None:
    board = AlarmBoard()
    board.update(conditions(health(knowledge={"gaps": [{"kind": "uplink_stalled", "detail": "x"}]})), T0)
    board.update(conditions(health(knowledge={"gaps": [{"kind": "uplink_stalled", "detail": "x"}]},
                                   storage={"ok": False, "problem": "read_only"})), T0 + timedelta(seconds=1))
    views = board.views({}, str)
    assert [(v["kind"], v["severity"]) for v in views] == [("storage_fault", "bad"), ("uplink_stalled", "warn")]
    board.acknowledge(views[0]["id"], "boss", T0)
    assert [v["kind"] for v in board.views({}, str)] == ["uplink_stalled", "storage_fault"]


@pytest.mark.parametrize(("gate", "lockdown", "storage_ok", "why"), [
    ({"relay": "online", "direction": "in", "state": {}}, False, True, None),
    ({"relay": "none", "direction": "out"}, False, True, "no relay"),
    ({"relay": "offline", "direction": "in", "state": {}}, False, True, "offline: cannot open"),
    ({"relay": "online", "direction": "in", "state": {}}, True, True, "locked down"),
    ({"relay": "online", "direction": "out", "state": {}}, True, True, None),  # a lockdown keeps people out, not in
    ({"relay": "online", "direction": "in", "state": {}}, False, False, "cannot record an entry"),
    ({"relay": "online", "direction": "out", "state": {}}, False, False, None),  # exits work in a storage fault
    ({"relay": "online", "direction": "in", "state": {"held_by_hand": True, "released": True}}, False, True,
     "held open by hand"),
    ({"relay": "online", "direction": "in", "state": {"released": True, "fire_alarm": True}}, False, True, "released"),
])
def test_open_once_is_offered_only_where_the_gate_would_open(
    gate: dict[str, Any], lockdown: bool, storage_ok: bool, why: str | None
) -> None:
    assert open_once_offer(gate, lockdown=lockdown, storage_ok=storage_ok) == {"offered": why is None, "why": why}


# -- the gate display's footer: WCAG contrast of the colours in its stylesheet ---------------


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return int(h[0:2], 16) / 255, int(h[2:4], 16) / 255, int(h[4:6], 16) / 255


def _luminance(rgb: tuple[float, float, float]) -> float:
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: tuple[float, float, float], bg: tuple[float, float, float]) -> float:
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def blend(fg: tuple[float, float, float], bg: tuple[float, float, float], alpha: float) -> tuple[float, float, float]:
    r, g, b = (alpha * f + (1 - alpha) * k for f, k in zip(fg, bg, strict=True))
    return r, g, b


def test_the_display_footer_is_readable_on_every_background() -> None:
    """WCAG AA for its small text (4.5:1): the footer's colour, at its opacity, on the idle,
    granted and denied backgrounds — and the reconnecting warning's."""
    css = (STATIC / "display.css").read_text()
    var = dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{3,6})", css))
    footer = re.search(r"footer\s*\{([^}]*)\}", css)
    assert footer is not None
    opacity_m = re.search(r"opacity:\s*([\d.]+)", footer.group(1))
    opacity = float(opacity_m.group(1)) if opacity_m else 1.0
    colour_m = re.search(r"color:\s*var\(--([\w-]+)\)|color:\s*(#[0-9a-fA-F]{3,6})", footer.group(1))
    ink = (var[colour_m.group(1)] if colour_m.group(1) else colour_m.group(2)) if colour_m else var["ink"]
    down = re.search(r"\.link\.down\s*\{[^}]*color:\s*(#[0-9a-fA-F]{3,6})", css)
    assert down is not None
    for bg_name in ("idle", "ok", "bad"):
        bg = _rgb(var[bg_name])
        for fg in (ink, down.group(1)):
            ratio = contrast(blend(_rgb(fg), bg, opacity), bg)
            assert ratio >= 4.5, (bg_name, fg, round(ratio, 2))


def test_a_safety_switch_not_stored_says_what_a_restart_would_do() -> None:
    """In force but not on disk (a storage fault): a restart would forget it — unlock a site
    locked down, or lock it again after a release; an alarm, red, until it is written."""
    def safety(not_durable: list[str], lockdown: bool, emergency: bool) -> dict[str, Any]:
        return {"fire_input": None, "not_durable": not_durable, "lockdown": {"active": lockdown},
                "emergency_release": {"active": emergency}}

    [on] = conditions(health(safety=safety(["lockdown"], True, False)))
    assert on.kind == "lockdown_not_stored" and "UNLOCK the site" in on.detail
    [off] = conditions(health(safety=safety(["lockdown"], False, False)))
    assert "lock the site down again" in off.detail
    [em] = conditions(health(safety=safety(["emergency_release"], False, True)))
    assert em.kind == "emergency_not_stored" and "LOCK the released doors again" in em.detail
    assert kinds(health(safety=safety([], True, True))) == []
    board = AlarmBoard()
    board.update([on], T0)
    [view] = board.views({}, lambda at: at.isoformat())
    assert view["severity"] == "bad" and view["title"].startswith("LOCKDOWN STATE NOT STORED")


def test_a_stale_cache_is_a_warning_that_says_what_the_gate_refuses() -> None:
    assert kinds(health(cache_stale=False)) == []
    [c] = conditions(health(cache_stale=True, stale_policy="deny", last_sync="2026-11-18T10:00:00+00:00",
                            cache_age_seconds=7 * 3600 + 60))
    assert c.kind == "cache_stale" and c.detail.startswith("last sync 7 h 1 min ago") and "every entry" in c.detail
    [c] = conditions(health(cache_stale=True, last_sync=None, stale_policy="bookings_and_time_passes"))
    assert c.detail.startswith("never synced") and "time passes are let in" in c.detail
    board = AlarmBoard()
    board.update([c], T0)
    assert board.views({}, lambda at: at.isoformat())[0]["severity"] == "warn"
