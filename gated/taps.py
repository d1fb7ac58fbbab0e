"""The path of a tap, in the daemon: decide, admit, write the intent, open, commit.

    decide (rules, from the replica) → admit (rules.admission: safety, storage, relay,
    stale cache, capacity) → durable grant intent → relay pulse → passage → one
    transaction: access event, deduction, attendance, the intent resolved

Nothing opens that cannot be recorded: for an entry, the intent is written (and a QR
token used up) before the relay is touched, and any failure up to there denies with
`storage_fault` — or, for an error nobody expected, denies with the error logged and
counted; it never opens. After the relay was pulsed the tap is committed whatever it
takes: a failing commit is held by the StorageWatch and retried, and its intent stays in
the store for the next start to report if the daemon dies first. Exits stay free: an
exit opens even when nothing can be written (and is recorded when possible).

A desk check-in (the front desk picks a member, and maybe their booking or pass) takes the
same path with a `desk` credential; an override ("open once") opens without a member.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from drivers.outputs.config import DoorMode
from drivers.outputs.gate import GateController, GrantRefused
from drivers.outputs.grant import Passage
from drivers.outputs.modbus import OutputFault, OutputHealth
from drivers.readers.base import Reader
from gated.engine import Engine, PendingTap
from gated.metrics import Metrics
from gated.safety import Safety
from gated.storage_watch import StorageWatch
from gated.unknown_cards import UnknownCards
from rules.admission import GateConditions, StalePolicy
from rules.credential import Credential, CredentialKind, mask
from rules.decide import Decision
from rules.decide import override as override_decision
from rules.reasons import Reason
from rules.timeutil import iso_utc
from sync.intents import TokenUsed
from sync.occupancy import is_full
from sync.storage import STORAGE_ERRORS
from sync.store import Committed, Event

if TYPE_CHECKING:
    from gated.config import Config

log = structlog.get_logger("gated")


class TapPath:
    def __init__(
        self,
        engine: Engine,
        config: Config,
        controllers: dict[str, GateController],
        safety: Safety,
        storage: StorageWatch,
        metrics: Metrics,
        clock: Callable[[], datetime],
        cache_stale: Callable[[], bool],
    ):
        self.engine = engine  # replaced on reload, with config
        self.config = config
        self.controllers = controllers
        self.safety = safety
        self.storage = storage
        self.metrics = metrics
        self.clock = clock
        self.cache_stale = cache_stale
        self.link: Any = None  # sync.link.SyncLink, for the look-up of unknown cards
        # member / QR token -> the tap holding it between its grant and its commit
        self._pending: dict[str, asyncio.Future[None]] = {}
        u = config.unknown_cards
        self.unknown = UnknownCards(u.individual, u.window, u.quiet)

    # -- entry points --------------------------------------------------------------------

    async def tap(self, gate_id: str, cred: Credential, reader: Reader | None = None) -> dict[str, Any]:
        """A card or QR read at a gate's reader (or injected through the control socket)."""
        try:
            return await self._tap(gate_id, cred, reader, extra={"reader": cred.reader_id or None})
        except Exception as e:  # noqa: BLE001 - reported, counted, and the gate stayed shut
            return self._unexpected(gate_id, e)

    async def check_in(
        self,
        gate_id: str,
        member_id: str,
        operator: str,
        reason: str,
        *,
        booking_id: str | None = None,
        pass_id: str | None = None,
    ) -> dict[str, Any]:
        """The front desk checks a member in by hand: the same rules, intent, relay and
        ledger as a tap (deduction, attendance), with the operator and reason in the access
        event and the audit log. Opens the gate once on a grant."""
        meta = {k: v for k, v in (("booking", booking_id), ("pass", pass_id)) if v}
        cred = Credential(CredentialKind.DESK, member_id, f"desk:{operator}", meta=meta)
        extra = {"operator": operator, "desk_reason": reason}
        try:
            result = await self._tap(gate_id, cred, None, extra=extra)
        except Exception as e:  # noqa: BLE001 - reported, counted, and the gate stayed shut
            return self._unexpected(gate_id, e)
        try:
            self.engine.store.audit(
                self.clock(),
                operator,
                "check_in",
                {"gate": gate_id, "member": member_id, "reason": reason, "decision": result["decision"],
                 "because": result["reason"], "seq": result["seq"][:1]},
            )
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "audit")
        return result

    async def override(self, gate_id: str, operator: str, reason: str) -> dict[str, Any]:
        """Open once, without a member: recorded as an override, never a free passage
        claimed for nobody. Refused where nothing can be opened or recorded."""
        engine = self.engine
        gate = engine.gate(gate_id)  # unknown gate: raise before touching anything
        if self.safety.lockdown.active:
            # the lockdown promises that nobody gets in until an admin lifts it
            return {"error": "lockdown", "message": "Lockdown is on: an admin must lift it before a gate opens"}
        ctl = self.controllers.get(gate_id)
        if ctl is None:
            return {"error": "no_relay", "message": "This gate has no relay: there is nothing to open"}
        if gate.direction.value == "in" and not self.storage.ok_for_entry():
            return {"error": "storage_fault", "message": "The gate cannot record an opening now"}
        try:
            passed = await ctl.open_once()
        except OutputFault:
            return {"error": "hardware_fault", "message": "The gate's relay does not answer"}
        now = self.clock()
        try:
            decision, committed = engine.override(gate_id, operator, reason, now, passed=passed)
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "override")
            self.storage.hold(
                lambda: engine.override(gate_id, operator, reason, now, passed=passed)[1],
                {"gate": gate_id, "override": operator},
            )
            decision, committed = override_decision(gate), Committed()
        log.info("override", gate=gate_id, operator=operator, reason=reason, passed=passed)
        return result(decision, "Opened by the front desk", passed, committed.events)

    # -- the path --------------------------------------------------------------------------

    async def _tap(
        self, gate_id: str, cred: Credential, reader: Reader | None, *, extra: dict[str, Any]
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        pending = await self._decide(gate_id, cred)
        decided = time.perf_counter()
        self.metrics.decision_seconds.observe(decided - t0)
        # Between a grant and its commit the tap waits for the turnstile (seconds). A second
        # tap of the same member or QR token decided meanwhile (a cloned card at another
        # gate, one QR code shown at two readers) would not see the first one's passage or
        # used token: it waits for the first to be committed and is decided afresh.
        while busy := self._holders(pending):
            await asyncio.wait(busy)
            pending = await self._decide(gate_id, cred, lookup=False)
        hold = self._hold(pending)
        try:
            pending, intent, intent_at = self._write_intent(pending, extra)
            pending = await self._intent_on_disk(pending, intent)
            pending = await self._contest_qr(pending, intent, intent_at)
            pending, passage = await self._open(pending, reader)
            passed = passage is Passage.PASSED
            # UNKNOWN: released, then nobody could look (the board went silent, the inputs
            # went unread, we are stopping): the person may be through. No deduction; the
            # grant is reported as after a crash, in the tap's own transaction (held and
            # retried like any acted-on tap), never recorded as a plain "did not pass"
            unconfirmed = self._unconfirmed(pending, intent) if passage is Passage.UNKNOWN else None
            if self._in_burst(pending):
                committed = Committed()  # recorded with its burst (`unknown_cards`)
            else:
                committed = self._commit(pending, passed, intent, extra, unconfirmed)
            await self._commit_on_disk(pending)
        finally:
            self._release(hold)
        d = pending.decision
        if not d.granted and reader is not None:
            await self._feedback(reader, False, pending.message)
        self.metrics.taps.labels(gate_id, "granted" if d.granted else "denied", d.reason.value).inc()
        log.info(
            "tap",
            gate=gate_id,
            credential=mask(cred.value) if cred.kind != CredentialKind.DESK else cred.value,
            kind=cred.kind.value,
            member=d.member,
            decision="granted" if d.granted else "denied",
            reason=d.reason.value,
            passed=passed,
            ms=round((decided - t0) * 1000, 3),
        )
        return result(d, pending.message, passed, committed.events)

    async def _decide(self, gate_id: str, cred: Credential, *, lookup: bool = True) -> PendingTap:
        engine = self.engine
        now = self.clock()
        try:
            pending = engine.decide(gate_id, cred, now)
            # a marketplace member who booked a minute ago: ask, but never wait long
            if (lookup and self._should_look_up(pending, cred) and not self.unknown.flooding(gate_id, time.monotonic())
                    and await self._look_up(cred.key)):
                pending = engine.decide(gate_id, cred, self.clock())
            return engine.admit(pending, self._conditions(pending))
        except STORAGE_ERRORS as e:
            # the replica or ledger cannot be read (a corrupt page): nobody can be decided
            self.storage.failed(e, "decide")
            return engine.unreadable(gate_id, cred, now)

    def _should_look_up(self, pending: PendingTap, cred: Credential) -> bool:
        return (
            pending.decision.reason == Reason.UNKNOWN_CARD
            and cred.kind == CredentialKind.CARD
            and self.link is not None
            and self.config.lookup_unknown_cards
        )

    async def _look_up(self, card: str) -> bool:
        try:
            return bool(await self.link.lookup(card))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lookup_failed")  # the cached answer stands: unknown
            return False

    def _conditions(self, pending: PendingTap) -> GateConditions:
        d = pending.decision
        if not d.granted or d.reason == Reason.EXIT:
            return GateConditions()  # nothing refuses an exit or changes a denial
        gate = pending.gate
        ctl = self.controllers.get(gate.id)
        cap = self.config.zones.get(gate.zone)
        full = False
        if cap is not None and cap.capacity is not None:
            full = is_full(self.engine.store, gate.zone, cap.capacity, pending.decided_at, member=d.member)
        return GateConditions(
            fire_alarm=self.safety.fire_alarm,
            emergency_release=self.safety.emergency.active,
            lockdown=self.safety.lockdown.active,
            safety_input_lost=self.safety.input_lost,
            storage_ok=self.storage.ok_for_entry(),
            relay_online=ctl is None or ctl.output.health == OutputHealth.ONLINE,
            cache_stale=self.cache_stale(),
            stale_policy=StalePolicy(self.config.stale_cache.policy),
            zone_full=full,
        )

    def _write_intent(self, pending: PendingTap, extra: dict[str, Any]) -> tuple[PendingTap, int | None, datetime]:
        """The durable intent before the relay: for an entry, no intent, no opening.
        Returns the tap, the intent's id and its instant."""
        now = self.clock()
        if not pending.decision.granted:
            return pending, None, now
        try:
            intent = self.engine.store.open_intent(
                pending.gate,
                pending.decision,
                credential=pending.credential.kind,
                now=now,
                qr_token=pending.qr_token,
                detail={k: v for k, v in extra.items() if v is not None},
            )
        except TokenUsed:
            # used up at another daemon of the site, heard since the decision
            return self.engine.refuse(pending, Reason.QR_REPLAYED), None, now
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "intent")
            if self._exit(pending):
                return pending, None, now  # nobody is locked in: the exit opens unrecorded
            return self.engine.refuse(pending, Reason.STORAGE_FAULT), None, now
        return pending, intent, now

    async def _intent_on_disk(self, pending: PendingTap, intent: int | None) -> PendingTap:
        """The intent's commit flushed to disk before the relay is touched — off the event
        loop (sync/durability.py). A flush that fails refuses an entry (`storage_fault`; the
        tap's commit then resolves the intent); an exit opens all the same."""
        if intent is None:
            return pending
        try:
            await self.engine.store.flushed()
        except OSError as e:
            self.storage.failed(e, "intent")
            if not self._exit(pending):
                return self.engine.refuse(pending, Reason.STORAGE_FAULT)
        return pending

    async def _commit_on_disk(self, pending: PendingTap) -> None:
        """The tap's commit flushed before the answer (a committed deduction survives a power
        cut). A failing flush is a storage fault like a failing commit: said, not raised."""
        if not pending.decision.granted:
            return  # a denial moves nothing: its record may wait for the next flush
        try:
            await self.engine.store.flushed()
        except OSError as e:
            self.storage.failed(e, "commit")

    async def _contest_qr(self, pending: PendingTap, intent: int | None, claimed_at: datetime) -> PendingTap:
        """A QR code shown at two daemons of the site at the same instant: each has used it
        up (and said so, a `qr_used` event) before either heard the other. Both wait a
        moment for the other's claim and apply one rule — the earlier claim wins, then the
        lower daemon id — so exactly one opens (sync/link.py, `contest_qr`)."""
        if pending.qr_token is None or intent is None or self.link is None:
            return pending
        lost = await self.link.contest_qr(pending.qr_token[0], claimed_at)
        return self.engine.refuse(pending, Reason.QR_REPLAYED) if lost else pending

    async def _open(self, pending: PendingTap, reader: Reader | None) -> tuple[PendingTap, Passage]:
        """Pulse the relay and wait for passage: (the tap, what the turnstile said).
        A refusal by the controller (a lockdown or fire alarm that came in between, a relay
        that does not answer) turns the grant into a denial."""
        if not pending.decision.granted:
            return pending, Passage.NOT_PASSED
        if reader is not None:
            await self._feedback(reader, True, pending.message)
        ctl = self.controllers.get(pending.gate.id)
        if ctl is None:
            return pending, Passage.PASSED  # no lock and no sensor: commit on grant
        try:
            if self._exit(pending):
                # an exit opens in a lockdown too (a one-off release, as the desk's); during
                # a fire alarm a fail-safe door already stands open
                if self.safety.released and ctl.cfg.mode is DoorMode.FAIL_SAFE:
                    return pending, Passage.PASSED
                return pending, await ctl.open_passage()
            return pending, await ctl.grant_passage()
        except GrantRefused as refused:
            reason = refused.reason
            if reason == Reason.FIRE_ALARM and self.safety.emergency.active and not self.safety.fire_alarm:
                reason = Reason.EMERGENCY_RELEASE
            return self.engine.refuse(pending, reason), Passage.NOT_PASSED
        except OutputFault:
            return self.engine.refuse(pending, Reason.HARDWARE_FAULT), Passage.NOT_PASSED

    def _unconfirmed(self, pending: PendingTap, intent: int | None) -> str:
        """Why a released grant's passage is unknown (said in the log and the metric now;
        recorded with the tap's commit)."""
        ctl = self.controllers.get(pending.gate.id)
        cause = "stopping" if ctl is not None and ctl.stopping else "relay_unreadable"
        self.metrics.unconfirmed.inc()
        log.warning("passage_unconfirmed", gate=pending.gate.id, member=pending.decision.member, cause=cause,
                    recorded=intent is not None)  # an exit opened unrecorded has no intent to report
        return cause

    def _commit(
        self, pending: PendingTap, passed: bool, intent: int | None, extra: dict[str, Any], unconfirmed: str | None = None
    ) -> Committed:
        """The tap's one transaction. For a tap that was acted on, a failure is never the
        end of it: the commit is held and retried (and the intent stays)."""
        now = self.clock()
        fields = self._event_fields(pending, extra)

        def commit() -> Committed:
            return self.engine.commit(pending, passed=passed, now=now, intent=intent, extra=fields, unconfirmed=unconfirmed)

        try:
            return commit()
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "commit")
            if pending.decision.granted:
                self.storage.hold(
                    commit,
                    {"gate": pending.gate.id, "member": pending.decision.member, "passed": passed, "intent": intent},
                    exit_tap=self._exit(pending),
                )
            else:
                log.error("denial_not_recorded", gate=pending.gate.id, member=pending.decision.member,
                          reason=pending.decision.reason.value)
            return Committed()

    def _in_burst(self, pending: PendingTap) -> bool:
        """An unknown card past the gate's quota of individually recorded ones: counted in
        the gate's burst instead of an fsynced denial of its own (gated/unknown_cards.py)."""
        cred = pending.credential
        if pending.decision.reason != Reason.UNKNOWN_CARD or cred.kind != CredentialKind.CARD:
            return False
        gate, now = pending.gate.id, time.monotonic()
        if self.unknown.admit(gate, now):
            return False
        self.unknown.count(gate, now, self.clock(), cred.reader_id or None, cred.key)
        return True

    def record_unknown_cards(self, *, all_: bool = False) -> None:
        """Write the `unknown_cards` events owed (the scheduler, each second; all at stop)."""
        for fields in self.unknown.due(time.monotonic(), all_=all_):
            try:
                self.engine.store.emit("unknown_cards", self.clock(), **fields)
            except STORAGE_ERRORS as e:
                self.storage.failed(e, "unknown_cards")
                log.error("denial_not_recorded", reason="unknown_card", **fields)
            else:
                log.warning("unknown_cards", **fields)

    @staticmethod
    def _event_fields(pending: PendingTap, extra: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k, v in extra.items() if v is not None}
        # the access event's `at` is its commit, after the turnstile turned (seconds later):
        # the instant the rules decided is what an audit re-decides the tap at
        fields["decided_at"] = iso_utc(pending.decided_at)
        if pending.decision.reason == Reason.UNKNOWN_CARD and pending.credential.kind == CredentialKind.CARD:
            fields["card"] = pending.credential.key  # typed, for the desk's enrolment of the card
        return fields

    @staticmethod
    def _exit(pending: PendingTap) -> bool:
        return pending.decision.reason == Reason.EXIT

    async def _feedback(self, reader: Reader, granted: bool, message: str) -> None:
        try:
            await reader.feedback(granted, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reader_feedback_failed", reader=reader.id)  # the LED is not the gate

    def _unexpected(self, gate_id: str, error: Exception) -> dict[str, Any]:
        # a bug, not a storage fault: the relay was not pulsed for an entry (the intent and
        # the pulse come after everything that could raise here), and it is counted
        self.metrics.tap_errors.inc()
        log.error("tap_failed", gate=gate_id, error=repr(error), exc_info=error)
        return {"error": "internal", "decision": "denied", "message": "Gate out of order — please see the front desk"}

    # -- one tap per member / QR token at a time ------------------------------------------------

    @staticmethod
    def _tap_keys(pending: PendingTap) -> list[str]:
        if not pending.decision.granted:
            return []
        keys = [f"member:{pending.decision.member}"] if pending.decision.member else []
        if pending.qr_token is not None:
            keys.append(f"qr:{pending.qr_token[0]}")
        return keys

    def _holders(self, pending: PendingTap) -> list[asyncio.Future[None]]:
        return [f for k in self._tap_keys(pending) if (f := self._pending.get(k)) is not None]

    def _hold(self, pending: PendingTap) -> tuple[list[str], asyncio.Future[None]]:
        keys = self._tap_keys(pending)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for k in keys:
            self._pending[k] = fut
        return keys, fut

    def _release(self, hold: tuple[list[str], asyncio.Future[None]]) -> None:
        keys, fut = hold
        for k in keys:
            if self._pending.get(k) is fut:
                del self._pending[k]
        if not fut.done():
            fut.set_result(None)


def result(d: Decision, message: str, passed: bool, events: list[Event]) -> dict[str, Any]:
    """What `gated tap`, the console and the tests get back for a tap."""
    return {
        "decision": "granted" if d.granted else "denied",
        "reason": d.reason.value,
        "member": d.member,
        "booking": d.booking,
        "pass": d.pass_id,
        "passed": passed,
        "message": message,
        "seq": [e["seq"] for e in events],
    }


__all__ = ["TapPath", "result"]
