"""What the gate knows it is missing (DESIGN.md, "What the gate knows, and how fresh it
is"): each piece of knowledge a decision or a charge rests on has a high-water mark, and
here the daemon checks them every second —

| gap | high-water mark | what the gate does meanwhile |
| --- | --- | --- |
| `uplink_stalled` | the central's `applied_seq` while events wait | keeps them (nothing is lost), says why |
| `deltas_behind` | the central's delta head against the replica's `delta_seq` | asks for the missed deltas (the link); holds no-shows (and fees) of classes that ended after the replica's last sync (a booking cancelled since may be among them) until it has caught up |
| `peers_unheard` | each other daemon's heartbeat against what was heard of it | holds no-shows (and fees) of classes that ended after it; after `peer_wait_limit` settles them naming it |
| `peer_silent` | each other daemon of the site: when it was last heard through (its heartbeats, its events) | nothing it can do: says so on every daemon, whatever no-shows wait — its taps, exits and charges are not known here (who is inside, anti-passback, balances) |
| `numbering_unsure` | the ledger's mark of what it sent (`gated.db.sent`), missing: a new box, a copy restored without it | holds its events after its last one at start, and its no-shows, until the central system says how far it got (sync/store/numbering.py) |
| `own_history_missing` | this daemon's events the central system holds and a lost ledger held (sync/store/own_history.py) | asks the central system for them every 30 s; decides meanwhile without them (who came in through it earlier today, the walk-ins paid there, the QR codes used there), and once they are back decides those taps again (rules/recheck.py, in the transaction that records the last of them): a walk-in they show free (a re-entry within the grace) refunded, a QR code they show used a `qr_double_use` alarm, an entry hard anti-passback would have refused an `anti_passback_missed` alarm — each once; holds the no-shows of the classes they may bear on, and a day after the loss settles them naming itself (the store does, Ledger.run_due: with or without a link); never back, nothing is rechecked |
| `refunds_waiting` | the desk's refunds not found while the site's events were not all in (sync/store/refunds_wanted.py) | settles each when its charge arrives or everyone is heard up to the request; after a day an alarm for a person |
| `daemon_id_in_use` | signs of another daemon under this daemon id (sync/link/session.py, `twin_seen`): its events or status on the site's topics, takeovers between its MQTT connection and ours (reason 142, or its last will under our id) | holds its events (they stay in the outbox) until no sign of it has come for `mqtt.twin_hold` (a minute); the link raised the alarm as it saw it |
| `clock_untrusted` | the wall clock against the monotonic clock and the last trusted time (rules/clock.py) | acts at the anchored time; no no-show, fee, loyalty credit or pruning until trusted again |
| `clock_unconfirmed` | the wall clock's time of day, taken for taps but not confirmed (a start hours ahead, a jump ahead taken, with the system not synchronised: rules/clock.py) | decides taps at it; no no-show, fee, loyalty credit, pruning or refund given up until NTP or a person (`gated clock confirm`) confirms it |
| `two_workers` | the site's other daemons' heartbeats: which say they do the site's time-driven work (`time_driven_work`) | of two daemons doing it, the one that began first goes on (then the lower daemon id); the other settles nothing until the first stops |

The heartbeats also hand the time-driven work over (`handover`): a daemon that begins it
begins from where the site's previous worker said it had settled, not from its own first
run (a class that fell due between the two reloads was settled by neither).

A gap that lasts past its threshold is an `alarm` event (and log line and metric) once
when it starts and once when it ends; `gated status` and the console show every open
gap with its reason. The thresholds are what a person would want to be told about: a
WAN blip of a minute is not news, ten minutes of events not reaching the central is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rules.schedule import NoShowHorizon, known_through, no_show_horizon
from rules.timeutil import iso_utc
from sync.link.peer_marks import WorkClaim

if TYPE_CHECKING:
    from gated.daemon import Daemon

DELTAS_BEHIND_ALARM = 60.0  # seconds behind the central's head (the link asks after 5)
PEERS_ALARM = 300.0  # seconds (the site's clock) a class's no-shows are held for an unheard daemon
# seconds (the site's clock) a daemon of the site has not been heard through (heartbeats come
# every few seconds): offline, its network gone, or its events not coming
PEER_SILENT_ALARM = 300.0
NUMBERING_ALARM = 60.0  # seconds events are held for the central system's word on our numbering
HISTORY_ALARM = 60.0  # seconds a lost ledger's events have not come back from the central system
REFUNDS_ALARM = 300.0  # seconds a refund the desk asked for has waited to hear the site
TWO_WORKERS_ALARM = 0.0  # another daemon says it does the site's time-driven work too: at once
KINDS = ("uplink_stalled", "deltas_behind", "peers_unheard", "peer_silent", "clock_untrusted", "clock_unconfirmed",
         "numbering_unsure", "own_history_missing", "refunds_waiting", "two_workers", "daemon_id_in_use")
# the link raises these itself as it sees them (with what it saw); a gap says so only once over
RAISED_BY_LINK = frozenset({"daemon_id_in_use"})


@dataclass(frozen=True, slots=True)
class Handover:
    """The site's word on its time-driven work, for a daemon configured to do it."""

    ready: bool  # the site's statuses are in (or there is none to wait for): it may run
    defer_to: str | None  # another daemon does the work and began first: this one settles nothing
    settled_through: datetime | None  # the furthest a daemon of the site said it had settled
    others: tuple[str, ...] = ()  # the other daemons online that say they do the work


