"""One QR code, one use across the site: the contest between two daemons that let the same
code in at nearly the same instant (docs/protocol.md, "Between the daemons of a site").

Each daemon that uses up a QR code sends a `qr_used` event to the site's other daemons
and waits `qr_claim_wait` for rival claims; every daemon applies the same rule to the
claims it knows — the earliest claim wins, then the lower daemon id — so exactly one
opens. With three daemons or more a rival's claim that does not beat ours does not end
the wait (a third one's, earlier still, may be on its way): the wait is waited out and
ours compared with the smallest claim heard; one that beats ours ends it at once. A
rival claim that comes after the wait, for a code the rule gives to the other daemon, is
a double use: an alarm, never silent — also when this run no longer holds our claim in
memory (a restart since, more codes than it keeps): the ledger has it
(sync/store/qr_claims.py). Part of the link's shell (SyncLink holds one), with state of
its own: the claims made and heard lately, the taps waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from rules.timeutil import parse_instant_once
from sync.link.port import StorePort

UTC_ZONE = ZoneInfo("UTC")
MAX_CLAIMS = 1000  # a minute of QR codes is plenty: the race is milliseconds

log = logging.getLogger("gated.sync")

Claim = tuple[datetime, str]  # (claimed at, daemon id): the smaller one wins


class QrContest:
    def __init__(self, daemon: str, wait: float, port: StorePort, now: Callable[[], datetime], stats: Counter[str]):
        self.daemon = daemon
        self.wait = wait
        self.port = port
        self.now = now
        self.stats = stats
        # QR codes used here lately (token -> our claim; None: ours lost, this gate did
        # not open, or its double use is already said) and the taps waiting for a rival claim
        self._mine: dict[str, Claim | None] = {}
        self._waiting: dict[str, tuple[asyncio.Future[Claim], Claim]] = {}
        # other daemons' claims heard (the smallest of each token), for a tap of ours that
        # reaches its contest after theirs arrived (ours waited for its intent to reach
        # the disk meanwhile) and for the end of a wait
        self._heard: dict[str, Claim] = {}

    async def contest(self, token: str, claimed_at: datetime, others_can_claim: Callable[[], bool]) -> bool:
        """We have just used up QR `token`. Wait `wait` for other daemons' claims on it and
        apply the rule to the smallest heard; True when ours lost. A claim earlier than
        ours ends the wait at once (ours lost, whatever else comes); a later one does not
        (an earlier one may still come from a third daemon). No wait when
        `others_can_claim()` says nobody could (not connected, no other daemon online)."""
        ours = (claimed_at, self.daemon)
        self._remember(token, ours, self._mine)
        heard = self._heard.get(token)
        if heard is not None and heard < ours:  # theirs came first and beats ours: no need to wait
            return self._result(token, heard, ours)
        if self.wait > 0 and others_can_claim():
            fut: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
            self._waiting[token] = (fut, ours)
            try:
                async with asyncio.timeout(self.wait):
                    await fut  # set only by a claim that beats ours
            except TimeoutError:
                pass
            finally:
                if self._waiting.get(token, (None,))[0] is fut:
                    del self._waiting[token]
        heard = self._heard.get(token)  # the smallest claim heard before or during the wait
        return False if heard is None else self._result(token, heard, ours)

    def _result(self, token: str, theirs: Claim, ours: Claim) -> bool:
        lost = theirs < ours
        self.stats["qr_contests_lost" if lost else "qr_contests_won"] += 1
        if lost:  # this gate does not open: a claim heard later is no double use here
            self._mine[token] = None
        return lost

    @staticmethod
    def _remember(token: str, claim: Claim | None, claims: dict[str, Any]) -> None:
        if token not in claims and len(claims) >= MAX_CLAIMS:
            claims.pop(next(iter(claims)))
        claims[token] = claim

    def rival_claims(self, sender: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Another daemon's `qr_used`: a tap of ours waiting on that token learns of it; a
        token we already let through that the rule gives to the other daemon (its claim
        came after our wait) is a double use, and an alarm — never silent. A claim of ours
        this run does not hold in memory (a restart since, or more codes than it keeps) is
        read from the ledger: our own `qr_used` event and what the tap did."""
        late: dict[str, Claim] = {}
        for ev in events:
            token = ev.get("token")
            if ev.get("type") != "qr_used" or not isinstance(token, str):
                continue
            try:
                theirs = (parse_instant_once(str(ev.get("at")), UTC_ZONE), sender)
            except ValueError:
                continue
            self._remember(token, min(theirs, self._heard.get(token, theirs)), self._heard)
            waiting = self._waiting.get(token)
            if waiting is not None:
                fut, ours_waiting = waiting
                if theirs < ours_waiting and not fut.done():
                    fut.set_result(theirs)
                continue
            if token in self._mine:
                ours = self._mine[token]
                if ours is not None and theirs < ours:
                    self._double_use(token, sender)
            else:  # not one of this run's (or pushed out): the ledger may hold ours
                late[token] = min(theirs, late.get(token, theirs))
        if late:
            found = self.port.own_qr_claims(list(late))
            for token, theirs in late.items():
                claimed_at, opened = found.get(token, (None, False))
                # kept in memory: the same claims again (a peer's resends) read nothing more
                self._remember(token, (claimed_at, self.daemon) if claimed_at is not None and opened else None,
                               self._mine)
                if claimed_at is not None and opened and theirs < (claimed_at, self.daemon):
                    self._double_use(token, sender)

    def _double_use(self, token: str, sender: str) -> None:
        self._mine[token] = None  # said once
        self.stats["qr_double_use"] += 1
        detail = f"a QR code was let in here and at {sender} (its claim came too late to stop ours)"
        log.warning("alarm qr_double_use: %s", detail)
        self.port.alarm("qr_double_use", detail, self.now(), token=token, other=sender)
