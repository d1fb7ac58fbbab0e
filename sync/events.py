"""The events a gate sends, type by type: the body of each entry of an event batch.

These models document the uplink (schema `event` in docs/schemas/, docs/protocol.md
"Events") and a test checks every event the store and the daemon write against them.
Receivers must ignore event types and fields they do not know: a later minor version may
add some (sync/protocol.py, "Versioning").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rules.reasons import Reason
from sync.photos import PHOTO_MAX_BYTES, PHOTO_MAX_TEXT, PHOTO_PATTERN

Amount = Annotated[float, Field(description="A JSON number (visits or credits; may have decimals).")]
Id = Annotated[str, Field(min_length=1, max_length=200)]
# an enumeration that may gain values within the major version: the values known today,
# or any other string (a receiver treats one it does not know as documented for it)
ReasonCode = Reason | Annotated[str, Field(min_length=1, max_length=50, description="a reason code added later")]


class EventBase(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    id: Annotated[str, Field(description="Unique id (hex); a repeat of an id is the same event.")]
    seq: Annotated[int, Field(ge=1, description="Gap-free per daemon from 1; the order of application.")]
    at: Annotated[
        str,
        Field(
            description="When it happened: ISO 8601 in UTC with `Z`, whole seconds "
            "(`2026-11-18T12:50:00Z`) or with six fractional digits when the clock had them."
        ),
    ]


class AccessEvent(EventBase):
    """A decision at a gate, granted or denied: a tap, a desk check-in or an override."""

    type: Literal["access"]
    gate: Id
    member: Id | None = Field(description="The member, when known (null: unknown card, invalid QR, override).")
    decision: Literal["granted", "denied"]
    reason: ReasonCode = Field(description="Why (granted: booking, walk_in, ...; denied: the reason code).")
    booking: Id | None = None
    pass_: Id | None = Field(None, alias="pass", description="The pass that paid or would have paid.")
    credential: Literal["card", "qr", "desk"] | None = Field(
        description="What was shown: a card, a QR code, `desk` for a check-in by the front desk, null for an override."
    )
    reader: Id | None = Field(None, description="The reader that read the credential (absent when none did).")
    card: str | None = Field(
        None,
        description="The card's typed key as read (`uid:04A1B2C3D4`), on an `unknown_card` denial: "
        "the desk can enrol it.",
    )
    passed: bool | None = Field(
        None, description="Granted only: the turnstile turned or the door opened (no passage: no deduction)."
    )
    anti_passback: bool | None = Field(None, description="Soft anti-passback gates: the member was already inside.")
    message: str | None = Field(None, description="What the member was shown.")
    operator: str | None = Field(None, description="Overrides and desk check-ins: the desk operator.")
    desk_reason: str | None = Field(None, description="Desk check-ins: the reason the operator gave.")
    decided_at: str | None = Field(
        None,
        description="When the rules decided (UTC); `at` is the commit, after the passage — seconds later "
        "when the person took that long. What an audit decides the tap again at.",
    )
    token: str | None = Field(
        None, description="A verified QR code's token id (used up by this read): a gate that lost its ledger "
        "learns from its events back that the code was used.",
    )


class ChargeRef(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    daemon: Id
    seq: Annotated[int, Field(ge=1)]
    cause: str | None = Field(
        None, max_length=50, description="A refund's: the cause of the charge it gives back (`no_show_fee` for a "
        "fee; absent for a walk-in the desk refunds).",
    )


class DeductionEvent(EventBase):
    """A balance change of a pass: `amount` taken (negative: given back, a refund)."""

    type: Literal["deduction"]
    gate: Id | None = None
    member: Id | None
    pass_: Id = Field(alias="pass")
    amount: Amount
    booking: Id | None
    cause: Annotated[str, Field(description="walk_in, booking, no_show_fee, refund, ...")]
    balance: Amount | None = Field(None, description="The gate's balance of the pass after it.")
    refunds: ChargeRef | None = Field(
        None,
        description="A refund: the charge it gives back — a walk-in the desk refunds, or a no-show fee "
        "once the booking turned out attended — by the daemon that took it and that event's seq (any daemon "
        "of the site): a charge is refunded once.",
    )
    because: str | None = Field(
        None, max_length=50, description="A refund the gate gave by itself, on learning its lost events of the day "
        "(a walk-in charged while they were missing) or another daemon's earlier events it had not heard when it "
        "charged (a walk-in, or a booking that daemon had already let the member in on): why the charge was not "
        "due — `reentry_grace` (an entry within the gate's re-entry grace before it) or `evacuated` (a visit cut "
        "short by an evacuation).",
    )


class GrantRef(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    gate: Id
    granted_at: str = Field(description="When it was granted (UTC), as its `passage_unconfirmed` event says.")


class AttendanceEvent(EventBase):
    """A booking attended (at the gate or marked by the desk) or finalised as a no-show."""

    type: Literal["attendance"]
    gate: Id | None = None
    member: Id
    booking: Id
    status: Literal["attended", "no_show"]
    by: Annotated[str, Field(description="`gate`, or the desk operator's name.")]
    unheard: list[Id] | None = Field(
        None,
        description="A no-show settled without having heard these daemons of the site past the class's end "
        "(they were waited for `peer_wait_limit`): one of them may have let the member in.",
    )
    unconfirmed: list[GrantRef] | None = Field(
        None,
        description="A no-show the member may have come to: their entries that day into the class's zone (or on "
        "this booking) whose passage nobody saw, each a `passage_unconfirmed` event of a daemon of the site (at "
        "most 10). No no-show fee was taken for it; whoever settles those grants marks the booking attended if "
        "the member went through.",
    )
    refund: bool | None = Field(
        None,
        description="The desk asked with it for the refund of the walk-in the member paid that day (by `by`): "
        "the site's daemons give the day's walk-ins back to such requests in the order they were made "
        "(`at`, then daemon), each once; the refund itself is a `deduction` with cause `refund` and this booking.",
    )


class LoyaltyEvent(EventBase):
    """Loyalty points credited for an attended class, or adjusted by the desk."""

    type: Literal["loyalty"]
    member: Id
    points: int
    booking: Id | None = None
    reason: str | None = None
    operator: str | None = None


class OverrideEvent(EventBase):
    """The desk opened a gate (follows its `access` event with reason `override`)."""

    type: Literal["override"]
    gate: Id
    operator: str
    reason: str


class LockdownEvent(EventBase):
    """Every entry locked (or released) from the console."""

    type: Literal["lockdown"]
    active: bool
    operator: str
    reason: str | None = Field(None, description="What the admin said when locking down or releasing (free text).")


class FireAlarmEvent(EventBase):
    """Fail-safe doors released (`active: true`) by the fire-alarm input or an admin's
    emergency release, or back to normal."""

    type: Literal["fire_alarm"]
    active: bool = Field(description="Doors released now (input or emergency release).")
    source: Annotated[str, Field(description="`input`, or the admin who released the doors.")]
    input: bool | None = Field(None, description="The fire-alarm input's state, when it changed.")
    emergency_release: bool | None = Field(None, description="An admin's emergency release, switched on or off.")
    reason: str | None = Field(None, description="What the admin said when switching the emergency release (free text).")


class AlarmEvent(EventBase):
    """Something at the gate needs a person: a relay offline, a door held or forced open,
    the store failing, the central system acknowledging events that were never sent or
    sending a snapshot that would empty the site."""

    type: Literal["alarm"]
    gate: Id | None = None
    kind: Annotated[
        str,
        Field(
            description="relay_offline, relay_error, relay_online, door_held, door_forced, door_held_cleared, "
            "door_forced_cleared, not_opened, passage_input_stuck, passage_input_stuck_cleared, relay_state_mismatch, reader_offline, reader_online, reader_error, fire_input_unreachable, "
            "fire_input_online, passage_without_grant, passage_while_released, rotations_while_down, "
            "rotations_while_down_unknown, storage_fault, storage_recovered, "
            "exits_not_recorded, ack_beyond_last_seq, ledger_restored, snapshot_held, clock_untrusted, clock_unconfirmed, uplink_stalled, "
            "deltas_behind, peers_unheard, peer_silent, numbering_unsure, own_history_missing, "
            "refunds_waiting, two_workers, daemon_id_in_use (and each from clock_untrusted with `_ended`), overdraft, "
            "refund_unsettled, double_refund, qr_double_use, numbering_collision, numbering_peers_unheard, "
            "anti_passback_missed, ... "
            "(docs/protocol.md, \"Alarms\")"
        ),
    ]
    detail: str = ""
    problem: str | None = Field(None, description="storage alarms: what is wrong (disk_full, read_only, ...).")
    since: str | None = Field(
        None, description="storage alarms: since when (UTC); exits_not_recorded: the first exit not recorded; "
        "rotations_while_down(_unknown): the last count the daemon had kept before it stopped (UTC)."
    )
    until: str | None = Field(None, description="exits_not_recorded: the last exit not recorded (UTC); "
                              "rotations_while_down(_unknown): the board's first reading after the daemon started.")
    count: int | None = Field(None, description="exits_not_recorded: how many exits opened and were not recorded; "
                              "rotations_while_down: how many rotations the board counted while the daemon was not "
                              "reading it.")
    direction: Literal["in", "out"] | None = Field(
        None, description="rotations_while_down(_unknown): the gate's direction (in: entries, out: exits).")
    gates: dict[str, int] | None = Field(None, description="exits_not_recorded: how many at each gate.")
    pass_: Id | None = Field(
        None, alias="pass", description="overdraft: the pass charged below zero; double_refund: the pass refunded twice."
    )
    member: Id | None = Field(
        None, description="overdraft, double_refund: the pass's member; qr_double_use, anti_passback_missed (found "
        "when the gate's lost events came back): the member let in.",
    )
    balance: Amount | None = Field(None, description="overdraft: the site's balance of the pass after every charge.")
    charges: list[ChargeRef] | None = Field(
        None, description="overdraft: the charges the central had not applied, by daemon and seq, in the order "
        "every daemon applies (time, daemon, seq); double_refund: the one charge given back twice.",
    )
    refunds: list[ChargeRef] | None = Field(
        None, description="double_refund: the two refunds (deduction events with cause `refund`) that gave the "
        "charge back, by daemon and seq, in the order (time, daemon, seq).",
    )
    token: str | None = Field(None, description="qr_double_use: the QR code's token id.")
    other: Id | None = Field(
        None, description="qr_double_use: the other daemon that let it in (this one: its lost ledger did); "
        "numbering_collision: the daemon whose "
        "events came under numbers held for others of its events.",
    )
    seqs: list[int] | None = Field(None, description="numbering_collision: the numbers (at most 100).")
    peers: list[Id] | None = Field(
        None, description="numbering_peers_unheard: the daemons of the site not heard before the numbering settled.",
    )


class CardEnrolledEvent(EventBase):
    """The front desk gave a card to a member (docs/protocol.md, "Card enrolment")."""

    type: Literal["card_enrolled"]
    member: Id
    card: str = Field(description="The card's typed key (`uid:CAFE0001`); send it back in the member's cards.")
    operator: str


class MemberPhotoEvent(EventBase):
    """The front desk took a member's photo with the desk's camera (docs/protocol.md,
    "Member photos"): keep it as the member's `photo` and send it back in the member's
    record, so every gate of the chain shows it."""

    type: Literal["member_photo"]
    member: Id
    photo: str = Field(
        max_length=PHOTO_MAX_TEXT,
        pattern=PHOTO_PATTERN,
        description=f"The photo inline: `data:image/jpeg;base64,...`, at most {PHOTO_MAX_BYTES} bytes of JPEG.",
    )
    operator: str


class PassageUnconfirmedEvent(EventBase):
    """A grant acted on whose passage nobody saw: at start-up, one whose commit a crash
    (kill -9, a power cut) cut off; at once, one whose relay board went silent after the
    release, whose passage input read stuck active, or whose wait a stop ended (`because`).
    The member may have gone through; nothing was deducted (`not_deducted`): the central
    system and the desk settle it."""

    type: Literal["passage_unconfirmed"]
    gate: Id
    member: Id | None
    reason: ReasonCode = Field(description="Why it was granted.")
    booking: Id | None = None
    pass_: Id | None = Field(None, alias="pass")
    not_deducted: Amount = Field(description="What the commit would have deducted.")
    cause: str | None = None
    credential: Literal["card", "qr", "desk"] | None = None
    granted_at: str = Field(description="When it was granted (UTC); `at` is when it was reported.")
    reader: Id | None = None
    operator: str | None = None
    desk_reason: str | None = None
    # open within the major version (protocol 1.5): a cause added later is any other string
    because: (
        Literal["relay_unreadable", "inputs_unread", "passage_input_stuck", "stopping"]
        | Annotated[str, Field(min_length=1, max_length=50, description="a cause added later")]
        | None
    ) = Field(
        None, description="Reported at once, not at start-up: why the passage could not be seen "
        "(relay_unreadable: the board was silent; inputs_unread: the board answered but the daemon did "
        "not read it for longer than a rotation's pulse, paused or starved; passage_input_stuck: the "
        "gate's passage input read active for longer than any rotation).",
    )


class UnknownCardsEvent(EventBase):
    """Unknown cards at a gate in a flood, in aggregate: past the first few of a window
    (each an `access` denial with its `card`, for the desk to enrol), one event per burst
    instead of a denial per read (docs/protocol.md, "Unknown cards in a flood")."""

    type: Literal["unknown_cards"]
    gate: Id
    count: Annotated[int, Field(ge=1, description="Unknown-card denials it stands for (none has an event of its own).")]
    first_at: str = Field(description="The first of them (UTC).")
    last_at: str = Field(description="The last of them (UTC).")
    readers: list[Id] = Field([], description="The readers that read them.")
    cards: list[str] = Field([], description="A few of the cards (typed keys), at most 5.")


class QrUsedEvent(EventBase):
    """A QR code used up at this gate (its first verified read), sent at once — before the
    turnstile is released — so the site's other daemons refuse it (`qr_replayed`). Only
    where the daemon shares with the site's others (`share_access`)."""

    type: Literal["qr_used"]
    gate: Id
    member: Id | None = None
    token: Id = Field(description="The token's id (not the code: it cannot open anything).")
    expires: str = Field(description="When the code expires (UTC): how long to remember it.")