@dataclass(frozen=True, slots=True)
class Gap:
    kind: str
    since: float  # monotonic
    detail: str

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"kind": self.kind, "for_s": round(now - self.since, 1), "detail": self.detail}


class Knowledge:
    def __init__(self, daemon: Daemon, monotonic: Callable[[], float] = time.monotonic):
        self.d = daemon
        self.mono = monotonic
        self.open: dict[str, Gap] = {}  # gaps past their threshold (alarmed)
        self._seen: dict[str, float] = {}  # gaps noticed, by when (not yet alarmed)
        # since when (monotonic, wall) this daemon is given the work and has not begun it
        self._wanting: tuple[float, datetime] | None = None
        self._began = monotonic()  # a silence is counted from here at most (marks kept from before a restart)
        # the last instants the replica was the central system's latest as far as the gate could
        # tell (SyncSession.replica_current), and with the central's own word for it (online,
        # its delta head heard): what the no-show horizon and the replica's age rest on
        self.current_at: datetime | None = None
        self.confirmed_at: datetime | None = None

    # -- the no-show horizon -----------------------------------------------------------------

    def no_show_horizon(self, now: datetime) -> tuple[NoShowHorizon | None, Callable[[datetime], list[str]] | None]:
        """How far the scheduler may settle no-shows now, and who to name when it settles
        without having heard them (None, None: nothing to wait for). Held back for the
        site's other daemons not heard, and for a replica known to miss deltas: a booking
        the member cancelled at the central system may still be `booked` in it — fined,
        were its class to fall due — so the classes that ended after its last sync wait
        until it has caught up (the link asks at once; no limit: the central system's
        answer, or its next snapshot, is what ends it, and the gap `deltas_behind` says so).
        The gate's own lost events are the store's to wait for (Ledger.run_due)."""
        horizon, unheard = self._peers_horizon(now)
        stale = self._replica_known_through(now)
        if stale is not None:
            horizon = known_through(horizon or NoShowHorizon(now - self.d.config.policy.to_domain().no_show_after), stale)
        return horizon, unheard

    def _peers_horizon(self, now: datetime) -> tuple[NoShowHorizon | None, Callable[[datetime], list[str]] | None]:
        peers = self._peers()
        if peers is None:
            return None, None
        through = peers.through()
        if through is None:
            return None, None
        heard = datetime.fromtimestamp(max(through, 0.0), UTC)
        limit = self.d.config.peer_wait_limit_delta()
        return no_show_horizon(now, self.d.config.policy.to_domain(), heard, limit), (
            lambda instant: peers.behind(instant.timestamp())
        )

    def _replica_known_through(self, now: datetime) -> datetime | None:
        """While the gate cannot tell its replica is the central system's latest — behind its
        delta head, cut off from the broker, the central offline or just back: the last
        instant it could (a delta comes within seconds of its change, and a booking is
        cancelled before its class ends, so the classes that ended by then are known right);
        None: it can. A member who cancelled while the gate was cut off was fined as a
        no-show, and nothing gave the fee back (an outside tester's finding)."""
        link, store = self.d.link, self.d.store
        if link is None or store is None or not self.d.config.time_driven_work or self.replica_current(now):
            return None
        known = [t for t in (store.last_sync_at(), self.current_at) if t is not None]
        return max(known) if known else datetime.fromtimestamp(0, UTC)  # never synced: nothing is known

    def replica_current(self, now: datetime) -> bool:
        """The replica is the central system's latest as far as the gate can tell now (the
        link's word, SyncSession.replica_current); the instants it was are kept."""
        link = self.d.link
        if link is None:
            return False
        session = link.session
        if not session.replica_current(link.mono()):
            return False
        self.current_at = now
        if session.central_online and session.head_heard:
            self.confirmed_at = now
        return True

    def _no_shows_wait(self, now: datetime) -> str:
        """What a gap's detail adds while the no-shows wait for the replica to be known current."""
        through = self._replica_known_through(now)
        if through is None:
            return ""
        return f"; no-shows of classes that ended after {_when(through.timestamp())} wait for it"

    def replica_as_of(self, now: datetime) -> datetime | None:
        """How current the replica is: its last sync, or later the last instant the central
        system said nothing newer was numbered (online, its delta head equal to the
        replica's). A central back after an outage with nothing new sends no delta: the gate
        refused walk-ins as `cache_stale` until the next reconcile, half an hour on."""
        self.replica_current(now)
        store = self.d.store
        known = [t for t in (store.last_sync_at() if store is not None else None, self.confirmed_at) if t is not None]
        return max(known) if known else None

    def unheard(self, instant: datetime) -> list[str]:
        """The daemons whose events up to `instant` are not all here: the site's others not
        heard up to it, and this one while its lost ledger's events are not back — held
        while its numbering is unsure (they are asked for once it settles), then asked for
        (a walk-in the desk would refund, or its refund, may be among them)."""
        link = self.d.link
        if link is None:
            return []
        out: list[str] = link.session.peers.behind(instant.timestamp())
        store = self.d.store
        if link.session.own_history.wanted is not None or (store is not None and store.unsure_after is not None):
            out.append(self.d.config.daemon_id)
        return out

    def _peers(self) -> Any:
        link = self.d.link
        if link is None or not self.d.config.time_driven_work:
            return None
        return link.session.peers

    # -- the site's time-driven work handed over ----------------------------------------------

    def handover(self, now: datetime) -> Handover:
        """Whether and from where this daemon (`time_driven_work: true`) does the site's
        time-driven work, from the other daemons' heartbeats (their `time_driven_work`):

        - it begins (its first run) only once it has heard the site's statuses — connected
          for a heartbeat interval — or, not connected, after `peer_wait_limit`;
        - it begins from the furthest a daemon of the site said it had settled (the last
          worker's cursor, kept in its heartbeat after it stopped): the ledger takes it,
          a day back at most (Ledger.run_due), and never goes back over what it settled;
          none said: from when it was given the work (a wait costs no class);
        - while another daemon online says it does the work, the one that began first goes
          on (the earlier `since`, then the lower daemon id; one that has begun before one
          that has not) and the other settles nothing (`defer_to`): never both.

        Alone (no link, or not sharing with the site's daemons): ready, nothing to hand over."""
        link, store = self.d.link, self.d.store
        if link is None or store is None or not link.session.config.share_access:
            return Handover(True, None, None)
        session = link.session
        me = self.d.config.daemon_id
        began = store.time_driven_work()[0]
        ours = began.timestamp() if began is not None else None
        marks = session.peers.marks
        others = tuple(p for p, m in sorted(marks.items()) if m.online and m.work is not None and m.work.on)

        def first(p: str) -> bool:  # does `p` do the work rather than this daemon
            w = marks[p].work
            assert w is not None
            if w.since is None:
                return ours is None and p < me
            return ours is None or (w.since, p) < (ours, me)

        defer_to = next((p for p in others if first(p)), None)
        through = max((m.work.through for m in marks.values() if m.work is not None and m.work.through is not None),
                      default=None)
        if ours is not None:
            self._wanting = None
            return Handover(True, defer_to, None, others)
        mono = self.mono()
        if self._wanting is None:
            self._wanting = (mono, now)
        waited, since = mono - self._wanting[0], self._wanting[1]
        ready = session.heard_the_site(mono) or waited >= self.d.config.peer_wait_limit_delta().total_seconds()
        settled = (datetime.fromtimestamp(through, UTC) if through is not None
                   else since - self.d.config.policy.to_domain().no_show_after)
        return Handover(ready, defer_to, settled, others)

    def announce(self) -> None:
        """What this daemon says of the site's time-driven work in its heartbeat."""
        link, store = self.d.link, self.d.store
        if link is None or store is None:
            return
        began, through = store.time_driven_work()
        on = self.d.config.time_driven_work
        if not on:
            self._wanting = None
        link.session.work = WorkClaim(on, began.timestamp() if began is not None and on else None,
                                      through.timestamp() if through is not None else None)

    # -- the check, every second ---------------------------------------------------------------

    def check(self, now: datetime) -> None:
        mono = self.mono()
        self.replica_current(now)  # each second: the last instant the replica was known current
        found: dict[str, tuple[float | None, float, str]] = {}  # kind -> (age if known, threshold, detail)
        guard = self.d.clock_guard
        if guard is not None and not guard.trusted:
            found["clock_untrusted"] = (mono - guard.state.since, 0.0, guard.describe())
        doubted = guard.doubted_for() if guard is not None else None
        if guard is not None and doubted is not None:
            # a person should learn that no-shows wait (a clock that stays unsynchronised
            # is never confirmed by time: rules/clock.py)
            found["clock_unconfirmed"] = (doubted, guard.policy.accept_ahead_after, guard.unconfirmed())
        link = self.d.link
        store = self.d.store
        if link is not None and store is not None and store.unsure_after is not None:
            found["numbering_unsure"] = (
                None, NUMBERING_ALARM,
                f"{store.last_seq - store.unsure_after} event(s) held after event {store.unsure_after}: "
                f"{store.sent.path.name} is missing (a new box, or a copy put back without it); they leave once "
                "the central system says how far it got with this daemon (an ack, or its passes)",
            )
        lost = link.session.own_history.wanted if link is not None else None
        if lost is not None:
            gap = store.own_history_gap() if store is not None else None
            entries, charges = gap if gap is not None else (0, 0)
            found["own_history_missing"] = (
                None, HISTORY_ALARM,
                f"this daemon's events {lost.from_seq}..{lost.to_seq}, which its lost ledger held, are not back "
                "from the central system yet (asked every 30 s): until they are, the gate does not know who came "
                "in through it earlier today, the walk-ins paid there (a re-entry within the grace may be "
                "charged again) or the QR codes used there; the no-shows of that day's classes wait for them. "
                f"Decided without them so far: {entries} entr{'y' if entries == 1 else 'ies'}, {charges} walk-in "
                "charge(s) — rechecked when they come (a charge they show free refunded, a QR code used twice or "
                "an entry anti-passback would have refused raised as an alarm)",
            )
        twin = link.session.twin if link is not None else None
        if twin is not None:
            found["daemon_id_in_use"] = (
                0.0, 0.0,
                f"another daemon runs under this daemon id ({twin}): events held here until it is gone; "
                "give one of the two boxes its own daemon_id",
            )
        if link is not None:
            stall = link.session.uplink_stall(mono)
            if stall is not None:
                waited, why = stall
                depth = self.d.store.outbox_depth() if self.d.store is not None else "?"
                found["uplink_stalled"] = (
                    waited, link.settings.uplink_alarm_after,
                    f"{depth} event(s) waiting, the central's applied_seq unchanged for {waited:.0f} s: {why}"
                    + self._no_shows_wait(now),
                )
            behind = link.session.deltas_behind
            if behind:
                synced = store.last_sync_at() if store is not None else None
                found["deltas_behind"] = (
                    None, DELTAS_BEHIND_ALARM,
                    f"the replica is {behind} delta(s) behind the central's head (at delta "
                    f"{link.session.delta_seq}); asked for them"
                    + (f"; no-shows of classes that ended after its last sync ({_when(synced.timestamp())}) wait"
                       if synced is not None and self.d.config.time_driven_work else ""),
                )
        peers = self._peers()
        if peers is not None:
            due = now - self.d.config.policy.to_domain().no_show_after
            waiting = peers.behind(due.timestamp())
            through = min((peers.marks[p].heard_through or 0.0 for p in waiting), default=0.0)
            start = datetime.fromtimestamp(max(through, due.timestamp() - self.d.config.peer_wait_limit_delta()
                                               .total_seconds()), UTC)
            held = self.d.store.unsettled_ending(start, due) if waiting and self.d.store is not None else 0
            if held:
                # how long the books have waited, on the site's clock: the due time against
                # the earliest instant a waited-for daemon is heard through
                heard = ", ".join(f"{p} (heard through {_when(peers.marks[p].heard_through)})" for p in waiting)
                found["peers_unheard"] = (
                    due.timestamp() - start.timestamp(), PEERS_ALARM,
                    f"{held} no-show(s) held until these daemons are heard: {heard}",
                )
        silent = self._silent(now)
        if silent is not None:
            found["peer_silent"] = silent
        if self.d.config.time_driven_work:
            h = self.handover(now)
            if h.others:
                found["two_workers"] = (
                    None, TWO_WORKERS_ALARM,
                    f"{', '.join(h.others)} also say they do the site's time-driven work (no-shows, their fees, "
                    "loyalty credits): "
                    + (f"this daemon settles nothing while {h.defer_to} does it (it began first)"
                       if h.defer_to is not None else "this daemon goes on doing it (it began first), they settle "
                       "nothing")
                    + "; set time_driven_work: false on all but one",
                )
        store = self.d.store
        waiting = store.refunds_waiting() if store is not None else 0
        if waiting:
            found["refunds_waiting"] = (
                None, REFUNDS_ALARM,
                f"{waiting} refund(s) the desk asked for wait to hear the site's other gates (the walk-in may "
                f"have been charged there): given back when the charge arrives; not heard: "
                f"{', '.join(self.unheard(now)) or 'none now'}",
            )
        self._update(found, mono)

    def _silent(self, now: datetime) -> tuple[float | None, float, str] | None:
        """The site's other daemons not heard through the last PEER_SILENT_ALARM seconds, on
        every daemon whatever it settles (what the gate knows of who is inside, of
        anti-passback and of balances rests on their events): how long the longest has been
        (None: one never heard, counted from now), the threshold, and who."""
        link = self.d.link
        if link is None or not link.session.config.share_access:  # not listening to the site's daemons
            return None
        marks = link.session.peers.marks
        # three heartbeats missed at least (a site may space them out to five minutes)
        threshold = max(PEER_SILENT_ALARM, 3 * link.session.config.mark_interval)
        cutoff = now.timestamp() - threshold
        silent = sorted(p for p, m in marks.items() if m.heard_through is None or m.heard_through < cutoff)
        if not silent:
            return None
        known = [marks[p].heard_through for p in silent]
        # counted from this daemon's start at most: after a restart (marks from the ledger)
        # the site's heartbeats come within seconds
        running = self.mono() - self._began
        age = None if any(t is None for t in known) else min(
            running, now.timestamp() - min(t for t in known if t is not None))

        def said(p: str) -> str:
            m = marks[p]
            state = "offline" if not m.online else ("its events missing" if m.missing else "online")
            heard = _when(m.heard_through)
            return f"{p} ({state}, " + (f"heard through {heard})" if heard else "never heard)")

        return (age, threshold,
                f"not heard for over {threshold / 60:.0f} minutes: {', '.join(said(p) for p in silent)}; "
                "its taps, exits and charges are not known here — who is inside, anti-passback and balances "
                "may be out of date, and no-shows wait for it")

    def _update(self, found: dict[str, tuple[float | None, float, str]], mono: float) -> None:
        for kind in list(self._seen):
            if kind not in found:
                del self._seen[kind]
        for kind, (age, threshold, detail) in found.items():
            since = self._seen.setdefault(kind, mono if age is None else mono - age)
            if mono - since < threshold:
                continue
            was = self.open.get(kind)
            self.open[kind] = Gap(kind, since, detail)
            if was is None and kind not in RAISED_BY_LINK:
                self.d.alarms.raise_(None, kind, detail)
        for kind in [k for k in self.open if k not in found]:
            gap = self.open.pop(kind)
            self.d.alarms.raise_(None, f"{kind}_ended", f"resolved after {mono - gap.since:.0f} s ({gap.detail})")
        for kind in KINDS:
            self.d.metrics.knowledge_gap.labels(kind).set(1 if kind in self.open else 0)

    def as_dict(self) -> dict[str, Any]:
        mono = self.mono()
        out: dict[str, Any] = {"gaps": [g.as_dict(mono) for g in self.open.values()]}
        if self.d.clock_guard is not None:
            out["clock"] = self.d.clock_guard.as_dict()
        peers = self.d.link.session.peers if self.d.link is not None else None
        if peers is not None:
            out["peers"] = {
                p: {**m, "heard_through": _when(m["heard_through"])}
                for p, m in peers.as_dict().items()
            }
        return out


def _when(posix: float | None) -> str | None:
    if posix is None:
        return None
    return iso_utc(datetime.fromtimestamp(posix, UTC))


__all__ = ["KINDS", "Gap", "Handover", "Knowledge"]
