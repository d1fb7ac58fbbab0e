"""The site-wide QR contest (sync/link/qr_contest.py), in process: fed exactly what
SyncLink feeds it — `contest(token, intent_at, others)` from the tap path,
`rival_claims(sender, events)` for every RecordPeerEvents (before it is recorded)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rules.credential import CredentialKind
from rules.decide import Presented, decide
from rules.reasons import Reason
from rules.timeutil import iso_utc
from sync.link.qr_contest import MAX_CLAIMS, QrContest
from sync.store import Store
from tests.tap_fixtures import tap_of
from tests.test_numbering import IN1, POLICY, SITE, at, new_store

T0 = datetime(2026, 11, 18, 11, 0, 0, 100000, tzinfo=UTC)
WAIT = 0.15


class FakePort:
    """The contest's door to the store: its alarms, and the ledger's claims of ours."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self.alarms: list[tuple[str, dict[str, Any]]] = []

    def alarm(self, kind: str, detail: str, now: datetime, **fields: Any) -> None:
        self.alarms.append((kind, fields))

    def own_qr_claims(self, tokens: list[str]) -> dict[str, tuple[datetime, bool]]:
        return {} if self.store is None else self.store.own_qr_claims(tokens)


def contest(daemon: str, port: FakePort | None = None) -> QrContest:
    return QrContest(daemon, WAIT, port or FakePort(), lambda: T0, Counter())  # type: ignore[arg-type]


def qr_used(token: str, when: datetime) -> list[dict[str, Any]]:
    return [{"type": "qr_used", "token": token, "at": iso_utc(when), "gate": "g", "member": "m1",
             "expires": iso_utc(when + timedelta(seconds=60))}]


def ms(n: int) -> datetime:
    return T0 + timedelta(milliseconds=n)


async def test_three_turnstiles_one_code_the_earliest_claim_arriving_second_wins() -> None:
    """One code at a, b and c at once; c's claim (t0) is the earliest. b's (t0+20ms)
    reaches a (t0+10ms) first, c's 30 ms later, both within a's wait: a loses to c (it
    took b's as the only rival and opened, and c opened too)."""
    a = contest("a")
    task = asyncio.create_task(a.contest("tok", ms(10), lambda: True))
    await asyncio.sleep(0.01)
    a.rival_claims("b", qr_used("tok", ms(20)))  # later than ours: the wait goes on
    await asyncio.sleep(0.03)
    a.rival_claims("c", qr_used("tok", ms(0)))  # earlier than ours: lost at once
    assert await task is True
    c = contest("c")
    c.rival_claims("a", qr_used("tok", ms(10)))
    c.rival_claims("b", qr_used("tok", ms(20)))
    b = contest("b")
    b.rival_claims("a", qr_used("tok", ms(10)))
    assert await c.contest("tok", ms(0), lambda: True) is False  # c opens
    assert await b.contest("tok", ms(20), lambda: True) is True  # b does not


async def test_a_later_claim_heard_before_the_contest_does_not_end_the_wait() -> None:
    """a's intent took a while to reach the disk: b's later claim was heard meanwhile.
    a does not settle on it at once: c's earlier claim, 20 ms into the wait, wins."""
    a = contest("a")
    a.rival_claims("b", qr_used("tok", ms(20)))
    task = asyncio.create_task(a.contest("tok", ms(10), lambda: True))
    await asyncio.sleep(0.02)
    a.rival_claims("c", qr_used("tok", ms(0)))
    assert await task is True


async def test_only_later_claims_the_wait_is_waited_out_and_ours_wins() -> None:
    a = contest("a")
    loop = asyncio.get_running_loop()
    start = loop.time()
    task = asyncio.create_task(a.contest("tok", ms(10), lambda: True))
    await asyncio.sleep(0.01)
    a.rival_claims("b", qr_used("tok", ms(20)))
    assert await task is False
    assert loop.time() - start >= WAIT * 0.9  # not decided on b's claim alone
    # an earlier claim heard before the contest ends it at once
    x = contest("x")
    x.rival_claims("c", qr_used("tok2", ms(0)))
    start = loop.time()
    assert await x.contest("tok2", ms(10), lambda: True) is True
    assert loop.time() - start < WAIT / 2


