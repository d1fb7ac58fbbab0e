"""How far this daemon has heard each other daemon of its site: a high-water mark per
peer, checked before a site fact is settled (docs/protocol.md, "Between the daemons of a
site"). Pure: seqs, heartbeats and time in, catch-up requests out; the session
(sync/link/session.py) feeds it and the shell persists what it says.

For each peer:
- `heard_seq`: every event of the peer up to this seq has been seen here (since the
  coverage began: a daemon that has heard nothing of a peer asks for its events since a
  horizon, and the answer says where they start). Events that come out of order are
  held in `above` until the ones before them arrive.
- a heartbeat (the peer's status, republished every few seconds) claims "my last event
  was `last_seq` at `as_of`". Once `heard_seq` reaches a claim, everything the peer did
  up to that `as_of` is known here: `heard_through`.
- a claim beyond `heard_seq` for longer than `grace` (events still on their way), or no
  coverage at all, is a gap: a catch-up request to the peer, again every `retry` while it
  lasts. So a gap is noticed within seconds of the heartbeat that shows it, and a
  daemon that restarted asks each peer for what follows what it had heard.

`through()` is what the ledger settles no-shows up to: the earliest `heard_through` of
the known peers (a peer never heard through anything holds everything back; the
ledger's limit ends the wait, naming it).

A heartbeat also says what the peer does of the site's time-driven work (`work`, a
WorkClaim: kept from its last status that said it, so the furthest it had settled is
still known once it has gone offline): gated/knowledge.py reads it to hand the work over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_ABOVE = 10_000  # out-of-order seqs held per peer; beyond, dropped (asked for again)
# what the store keeps for a peer known but never heard (its heartbeat came, none of its
# events yet): (None, None) there means "no longer of the site"
NEVER = float("-inf")


@dataclass(frozen=True, slots=True)
class WorkClaim:
    """A peer's word on the site's time-driven work (sync.protocol.TimeDrivenWork), in
    POSIX seconds: configured to do it (`on`), doing it since (`since`, None: not yet),
    every no-show of a class ended by `through` settled by it."""

    on: bool
    since: float | None = None
    through: float | None = None


@dataclass(slots=True)
class PeerMark:
    heard_seq: int | None = None
    heard_through: float | None = None  # POSIX seconds, on the peer's clock
    claim_seq: int | None = None
    claim_at: float | None = None
    online: bool = False
    above: set[int] = field(default_factory=set)
    behind_since: float | None = None  # monotonic: since when a gap is seen
    asked_at: float = float("-inf")  # monotonic: the last catch-up request
    saved: tuple[int | None, float | None] = (None, None)  # what the store holds
    stored: bool = False  # the store holds a mark of this peer at all
    answer: tuple[str, int] | None = None  # the catch-up answer coming in: its request id, the next chunk's first seq
    work: WorkClaim | None = None  # its last word on the site's time-driven work (not stored)

    def settle(self) -> None:
        """Held seqs that now follow `heard_seq`; a claim now covered moves `heard_through`."""
        if self.heard_seq is not None:
            while self.heard_seq + 1 in self.above:
                self.heard_seq += 1
                self.above.discard(self.heard_seq)
            self.above = {s for s in self.above if s > self.heard_seq}
            covered = self.claim_seq is not None and self.claim_at is not None and self.heard_seq >= self.claim_seq
            if covered and (self.heard_through is None or (self.claim_at or 0.0) > self.heard_through):
                self.heard_through = self.claim_at

    @property
    def missing(self) -> bool:
        """Something of this peer is known to exist that has not been heard."""
        if self.heard_seq is None:
            return True
        return self.claim_seq is not None and self.claim_seq > self.heard_seq


@dataclass(frozen=True, slots=True)
class CatchUpDue:
    """Ask `peer` for its events from `from_seq`, or (None) since `horizon` ago."""

    peer: str
    from_seq: int | None


class PeerMarks:
    def __init__(
        self,
        saved: Mapping[str, tuple[int | None, float | None]] | None = None,
        *,
        grace: float = 3.0,
        retry: float = 10.0,
    ):
        self.grace = grace
        self.retry = retry
        self.marks: dict[str, PeerMark] = {}
        for peer, (seq, stored_through) in (saved or {}).items():
            through = None if stored_through == NEVER else stored_through
            self.marks[peer] = PeerMark(heard_seq=seq, heard_through=through, saved=(seq, through), stored=True)

    def mark(self, peer: str) -> PeerMark:
        m = self.marks.get(peer)
        if m is None:
            m = self.marks[peer] = PeerMark()
        return m

    def known(self) -> list[str]:
        return sorted(self.marks)

    # -- what is heard ---------------------------------------------------------------------

    def heard(self, peer: str, seqs: Iterable[int]) -> bool:
        """Events of `peer` seen (a batch, live or caught up). True when `heard_seq` moved."""
        m = self.mark(peer)
        before = m.heard_seq
        if m.heard_seq is None:
            # no coverage yet: these count once an answer says where its events start
            m.above.update(seqs)
        else:
            m.above.update(s for s in seqs if s > m.heard_seq)
        if len(m.above) > MAX_ABOVE:
            m.above.clear()
        m.settle()
        return m.heard_seq != before

    def not_recorded(self, peer: str, first_seq: int | None) -> None:
        """Events of `peer` from `first_seq` on were heard but could not be recorded (the
        store failed): the mark goes back to before them and claims nothing until a
        catch-up has brought them again and a heartbeat covers them (None: only the mark
        itself was not written; the store's older one stands)."""
        m = self.marks.get(peer)
        if m is None:
            return
        if first_seq is not None:
            m.above = {s for s in m.above if s < first_seq}  # recorded again with the catch-up: no harm
            if m.heard_seq is not None and m.heard_seq >= first_seq:
                m.heard_seq = first_seq - 1
                m.heard_through = None
                m.asked_at = float("-inf")
        m.stored = False  # whatever it is now, it is written again at the next chance

    def answered(
        self, peer: str, first_seq: int, last_seq: int, seqs: Iterable[int], request_id: str | None = None,
    ) -> int:
        """A catch-up answer's chunk: its events start at `first_seq` (for a request
        `since`, the first of the horizon; for one `from_seq`, higher only when the
        peer pruned those before). Returns how many events were lost to pruning (0 when
        none, or when this daemon had no coverage to lose them from). A chunk that
        follows the one before it in the same answer (`request_id`) says nothing of
        pruning: above what is heard (a chunk before it not recorded), it waits there."""
        m = self.mark(peer)
        seqs = list(seqs)
        follows = request_id is not None and m.answer == (request_id, first_seq)
        m.answer = None if request_id is None else (request_id, (seqs[-1] + 1) if seqs else first_seq)
        lost = 0
        start = first_seq - 1
        if m.heard_seq is None:
            m.heard_seq = start
        elif m.heard_seq < start and not follows:
            lost = start - m.heard_seq
            m.heard_seq = start
        self.heard(peer, seqs)
        return lost

    def claimed(self, peer: str, last_seq: int | None, as_of: float | None, online: bool, now: float,
                *, retained: bool = False) -> None:
        """A status of `peer` (at `now`, monotonic): its heartbeat (`last_seq` at
        `as_of`), or its going offline (the last will carries no claim). A gap it shows
        counts from now — or, shown by a retained status (the broker's copy, sent as this
        daemon subscribed), is asked for at once: the events it claims were published
        before this connection's subscription, and with a clean session none of them is
        on its way here. A daemon that restarted while a peer let members in then hears
        their day at its first tick, not after the grace: a tap in those seconds would be
        decided without it (a booking charged again, a re-entry charged a walk-in)."""
        m = self.mark(peer)
        m.online = online
        if last_seq is not None and as_of is not None and (m.claim_at is None or as_of >= m.claim_at):
            m.claim_seq, m.claim_at = last_seq, as_of
        m.settle()
        if m.missing and m.behind_since is None:
            m.behind_since = now - self.grace if retained else now

    def announced(self, peer: str, work: WorkClaim) -> None:
        """A status of `peer` that says what it does of the site's time-driven work."""
        self.mark(peer).work = work

    def any_online(self) -> bool:
        return any(m.online for m in self.marks.values())

    def forget(self, peer: str) -> None:
        """A peer taken out of the site (its retained status cleared)."""
        self.marks.pop(peer, None)

    # -- what to ask -------------------------------------------------------------------------

    def due(self, now: float) -> list[CatchUpDue]:
        """Catch-up requests to send now (`now`: monotonic seconds)."""
        out: list[CatchUpDue] = []
        for peer, m in sorted(self.marks.items()):
            if not m.missing:
                m.behind_since = None
                continue
            if m.behind_since is None:
                m.behind_since = now
            if not m.online or now - m.behind_since < self.grace or now - m.asked_at < self.retry:
                continue
            m.asked_at = now
            out.append(CatchUpDue(peer, None if m.heard_seq is None else m.heard_seq + 1))
        return out

    def asked_again(self, peer: str) -> None:
        """A request could not go out (not connected): ask at the next chance."""
        m = self.marks.get(peer)
        if m is not None:
            m.asked_at = float("-inf")

    # -- what the ledger reads ---------------------------------------------------------------

    def through(self) -> float | None:
        """Every known peer is heard up to this instant (POSIX seconds); None when this
        daemon knows of no peer (alone on its site: nothing to wait for). A peer never
        heard through anything gives -inf."""
        if not self.marks:
            return None
        return min(float("-inf") if m.heard_through is None else m.heard_through for m in self.marks.values())

    def behind(self, instant: float) -> list[str]:
        """The peers not heard up to `instant`."""
        return sorted(p for p, m in self.marks.items() if m.heard_through is None or m.heard_through < instant)

    def to_save(self, peer: str, *, min_step: float) -> tuple[int | None, float | None] | None:
        """The mark to write for `peer` when it differs enough from what the store holds:
        a new `heard_seq` always; `heard_through` when it moved by `min_step` or more
        (a heartbeat every few seconds need not be a write every few seconds: after a
        restart an older value only makes the ledger wait a little longer); and a peer
        the store holds nothing of, even one never heard (`NEVER`): restarted, this
        daemon knows at once whom it has not heard (a refund waiting for it goes on
        waiting rather than take its silence for nothing)."""
        m = self.marks.get(peer)
        if m is None:
            return None
        seq, through = m.saved
        moved = m.heard_through is not None and (through is None or m.heard_through - through >= min_step)
        if m.stored and m.heard_seq == seq and not moved:
            return None
        m.saved, m.stored = (m.heard_seq, m.heard_through), True
        return (m.heard_seq, NEVER) if m.saved == (None, None) else m.saved

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {
            p: {"heard_seq": m.heard_seq, "heard_through": m.heard_through, "claim_seq": m.claim_seq,
                "online": m.online, "missing": m.missing}
            for p, m in sorted(self.marks.items())
        }


__all__ = ["NEVER", "CatchUpDue", "PeerMark", "PeerMarks", "WorkClaim"]
