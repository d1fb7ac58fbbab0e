"""Door supervision as a pure state machine: observations in, alarm events out.

No I/O and no clock reads: the caller passes `now` (monotonic seconds) with every observation,
which is what lets the table tests replay exact timelines.

Rules:
- door_forced: the door goes from closed to open while no grant is pending or in progress,
  no fire alarm is active. During a lockdown any opening not explicitly granted is forced
  (a lockdown cancels pending grants). Cleared (door_forced_cleared) when the door closes.
- door_held: the door has been open for longer than held_open_after (not during a fire
  alarm, whose doors stand open on purpose; not while door_forced is active, which already
  says more). Cleared (door_held_cleared) when the door closes.
- not_opened: a grant saw no passage (or, without a passage sensor, no door opening) within
  passage_timeout. A one-shot event: there is nothing to clear.
- A grant is used up by the passage (or the door opening); the door may still open until
  the grant window ends, and stays authorised until it closes again.
- door_open=None means "unknown" (relay board offline): an outage neither raises nor clears
  door alarms. The door's last state is forgotten: the first reading after the outage is
  judged as a first reading (a door found open is not forced: it may have opened on a grant
  meanwhile; its held time counts from that reading) — unless the door was seen closed
  before the outage and nothing since could have opened it on purpose (no grant's window,
  fire alarm or release overlapped the outage): then an open door is forced, as a seen
  edge would be. No held time runs on a reading older than the outage. Alarms active before it stay active until the door is seen closed.
  Observations that carry no reading (a grant, a lockdown) pass the last reading on.
- held_released: the relay is held released on purpose (an installer's `gated relay … on`):
  like a fire alarm's release, an opening then is no forced door and an open door no held
  one — a person is there, doing it.
- release_ended: such a release (fire alarm, held by hand) ended between the previous
  reading and this one, or its relock is still being written: an opening seen now may
  have begun while the relay still stood released (an evacuee mid-push as the panel is
  reset), so it is no forced door either. The shell also sets it for the one opening a
  release's armed turn may bring after the relock (plan.ReleaseTail), as a grant's window
  allows one; the next edge is judged as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AlarmKind(StrEnum):
    DOOR_FORCED = "door_forced"
    DOOR_FORCED_CLEARED = "door_forced_cleared"
    DOOR_HELD = "door_held"
    DOOR_HELD_CLEARED = "door_held_cleared"
    NOT_OPENED = "not_opened"


@dataclass(frozen=True, slots=True)
class Observation:
    now: float
    door_open: bool | None = None
    passage: bool = False  # a passage was seen (input active, or confirmed by the gate)
    granted: bool = False  # the relay was pulsed for a person at this instant
    lockdown: bool = False
    fire_alarm: bool = False
    held_released: bool = False
    release_ended: bool = False


@dataclass(frozen=True, slots=True)
class AlarmEvent:
    kind: AlarmKind
    at: float
    detail: str


class DoorSupervisor:
    def __init__(
        self,
        *,
        passage_timeout: float,
        held_open_after: float,
        has_passage_sensor: bool,
        has_door_contact: bool,
        reports_not_opened: bool = True,
    ) -> None:
        # False where a GrantTracker (grant.py) decides a grant's outcome, a stalled board
        # included: the one `not_opened` then comes from there
        self.reports_not_opened = reports_not_opened
        self.passage_timeout = passage_timeout
        self.held_open_after = held_open_after
        self.has_passage_sensor = has_passage_sensor
        self.has_door_contact = has_door_contact
        self.door_open: bool | None = None
        self._open_since: float | None = None
        self._open_authorised = False
        self._grant_at: float | None = None  # pending grant awaiting confirmation
        self._window_until = float("-inf")  # door may open until then (grant window)
        self._opened_window = float("-inf")  # the window the current opening used
        self._forced = False
        self._held = False
        self._lockdown = False
        self._fire = False
        # across an outage: was the door last seen closed, and could anything have opened
        # it on purpose meanwhile (a grant's window, a fire alarm, a release)?
        self._closed_before_gap = False
        self._excused_in_gap = False

    @property
    def forced(self) -> bool:
        return self._forced

    @property
    def held(self) -> bool:
        return self._held

    @property
    def grant_pending(self) -> bool:
        return self._grant_at is not None

    def expects_opening(self, now: float) -> bool:
        """A grant's window is open: an opening now is the granted person's."""
        return now <= self._window_until

    def abandon(self) -> None:
        """Forget the pending grant without a `not_opened` (the gate stopped looking)."""
        self._grant_at = None

    def observe(self, obs: Observation) -> list[AlarmEvent]:
        events: list[AlarmEvent] = []
        now = obs.now
        if obs.lockdown and not self._lockdown:
            self._grant_at = None
            self._window_until = float("-inf")
        self._lockdown = obs.lockdown

        if obs.granted:
            self._grant_at = now
            self._window_until = now + self.passage_timeout

        if obs.passage and self._grant_at is not None:
            self._grant_at = None  # confirmed; the window stays open for the door itself

        if obs.door_open is not None:
            events += self._door(now, obs.door_open, obs.fire_alarm or obs.held_released, obs.release_ended)
        else:
            # Unread: what the door did meanwhile is unknown. A closed reading from before
            # the outage would make a granted opening during it look forced, an open one
            # would time a door held open that may have shut long ago. What is kept: that
            # it was closed, and whether anything could have opened it on purpose since.
            if self.door_open is not None:
                self._closed_before_gap = self.door_open is False
                self._excused_in_gap = now <= self._window_until or self._fire
            if obs.granted or obs.fire_alarm or obs.held_released or obs.release_ended:
                self._excused_in_gap = True
            self.door_open = None
            self._open_since = None

        if self.reports_not_opened and self._grant_at is not None and now - self._grant_at >= self.passage_timeout:
            waited_for = "passage" if self.has_passage_sensor else "door opening"
            events.append(
                AlarmEvent(
                    AlarmKind.NOT_OPENED,
                    now,
                    f"granted but no {waited_for} within {self.passage_timeout:g} s",
                )
            )
            self._grant_at = None

        if (
            self.door_open
            and self._open_since is not None
            and not self._held
            and not self._forced
            and not obs.fire_alarm
            and not obs.held_released
            and now - self._open_since >= self.held_open_after
        ):
            self._held = True
            events.append(
                AlarmEvent(
                    AlarmKind.DOOR_HELD,
                    now,
                    f"door open for {now - self._open_since:.1f} s "
                    f"(limit {self.held_open_after:g} s)",
                )
            )
        return events

    def _door(self, now: float, door_open: bool, fire_alarm: bool, release_ended: bool = False) -> list[AlarmEvent]:
        events: list[AlarmEvent] = []
        previous = self.door_open
        self.door_open = door_open
        if previous is None and (fire_alarm or release_ended):
            self._excused_in_gap = True
        if (fire_alarm or self._fire) and door_open:
            # Evacuation: doors stand open by design. The held timer restarts at every
            # reading until the fire alarm is reset, so it counts from the reset.
            self._open_since = now
            self._open_authorised = True
        self._fire = fire_alarm
        if door_open and not previous:
            authorised = fire_alarm or release_ended or now <= self._window_until
            self._open_since = now
            self._open_authorised = authorised
            if authorised:
                self._opened_window = self._window_until
                if not self.has_passage_sensor:
                    self._grant_at = None  # without a passage sensor the door confirms it
            elif previous is False or (previous is None and self._closed_before_gap and not self._excused_in_gap):
                # previous None (first reading, or after an outage) proves nothing about
                # how the door came to be open — unless it was seen closed before the
                # outage and nothing since (a grant's window, a fire alarm, a release)
                # could have opened it on purpose: closed, then open, and nobody let in.
                self._forced = True
                detail = (
                    "door opened during lockdown"
                    if self._lockdown
                    else "door opened without a grant"
                )
                events.append(AlarmEvent(AlarmKind.DOOR_FORCED, now, detail))
        elif not door_open and (previous or (previous is None and (self._forced or self._held))):
            # (seen closed after an outage: the alarms raised before it end here)
            self._open_since = None
            if self._open_authorised and self._window_until == self._opened_window:
                # One grant, one opening; a grant given while the door was open stands.
                self._window_until = float("-inf")
            self._open_authorised = False
            if self._forced:
                self._forced = False
                events.append(AlarmEvent(AlarmKind.DOOR_FORCED_CLEARED, now, "door closed"))
            if self._held:
                self._held = False
                events.append(AlarmEvent(AlarmKind.DOOR_HELD_CLEARED, now, "door closed"))
        self._closed_before_gap = self._excused_in_gap = False  # the gap, if any, is judged
        return events