async def test_a_contest_lost_says_no_double_use_when_the_winner_is_heard_again() -> None:
    """The loser did not open: the winner's claim heard again (its resends) is no alarm."""
    port = FakePort()
    a = contest("a", port)
    a.rival_claims("c", qr_used("tok", ms(0)))
    assert await a.contest("tok", ms(10), lambda: True) is True
    a.rival_claims("c", qr_used("tok", ms(0)))
    a.rival_claims("b", qr_used("tok", ms(5)))
    assert port.alarms == []


def qr_tap(store: Store, token: str, now: datetime, *, opened: bool) -> None:
    """A QR walk-in at in-1 as the tap path records it: the intent (which uses the code
    up, its `qr_used` event), then the commit — passed, or refused (the contest lost)."""
    d = decide(store.view("m1", IN1, now), Presented(CredentialKind.CARD), IN1, SITE, POLICY, now)
    assert d.granted
    tap = store.open_intent(replace(tap_of(IN1, d, now), qr_token=(token, now + timedelta(minutes=1))), now)
    if not opened:
        tap = tap.refused(Reason.QR_REPLAYED)
    store.commit_tap(tap, passed=opened, now=now)


async def test_a_late_rival_claim_after_a_restart_is_an_alarm(tmp_path: Path) -> None:
    """The broker is away: a lets a QR code in (nobody could claim it: no wait); b, also
    cut off, let the same code in a second earlier. a restarts before the broker comes
    back; then b's `qr_used` arrives. The new run's contest never held a's claim: the
    ledger has it (and that the gate opened)."""
    store = new_store(tmp_path / "gated.db")
    store.set_site_wide_qr(True)
    try:
        qr_tap(store, "tok", at(9, 1), opened=True)
        qr_tap(store, "lost", at(9, 2), opened=False)  # a contest lost: the gate did not open
        port = FakePort(store)
        after_restart = contest(DAEMON_A, port)
        after_restart.rival_claims("b", qr_used("tok", at(9)))
        after_restart.rival_claims("b", qr_used("lost", at(9)))
        after_restart.rival_claims("b", qr_used("never-here", at(9)))
        after_restart.rival_claims("b", qr_used("tok", at(9)))  # heard again: said once
        assert [(k, f["token"]) for k, f in port.alarms] == [("qr_double_use", "tok")]
        # a later claim than ours takes nothing from us
        fresh = contest(DAEMON_A, FakePort(store))
        fresh.rival_claims("b", qr_used("tok", at(9, 5)))
        assert fresh.port.alarms == []  # type: ignore[attr-defined]
    finally:
        store.close()


async def test_a_late_rival_claim_past_the_claims_kept_in_memory_is_an_alarm(tmp_path: Path) -> None:
    store = new_store(tmp_path / "gated.db")
    store.set_site_wide_qr(True)
    try:
        qr_tap(store, "tok", at(9, 1), opened=True)
        port = FakePort(store)
        a = contest(DAEMON_A, port)
        assert await a.contest("tok", at(9, 1), lambda: False) is False
        for n in range(MAX_CLAIMS):  # a long outage's worth of codes used here since
            assert await a.contest(f"other-{n}", at(9, 2), lambda: False) is False
        a.rival_claims("b", qr_used("tok", at(9)))
        assert [k for k, _ in port.alarms] == ["qr_double_use"]
    finally:
        store.close()


DAEMON_A = "s1-in-1"


async def test_a_peers_resent_claims_read_the_ledger_once(tmp_path: Path) -> None:
    """A peer resends its unacknowledged batches (the central system away: every ack
    timeout): its claims on codes this ledger knows are read from it once a run."""
    store = new_store(tmp_path / "gated.db")
    store.set_site_wide_qr(True)
    try:
        qr_tap(store, "tok", at(9, 1), opened=True)
        port = FakePort(store)
        asked: list[list[str]] = []
        real = port.own_qr_claims
        port.own_qr_claims = lambda tokens: asked.append(tokens) or real(tokens)  # type: ignore[method-assign]
        a = contest(DAEMON_A, port)
        for _ in range(3):
            a.rival_claims("b", qr_used("tok", at(9, 5)) + qr_used("elsewhere", at(9, 5)))
        assert asked == [["tok", "elsewhere"]] and port.alarms == []
    finally:
        store.close()
