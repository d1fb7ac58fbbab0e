"""What the rules decide on: one member's view at one gate (rules.decide.MemberView) — the
member, their passes, their bookings near now, the passes those bookings use, and their
presence in the gate's zone — from indexed look-ups of the replica and the ledger only."""

from __future__ import annotations

from datetime import datetime, timedelta

from rules.decide import MemberView
from rules.model import Gate, Pass
from sync.store.ledger import Ledger
from sync.store.replica import Replica

# Bookings further than this from now cannot matter to a tap (arrival, link and same-day
# windows are all shorter), so a view loads only these.
VIEW_HORIZON = timedelta(hours=36)


def member_view(replica: Replica, ledger: Ledger, member_id: str | None, gate: Gate, now: datetime) -> MemberView:
    if member_id is None:
        return MemberView(None)
    member = replica.member(member_id, with_cards=False)  # the rules never look at them
    if member is None:
        return MemberView(None)
    passes = tuple(replica.passes_of(member_id))
    # a gate's arrival window may be longer than the default horizon (early_arrival: 2d)
    before = max(VIEW_HORIZON, gate.late_arrival + timedelta(days=1))
    after = max(VIEW_HORIZON, gate.early_arrival + timedelta(days=1))
    bookings = tuple(replica.bookings_of(member_id, now - before, now + after))
    own = {p.id for p in passes}
    extra: dict[str, Pass] = {}
    for b in bookings:
        if b.pass_id not in own and b.pass_id not in extra:
            p = replica.get_pass(b.pass_id)
            if p is not None:
                extra[b.pass_id] = p
    return MemberView(
        member=member,
        passes=passes,
        bookings=bookings,
        presence={gate.zone: ledger.zone_presence(member_id, gate.zone)},
        extra_passes=extra,
    )
