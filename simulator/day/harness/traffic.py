"""The day's people at the turnstiles: each planned visit is a member who taps in (a card or
the app's QR code), stays, maybe pops out and back, and taps out; who reacts to what the
gate says (waits for the arrival window, walks to the other turnstile, tops the pass up,
asks the desk). Extras: unknown cards, forged QR codes, manual points, new members.

A turnstile serves one person at a time: each gate has a queue, and the next person taps
when the previous one has had the gate's answer (the daemon's `tap` log line). What is
measured per tap: real time from the bytes on the reader's pty to the coil set on the
turnstile's Modbus server (tap -> coil), and to the gate's answer.

About 550 lines: a person's reactions follow every answer a gate can give, and one reading
of them in one place is what the checks are written against.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rules.credential import mask
from simulator.day.harness.desk import Desk
from simulator.day.harness.rig import DESK_PASSWORD, DESK_USER, Chain, GateRig
from simulator.day.plan import DESK_GATE, EXIT_GATE, IN_GATES, Extra, Plan, Visit
from simulator.day.population import ZONE, Population
from sync.qrtoken import mint

ANSWER_TIMEOUT = 12.0  # real seconds: a grant waits up to passage_timeout (3 s) for the turn
# Simulated seconds of life a replayed code keeps at least when it is shown again: the
# queue at the turnstile and the decision take real time (90 s: 0.75 s real at x120).
REPLAY_MARGIN = 90.0


@dataclass
class Answer:
    decision: str | None = None  # None: no answer (gate unavailable, or none came)
    reason: str | None = None
    passed: bool = False
    member: str | None = None
    unavailable: bool = False

    @property
    def entered(self) -> bool:
        return self.decision == "granted" and self.passed


@dataclass
class TapRecord:
    n: int
    real: float  # seconds since the run's start (monotonic)
    sim: str
    site: str
    gate: str
    who: str | None
    credential: str  # card | qr
    purpose: str
    decision: str | None
    reason: str | None
    passed: bool
    coil_ms: float | None
    answer_ms: float | None
    decide_ms: float | None
    state: dict[str, bool]
    # a QR code's expiry (ISO), on a replay: a replay the queue held past it is rightly
    # refused qr_expired (the check reads the gate's own decision instant)
    expires: str | None = None


@dataclass
class VisitState:
    """What happened to a visit so far (what the member remembers)."""

    last_token: str | None = None
    last_token_expires: datetime | None = None
    last_gate: str | None = None
    walked_in_early: bool = False


@dataclass
class Records:
    t0: float = field(default_factory=time.monotonic)
    taps: list[TapRecord] = field(default_factory=list)
    desk: list[dict[str, Any]] = field(default_factory=list)
    back_office: list[dict[str, Any]] = field(default_factory=list)
    chaos: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # who left in a fire drill, and how: through a released turnstile or a fire exit
    evacuees: list[dict[str, Any]] = field(default_factory=list)

    def real(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def to_json(self) -> dict[str, Any]:
        return {"taps": [asdict(t) for t in self.taps], "desk": self.desk, "back_office": self.back_office,
                "chaos": self.chaos, "notes": self.notes, "evacuees": self.evacuees}


class GateQueue:
    """People waiting at one turnstile; one tap at a time, answered from the daemon's log."""

    def __init__(self, rig: GateRig, chain: Chain, records: Records):
        self.rig = rig
        self.chain = chain
        self.records = records
        self.lock = asyncio.Lock()  # one person at a time (the desk's opening too)

    async def tap(self, credential: str, *, qr: bool, who: str | None, purpose: str,
                  expires: datetime | None = None) -> Answer:
        async with self.lock:
            return await self._tap(credential, qr=qr, who=who, purpose=purpose, expires=expires)

    async def _tap(self, credential: str, *, qr: bool, who: str | None, purpose: str,
                   expires: datetime | None = None) -> Answer:
        rig = self.rig
        state = rig.state()
        sim = self.chain.clock.now().isoformat()
        if not rig.available:
            return Answer(unavailable=True)
        # the arm of the previous person's rotation must come round before this one can
        # push: waiting for it here keeps the queue out of the tap -> coil figure
        for _ in range(100):
            if not rig.turnstile.passage_active:
                break
            await asyncio.sleep(0.02)
        rig.lines.clear()  # an answer to an earlier tap that timed out is not this one's
        rig.new_line.clear()
        incarnation = rig.proc.incarnation
        coil_before = len(rig.turnstile.coil_history)
        t0 = time.monotonic()
        try:
            if qr:
                rig.reader.scan_qr(credential)
            else:
                rig.reader.tap(credential)
        except (OSError, RuntimeError):
            return Answer(unavailable=True)
        want = mask(credential)
        line = await self._answer(want, who if not qr else None)
        t_answer = time.monotonic()
        coil_ms = None
        for t, raw in rig.turnstile.coil_history[coil_before:]:
            if raw and t >= t0:
                coil_ms = round((t - t0) * 1000, 3)
                break
        if line is None and (rig.proc.incarnation != incarnation or not rig.proc.alive):
            state = {**state, "daemon": False}  # killed while this tap was on its way
        ans = Answer() if line is None else Answer(
            line.get("decision"), line.get("reason"), bool(line.get("passed")), line.get("member"))
        self.records.taps.append(TapRecord(
            len(self.records.taps) + 1, round(t0 - self.records.t0, 3), sim, rig.site, rig.gate, who,
            "qr" if qr else "card", purpose, ans.decision, ans.reason, ans.passed,
            coil_ms if ans.decision == "granted" else None,
            round((t_answer - t0) * 1000, 3) if line is not None else None,
            line.get("ms") if line is not None else None, state,
            expires.isoformat() if expires is not None else None))
        return ans

    async def _answer(self, want: str, member: str | None) -> dict[str, Any] | None:
        rig = self.rig
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            for i, line in enumerate(rig.lines):
                if line.get("credential") == want and (member is None or line.get("member") in (member, None)):
                    del rig.lines[: i + 1]
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not rig.proc.alive:
                return None
            rig.new_line.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.5)):
                    await rig.new_line.wait()


