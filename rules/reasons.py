"""Reason codes: why a gate said yes or no. The same words appear in events and logs."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # granted
    BOOKING = "booking"
    LINKED_BOOKING = "linked_booking"
    WALK_IN = "walk_in"
    REENTRY = "reentry"
    OVERRIDE = "override"
    EXIT = "exit"
    # denied: credential and member
    UNKNOWN_CARD = "unknown_card"
    INVALID_QR = "invalid_qr"
    QR_EXPIRED = "qr_expired"
    QR_REPLAYED = "qr_replayed"
    MEMBER_BLOCKED = "member_blocked"
    # denied: site and presence
    SITE_CLOSED = "site_closed"
    ANTI_PASSBACK = "anti_passback"
    SITE_FULL = "site_full"
    # denied: bookings
    TOO_EARLY = "too_early"
    TOO_LATE = "too_late"
    BOOKING_REQUIRED = "booking_required"
    # denied: passes (ranked: the later a pass failed, the closer it came)
    PASS_NOT_YET_VALID = "pass_not_yet_valid"
    PASS_EXPIRED = "pass_expired"
    ZONE_NOT_ALLOWED = "zone_not_allowed"
    OUTSIDE_WINDOW = "outside_window"
    NO_BALANCE = "no_balance"
    NO_PASS = "no_pass"
    # denied by rules.admission, from the state of the site and the gate itself
    FIRE_ALARM = "fire_alarm"  # the fire-alarm input is active: doors released, nobody comes in
    EMERGENCY_RELEASE = "emergency_release"  # an admin released every door, as for a fire
    LOCKDOWN = "lockdown"
    STORAGE_FAULT = "storage_fault"  # the entry could not be recorded: nothing opens for free
    HARDWARE_FAULT = "hardware_fault"
    CACHE_STALE = "cache_stale"
    # not a decision: a grant whose passage was never confirmed nor recorded (a crash cut
    # the commit); reported after restart in a `passage_unconfirmed` event
    PASSAGE_UNCONFIRMED = "passage_unconfirmed"

    @property
    def granted(self) -> bool:
        return self in GRANTED


GRANTED = frozenset(
    {Reason.BOOKING, Reason.LINKED_BOOKING, Reason.WALK_IN, Reason.REENTRY, Reason.OVERRIDE, Reason.EXIT}
)

# A pass that fails a later check came closer to letting the member in; its reason wins.
PASS_FAILURE_RANK: dict[Reason, int] = {
    Reason.PASS_NOT_YET_VALID: 1,
    Reason.PASS_EXPIRED: 2,
    Reason.ZONE_NOT_ALLOWED: 3,
    Reason.OUTSIDE_WINDOW: 4,
    Reason.NO_BALANCE: 5,
}
