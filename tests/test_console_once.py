"""The desk never charges or opens twice because a page retried — a restart between the
first request and its retry included (gated/console/once.py, sync/store/desk_requests.py).

Over real HTTP, as tests/test_console.py: a Daemon in-process with a turnstile on a real
Modbus server. "Restarted" is the daemon stopped and a new one started on the same files
(a new store, a new console, sessions and memory gone): the page's dialog, still open,
submits again with the same `request_id` after logging in again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gated.clock import SimulatedClock
from gated.config import Config
from gated.daemon import Daemon
from gated.seed import batch_from
from rules.credential import Credential, CredentialKind
from rules.tap import Tap
from simulator.turnstile import SimTurnstile
from sync.store import Store
from tests.test_console import Client, free_port, mid_morning, seed_data, site_config


@dataclass
class Desk:
    """A site whose daemon can be restarted on the same files; the desk's browser with it."""

    config: Config
    clock: SimulatedClock
    turnstile: SimTurnstile
    daemon: Daemon
    client: Client

    @property
    def store(self) -> Store:
        assert self.daemon.store is not None
        return self.daemon.store

    async def restart(self, before_start: Any = None) -> None:
        """The daemon stopped and started again (`before_start(store)`: what a crash left,
        written into the ledger while no daemon runs)."""
        await self.daemon.stop()
        if before_start is not None:
            store = Store(self.config.store.path, self.config.site_domain(), daemon_id=self.config.daemon_id)
            try:
                before_start(store)
            finally:
                store.close()
        self.daemon = Daemon(self.config, clock=self.clock)
        await self.daemon.start()
        self.client = Client(self.config.console.port)
        r = await self.client.login("desk")  # the same person, a new session
        assert r.status == 303

    def events(self, type_: str) -> list[dict[str, Any]]:
        return self.store.recent_events(200, types=[type_])


@contextlib.asynccontextmanager
async def desk_site(tmp_path: Path) -> AsyncIterator[Desk]:
    async with SimTurnstile(transport="tcp", host="127.0.0.1", port=0) as turnstile:
        config = site_config(tmp_path, turnstile.port, free_port())
        clock = mid_morning()
        now = clock()
        store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id)
        store.apply_sync(batch_from(seed_data(now), config), now)
        store.close()
        daemon = Daemon(config, clock=clock)
        await daemon.start()
        desk = Desk(config, clock, turnstile, daemon, Client(config.console.port))
        try:
            assert (await desk.client.login("desk")).status == 303
            yield desk
        finally:
            await desk.daemon.stop()


async def test_points_asked_again_after_a_restart_are_given_once(tmp_path: Path) -> None:
    """The request ids lived in memory: a retry after a restart added +25 again (50)."""
    async with desk_site(tmp_path) as desk:
        ask = {"points": 25, "reason": "birthday", "request_id": "points-restart-1"}
        first = await desk.client.post_json("/api/members/m-ana/points", ask)
        assert first.status == 200 and first.json()["points"] == 25, first.text
        await desk.restart()  # the answer lost in the restart: the dialog submits again
        again = await desk.client.post_json("/api/members/m-ana/points", ask)
        assert again.status == 200, again.text
        assert desk.store.points("m-ana") == 25
        assert again.json()["repeated"] is True and again.json()["points"] == 25
        assert len([e for e in desk.events("loyalty") if e.get("operator") == "desk"]) == 1
        # the same id with other values: refused, after the restart too
        other = await desk.client.post_json("/api/members/m-ana/points", {**ask, "points": 30})
        assert other.status == 409 and "already made" in other.json()["error"]
        assert desk.store.points("m-ana") == 25


