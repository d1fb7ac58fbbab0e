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
exit opens even when nothing can be written (and is recorded when possible), and even
when the store cannot be read to decide it (rules.tap.unreadable: let out unrecorded,
counted as an exit not recorded).

A desk check-in (the front desk picks a member, and maybe their booking or pass) takes the
same path with a `desk` credential; an override ("open once") opens without a member. Each
carries the page's request (sync/store/desk_requests.py), on disk before the relay is
pulsed and done by the commit: a retry of it never opens or charges again.

A tap travels as one immutable value (rules.tap.Tap), each step returning the next; every
read and write of the store goes through the Engine; what the site's safety allows at the
relay is rules.admission.plan_release, asked by the gate controller itself.

About 500 lines: the path of a tap from the reader to the answer, in the order it happens,
with every failure on it handled where it happens (nothing opens that cannot be recorded).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog

from drivers.outputs.gate import GateController, GrantRefused
from drivers.outputs.grant import Passage
from drivers.outputs.modbus import OutputFault, OutputHealth
from drivers.readers.base import Reader
from gated.engine import Engine
from gated.metrics import Metrics
from gated.safety import Safety
from gated.storage_watch import StorageWatch
from gated.unknown_cards import UnknownCards
from rules.admission import GateConditions, Release, StalePolicy, desk_release, plan_release
from rules.credential import Credential, CredentialKind, mask
from rules.decide import Decision
from rules.decide import override as override_decision
from rules.reasons import Reason
from rules.tap import Tap
from sync.store import Committed, Event
from sync.store.desk_requests import DeskRequest
from sync.store.faults import STORAGE_ERRORS
from sync.store.intents import TokenUsed

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
            return await self._tap(gate_id, cred, reader, {"reader": cred.reader_id or None})
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
        request: DeskRequest | None = None,
    ) -> dict[str, Any]:
        """The front desk checks a member in by hand: the same rules, intent, relay and
        ledger as a tap (deduction, attendance), with the operator and reason in the access
        event and the audit log. Opens the gate once on a grant. `request`: begun with the
        grant's intent (before the pulse), done by the tap's commit, forgotten by a denial's."""
        meta = {k: v for k, v in (("booking", booking_id), ("pass", pass_id)) if v}
        cred = Credential(CredentialKind.DESK, member_id, f"desk:{operator}", meta=meta)
        try:
            result = await self._tap(gate_id, cred, None, {"operator": operator, "desk_reason": reason}, request)
        except Exception as e:  # noqa: BLE001 - reported, counted, and the gate stayed shut
            return self._unexpected(gate_id, e)
        try:
            self.engine.audit(
                self.clock(),
                operator,
                "check_in",
                {"gate": gate_id, "member": member_id, "reason": reason, "decision": result["decision"],
                 "because": result["reason"], "seq": result["seq"][:1]},
            )
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "audit")
        else:
            await self._on_disk("audit")  # who checked whom in, with the tap it explains
        return result

    async def override(
        self, gate_id: str, operator: str, reason: str, *, request: DeskRequest | None = None,
    ) -> dict[str, Any]:
        """Open once, without a member: recorded as an override, never a free passage
        claimed for nobody. Refused where nothing can be opened or recorded; at an
        entrance in a lockdown, never at an exit (a lockdown keeps people out, not in).
        `request`: the desk's, on disk (`begun`) before the pulse and done by the commit —
        a retry finds it and never pulses again; forgotten when nothing was pulsed."""
        engine = self.engine
        gate = engine.gate(gate_id)  # unknown gate: raise before touching anything
        ctl = self.controllers.get(gate_id)
        purpose = desk_release(gate)
        # asked before anything else, so a lockdown is what the desk hears (the controller
        # asks the same rule again when it releases)
        if plan_release(self.safety.site, purpose, fail_safe=False).refused == Reason.LOCKDOWN:
            return {"error": "lockdown", "message": "Lockdown is on: an admin must lift it before a gate opens"}
        if ctl is None:
            return {"error": "no_relay", "message": "This gate has no relay: there is nothing to open"}
        standing = ctl.standing_released()
        if standing is not None:
            # nothing to pulse, and nothing to tell a passage by: recorded, it would be an
            # entry of nobody counted whoever went through (the console does not offer it)
            return {"error": "released", "message": f"The gate stands released for {standing}: it is open already"}
        if gate.direction.value == "in" and not self.storage.ok_for_entry():
            return {"error": "storage_fault", "message": "The gate cannot record an opening now"}
        if request is not None and not await self._begin(request):
            if gate.direction.value == "in":
                return {"error": "storage_fault", "message": "The gate cannot record an opening now"}
            request = None  # an exit opens all the same (nobody is kept in): its retry may open again
        try:
            passed = await ctl.release(purpose) is Passage.PASSED
        except GrantRefused:  # a lockdown that came in meanwhile
            self._not_done(request)
            return {"error": "lockdown", "message": "Lockdown is on: an admin must lift it before a gate opens"}
        except OutputFault:  # nothing was released (drivers/outputs/gate.py)
            self._not_done(request)
            return {"error": "hardware_fault", "message": "The gate's relay does not answer"}
        now = self.clock()
        try:
            decision, committed = engine.override(gate_id, operator, reason, now, passed=passed, request=request)
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "override")
            self.storage.hold(
                lambda: engine.override(gate_id, operator, reason, now, passed=passed, request=request)[1],
                {"gate": gate_id, "override": operator},
            )
            decision, committed = override_decision(gate), Committed()
        else:
            await self._on_disk("override")  # the desk is told done once a power cut cannot take it back
        log.info("override", gate=gate_id, operator=operator, reason=reason, passed=passed)
        return result(decision, "Opened by the front desk", passed, committed.events)

    async def _begin(self, request: DeskRequest) -> bool:
        """The desk's request written `begun` and on disk, before its pulse: False when it
        cannot be (a storage fault, said; the row a failed flush left is taken back)."""
        try:
            self.engine.begin_desk_request(request, self.clock())
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "desk_request")
            return False
        try:
            await self.engine.flushed()
        except OSError as e:
            self.storage.failed(e, "desk_request")
            self._not_done(request)
            return False
        return True

    def _not_done(self, request: DeskRequest | None) -> None:
        """A begun request the gate did not act on (not pulsed): forgotten, its retry does it.
        Where even that cannot be written, its retry is refused as begun (never opens twice)."""
        if request is None:
            return
        try:
            self.engine.forget_desk_request(request)
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "desk_request")

    # -- the path --------------------------------------------------------------------------

    async def _tap(
        self, gate_id: str, cred: Credential, reader: Reader | None, detail: dict[str, Any],
        request: DeskRequest | None = None,
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        tap = await self._decide(gate_id, cred, detail)
        decided = time.perf_counter()
        self.metrics.decision_seconds.observe(decided - t0)
        # Between a grant and its commit the tap waits for the turnstile (seconds). A second
        # tap of the same member or QR token decided meanwhile (a cloned card at another
        # gate, one QR code shown at two readers) would not see the first one's passage or
        # used token: it waits for the first to be committed and is decided afresh.
        while busy := self._holders(tap):
            await asyncio.wait(busy)
            tap = await self._decide(gate_id, cred, detail, lookup=False)
        hold = self._hold(tap)
        try:
            tap = self._write_intent(tap, request)
            tap = await self._intent_on_disk(tap)
            tap = await self._contest_qr(tap)
            tap, passage = await self._open(tap, reader)
            passed = passage is Passage.PASSED
            # UNKNOWN: released, then nobody could look (the board went silent, the inputs
            # went unread or the passage input read stuck, we are stopping): the person may
            # be through. No deduction; the grant is reported as after a crash, in the tap's
            # own transaction (held and retried like any acted-on tap), never recorded as a
            # plain "did not pass": a person settles it
            unconfirmed = self._unconfirmed(tap) if passage is Passage.UNKNOWN else None
            if tap.unrecorded:
                committed = self._let_out_unrecorded(tap)
            elif self._in_burst(tap):
                committed = Committed()  # recorded with its burst (`unknown_cards`)
            else:
                committed = self._commit(tap, passed, unconfirmed, request)
            await self._commit_on_disk(tap)
        finally:
            self._release(hold)
        d = tap.decision
        if not d.granted and reader is not None:
            await self._feedback(reader, False, tap.message)
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
        return result(d, tap.message, passed, committed.events)

    async def _decide(self, gate_id: str, cred: Credential, detail: dict[str, Any], *, lookup: bool = True) -> Tap:
        engine = self.engine
        now = self.clock()
        try:
            tap = engine.decide(gate_id, cred, now, detail)
            # a marketplace member who booked a minute ago: ask, but never wait long
            if (lookup and self._should_look_up(tap) and not self.unknown.flooding(gate_id, time.monotonic())
                    and await self._look_up(cred.key)):
                tap = engine.decide(gate_id, cred, self.clock(), detail)
            return engine.admit(tap, self._conditions(tap))
        except STORAGE_ERRORS as e:
            # the replica or ledger cannot be read (a corrupt page): nobody can be decided —
            # an entry is refused, an exit let out unrecorded (rules.tap.unreadable)
            self.storage.failed(e, "decide")
            return engine.unreadable(gate_id, cred, now)

    def _should_look_up(self, tap: Tap) -> bool:
        return tap.unknown_card and self.link is not None and self.config.lookup_unknown_cards

    async def _look_up(self, card: str) -> bool:
        try:
            return bool(await self.link.lookup(card))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lookup_failed")  # the cached answer stands: unknown
            return False

    def _conditions(self, tap: Tap) -> GateConditions:
        if not tap.granted or tap.is_exit:
            return GateConditions()  # nothing refuses an exit or changes a denial
        gate = tap.gate
        ctl = self.controllers.get(gate.id)
        cap = self.config.zones.get(gate.zone)
        full = cap is not None and cap.capacity is not None and self.engine.zone_full(tap, cap.capacity)
        site = self.safety.site
        return GateConditions(
            fire_alarm=site.fire_alarm,
            emergency_release=site.emergency_release,
            lockdown=site.lockdown,
            safety_input_lost=self.safety.input_lost,
            storage_ok=self.storage.ok_for_entry(),
            relay_online=ctl is None or ctl.output.health == OutputHealth.ONLINE,
            cache_stale=self.cache_stale(),
            stale_policy=StalePolicy(self.config.stale_cache.policy),
            zone_full=full,
        )

    def _write_intent(self, tap: Tap, request: DeskRequest | None = None) -> Tap:
        """The durable intent before the relay: for an entry, no intent, no opening. With it,
        the desk's request the tap is (a check-in), begun."""
        if not tap.granted or tap.unrecorded:
            return tap  # an exit nobody could name has nobody to write an intent for
        try:
            return self.engine.open_intent(tap, self.clock(), request)
        except TokenUsed:
            # used up at another daemon of the site, heard since the decision
            return tap.refused(Reason.QR_REPLAYED)
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "intent")
            if tap.is_exit:
                return tap  # nobody is locked in: the exit opens unrecorded
            return tap.refused(Reason.STORAGE_FAULT)

    async def _intent_on_disk(self, tap: Tap) -> Tap:
        """The intent's commit flushed to disk before the relay is touched — off the event
        loop (sync/store/durability.py). A flush that fails refuses an entry (`storage_fault`; the
        tap's commit then resolves the intent); an exit opens all the same."""
        if tap.intent is None:
            return tap
        try:
            await self.engine.flushed()
        except OSError as e:
            self.storage.failed(e, "intent")
            if not tap.is_exit:
                return tap.refused(Reason.STORAGE_FAULT)
        return tap

    async def _on_disk(self, what: str) -> None:
        """Everything committed so far flushed; a failing flush is a storage fault, said."""
        try:
            await self.engine.flushed()
        except OSError as e:
            self.storage.failed(e, what)

    async def _commit_on_disk(self, tap: Tap) -> None:
        """The tap's commit flushed before the answer (a committed deduction survives a power
        cut). A failing flush is a storage fault like a failing commit: said, not raised."""
        # a denial moves nothing: its record may wait for the next flush; an exit let out
        # unrecorded wrote nothing
        if tap.granted and not tap.unrecorded:
            await self._on_disk("commit")

    async def _contest_qr(self, tap: Tap) -> Tap:
        """A QR code shown at two daemons of the site at the same instant: each has used it
        up (and said so, a `qr_used` event) before either heard the other. Both wait a
        moment for the other's claim and apply one rule — the earlier claim wins, then the
        lower daemon id — so exactly one opens (sync/link/link.py, `contest_qr`)."""
        if tap.qr_token is None or tap.intent is None or tap.intent_at is None or self.link is None:
            return tap
        lost = await self.link.contest_qr(tap.qr_token[0], tap.intent_at)
        return tap.refused(Reason.QR_REPLAYED) if lost else tap

    async def _open(self, tap: Tap, reader: Reader | None) -> tuple[Tap, Passage]:
        """Release the relay and wait for passage: (the tap, what the turnstile said). A
        refusal by the controller (rules.admission.plan_release: a lockdown or fire alarm
        that came in between) or a relay that does not answer turns the grant into a denial."""
        if not tap.granted:
            return tap, Passage.NOT_PASSED
        # The reader's green light and beep go with the release, not before it: an OSDP
        # reader's command is a hop to a thread, which the relay would wait for. Finished
        # before the tap goes on, so a refusal's red comes after it.
        lit = asyncio.ensure_future(self._feedback(reader, True, tap.message)) if reader is not None else None
        ctl = self.controllers.get(tap.gate.id)
        try:
            if ctl is None:
                return tap, Passage.PASSED  # no lock and no sensor: commit on grant
            return tap, await ctl.release(Release.EXIT if tap.is_exit else Release.ENTRY)
        except GrantRefused as refused:
            return tap.refused(refused.reason), Passage.NOT_PASSED
        except OutputFault:
            return tap.refused(Reason.HARDWARE_FAULT), Passage.NOT_PASSED
        finally:
            if lit is not None:
                await lit

    def _unconfirmed(self, tap: Tap) -> str:
        """Why a released grant's passage is unknown (said in the log and the metric now;
        recorded with the tap's commit): the controller's word for this release, read as
        its release returned (before any other release can begin)."""
        ctl = self.controllers.get(tap.gate.id)
        because = ctl.unconfirmed_because if ctl is not None else None
        if because is not None:
            cause = because.value
        else:
            cause = "stopping" if ctl is not None and ctl.stopping else "relay_unreadable"
        self.metrics.unconfirmed.inc()
        log.warning("passage_unconfirmed", gate=tap.gate.id, member=tap.decision.member, cause=cause,
                    recorded=tap.intent is not None)  # an exit opened unrecorded has no intent to report
        return cause

    def _commit(
        self, tap: Tap, passed: bool, unconfirmed: str | None = None, request: DeskRequest | None = None,
    ) -> Committed:
        """The tap's one transaction (with the desk's request it is: done, or forgotten with a
        denial). For a tap that was acted on, a failure is never the end of it: the commit
        is held and retried (and the intent stays)."""
        now = self.clock()

        def commit() -> Committed:
            return self.engine.commit(tap, passed=passed, now=now, unconfirmed=unconfirmed, request=request)

        try:
            return commit()
        except STORAGE_ERRORS as e:
            self.storage.failed(e, "commit")
            if tap.granted:
                self.storage.hold(
                    commit,
                    {"gate": tap.gate.id, "member": tap.decision.member, "passed": passed, "intent": tap.intent},
                    exit_tap=tap.is_exit,
                )
            else:
                log.error("denial_not_recorded", gate=tap.gate.id, member=tap.decision.member,
                          reason=tap.decision.reason.value)
            return Committed()

    def _let_out_unrecorded(self, tap: Tap) -> Committed:
        """An exit the store could not be read to decide: nothing to record for nobody (no
        member, nothing charged). One that opened is counted with the exits not recorded
        (`gated status`, the metric, one `exits_not_recorded` alarm once the store works);
        the storage fault itself was said when the read failed."""
        if tap.granted:
            self.storage.exit_unrecorded(tap.gate.id)
        return Committed()

    def _in_burst(self, tap: Tap) -> bool:
        """An unknown card past the gate's quota of individually recorded ones: counted in
        the gate's burst instead of an fsynced denial of its own (gated/unknown_cards.py)."""
        if not tap.unknown_card:
            return False
        gate, now = tap.gate.id, time.monotonic()
        if self.unknown.admit(gate, now):
            return False
        self.unknown.count(gate, now, self.clock(), tap.credential.reader_id or None, tap.credential.key)
        return True

    def record_unknown_cards(self, *, all_: bool = False) -> None:
        """Write the `unknown_cards` events owed (the scheduler, each second; all at stop)."""
        for fields in self.unknown.due(time.monotonic(), all_=all_):
            try:
                self.engine.emit("unknown_cards", self.clock(), **fields)
            except STORAGE_ERRORS as e:
                self.storage.failed(e, "unknown_cards")
                log.error("denial_not_recorded", reason="unknown_card", **fields)
            else:
                log.warning("unknown_cards", **fields)

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

    def _holders(self, tap: Tap) -> list[asyncio.Future[None]]:
        return [f for k in tap.holds() if (f := self._pending.get(k)) is not None]

    def _hold(self, tap: Tap) -> tuple[list[str], asyncio.Future[None]]:
        keys = tap.holds()
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
