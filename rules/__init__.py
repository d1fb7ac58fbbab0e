"""The decision engine: the gym's domain and pure functions over it.

No I/O, no clock reads, no logging: the shell passes everything in.
"""

from rules.credential import Credential, CredentialKind, normalise_card
from rules.decide import (
    Decision,
    MemberView,
    Presented,
    QrClaim,
    ZonePresence,
    decide,
    is_inside,
    override,
)
from rules.messages import message
from rules.model import (
    AntiPassback,
    Booking,
    BookingStatus,
    DeductOn,
    Direction,
    EarlyEntry,
    Gate,
    Member,
    MemberStatus,
    Pass,
    PassKind,
    Policy,
    Site,
)
from rules.reasons import GRANTED, Reason

__all__ = [
    "GRANTED",
    "AntiPassback",
    "Booking",
    "BookingStatus",
    "Credential",
    "CredentialKind",
    "Decision",
    "DeductOn",
    "Direction",
    "EarlyEntry",
    "Gate",
    "Member",
    "MemberStatus",
    "MemberView",
    "Pass",
    "PassKind",
    "Policy",
    "Presented",
    "QrClaim",
    "Reason",
    "Site",
    "ZonePresence",
    "decide",
    "is_inside",
    "message",
    "normalise_card",
    "override",
]