async def test_an_attendance_with_its_refund_asked_again_after_a_restart_is_done_once(tmp_path: Path) -> None:
    """After a restart the retry of "Mark attended + refund" was a 409 (already attended)
    at best; with the booking re-opened by a sync meanwhile, a second refund. Now: the first
    answer again."""
    async with desk_site(tmp_path) as desk:
        walk_in = await desk.daemon.handle_credential("turnstile-in", Credential.card("04A1B2C3D4", "test"))
        assert walk_in["reason"] == "walk_in" and desk.store.balance("p-ana") == 8
        ask = {"refund": True, "request_id": "attend-restart-1"}
        first = await desk.client.post_json("/api/bookings/b-spin/attend", ask)
        assert first.status == 200 and first.json()["refunded"]["amount"] == 1, first.text
        await desk.restart()
        again = await desk.client.post_json("/api/bookings/b-spin/attend", ask)
        assert again.status == 200, again.text
        assert again.json()["repeated"] is True and again.json()["refunded"] == first.json()["refunded"]
        assert desk.store.balance("p-ana") == 9
        assert len([e for e in desk.events("attendance") if e.get("by") == "desk"]) == 1


async def test_a_check_in_asked_again_after_a_restart_neither_charges_nor_opens_again(tmp_path: Path) -> None:
    """A check-in carried no request id: its retry after a lost answer charged Bruno's visit
    again and opened the turnstile again."""
    async with desk_site(tmp_path) as desk:
        ask = {"gate": "turnstile-in", "reason": "forgot card", "request_id": "check-in-restart-1"}
        first = await desk.client.post_json("/api/members/m-bruno/check-in", ask)
        assert first.status == 200 and first.json()["result"]["decision"] == "granted", first.text
        assert desk.store.balance("p-bruno") == 9 and desk.turnstile.unlocks == 1
        await desk.restart()
        again = await desk.client.post_json("/api/members/m-bruno/check-in", ask)
        assert again.status == 200, again.text
        assert (desk.store.balance("p-bruno"), desk.turnstile.unlocks) == (9, 1)
        assert again.json()["repeated"] is True and again.json()["result"] == first.json()["result"]
        # without a restart too (the answer lost on the network): once
        ask2 = {**ask, "request_id": "check-in-restart-2"}
        a, b = await asyncio.gather(desk.client.post_json("/api/members/m-bruno/check-in", ask2),
                                    desk.client.post_json("/api/members/m-bruno/check-in", ask2))
        assert (a.status, b.status) == (200, 200)
        assert desk.store.balance("p-bruno") == 8 and desk.turnstile.unlocks == 2
        assert sorted(bool(r.json().get("repeated")) for r in (a, b)) == [False, True]


async def test_open_once_asked_again_after_a_restart_does_not_open_again(tmp_path: Path) -> None:
    """"Open once" carried no request id: its retry after a lost answer pulsed the
    turnstile again — two people in for one press."""
    async with desk_site(tmp_path) as desk:
        ask = {"reason": "delivery", "request_id": "open-restart-1"}
        first = await desk.client.post_json("/api/gates/turnstile-in/open", ask)
        assert first.status == 200, first.text
        assert desk.turnstile.unlocks == 1
        again = await desk.client.post_json("/api/gates/turnstile-in/open", ask)  # no restart
        assert again.status == 200 and desk.turnstile.unlocks == 1
        assert again.json()["repeated"] is True
        await desk.restart()
        again = await desk.client.post_json("/api/gates/turnstile-in/open", ask)
        assert again.status == 200 and again.json()["repeated"] is True, again.text
        assert again.json()["result"] == first.json()["result"]
        assert desk.turnstile.unlocks == 1
        assert len(desk.events("override")) == 1
        # another gate's route, or another reason, with the same id: refused or its own
        other = await desk.client.post_json("/api/gates/turnstile-in/open", {**ask, "reason": "visitor"})
        assert other.status == 409 and desk.turnstile.unlocks == 1


