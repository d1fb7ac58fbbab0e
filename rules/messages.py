"""Short human messages for the reader display and the console, from a decision's facts."""

from __future__ import annotations

from collections.abc import Mapping

from rules.reasons import Reason

_TEMPLATES: dict[Reason, str] = {
    Reason.BOOKING: "Welcome — {class} at {starts}",
    Reason.LINKED_BOOKING: "Welcome — you're early for {class} at {starts}",
    Reason.WALK_IN: "Welcome — {pass}{balance_after_text}",
    Reason.REENTRY: "Welcome back",
    Reason.OVERRIDE: "Opened by the front desk",
    Reason.EXIT: "Goodbye",
    Reason.UNKNOWN_CARD: "Card not recognised — please see the front desk",
    Reason.INVALID_QR: "This QR code is not valid here",
    Reason.QR_EXPIRED: "This QR code has expired — refresh it in the app",
    Reason.QR_REPLAYED: "This QR code was already used — refresh it in the app",
    Reason.MEMBER_BLOCKED: "Membership on hold — please see the front desk",
    Reason.SITE_CLOSED: "We're closed{next_text}",
    Reason.ANTI_PASSBACK: "You're already checked in",
    Reason.SITE_FULL: "We're at capacity — please wait a moment",
    Reason.TOO_EARLY: "Your class {class} starts at {starts} — entry from {entry_from}",
    Reason.TOO_LATE: "Your class {class} started at {starts} — entry closed at {closed_at}",
    Reason.BOOKING_REQUIRED: "Please book a class in your app first",
    Reason.PASS_EXPIRED: "Your pass {pass} has expired",
    Reason.PASS_NOT_YET_VALID: "Your pass {pass} is valid from {from}",
    Reason.ZONE_NOT_ALLOWED: "Your pass {pass} does not cover this area",
    Reason.OUTSIDE_WINDOW: "Your pass {pass} is not valid at this time{next_text}",
    Reason.NO_BALANCE: "No entries left on {pass}",
    Reason.NO_PASS: "No valid pass — please see the front desk",
    Reason.HARDWARE_FAULT: "Gate out of order — please see the front desk",
    Reason.STORAGE_FAULT: "Gate out of order — please see the front desk",
    Reason.FIRE_ALARM: "Fire alarm — no entry, please leave the building",
    Reason.EMERGENCY_RELEASE: "Entry closed for an emergency — please see the front desk",
    Reason.LOCKDOWN: "Entry closed — please see the front desk",
    Reason.CACHE_STALE: "Please see the front desk",
}


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "?"


def message(reason: Reason, hint: Mapping[str, str] | None = None) -> str:
    facts = _Blank(hint or {})
    facts["next_text"] = f" — next entry {facts['next']}" if "next" in facts else ""
    facts["balance_after_text"] = (
        f" ({facts['balance_after']} left)" if "balance_after" in facts else ""
    )
    return _TEMPLATES.get(reason, reason.value).format_map(facts)
