"""What the member reads at the gate: one short text per decision, from the decision's facts.

The same text goes to the reader's display (OSDP text), the member-facing gate display
and the console's feed. It is written as `headline — detail`: a screen shows the headline
big and the detail below (`split_message`); a one-line reader shows it whole. Pure: facts
in (the decision's hint plus the member's name), text out.

Facts used (all strings, all optional): `name` (the member's full name: only the first
name is shown, on a public screen), `pass`, `kind` (the pass's kind), `balance`,
`balance_after`, `cost`, `class`, `starts`, `entry_from`, `closed_at`, `from`, `until`,
`next`, `cancelled_class`, `cancelled_starts`, `credential` (`qr` for a QR code).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from rules.model import PassKind
from rules.reasons import Reason

SEP = " — "

Facts = Mapping[str, str]


def first_name(facts: Facts) -> str:
    name = (facts.get("name") or "").strip()
    return name.split()[0] if name else ""


def _hello(word: str, facts: Facts) -> str:
    first = first_name(facts)
    return f"{word} {first}" if first else word


def _pass(facts: Facts) -> str:
    return facts.get("pass") or "your pass"


def _units(amount: str, kind: str | None) -> str:
    """'1 entry', '8 entries', '120 credits' — what a balance counts, in the gym's words."""
    one = amount in ("1", "1.0")
    if kind == PassKind.CREDITS:
        return f"{amount} credit" if one else f"{amount} credits"
    return f"{amount} entry" if one else f"{amount} entries"


def _left(facts: Facts, key: str = "balance_after") -> str:
    """', 8 left' on a pass with a balance; '' on one without."""
    if key not in facts:
        return ""
    return f": {facts[key]} left"


def _class_at(facts: Facts) -> str:
    name = facts.get("class") or "your class"
    return f"{name} at {facts['starts']}" if "starts" in facts else name


def _booking(facts: Facts) -> str:
    text = _class_at(facts)
    if "balance_after" in facts:
        text += f" · {_pass(facts)}{_left(facts)}"
    return _hello("Welcome", facts) + SEP + text


def _linked(facts: Facts) -> str:
    return _hello("Welcome", facts) + SEP + f"you're early for {_class_at(facts)}"


def _walk_in(facts: Facts) -> str:
    hello = _hello("Welcome", facts)
    if "class" in facts and "cost" in facts:
        # an early arrival outside the arrival window costs an extra entry: say so
        paid = _units(facts["cost"], facts.get("kind"))
        return hello + SEP + (
            f"{_class_at(facts)}: entry now is a walk-in, {paid} from {_pass(facts)}"
            + (f" ({facts['balance_after']} left)" if "balance_after" in facts else "")
        )
    return hello + SEP + _pass(facts) + _left(facts)


def _booking_required(facts: Facts) -> str:
    if "attended_class" in facts:
        return (f"You are checked in for {facts['attended_class']} until {facts['attended_until']}"
                + SEP + "the front desk will let you back in")
    if "cancelled_class" in facts:
        when = f" at {facts['cancelled_starts']}" if "cancelled_starts" in facts else ""
        return (f"Your class {facts['cancelled_class']}{when} was cancelled"
                + SEP + "book another class in your app")
    if "next_class" in facts:
        when = f"{facts.get('next_day', 'another day')} at {facts['next_starts']}" if "next_starts" in facts else facts.get("next_day", "another day")
        return (f"Your class {facts['next_class']} is {when}"
                + SEP + (f"entry from {facts['next_entry_from']}" if "next_entry_from" in facts else "see you then"))
    return "Please book a class in your app first" + SEP + f"{_pass(facts)} is for booked classes"


def _no_balance(facts: Facts) -> str:
    if "cost" in facts and "balance" in facts:
        kind = facts.get("kind")
        return (f"Not enough left on {_pass(facts)}" + SEP
                + f"{_units(facts['cost'], kind)} needed, {facts['balance']} left")
    return f"No entries left on {_pass(facts)}" + SEP + "please see the front desk"


def _unknown(facts: Facts) -> str:
    if facts.get("credential") == "qr":
        return "QR code not recognised" + SEP + "please see the front desk"
    return "Card not recognised" + SEP + "please see the front desk"


