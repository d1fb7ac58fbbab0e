"""The link's side of getting a lost ledger's events back from the central system
(sync/store/own_history.py has why; docs/protocol.md "A gate's own events back"), without
I/O: what is wanted, when to ask, which answer is ours. The session holds one."""

from __future__ import annotations

from typing import Any

from sync.protocol import HistoryAnswer, HistoryRequest
from sync.store.own_history import Wanted

RETRY = 30.0  # seconds without the last chunk before asking again (from what arrived)


class OwnHistory:
    def __init__(self, daemon: str, wanted: Wanted | None = None, retry: float = RETRY):
        self.daemon = daemon
        self.retry = retry
        self.wanted: Wanted | None = None
        self._from = 0  # the next seq wanted (chunks already recorded come before)
        self._asked: str | None = None  # the request id an answer must carry
        self._asked_at = float("-inf")
        self._count = 0
        self.want(wanted)

    def want(self, wanted: Wanted | None) -> None:
        """What the store says is missing (at start, after a settle, after a chunk it
        could not record): asked for from its start at the next chance."""
        self.wanted = wanted
        self._from = wanted.from_seq if wanted is not None else 0
        self._asked = None
        self._asked_at = float("-inf")

    def expired(self, wall: float) -> Wanted | None:
        """A day after the loss (`wall`: POSIX seconds) nothing the lost ledger knew is
        today's any more: no longer wanted (a central system that never answers). Returns
        what was wanted then."""
        w = self.wanted
        if w is None or wall < w.expires.timestamp():
            return None
        self.want(None)
        return w

    def due(self, now: float) -> HistoryRequest | None:
        """The request to publish now, if any (again every `retry` until answered)."""
        w = self.wanted
        if w is None or now - self._asked_at < self.retry:
            return None
        self._count += 1
        self._asked_at = now
        self._asked = f"{self.daemon}-history-{self._count}-{now:.3f}"
        since = w.since.isoformat().replace("+00:00", "Z")
        return HistoryRequest(daemon=self.daemon, request_id=self._asked, from_seq=self._from, to_seq=w.to_seq,
                              since=since)

    def answered(self, answer: HistoryAnswer, now: float) -> tuple[list[dict[str, Any]], bool, Wanted] | None:
        """A chunk of the central system's answer: the events to record, whether it is the
        last, and what was wanted (to want again should the store fail to record it); None
        when it answers no request of ours in progress (an old one, a stranger's)."""
        w = self.wanted
        if w is None or self._asked is None or answer.request_id != self._asked or answer.daemon != self.daemon:
            return None
        events = [e.model_dump(mode="json") for e in answer.events]
        if answer.events:
            self._from = answer.events[-1].seq + 1
        done = not answer.more or self._from > w.to_seq
        if done:
            self.wanted = None
            self._asked = None
        else:
            self._asked_at = now  # the next chunk is on its way; lost, asked again from here
        return events, done, w


__all__ = ["RETRY", "OwnHistory", "Wanted"]