class Traffic:
    def __init__(self, chain: Chain, pop: Population, plan: Plan, records: Records, seed: int):
        self.chain = chain
        self.pop = pop
        self.plan = plan
        self.records = records
        self.seed = seed
        self.clock = chain.clock
        self.queues = {k: GateQueue(r, chain, records) for k, r in chain.gates.items()}
        self.desks = {s.id: Desk(chain.gates[(s.id, DESK_GATE)].console_port or 0, DESK_USER, DESK_PASSWORD)
                      for s in pop.sites}
        self.cards = dict(pop.cards)
        self.passes = {s.id: pop.passes_at(s.id) for s in pop.sites}
        self.bookings = {s.id: pop.bookings_at(s.id) for s in pop.sites}
        self.inside: set[tuple[str, str]] = set()  # (site, member) as the people know it
        # (site, member) -> set when a fire drill takes them out of the visit they are on
        self.evacuated: dict[tuple[str, str], asyncio.Event] = {}
        self.all_clear = {s.id: asyncio.Event() for s in pop.sites}  # clear while a drill lasts
        for ev in self.all_clear.values():
            ev.set()
        self._qr_n = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []

    # -- building blocks -------------------------------------------------------------------------

    def qr(self, site: str, member: str, *, booking: str | None = None, age: float = 0.0,
           ttl: float = 180.0, key: Any = None) -> str:
        return self._mint(member, booking=booking, age=age, ttl=ttl, key=key)[0]

    def _mint(self, member: str, *, booking: str | None = None, age: float = 0.0, ttl: float = 180.0,
              key: Any = None) -> tuple[str, datetime]:
        """The app's code and when it expires."""
        self._qr_n += 1
        issued = self.clock.now() - timedelta(seconds=age)
        expires = issued + timedelta(seconds=ttl)
        return mint(key or self.chain.qr_key, token_id=f"day-{self.seed}-{self._qr_n}", member=member,
                    issued=issued, expires=expires, booking=booking), expires

    async def tap(self, site: str, gate: str, credential: str, *, qr: bool, who: str | None,
                  purpose: str, expires: datetime | None = None) -> Answer:
        return await self.queues[(site, gate)].tap(credential, qr=qr, who=who, purpose=purpose, expires=expires)

    def in_gates(self, site: str, rnd: random.Random) -> list[str]:
        up = [g for g in IN_GATES if self.chain.gates[(site, g)].available]
        rnd.shuffle(up)
        return up

    async def desk(self, site: str, kind: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        d = self.desks[site]
        rig = self.chain.gates[(site, DESK_GATE)]
        entry: dict[str, Any] = {"sim": self.clock.now().isoformat(), "real": self.records.real(), "site": site,
                                 "kind": kind, **kw}
        for _ in range(30):  # the desk's daemon may be restarting: staff wait a moment
            if rig.proc.alive and rig.proc.ready:
                try:
                    if kind == "open":
                        # the person let in goes through that turnstile: the queue waits
                        async with self.queues[(site, kw["gate"])].lock:
                            status, body = await d.open_gate(kw["gate"], kw["reason"])
                    elif kind == "attend":
                        status, body = await d.attend(kw["booking"], kw["refund"])
                    else:
                        status, body = await d.points(kw["member"], kw["points"], kw["reason"])
                    entry.update(status=status, response=body)
                    self.records.desk.append(entry)
                    return status, body
                except (OSError, ValueError) as e:
                    entry.setdefault("retries", []).append(repr(e))
            await self.clock.sleep(60)
        entry.update(status=0, response={"error": "console unreachable"})
        self.records.desk.append(entry)
        return 0, {}

    # -- a visit ---------------------------------------------------------------------------------

    async def visit(self, v: Visit) -> None:
        rnd = random.Random(v.seed)
        st = VisitState()
        await self.clock.sleep_until(v.arrive)
        if v.kind == "forgot_card":
            entered = await self._forgot_card(v)
        else:
            entered = await self.enter(v, rnd, st)
        if not entered:
            return
        if v.qr_replay and st.last_token is not None and st.last_gate is not None:
            # a friend shows a screenshot of the code at the same turnstile, while the code is
            # still valid: past its expiry the gate rightly says qr_expired, and the replay
            # would not be tested (a short day's x120 once took the last 10 s, 83 ms real)
            wait = rnd.uniform(30, 120)
            if st.last_token_expires is not None:
                wait = min(wait, (st.last_token_expires - self.clock.now()).total_seconds() - REPLAY_MARGIN)
            if wait >= 0:
                await self.clock.sleep(wait)
                await self.tap(v.site, st.last_gate, st.last_token, qr=True, who=v.member, purpose="qr_replay",
                               expires=st.last_token_expires)
        if v.reentry is not None:
            out_at, back_at = v.reentry
            if not await self._stay(v, rnd, st, out_at):
                return
            if await self.leave(v, rnd):
                await self.clock.sleep_until(back_at)
                if not await self.enter(v, rnd, st, again=True):
                    return
        if v.refund_at is not None and st.walked_in_early and v.booking:
            await self.clock.sleep_until(v.refund_at)
            await self.desk(v.site, "attend", booking=v.booking, refund=True, member=v.member)
        if await self._stay(v, rnd, st, v.leave):
            await self.leave(v, rnd)

    async def _stay(self, v: Visit, rnd: random.Random, st: VisitState, until: datetime) -> bool:
        """Inside until `until`; True if still inside then. A fire drill takes them out: after
        the all-clear they come back in (free, the gate should say) if enough of the visit is
        left, else they go home."""
        key = (v.site, v.member)
        while True:
            gone = self.evacuated.get(key)
            if gone is None:
                return key in self.inside
            if not gone.is_set():
                stay = asyncio.ensure_future(self.clock.sleep_until(until))
                evacuated = asyncio.ensure_future(gone.wait())
                await asyncio.wait({stay, evacuated}, return_when=asyncio.FIRST_COMPLETED)
                for t in (stay, evacuated):
                    t.cancel()
                if not gone.is_set():
                    return key in self.inside
            await self.all_clear[v.site].wait()
            back = self.clock.now() + timedelta(seconds=rnd.uniform(120, 600))
            if back + timedelta(minutes=10) >= until:
                return False  # not worth it: home
            await self.clock.sleep_until(back)
            if v.kind == "forgot_card":  # still no card: the desk lets them in again
                back_in = await self._desk_lets_in(v, f"{v.member}: back after the fire alarm, no card")
            else:
                back_in = await self.enter(v, rnd, st, again=True, purpose="after_evacuation")
            if not back_in:
                return False

    # -- a fire drill ----------------------------------------------------------------------------

    def evacuate(self, site: str, seed: int) -> int:
        """The fire alarm sounds at `site`: everyone inside leaves — through a turnstile
        that stands released (no tap: the arm turns freely) or by a fire exit, which has
        no turnstile. Returns how many."""
        self.all_clear[site].clear()
        rnd = random.Random(seed)
        people = sorted(m for s, m in self.inside if s == site)
        for member in people:
            self.inside.discard((site, member))
            gone = self.evacuated.get((site, member))
            if gone is not None:
                gone.set()
            self._spawn(self._evacuee(site, member, rnd.uniform(5, 120), rnd.random() < 0.6), f"evacuee {member}")
        return len(people)

    def end_drill(self, site: str) -> None:
        self.all_clear[site].set()

    async def _evacuee(self, site: str, member: str, after: float, by_turnstile: bool) -> None:
        await self.clock.sleep(after)
        route = "fire_exit"
        if by_turnstile:
            for gate in (EXIT_GATE, *IN_GATES):  # the nearest first: the exit
                q = self.queues[(site, gate)]
                async with q.lock:  # one person in the arm at a time
                    if q.rig.turnstile.push_through():
                        route = gate
                        for _ in range(100):  # the arm comes round before the next person
                            await asyncio.sleep(0.02)
                            if not q.rig.turnstile.passage_active:
                                break
                        break
        self.records.evacuees.append({"sim": self.clock.now().isoformat(), "real": self.records.real(),
                                      "site": site, "member": member, "route": route})

    def _credential(self, v: Visit, *, expired: bool = False) -> tuple[str, bool, datetime | None]:
        """The card, or the app's code: (credential, is a QR code, its expiry)."""
        if v.qr:
            if expired:
                return self.qr(v.site, v.member, booking=v.booking, age=600, ttl=60), True, None
            token, expires = self._mint(v.member, booking=v.booking, age=random.uniform(0, 20))
            return token, True, expires
        return self.cards[v.member], False, None

    async def enter(self, v: Visit, rnd: random.Random, st: VisitState, *, again: bool = False,
                    purpose: str | None = None) -> bool:
        tried_window = tried_topup = False
        expired_first = v.qr_expired and not again
        for _attempt in range(8):
            gates = self.in_gates(v.site, rnd)
            if not gates:
                await self.clock.sleep(60)  # every entrance out of order: wait a minute
                continue
            gate = gates[0]
            cred, is_qr, expires = self._credential(v, expired=expired_first)
            expired_first = False
            ans = await self.tap(v.site, gate, cred, qr=is_qr, who=v.member,
                                 purpose=purpose or ("reentry" if again else v.kind))
            if ans.entered:
                self._inside(v.site, v.member)
                st.last_token, st.last_gate = (cred if is_qr else None), gate
                st.last_token_expires = expires
                if ans.reason == "walk_in" and v.kind == "early":
                    st.walked_in_early = True
                return True
            if ans.decision is None or ans.reason in ("hardware_fault", "storage_fault") or ans.decision == "granted":
                # out of order, no answer, or it did not turn: the other turnstile, a bit later
                await self.clock.sleep(rnd.uniform(40, 120))
                continue
            reason = ans.reason
            if reason in ("fire_alarm", "emergency_release"):
                # the building is being evacuated: they wait outside for the all-clear
                await self.all_clear[v.site].wait()
                await self.clock.sleep(rnd.uniform(60, 300))
                continue
            if reason == "qr_expired":
                await asyncio.sleep(0.5)
                continue  # the app shows a fresh code
            if reason == "too_early" and not tried_window and v.booking:
                tried_window = True
                b = self.bookings[v.site][v.booking]
                opens = _local_to_utc(b["starts_at"], self.pop.timezone) - timedelta(minutes=14, seconds=30)
                if opens <= self.clock.now():
                    return False  # too early for a later class of the day: they go home
                await self.clock.sleep_until(opens)
                await asyncio.sleep(0.5)  # past the reader's debounce, whatever the clock's speed
                continue
            if reason == "no_balance" and not tried_topup and rnd.random() < 0.35:
                tried_topup = True
                if await self._top_up(v, rnd):
                    await self.clock.sleep(rnd.uniform(60, 300))
                    continue
            if rnd.random() < 0.05 and reason not in ("member_blocked", "unknown_card", "anti_passback"):
                # the desk lets them in once (a good customer with a problem)
                return await self._desk_lets_in(v, f"{v.member}: {reason}")
            return False
        return False

    async def _top_up(self, v: Visit, rnd: random.Random) -> bool:
        mine = [p for p in self.passes[v.site].values()
                if p["member"] == v.member and p["kind"] in ("visits", "credits")]
        if not mine:
            return False
        p = mine[0]
        amount = 10 if p["kind"] == "visits" else 50
        out = await self._back_office(v.site, "topup", {"cmd": "topup", "site": v.site, "pass": p["id"], "amount": amount},
                                      **{"pass": p["id"], "amount": amount})
        return bool(out.get("committed"))

    async def _forgot_card(self, v: Visit) -> bool:
        """No card, no phone: the desk marks the booking attended and opens the gate."""
        assert v.booking is not None
        status, _ = await self.desk(v.site, "attend", booking=v.booking, refund=False, member=v.member)
        if status not in (200, 409):
            return False
        return await self._desk_lets_in(v, f"{v.member} forgot the card")

    async def _desk_lets_in(self, v: Visit, reason: str) -> bool:
        """The desk opens the gate once for the member; True when it did."""
        status, _ = await self.desk(v.site, "open", gate=DESK_GATE, reason=reason, member=v.member)
        if status == 200:
            self._inside(v.site, v.member)
            return True
        return False

    def _inside(self, site: str, member: str) -> None:
        self.inside.add((site, member))
        self.evacuated[(site, member)] = asyncio.Event()

    async def _back_office(self, site: str, kind: str, cmd: dict[str, Any], **entry: Any) -> dict[str, Any]:
        """A change the back office makes at the central system, recorded for the checks."""
        central = self.chain.central
        assert central is not None
        record: dict[str, Any] = {"sim": self.clock.now().isoformat(), "real": self.records.real(), "site": site,
                                  "kind": kind, **entry}
        try:
            out = await central.request(cmd, 10)
        except (OSError, TimeoutError, ValueError) as e:
            out = {"error": repr(e)}
        record["response"] = out
        self.records.back_office.append(record)
        return out

    async def leave(self, v: Visit, rnd: random.Random) -> bool:
        for _attempt in range(40):
            if (v.site, v.member) not in self.inside:
                return True  # a fire drill took them out while they waited by the exit
            # the card that did not work at the entrance stays in the locker: out with the app
            app = v.qr or v.kind == "forgot_card"
            cred, is_qr = (self.qr(v.site, v.member), True) if app else (self.cards[v.member], False)
            ans = await self.tap(v.site, EXIT_GATE, cred, qr=is_qr, who=v.member, purpose="exit")
            if ans.entered:
                self.inside.discard((v.site, v.member))
                return True
            await self.clock.sleep(rnd.uniform(30, 90))  # the exit is out of order: wait by it
        self.errors.append(f"{v.member} could not leave {v.site}")
        return False

    # -- extras ------------------------------------------------------------------------------

    async def extra(self, e: Extra) -> None:
        await self.clock.sleep_until(e.at)
        if e.kind == "unknown_card":
            assert e.gate and e.card
            await self.tap(e.site, e.gate, e.card, qr=False, who=None, purpose="unknown_card")
        elif e.kind == "forged_qr":
            assert e.gate and e.member
            token = self.qr(e.site, e.member, key=self.chain.other_key)
            await self.tap(e.site, e.gate, token, qr=True, who=None, purpose="forged_qr")
        elif e.kind == "points":
            assert e.member
            await self.desk(e.site, "points", member=e.member, points=e.points, reason="goodwill")
        elif e.kind == "enrol":
            await self._enrol(e)

    async def _enrol(self, e: Extra) -> None:
        """A new member joins in the back office (a delta to the site) and comes in soon after."""
        assert e.member and e.card and e.gate
        day = self.pop.day
        member = {"id": e.member, "name": f"New {e.member}", "cards": [e.card]}
        p: dict[str, Any] = {"id": f"p-{e.member}", "member": e.member, "kind": "time", "name": "Monthly",
             "valid_from": day.isoformat(), "valid_until": (day + timedelta(days=30)).isoformat(),
             "access_windows": {"mon-sun": "00:00-24:00"}}
        await self._back_office(e.site, "enrol", {"cmd": "push", "site": e.site, "members": [member], "passes": [p]},
                                member=member, **{"pass": p})
        self.cards[e.member] = e.card
        self.passes[e.site][p["id"]] = p
        await self.clock.sleep(float(e.data.get("tap_after_minutes", 5)) * 60)
        now = self.clock.now()
        v = Visit(id=-1, member=e.member, site=e.site, arrive=now, leave=now + timedelta(minutes=50), kind="enrolled",
                  seed=hash(e.member) & 0xFFFF)
        await self.visit(v)

    # -- the day -----------------------------------------------------------------------------

    def start(self) -> None:
        for v in self.plan.visits:
            self._spawn(self.visit(v), f"visit {v.id} {v.member}")
        for e in self.plan.extras:
            self._spawn(self.extra(e), f"{e.kind} {e.site}")

    def _spawn(self, coro: Any, what: str) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.errors.append(f"{what}: {t.exception()!r}")

        task.add_done_callback(done)

    async def finish(self, timeout: float) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)
        for t in list(self.tasks):
            t.cancel()
            self.errors.append(f"a person still at the gates at the end: {t.get_name()}")


def _local_to_utc(text: str, tz: str) -> datetime:
    from zoneinfo import ZoneInfo

    from rules.timeutil import parse_instant

    return parse_instant(text, ZoneInfo(tz))


__all__ = ["Answer", "GateQueue", "Records", "TapRecord", "Traffic", "ZONE"]
