"""The imperative shell around the rules: credential in, decision out, result committed —
and the tap path's one door into the store.

The daemon and the scenario runner both go through here, so a scenario exercises exactly
the code a turnstile does: decide, admit, the grant's intent (which uses up a QR code),
commit. Splitting decide() from commit() lets the daemon wait for the turnstile to turn in
between: no passage, no deduction. A tap travels as one value, rules.tap.Tap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from rules.admission import GateConditions, admit
from rules.credential import Credential, CredentialKind
from rules.decide import Decision, MemberView, Presented, decide, override
from rules.messages import message
from rules.model import Gate, Policy, Site
from rules.reasons import Reason
from rules.schedule import NoShowHorizon
from rules.tap import Tap, unreadable
from sync.qrtoken import TrustedKeys
from sync.store import Committed, Store
from sync.store.desk_requests import DeskRequest, Seen
from sync.store.intents import TokenUsed
from sync.store.occupancy import is_full


class UnknownGate(KeyError):
    pass


class Engine:
    def __init__(
        self,
        store: Store,
        site: Site,
        gates: dict[str, Gate],
        policy: Policy,
        trusted_keys: TrustedKeys | None = None,
        time_is_lower_bound: Callable[[], bool] = lambda: False,
    ):
        self.store = store
        self.site = site
        self.gates = gates
        self.policy = policy
        self.trusted_keys = trusted_keys or TrustedKeys({})
        # while the clock is not trusted the time acted at is the last trusted time plus the
        # time since: a lower bound of the real time (gated/clock.py)
        self.time_is_lower_bound = time_is_lower_bound

    def gate(self, gate_id: str) -> Gate:
        try:
            return self.gates[gate_id]
        except KeyError:
            raise UnknownGate(gate_id) from None

    def _present(
        self, credential: Credential, now: datetime,
    ) -> tuple[Presented, str | None, tuple[str, datetime] | None]:
        if credential.kind == CredentialKind.CARD:
            card = credential.typed if credential.typed is not None else credential.value
            return Presented.card(), self.store.member_for_card(card), None
        claim = self.trusted_keys.verify(credential.value)
        if claim is None:
            return Presented(CredentialKind.QR, None), None, None
        # a box booted in 2000 acts at last night's time: every fresh code was refused
        # `invalid_qr` as issued in the future until NTP
        lower_bound = claim.issued > now and self.time_is_lower_bound()
        seen = self.store.qr_seen(claim.token_id)
        presented = Presented(CredentialKind.QR, claim, seen, now_is_lower_bound=lower_bound)
        return presented, claim.member, (claim.token_id, claim.expires)

    def decide(self, gate_id: str, credential: Credential, now: datetime,
               detail: Mapping[str, Any] | None = None) -> Tap:
        gate = self.gate(gate_id)
        if credential.kind == CredentialKind.DESK:
            # the desk names the member; its choices of booking and pass ride in `meta`
            presented = Presented.desk(credential.meta.get("booking"), credential.meta.get("pass"))
            member_id: str | None = credential.value
            qr_token = None
        else:
            presented, member_id, qr_token = self._present(credential, now)
        view = self.store.view(member_id, gate, now) if member_id else MemberView(None)
        decision = decide(view, presented, gate, self.site, self.policy, now)
        facts = {**decision.hint, "name": view.member.name} if view.member is not None else decision.hint
        return Tap(gate, credential, presented, decision, message(decision.reason, facts), now, qr_token,
                   dict(detail or {}))

    def admit(self, tap: Tap, conditions: GateConditions) -> Tap:
        """The site's and the gate's state applied to the decision (rules.admission)."""
        d = tap.decision
        kind = None
        # the pass's kind matters only to a stale cache's policy: no read for it otherwise
        if d.granted and d.pass_id is not None and conditions.cache_stale:
            p = self.store.get_pass(d.pass_id)
            kind = p.kind if p is not None else None
        admitted = admit(d, conditions, kind)
        return tap if admitted is d else tap.refused(admitted.reason)

    def unreadable(self, gate_id: str, credential: Credential, now: datetime) -> Tap:
        """The store could not be read to decide: a denial for storage_fault."""
        return unreadable(self.gate(gate_id), credential, now)

    def zone_full(self, tap: Tap, capacity: int) -> bool:
        """One more person (this tap's member) would exceed the zone's capacity."""
        return is_full(self.store, tap.gate.zone, capacity, tap.decided_at, member=tap.decision.member)

    def open_intent(self, tap: Tap, now: datetime, request: DeskRequest | None = None) -> Tap:
        """The grant's durable intent, before the relay (sync/store/intents.py): the tap with
        it; with the desk's request it is, begun (sync/store/desk_requests.py)."""
        return self.store.open_intent(tap, now, request)

    async def flushed(self) -> None:
        """Until every commit so far is on disk (off the event loop)."""
        await self.store.flushed()

    def commit(
        self, tap: Tap, *, passed: bool, now: datetime, unconfirmed: str | None = None,
        request: DeskRequest | None = None,
    ) -> Committed:
        return self.store.commit_tap(tap, passed=passed, now=now, unconfirmed=unconfirmed, request=request)

    def desk_request(self, req: DeskRequest) -> Seen | None:
        return self.store.desk_request(req)

    def begin_desk_request(self, req: DeskRequest, now: datetime) -> None:
        self.store.begin_desk_request(req, now)

    def forget_desk_request(self, req: DeskRequest) -> None:
        self.store.forget_desk_request(req)

    def audit(self, now: datetime, operator: str, action: str, detail: dict[str, Any]) -> None:
        self.store.audit(now, operator, action, detail)

    def emit(self, type_: str, now: datetime, **fields: Any) -> None:
        self.store.emit(type_, now, **fields)

    def tap(self, gate_id: str, credential: Credential, now: datetime, *, passed: bool = True) -> tuple[Tap, Committed]:
        """A whole tap at once (the scenario runner, tools): the daemon's path without a
        relay — decided, its grant's intent written, committed."""
        tap = self.decide(gate_id, credential, now)
        if tap.granted:
            try:
                tap = self.open_intent(tap, now)
            except TokenUsed:
                tap = tap.refused(Reason.QR_REPLAYED)
        return tap, self.commit(tap, passed=passed, now=now)

    def override(
        self, gate_id: str, operator: str, reason: str, now: datetime, *, passed: bool = True,
        request: DeskRequest | None = None,
    ) -> tuple[Decision, Committed]:
        gate = self.gate(gate_id)
        return override(gate), self.store.commit_override(gate, operator, reason, now, passed=passed, request=request)

    def run_due(
        self, now: datetime, horizon: NoShowHorizon | None = None,
        unheard: Callable[[datetime], list[str]] | None = None, settled_by_site: datetime | None = None,
    ) -> Committed:
        """The time-driven work due by `now` (no-shows only up to `horizon`: the site's
        other daemons heard; at its first run from `settled_by_site`, where the site's
        previous worker had settled: gated/knowledge.py)."""
        return self.store.run_due(self.policy, now, horizon, unheard, settled_by_site)

    def mark_attended(
        self, booking_id: str, operator: str, *, refund: bool, now: datetime, waiting: Sequence[str] = (),
        request: DeskRequest | None = None,
    ) -> Committed:
        return self.store.mark_attended(booking_id, operator, refund=refund, now=now, waiting=waiting, request=request)

    def settle_refunds(
        self, now: datetime, waiting: Callable[[datetime], list[str]], *, give_up: bool = True,
    ) -> Committed:
        """The desk's refunds that waited to hear the site (sync/store/refunds_wanted.py);
        `give_up`: the clock may end a day's wait (its time of day is confirmed)."""
        return self.store.settle_refunds(now, waiting, give_up=give_up)

    def adjust_points(
        self, member_id: str, points: int, operator: str, reason: str, now: datetime, request: DeskRequest | None = None,
    ) -> Committed:
        return self.store.adjust_points(member_id, points, operator, reason, now, request)
