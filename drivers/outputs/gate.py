"""One gate: its relay output, its door supervision, lockdown and fire-alarm behaviour.

One poller per gate reads the inputs (fast while a granted person is expected, slower
otherwise) and feeds one PassageDetector, one StuckInput (plan.py) and one GrantTracker
(grant.py): a grant waits for the tracker's verdict, and the DoorSupervisor sees the same
edges, so a rotation is detected once. Every rotation is accounted for: claimed by a grant, or
reported (`passage_without_grant`, or `passage_while_released` while the gate stood
released for a fire alarm, an emergency release or a hand's hold).

Error contract for the daemon:
- grant_passage()/open_passage() say what happened after the release, once (grant.py):
  PASSED (confirmed, or at once when the gate has no passage sensor and no door contact),
  NOT_PASSED (the inputs were read and nobody passed within passage_timeout of the board
  answering: a `not_opened` alarm), or UNKNOWN (the board stayed silent for the stall
  limit after the release, or the gate is being stopped — abandon_grants: the relay
  relocks — so a person may have gone through unseen: the daemon reports it as
  `passage_unconfirmed`, and no `not_opened`). A board that stalls and answers again
  within the limit carries out the release then: the passage it shows is this grant's.
  While the passage input reads stuck active (`passage_input_stuck`, from `stuck_after`
  on) a person shows no edge: a grant that sees none ends UNKNOWN too, never NOT_PASSED.
  `unconfirmed_because` says why for the last release that ended UNKNOWN (grant.Unseen).
  grant()/open_once() are the same as a bool (True only for PASSED): no deduction
  otherwise.
- release() asks rules.admission.plan_release first (an interlock, whatever the caller
  decided): a refusal raises GrantRefused (lockdown, fire alarm, emergency release) without
  touching the relay; a fail-safe door standing released is not pulsed (PASSED at once).
- grant()/open_once() raise OutputFault when the relay could not be released (board offline
  or refusing): deny with reason hardware_fault. A release whose answer was lost
  (OutputUncertain) may have happened: it is not raised but watched, and ends UNKNOWN
  unless the board answers again and shows the passage or its absence.

About 680 lines: this is the one owner of a gate's relay and inputs (lifecycle, releases,
the poller, the fire-alarm, lockdown and hand holds). What it decides lives elsewhere, in
sans-I/O parts: grant.py, plan.py, the door supervisor, rules.admission. Splitting the
shell itself would give the relay two owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rules.admission import Release, SiteSafety, plan_release
from rules.reasons import Reason

from .config import DoorMode, ModbusOutputConfig
from .door import AlarmEvent, AlarmKind, DoorSupervisor, Observation
from .grant import GrantTracker, Passage, Unseen, describe
from .modbus import ModbusGateOutput, OutputFault, OutputHealth, OutputUncertain
from .plan import PassageCounter, PassageDetector, ReleaseTail, StuckInput

log = logging.getLogger(__name__)

# The longest a rotation is expected to be reported: a grant waits at most this for the
# previous person's rotation to end before releasing.
ROTATION_MAX = 1.0


def stuck_after(passage_pulse: float) -> float:
    """How long the passage input may read active before it is stuck: twice what a rotation
    holds it at most (ROTATION_MAX, or the controller's own pulse where its datasheet says
    longer), so a slow arm is no alarm."""
    return 2 * max(ROTATION_MAX, passage_pulse)

# How long a grant may go without a reading of its inputs and still count as watched. A
# passage input pulses for `passage_pulse` (100 ms by default) per rotation: a longer gap
# between two readings may hide a whole pulse (a loaded box stalls its loop for that long),
# so a grant that then lapses is "unknown", never "did not pass". A door contact (no passage
# input) stays open for seconds when someone goes through: a second's gap hides nothing.
DOOR_BLIND = 1.0

# An idle gate reads its coil back every this many idle polls' time (ModbusGateOutput.verify_coil). A
# board that restarts between two polls comes back with its coils at their power-on level,
# no request failing: an active-low turnstile then stands released (free entries,
# unrecorded), a fail-safe door held released for a fire alarm locks. At the idle pace that
# is every 2 s on RTU (0.25 s polls): one 24 ms exchange at 9,600 baud, about 1 % of the
# line per gate, and no longer than a poll's, so a tap still waits for at most one exchange
# on the wire; every 0.4 s over TCP (0.05 s polls). Not while a grant waits (its pulse runs),
# and by time, not by polls: the fast polls of a rotation's end would read it every 160 ms
# just when the line is busiest.
COIL_CHECK_POLLS = 8

# on_alarm(gate_id, kind, detail); kind is an AlarmKind or a HealthAlarm value.
AlarmCallback = Callable[[str, str, str], Awaitable[None] | None]


class HealthAlarm(StrEnum):
    RELAY_OFFLINE = "relay_offline"
    RELAY_ERROR = "relay_error"
    RELAY_ONLINE = "relay_online"
    # the passage input reads active for longer than any rotation (plan.StuckInput), and
    # reads inactive again
    PASSAGE_INPUT_STUCK = "passage_input_stuck"
    PASSAGE_INPUT_STUCK_CLEARED = "passage_input_stuck_cleared"
    # the coil read back is not at the planned level (a board that restarted between two
    # polls: its coils at their power-on level): written again
    RELAY_STATE_MISMATCH = "relay_state_mismatch"


_HEALTH_ALARM = {
    OutputHealth.OFFLINE: HealthAlarm.RELAY_OFFLINE,
    OutputHealth.ERROR: HealthAlarm.RELAY_ERROR,
    OutputHealth.ONLINE: HealthAlarm.RELAY_ONLINE,
}


PASSAGE_WITHOUT_GRANT = "passage_without_grant"
# a rotation while the gate stood released on purpose: an evacuee (or the installer's
# test), reported for the count, not for the desk to settle
PASSAGE_WHILE_RELEASED = "passage_while_released"


def stall_limit(passage_timeout: float) -> float:
    """How long a grant waits for a silent board to answer again before it is UNKNOWN: long
    enough for a board that freezes for a few seconds (its queued writes then carried
    out), short enough that a dead one is reported while the member is still there."""
    return max(10.0, 3 * passage_timeout)


@dataclass(frozen=True, slots=True)
class FirstCount:
    """The board's counter at the first reading of this run (downtime.compare)."""

    count: int
    at: float  # monotonic s
    released_before: bool  # a release of this run was written before the reading was sampled
    released_for: str | None  # what held the gate released then (a fire alarm, ...), if anything