async def test_a_retry_of_an_opening_a_crash_cut_off_after_its_pulse_is_refused(tmp_path: Path) -> None:
    """Begun and on disk before the pulse, not committed (a crash between): the retry must
    not pulse again — the gate may have let someone in. Check-in: its grant intent becomes
    `passage_unconfirmed` and nothing is charged; open once: the same refusal."""
    async with desk_site(tmp_path) as desk:
        reason = "forgot card"
        check_in = {"gate": "turnstile-in", "reason": reason, "request_id": "check-in-crash-1"}
        opening = {"reason": "delivery", "request_id": "open-crash-1"}

        from gated.console.once import desk_request  # (here: the file runs on the code before it)

        def crashed(store: Store) -> None:
            # what the daemon had written when the crash came: the check-in's grant intent
            # (its request begun with it) and the opening's request, begun; neither committed
            now = desk.clock()
            tap = _granted_desk_tap(desk, store, now)
            req = desk_request("desk", "/api/members/m-bruno/check-in", check_in,
                               {"gate": "turnstile-in", "booking": None, "pass": None, "reason": reason})
            assert req is not None
            store.open_intent(tap, now, req)
            req = desk_request("desk", "/api/gates/turnstile-in/open", opening, {"reason": "delivery"})
            assert req is not None
            store.begin_desk_request(req, now)

        await desk.restart(crashed)
        unconfirmed = desk.events("passage_unconfirmed")
        assert [e["member"] for e in unconfirmed] == ["m-bruno"]
        r = await desk.client.post_json("/api/members/m-bruno/check-in", check_in)
        assert r.status == 409 and "may have opened" in r.json()["error"], r.text
        r = await desk.client.post_json("/api/gates/turnstile-in/open", opening)
        assert r.status == 409 and "may have opened" in r.json()["error"], r.text
        assert desk.turnstile.unlocks == 0 and desk.store.balance("p-bruno") == 10
        # a new dialog (a new id) does it
        r = await desk.client.post_json("/api/gates/turnstile-in/open", {**opening, "request_id": "open-crash-2"})
        assert r.status == 200 and desk.turnstile.unlocks == 1


def _granted_desk_tap(desk: Desk, store: Store, now: datetime) -> Tap:
    """Bruno checked in at the desk, decided as the daemon decides it (gated/engine.py)."""
    engine = desk.daemon.build_engine(desk.config, store)
    cred = Credential(CredentialKind.DESK, "m-bruno", "desk:desk")
    tap = engine.decide("turnstile-in", cred, now, {"operator": "desk", "desk_reason": "forgot card"})
    assert tap.granted, tap.decision
    return tap


async def test_what_did_nothing_is_forgotten_and_its_retry_does_it(tmp_path: Path) -> None:
    """A check-in denied, an opening refused (a lockdown): nothing charged, nothing opened —
    the same dialog's retry, once the lockdown is lifted, does it (once)."""
    async with desk_site(tmp_path) as desk:
        boss = Client(desk.config.console.port)
        await boss.login("boss")
        on = await boss.post_json("/api/lockdown", {"on": True, "confirm": "LOCKDOWN", "reason": "drill"})
        assert on.status == 200, on.text
        check_in = {"gate": "turnstile-in", "reason": "forgot card", "request_id": "check-in-denied-1"}
        denied = await desk.client.post_json("/api/members/m-bruno/check-in", check_in)
        assert denied.status == 200 and denied.json()["result"]["decision"] == "denied"
        opening = {"reason": "delivery", "request_id": "open-refused-1"}
        refused = await desk.client.post_json("/api/gates/turnstile-in/open", opening)
        assert refused.status == 409
        off = await boss.post_json("/api/lockdown", {"on": False, "confirm": "RELEASE"})
        assert off.status == 200, off.text
        granted = await desk.client.post_json("/api/members/m-bruno/check-in", check_in)
        assert granted.status == 200 and granted.json()["result"]["decision"] == "granted", granted.text
        assert "repeated" not in granted.json()
        opened = await desk.client.post_json("/api/gates/turnstile-in/open", opening)
        assert opened.status == 200 and "repeated" not in opened.json(), opened.text
        assert desk.turnstile.unlocks == 2 and desk.store.balance("p-bruno") == 9
        # validated: an id that is not one is refused before anything is done
        for path, data in (("/api/gates/turnstile-in/open", opening), ("/api/members/m-bruno/check-in", check_in)):
            for bad in ("short", "x" * 65, "no spaces here", 12345678, ["open-refused-1"]):
                r = await desk.client.post_json(path, {**data, "request_id": bad})
                assert r.status == 400 and "request_id" in r.json()["error"], (path, bad, r.text)
        assert desk.turnstile.unlocks == 2 and desk.store.balance("p-bruno") == 9