def _your_class(facts: Facts) -> str:
    return f"Your class {facts['class']}" if facts.get("class") else "Your class"


def _next(facts: Facts) -> str:
    return f"next entry {facts['next']}" if "next" in facts else "please see the front desk"


_TEXT: dict[Reason, Callable[[Facts], str]] = {
    Reason.BOOKING: _booking,
    Reason.LINKED_BOOKING: _linked,
    Reason.WALK_IN: _walk_in,
    Reason.REENTRY: lambda f: _hello("Welcome back", f),
    Reason.OVERRIDE: lambda f: "Please go through" + SEP + "opened by the front desk",
    Reason.EXIT: lambda f: _hello("Goodbye", f),
    Reason.UNKNOWN_CARD: _unknown,
    Reason.INVALID_QR: lambda f: "This QR code is not valid here" + SEP + "please see the front desk",
    Reason.QR_EXPIRED: lambda f: "This QR code has expired" + SEP + "refresh it in the app",
    Reason.QR_REPLAYED: lambda f: "This QR code was already used" + SEP + "refresh it in the app",
    Reason.MEMBER_BLOCKED: lambda f: "Membership on hold" + SEP + "please see the front desk",
    Reason.SITE_CLOSED: lambda f: "We're closed" + SEP + (f"we open {f['next']}" if "next" in f else "see you soon"),
    Reason.ANTI_PASSBACK: lambda f: "You're already checked in" + SEP + "please see the front desk",
    Reason.SITE_FULL: lambda f: "We're at capacity" + SEP + "please wait a moment",
    Reason.TOO_EARLY: lambda f: (
        f"{_your_class(f)} starts at {f['starts']}" if "starts" in f else "Too early for your class"
    ) + SEP + (f"entry from {f['entry_from']}" if "entry_from" in f else "please come back later"),
    Reason.TOO_LATE: lambda f: (
        f"{_your_class(f)} started at {f['starts']}" if "starts" in f else "Too late for your class"
    ) + SEP + (f"entry closed at {f['closed_at']}" if "closed_at" in f else "please see the front desk"),
    Reason.BOOKING_REQUIRED: _booking_required,
    Reason.PASS_EXPIRED: lambda f: f"{_pass(f)} has expired" + (SEP + f"last day was {f['until']}" if "until" in f else SEP + "please see the front desk"),
    Reason.PASS_NOT_YET_VALID: lambda f: f"{_pass(f)} is not valid yet" + SEP + (f"valid from {f['from']}" if "from" in f else "please see the front desk"),
    Reason.ZONE_NOT_ALLOWED: lambda f: f"{_pass(f)} does not cover this area" + SEP + "please see the front desk",
    Reason.OUTSIDE_WINDOW: lambda f: f"{_pass(f)} is not valid at this time" + SEP + _next(f),
    Reason.NO_BALANCE: _no_balance,
    Reason.NO_PASS: lambda f: "No valid pass" + SEP + "please see the front desk",
    Reason.HARDWARE_FAULT: lambda f: "Gate out of order" + SEP + "please see the front desk",
    Reason.STORAGE_FAULT: lambda f: "Gate out of order" + SEP + "please see the front desk",
    Reason.FIRE_ALARM: lambda f: "Fire alarm" + SEP + "no entry: please leave by the nearest exit",
    Reason.EMERGENCY_RELEASE: lambda f: "Entry closed for an emergency" + SEP + "please see the front desk",
    Reason.LOCKDOWN: lambda f: "Entry closed" + SEP + "please see the front desk",
    Reason.CACHE_STALE: lambda f: "Please see the front desk" + SEP + "we cannot check your pass right now",
}


def message(reason: Reason, facts: Facts | None = None) -> str:
    """The member's text for a decision; a reason without its own words says 'see the desk'."""
    f = facts or {}
    make = _TEXT.get(reason)
    if make is None:
        granted = reason.granted
        return ("Welcome" if granted else "Please see the front desk") + SEP + reason.value.replace("_", " ")
    text = make(f)
    return text[:1].upper() + text[1:]


def split_message(text: str) -> tuple[str, str]:
    """(headline, detail) of a message, for a screen that shows them apart."""
    head, _, detail = text.partition(SEP)
    return head, detail


__all__ = ["SEP", "first_name", "message", "split_message"]