class GrantRefused(Exception):
    """The gate is shut on purpose (lockdown, fire alarm); the relay was not touched."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


async def _call(callback: Callable[..., Any], *args: Any) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class GateController:
    def __init__(
        self,
        gate_id: str,
        cfg: ModbusOutputConfig,
        *,
        on_alarm: AlarmCallback | None = None,
        output: ModbusGateOutput | None = None,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float | None = None,
    ) -> None:
        self.gate_id = gate_id
        self.cfg = cfg
        self.output = output or ModbusGateOutput(cfg)
        self.output.on_health = self._health_changed  # one observer: this controller
        self.on_alarm = on_alarm
        self.clock = clock
        self.poll_interval = cfg.idle_poll() if poll_interval is None else poll_interval
        self.passage_interval = min(cfg.passage_poll(), self.poll_interval)
        self.supervisor = DoorSupervisor(
            passage_timeout=cfg.passage_timeout,
            held_open_after=cfg.held_open_after,
            has_passage_sensor=cfg.passage_input is not None or cfg.passage_counter is not None,
            has_door_contact=cfg.door_contact is not None,
            reports_not_opened=False,  # the tracker's verdict: one outcome per grant
        )
        self.tracker = GrantTracker(cfg.passage_timeout, stall_limit(cfg.passage_timeout),
                                    counts_unseen=cfg.passage_counter is not None,
                                    blind_limit=cfg.passage_pulse if cfg.passage_input is not None else DOOR_BLIND)
        self.lockdown = False
        self.fire_alarm = False  # fail-safe doors released (the fire input or an emergency release)
        self.emergency = False  # ... and it is an admin's emergency release, not the fire input
        self.held_by_hand = False  # `gated relay … on`: released until `off`
        self.door_open: bool | None = None
        # Passage input, or without one the door contact: one rising edge, one person.
        self.detector = PassageDetector()
        # a passage input held active for good hides every person (a door contact stands
        # open for seconds on purpose: it is not watched so)
        self.stuck_input = StuckInput(stuck_after(cfg.passage_pulse)) if cfg.passage_input is not None else None
        self.unconfirmed_because: Unseen | None = None  # of the last release that ended UNKNOWN
        # the board's own count of passage pulses, where configured: it sees pulses that
        # fall between two polls, which the level (the detector) cannot
        self.counter = PassageCounter() if cfg.passage_counter is not None else None
        # the board's counter as this run first read it, and as last read (downtime.py: what
        # it counted while the daemon was not reading it is compared at start)
        self.first_count: FirstCount | None = None
        self.count_seen: tuple[int, float] | None = None  # (count, monotonic s) of the last reading
        self._release_write: int | None = None  # the number of this run's first release's write
        # Readings are counted as they come back (the release tail's doubt, plan.ReleaseTail).
        # A grant goes by the board's exchanges instead (ModbusDevice.sent): a reading of
        # several requests (a counter and the bits, inputs far apart) may have a release's
        # write between them, and counts as after it only if its first request was.
        self._readings = 0
        self.coil_check_every = COIL_CHECK_POLLS * self.poll_interval
        self._coil_checked_at = float("-inf")  # when the coil was last read back (verify_coil)
        self.release_tail = ReleaseTail()  # a fire alarm's or a hand's hold's relock (plan.py)
        self._polled = asyncio.Condition()
        self._waiting = 0  # grants waiting for a passage: poll fast
        self._wake = asyncio.Event()
        self._abandoning = False
        self._winding_down = False  # the daemon is stopping: a lapsed grant is no alarm
        # One person per release: a second tap waits for the first grant to finish, else
        # both grants would claim the same rotation.
        self._grant_lock = asyncio.Lock()
        self._alarms: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, safety: SiteSafety | None = None) -> None:
        """Drive the gate to its safe state before anything else, read the inputs, then
        supervise. The safe state is locked, or what `safety` (the site's state as stored
        before a restart, or as it is at a reload) holds: a fail-safe door released for a
        fire alarm or an emergency release is written released first, never locked and
        released again.

        Does not raise if the board is unreachable: the gate shows offline, the reconnect
        loop keeps trying and writes that level as its first request.
        """
        if safety is not None:
            self.lockdown = safety.lockdown
            self.fire_alarm = safety.doors_released
            self.emergency = safety.emergency_release and not safety.fire_alarm
        # planned before connecting: connect()'s probe is the first write to the coil
        self.output.rest_at(self._rests_released)
        if await self.output.connect():
            with contextlib.suppress(OutputFault):
                await self._apply_hold()
            # The first reading teaches the supervisor the door's state, so a door forced
            # right after start-up is seen as a closed->open change.
            await self._poll_once()
        elif self.output.health is not OutputHealth.ONLINE:
            # a board configured and not answering (a wrong port after a reload, a board
            # without power at start) is news: an alarm now, and `relay_online` when it
            # answers — not only a grey gate card
            self._health_changed(self.output.health, self.output.last_error)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.supervise(), name=f"gate-{self.gate_id}-supervise"),
            loop.create_task(self._deliver_alarms(), name=f"gate-{self.gate_id}-alarms"),
        ]

    def wind_down(self) -> None:
        """The daemon is stopping: grants in progress go on (a person already released is
        waited for), but one that lapses is not a `not_opened` alarm — nobody failed to
        pass, we are stopping to look."""
        self._winding_down = True

    @property
    def stopping(self) -> bool:
        """abandon_grants() was called: grants end UNKNOWN, new ones are refused."""
        return self._abandoning

    async def abandon_grants(self) -> None:
        """The daemon is stopping: grants waiting for a passage end now, unconfirmed, with
        no `not_opened` alarm (nobody failed to pass: we stopped looking); new grants are
        refused. The relay relocks at once."""
        self._abandoning = True
        self.tracker.abandon(self.clock())
        async with self._polled:
            self._polled.notify_all()

    async def stop(self) -> None:
        """Stop supervising and leave the gate locked (or released, during a fire alarm)."""
        await self.abandon_grants()
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # not `await task` under suppress: it would swallow our own cancel
            await asyncio.wait(self._tasks)
        self._tasks = []
        with contextlib.suppress(OutputFault):
            await self._apply_hold()
        await self.output.close()

    # -- commands -------------------------------------------------------------------------

    async def grant(self) -> bool:
        """Release for one member and wait for passage. See the module doc for errors."""
        return await self.release(Release.ENTRY) is Passage.PASSED

    async def open_once(self, *, at_exit: bool = False) -> bool:
        """Front-desk override: one release — at an entrance refused in a lockdown, at an
        exit (`at_exit`) never (rules.admission)."""
        return await self.release(Release.DESK_EXIT if at_exit else Release.DESK) is Passage.PASSED

    async def grant_passage(self) -> Passage:
        return await self.release(Release.ENTRY)

    async def open_passage(self) -> Passage:
        return await self.release(Release.EXIT)

    @property
    def site_safety(self) -> SiteSafety:
        return SiteSafety(fire_alarm=self.fire_alarm and not self.emergency,
                          emergency_release=self.fire_alarm and self.emergency, lockdown=self.lockdown)

    async def release(self, purpose: Release) -> Passage:
        """Release once for `purpose` and wait for the passage, as the rules plan it."""
        async with self._grant_lock:
            if self._abandoning:
                raise OutputFault("the gate is stopping")
            plan = plan_release(self.site_safety, purpose, fail_safe=self.cfg.mode is DoorMode.FAIL_SAFE)
            if plan.refused is not None:
                raise GrantRefused(plan.refused)
            if not plan.pulse:
                return Passage.PASSED  # standing released: a pulse would end the release
            return await self._release_once()

    async def by_hand(self, action: str, seconds: float | None = None) -> None:
        """An installer's hand on the relay (`gated relay`): "on" holds it released until
        "off"; "off" returns it to what the gate should be now (locked, or held by a
        lockdown or a fire alarm); "pulse" releases once, no passage expected."""
        async with self._grant_lock:
            if action == "on":
                await self.output.hold(unlocked=True)
                self.held_by_hand = True
            elif action == "off":
                with self._release_ends(self.held_by_hand and not self.fire_alarm):
                    self.held_by_hand = False
                    await self._apply_hold()
            elif action == "pulse":
                await self.output.pulse(seconds)
            else:
                raise ValueError(f"unknown relay action {action!r} (on, off, pulse)")

    async def set_lockdown(self, on: bool) -> None:
        if on == self.lockdown:
            return
        self.lockdown = on
        self._observe(door_open=self.door_open)  # a lockdown cancels pending grants in the supervisor
        await self._apply_hold_logged()

    async def set_fire_alarm(self, on: bool, *, emergency: bool = False) -> None:
        """Fail-safe doors released (`on`) for the fire input, or for an admin's emergency
        release (`emergency`: entries are refused with that reason)."""
        with self._release_ends(self.fire_alarm and not on and not self.held_by_hand):
            self.emergency = on and emergency
            if on == self.fire_alarm:
                return
            self.fire_alarm = on
            self._observe(door_open=self.door_open)
            await self._apply_hold_logged()

    @contextlib.contextmanager
    def _release_ends(self, ending: bool) -> Iterator[None]:
        """Around the relock that ends a release held on purpose (`ending`): from before
        its write to the reading after it, a door seen opening may have opened released
        (plan.ReleaseTail)."""
        if ending:
            self.release_tail.ending(self._release_reason() or "a release", self.door_open,
                                     latches=self.supervisor.has_passage_sensor)
        try:
            yield
        finally:
            if ending:
                self.release_tail.relocked(self._readings, self.clock(), self.cfg.passage_timeout)

    def standing_released(self) -> str | None:
        """What holds this gate released now — a fail-safe door in a fire alarm or an
        emergency release, an installer's hold — in the alarms' words; None when it rests
        locked between grants. The desk's "Open once" has nothing to open then."""
        if self._rests_released or self.held_by_hand:
            return self._release_reason()
        return None

    def _release_reason(self) -> str | None:
        """What holds the gate released now, in the alarms' words; None when nothing does."""
        if self.fire_alarm:
            return "an emergency release" if self.emergency else "a fire alarm"
        return "a hand's hold (gated relay on)" if self.held_by_hand else None

    # -- state for the console ------------------------------------------------------------

    @property
    def health(self) -> OutputHealth:
        return self.output.health

    @property
    def state(self) -> dict[str, Any]:
        door = "unknown" if self.door_open is None else ("open" if self.door_open else "closed")
        if self.cfg.door_contact is None or self.output.health is not OutputHealth.ONLINE:
            door = "unknown"
        return {
            "relay": str(self.output.health),
            "relay_error": self.output.last_error,
            "door": door,
            "released": self.output.released,
            "held_by_hand": self.held_by_hand,
            "lockdown": self.lockdown,
            "fire_alarm": self.fire_alarm,
            "mode": str(self.cfg.mode),
            "door_forced": self.supervisor.forced,
            "door_held": self.supervisor.held,
            "passage_input_stuck": self.passage_stuck,
            "passages": self.detector.edges if self.counter is None else self.counter.people,
        }

    @property
    def alarms_pending(self) -> bool:
        """Alarms raised and not handed on yet (a rotation no grant claimed among them): the
        count last read is not all recorded until they are."""
        return not self._alarms.empty()

    @property
    def passage_stuck(self) -> bool:
        """The passage input reads stuck active (`passage_input_stuck`): no passage shows."""
        return self.stuck_input is not None and self.stuck_input.stuck

    @property
    def line(self) -> dict[str, Any] | None:
        """The Modbus line's figures (load, queue, counters); None when not connected."""
        line = self.output.line
        return line.snapshot() if line is not None else None

    # -- supervision ----------------------------------------------------------------------

    async def supervise(self) -> None:
        """The gate's one poller: read the inputs, turn what they show into passages and
        alarms; fast while a granted person is expected."""
        while True:
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the supervisor must outlive any single bad poll
                log.exception("gate %s: supervision poll failed", self.gate_id)
            # a stuck input is no rotation to watch closely: polled at the idle pace
            rotating = self.detector.level is True and not self.passage_stuck
            interval = self.passage_interval if self._waiting or rotating else self.poll_interval
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()

    async def _poll_once(self) -> None:
        passage: bool | None = None
        door_open: bool | None = None  # unknown while the board does not answer
        count: int | None = None
        ok = False
        sampled = self.output.sent  # a failed reading: numbered as of now, it shows nothing
        # No reading needs to jump the line: the devices on it take turns (bus.RequestQueue),
        # so other gates' coil writes cannot hold this one back, whether it is watching for
        # a person or for the end of a rotation.
        if self.output.health is OutputHealth.ONLINE:
            with contextlib.suppress(OutputFault):
                snap = await self.output.read_inputs()
                passage, door_open, count, ok = snap.passage, snap.door_open, snap.passage_count, True
                sampled = snap.first
                if snap.counter_after_silence and self.counter is not None:
                    # the board went unanswered for a try before this count: as good as a
                    # failed reading (a restart then is a step like any other)
                    self.counter.observe(None)
        self._readings += 1
        seq = self._readings
        # Only a rising edge is a new passage: the tail of the previous person's rotation
        # must not confirm the next grant.
        level = passage if self.cfg.passage_input is not None or self.counter is not None else door_open
        rising = self.detector.observe(level)
        people = int(rising)
        rebased = False  # the board's counter began again (or may have): a grant cannot trust it
        now = self.clock()
        if self.counter is not None:
            people, rebased = self.counter.observe(count)
            rising = people > 0
            if count is not None:
                self._counted(count, sampled, now)
        self._watch_stuck(passage, now)
        opening = door_open is True and self.door_open is False
        self.door_open = door_open
        self._settled(self.tracker.reading(now, sampled, ok, people, stuck=self.passage_stuck, rebased=rebased))
        released_for = self._release_reason()
        doubt = released_for is None and self.release_tail.covers(seq)
        release_turn = doubt
        if released_for is None and opening and not self.supervisor.expects_opening(now):
            # an opening no grant expects, after a release, may be the turn it armed; one
            # the relock's doubt covers is that turn too (plan.ReleaseTail)
            release_turn = self.release_tail.last_turn("door", now) or doubt
        self._observe(door_open=door_open, passage=rising, release_ended=release_turn)
        self._report_unclaimed(released_for, doubt, now)
        async with self._polled:
            self._polled.notify_all()
        if ok and not self._waiting and now - self._coil_checked_at >= self.coil_check_every:
            self._coil_checked_at = now
            await self._check_coil()

    async def _check_coil(self) -> None:
        """The coil read back at the planned level, or written again with an alarm."""
        try:
            held = await self.output.verify_coil()
        except OutputFault:
            return  # silent or out of step: the reconnect probe writes the planned level
        if held is False:
            want = "released" if self.output.released else "locked"
            found = "locked" if self.output.released else "released"
            self._alarms.put_nowait((str(HealthAlarm.RELAY_STATE_MISMATCH),
                                     f"the relay read back {found} while the gate should stand {want} (a board "
                                     "restart resets its coils): written again"))

    def _counted(self, count: int, sampled: int, now: float) -> None:
        """A reading of the board's counter: the first one of this run is kept for the
        comparison with what the daemon saw before it started (downtime.compare)."""
        self.count_seen = (count, now)
        if self.first_count is None:
            released = self._release_write is not None and sampled > self._release_write
            self.first_count = FirstCount(count, now, released, self._release_reason())

    def _watch_stuck(self, passage: bool | None, now: float) -> None:
        """The passage input's level, watched for a stuck sensor: one alarm when it has read
        active longer than any rotation, one when it reads inactive again."""
        watch = self.stuck_input
        if watch is None:
            return
        change = watch.observe(passage, now)
        if change is True:
            detail = (f"passage input active for {watch.active_for(now):.1f} s, longer than the "
                      f"{watch.limit:g} s a rotation can explain: passages cannot be seen, grants end "
                      "unconfirmed")
            self._alarms.put_nowait((str(HealthAlarm.PASSAGE_INPUT_STUCK), detail))
        elif change is False:
            self._alarms.put_nowait((str(HealthAlarm.PASSAGE_INPUT_STUCK_CLEARED), "passage input inactive again"))

    def _settled(self, outcome: Passage | None) -> None:
        """A grant's one outcome: a lapse is the `not_opened` alarm; a pass or an unknown
        ends the supervisor's wait without one."""
        if outcome is None:
            return
        if outcome is Passage.NOT_PASSED:
            waited_for = "passage" if self.supervisor.has_passage_sensor else "door opening"
            self._emit_event(AlarmEvent(AlarmKind.NOT_OPENED, self.clock(),
                                        f"granted but no {waited_for} within {self.cfg.passage_timeout:g} s"))
        self.supervisor.abandon()

    def _report_unclaimed(self, released_for: str | None, doubt: bool, now: float) -> None:
        """Rotations no grant claimed: each is reported, never lost. One while the gate
        stood released (`released_for`: a fire alarm, ...), or the one turn a release armed
        coming round after its relock, is a `passage_while_released`: an evacuee, which the
        desk must not have to settle one by one as pushed arms. Without a passage sensor the
        door contact is what turns, and door_forced says it."""
        for u in self.tracker.take_unclaimed():
            why = released_for
            if why is None and (self.release_tail.last_turn("rotation", now) or doubt):
                why = self.release_tail.why
            kind = PASSAGE_WITHOUT_GRANT if why is None else PASSAGE_WHILE_RELEASED
            if self.supervisor.has_passage_sensor:
                self._alarms.put_nowait((kind, describe(u, why)))

    def _observe(
        self, *, door_open: bool | None, passage: bool = False, granted: bool = False,
        release_ended: bool = False,
    ) -> None:
        """`door_open`: this poll's reading, or the last one where the observation carries
        none (a grant, a lockdown) — None tells the supervisor the door went unread."""
        events = self.supervisor.observe(
            Observation(
                now=self.clock(),
                door_open=door_open,
                passage=passage,
                granted=granted,
                lockdown=self.lockdown,
                fire_alarm=self.fire_alarm,
                held_released=self.held_by_hand,
                release_ended=release_ended,
            )
        )
        for event in events:
            self._emit_event(event)

    def _emit_event(self, event: AlarmEvent) -> None:
        if self._winding_down and event.kind is AlarmKind.NOT_OPENED:
            return
        self._alarms.put_nowait((str(event.kind), event.detail))

    def _health_changed(self, health: OutputHealth, error: str | None) -> None:
        self._alarms.put_nowait((str(_HEALTH_ALARM[health]), error or ""))

    async def _deliver_alarms(self) -> None:
        # A queue keeps alarm order and keeps a slow callback (an MQTT publish) off the
        # relay's path.
        while True:
            kind, detail = await self._alarms.get()
            log.info("gate %s alarm %s: %s", self.gate_id, kind, detail)
            if self.on_alarm is None:
                continue
            try:
                await _call(self.on_alarm, self.gate_id, kind, detail)
            except Exception:
                log.exception("gate %s: on_alarm callback failed", self.gate_id)

    # -- internals ------------------------------------------------------------------------

    async def _release_once(self) -> Passage:
        self.unconfirmed_because = None
        if self.cfg.passage_input is not None and self.detector.level is True and not self.passage_stuck:
            # The previous person is still turning the arm: this person cannot pass before
            # it comes round, and only a reading of the rotation's end lets theirs count.
            # (A stuck input will not come round: no grant waits for it.)
            await self._wait_rotation_end(ROTATION_MAX)
        # No read before the pulse: it would sit on the tap-to-relay path. Readings that
        # came back before the release was written cannot be this person's passage.
        uncertain = False
        written_at = self.clock()
        try:
            await self.output.pulse()  # OutputFault propagates: nothing was released
        except OutputUncertain:
            # The write went out and its answer was lost: the turnstile may be released, so
            # the grant is watched like any other (the board is now offline, so its next
            # reading fails and the passage is UNKNOWN unless the board answers again and
            # shows it). Denying here would let the person through with nothing recorded.
            uncertain = True
        if self._release_write is None:
            self._release_write = self.output.last_write
        self._observe(door_open=self.door_open, granted=True)
        if self.cfg.passage_input is None and self.cfg.door_contact is None and self.counter is None:
            if uncertain:
                self.unconfirmed_because = Unseen.RELAY_UNREADABLE
                return Passage.UNKNOWN
            return Passage.PASSED  # no sensor: commit on grant
        # the grant's readings are those whose first exchange went out after the release's write
        # Nobody reads the passage input while the pulse is on its way: a daemon stalled
        # (paused, starved) after the board released the arm may miss the whole rotation,
        # so the grant is watched from the write, not from its answer (GrantTracker.blind_limit)
        self.tracker.release(self.clock(), self.output.last_write, board_ok=not uncertain, stuck=self.passage_stuck,
                             since=written_at + self.output.last_write_wait)  # its turn on the line: still locked
        self._waiting += 1
        self._wake.set()  # poll now, and fast until this grant is settled
        self.output.urgent = True
        try:
            passage = await self._wait_passage()
        finally:
            self._waiting -= 1
            self.output.urgent = self._waiting > 0
        passed = passage is Passage.PASSED
        if passage is Passage.UNKNOWN:
            fallback = Unseen.STOPPING if self._abandoning else Unseen.RELAY_UNREADABLE
            self.unconfirmed_because = self.tracker.because or fallback
        if passed or self._abandoning:
            # Relock as soon as the person is through: no tailgating on the rest of the
            # pulse, and the next grant gives the controller a fresh release edge.
            with contextlib.suppress(OutputFault):
                await self.output.end_pulse()
        return passage

    async def _wait_rotation_end(self, bound: float) -> None:
        """Until a reading shows the passage input inactive, at most `bound` seconds (a
        stuck sensor must not hold every grant back)."""
        self._waiting += 1
        self._wake.set()
        try:
            async with self._polled:
                async with asyncio.timeout(bound):
                    await self._polled.wait_for(lambda: self.detector.level is not True)
        except TimeoutError:
            log.warning("gate %s: passage input still active after %g s", self.gate_id, bound)
        finally:
            self._waiting -= 1

    async def _wait_passage(self) -> Passage:
        """Until the tracker settles the grant (grant.py): readings come from the poller;
        between them, time is told to the tracker here."""
        async with self._polled:
            while self.tracker.waiting:
                if self._abandoning:
                    self.tracker.abandon(self.clock())
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.passage_interval):
                        await self._polled.wait()
                self._settled(self.tracker.tick(self.clock()))
        return self.tracker.outcome or Passage.UNKNOWN

    @property
    def _rests_released(self) -> bool:
        """Held released between grants: a fail-safe door in a fire alarm or an emergency
        release (a fail-secure door stays locked; a lockdown locks)."""
        return self.fire_alarm and self.cfg.mode is DoorMode.FAIL_SAFE

    async def _apply_hold(self) -> None:
        await self.output.hold(unlocked=self._rests_released)

    async def _apply_hold_logged(self) -> None:
        try:
            await self._apply_hold()
        except OutputFault as exc:
            # The level is remembered by the output and written when the board is back.
            log.error("gate %s: could not apply hold: %s", self.gate_id, exc)