class VoidEvent(EventBase):
    """A number that holds nothing: a store left with a hole by an earlier version (a
    COMMIT that failed on a full disk took numbers it never gave back). Apply nothing;
    move `applied_seq` past it."""

    type: Literal["void"]
    reason: Annotated[str, Field(description="`seq_lost`, or `restored` (a number sent before the ledger was put back "
                                             "from a copy: keep the event you hold under it).")]


EVENT_MODELS: tuple[type[EventBase], ...] = (
    AccessEvent,
    DeductionEvent,
    AttendanceEvent,
    LoyaltyEvent,
    OverrideEvent,
    LockdownEvent,
    FireAlarmEvent,
    AlarmEvent,
    CardEnrolledEvent,
    MemberPhotoEvent,
    PassageUnconfirmedEvent,
    QrUsedEvent,
    UnknownCardsEvent,
    VoidEvent,
)

BY_TYPE: dict[str, type[EventBase]] = {
    str(m.model_fields["type"].annotation.__args__[0]): m for m in EVENT_MODELS  # type: ignore[union-attr]
}


def event_schema() -> dict[str, Any]:
    """One schema for an event: one of the types above (by `type`)."""
    defs: dict[str, Any] = {}
    refs = []
    for model in EVENT_MODELS:
        schema = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
        refs.append({"$ref": f"#/$defs/{model.__name__}"})
    return {
        "title": "Event",
        "description": "One entry of an event batch's `events`, by `type`. Ignore types and fields you do not know.",
        "oneOf": refs,
        "discriminator": {"propertyName": "type"},
        "$defs": defs,
    }
