"""One QR code, one use across the site: the contest between two daemons that let the same
code in at nearly the same instant (docs/protocol.md, "Between the daemons of a site").

Each daemon that uses up a QR code sends a `qr_used` event to the site's other daemons
and waits up to `qr_claim_wait` for a rival claim; every daemon applies the same rule to
the claims it knows — the earlier claim wins, then the lower daemon id — so exactly one
opens. A rival claim that comes after the wait, for a code the rule gives to the other
daemon, is a double use: an alarm, never silent. Part of the link's shell (SyncLink
holds one), with state of its own: the claims made and heard lately, the taps waiting.
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
        # QR codes used here lately (token -> our claim) and the taps waiting for a rival claim
        self._mine: dict[str, Claim] = {}
        self._waiting: dict[str, asyncio.Future[Claim]] = {}
        # other daemons' claims heard, for a tap of ours that reaches its contest after
        # theirs arrived (ours waited for its intent to reach the disk meanwhile)
        self._heard: dict[str, Claim] = {}

    async def contest(self, token: str, claimed_at: datetime, others_can_claim: Callable[[], bool]) -> bool:
        """We have just used up QR `token`. Wait up to `wait` for another daemon's claim on
        it and apply the rule; True when ours lost. No wait when `others_can_claim()` says
        nobody could (not connected, no other daemon online)."""
        ours = (claimed_at, self.daemon)
        self._remember(token, ours, self._mine)
        heard = self._heard.get(token)
        if heard is not None:  # their claim came first: no need to wait for it
            return self._result(heard, ours)
        if self.wait <= 0 or not others_can_claim():
            return False
        fut: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        self._waiting[token] = fut
        try:
            async with asyncio.timeout(self.wait):
                theirs = await fut
        except TimeoutError:
            return False
        finally:
            if self._waiting.get(token) is fut:
                del self._waiting[token]
        return self._result(theirs, ours)

    def _result(self, theirs: Claim, ours: Claim) -> bool:
        lost = theirs < ours
        self.stats["qr_contests_lost" if lost else "qr_contests_won"] += 1
        return lost

    @staticmethod
    def _remember(token: str, claim: Claim, claims: dict[str, Claim]) -> None:
        if len(claims) >= MAX_CLAIMS:
            claims.pop(next(iter(claims)))
        claims[token] = claim

    def rival_claims(self, sender: str, events: Sequence[Mapping[str, Any]]) -> None:
        """Another daemon's `qr_used`: a tap of ours waiting on that token learns of it; a
        token we already let through that the rule gives to the other daemon (its claim
        came after our wait) is a double use, and an alarm — never silent."""
        for ev in events:
            token = ev.get("token")
            if ev.get("type") != "qr_used" or not isinstance(token, str):
                continue
            try:
                theirs = (parse_instant_once(str(ev.get("at")), UTC_ZONE), sender)
            except ValueError:
                continue
            self._remember(token, min(theirs, self._heard.get(token, theirs)), self._heard)
            fut = self._waiting.get(token)
            if fut is not None and not fut.done():
                fut.set_result(theirs)
                continue
            ours = self._mine.get(token)
            if ours is not None and theirs < ours:
                self.stats["qr_double_use"] += 1
                detail = f"a QR code was let in here and at {sender} (its claim came too late to stop ours)"
                log.warning("alarm qr_double_use: %s", detail)
                self.port.alarm("qr_double_use", detail, self.now(), token=token, other=sender)
