"""What the console says in words: staff actions, audit details, the feed's muted lines."""

from __future__ import annotations

from typing import Any

# the audit log's actions in the desk's words
ACTIONS = {
    "override": "Opened a gate once",
    "check_in": "Checked a member in",
    "mark_attended": "Marked attended",
    "adjust_points": "Adjusted points",
    "lockdown": "Locked down all gates",
    "release": "Released the lockdown",
    "emergency_release": "Emergency release",
    "emergency_restore": "Ended the emergency release",
    "login": "Logged in",
    "logout": "Logged out",
    "login_failed": "Failed login",
    "enrol_card": "Assigned a card",
    "denials_done": "Dealt with denials",
    "alarm_acknowledged": "Acknowledged an alarm",
    "member_photo": "Took a member's photo",
    # a refund the desk asked for that waited to hear the site (the operator is the one who asked)
    "refund_settled": "A waiting refund was given back",
    "refund_none": "A waiting refund found no walk-in charge",
    "refund_unsettled": "A waiting refund was not settled",
    # the gate by itself, its lost taps of the day back (rules/recheck.py): a walk-in they show free
    "history_refund": "A walk-in charged again on a replaced gate was given back",
}
DETAIL_WORDS = {"gate": "gate", "reason": "reason", "booking": "class", "refund": "refund", "member": "member",
                "points": "points", "ip": "from", "card": "card", "pass": "pass", "why": "as", "because": "as", "decision": "decision",
                "denials": "events", "alarm": "alarm", "kind": "kind", "detail": "detail", "bytes": "bytes",
                "asked_at": "asked at", "heard": "waited for", "waiting": "not heard", "refunds": "gave back"}
HIDDEN_DETAIL = ("seq",)  # the event column says it
NO_EVENT = ("login", "logout", "login_failed", "denials_done", "alarm_acknowledged", "refund_none")  # their seq is only "the last event at the time"


def notice_text(ev: dict[str, Any], item: dict[str, Any], passes: dict[str, str]) -> str | None:
    t = ev.get("type")
    cls = item.get("class_name") or (f"booking {ev['booking']}" if ev.get("booking") else "")
    if t == "deduction":
        cause = ev.get("cause")
        if cause not in ("refund", "no_show_fee"):
            return None  # shown with its access event
        amount = ev.get("amount")
        pname = passes.get(ev.get("pass") or "", ev.get("pass"))
        if cause == "refund":
            why = {"reentry_grace": " (a re-entry within the grace: the gate's earlier taps came back)",
                   "evacuated": " (back after an evacuation: the gate's earlier taps came back)"}.get(
                str(ev.get("because")), "")
            return f"Refund of {-amount if isinstance(amount, int | float) else amount} to {pname}{why}"
        return f"No-show fee {amount} from {pname}"
    if t == "override":
        return f"Gate opened once by {ev.get('operator')}: {ev.get('reason')}"
    if t == "attendance":
        by = ev.get("by")
        if ev.get("status") == "no_show":
            return f"No-show: {cls}"
        return f"Attended {cls}" + (f" (marked by {by})" if by and by != "gate" else " (at the gate)")
    if t == "loyalty":
        pts = ev.get("points")
        who = f" by {ev['operator']}" if ev.get("operator") else ""
        why = f": {ev['reason']}" if ev.get("reason") else (f" for {cls}" if cls else "")
        return f"Loyalty {pts:+d} points{who}{why}" if isinstance(pts, int) else f"Loyalty {pts}"
    if t == "lockdown":
        return f"Lockdown {'ON' if ev.get('active') else 'released'} by {ev.get('operator')}"
    if t == "fire_alarm":
        return f"Emergency release {'ACTIVE' if ev.get('active') else 'ended'} ({ev.get('source')})"
    if t == "alarm":
        kind = str(ev.get("kind") or "").replace("_", " ")
        return f"Alarm: {kind}" + (f" — {ev['detail']}" if ev.get("detail") else "")
    if t == "card_enrolled":
        return f"Card {ev.get('card')} assigned by {ev.get('operator')}"
    if t == "unknown_cards":
        cards = ", ".join(str(c) for c in (ev.get("cards") or [])[:5])
        return f"A flood of unknown cards: {ev.get('count')} reads" + (f" (among them {cards})" if cards else "")
    if t == "passage_unconfirmed":
        return "A grant was cut off before it was recorded — check the turnstile count"
    return str(t)


__all__ = ["ACTIONS", "DETAIL_WORDS", "HIDDEN_DETAIL", "NO_EVENT", "notice_text"]
