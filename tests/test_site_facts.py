"""Site facts are settled with every daemon of the site heard (issue: "attended members are
made no-shows and fined"). Two whole daemons of one site on a real broker with the
reference central system: `desk` does the site's time-driven work, `in2` is another
turnstile. The no-show of a class is settled only once `desk` has heard `in2` past the
class's end (its heartbeat, caught up after a restart of either side); a daemon that is
not heard holds it until `peer_wait_limit`, and the no-show then names it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import gated.knowledge
from gated.config import Config
from gated.daemon import Daemon
from rules.credential import Credential
from simulator.central import Central
from sync.qrtoken import generate_private_key, mint, public_key_text
from tests.broker import SITE, WAIT_S, Mosquitto, wait_until

TZ = ZoneInfo("Europe/Madrid")
DAY = datetime(2026, 11, 18, tzinfo=TZ)


class Clock:
    """The site's wall clock, moved by the test; both daemons and the central read it."""

    def __init__(self, start: datetime):
        self.t = start

    def __call__(self) -> datetime:
        return self.t

    def to(self, hh: int, mm: int = 0) -> None:
        self.t = DAY.replace(hour=hh, minute=mm).astimezone(UTC)


KEY = generate_private_key()  # made for this test run: the central's QR signing key


def config(tmp: Path, broker: Mosquitto, daemon: str, gate: str, *, finalises: bool, **extra: Any) -> Config:
    return Config.model_validate(config_dict(tmp, broker, daemon, gate, finalises=finalises, **extra))


def config_dict(tmp: Path, broker: Mosquitto, daemon: str, gate: str, *, finalises: bool, **extra: Any) -> dict[str, Any]:
    return {
        "site": {"id": SITE, "timezone": "Europe/Madrid"},
        "daemon_id": daemon,
        "gates": [{"id": gate, "zone": "main"}],
        "policy": {"no_show_fee": 1, "no_show_after": "15m", "loyalty_delay": "30m"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "ack_timeout": 1.0, "backoff_initial": 0.05,
                 "backoff_max": 0.5, "resync_retry": 2.0, "keepalive": 5, "heartbeat_interval": 0.5},
        "time_driven_work": finalises,
        "qr": {"public_keys": [public_key_text(KEY.public_key())]},
        "store": {"path": str(tmp / f"{daemon}.db")},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
        "control": {"socket": str(tmp / f"{daemon}.sock")},
        **extra,
    }


@asynccontextmanager
async def running(cfg: Config, clock: Clock) -> AsyncIterator[Daemon]:
    d = Daemon(cfg, clock=clock)
    await d.start()
    try:
        await d.link.wait_connected(WAIT_S)
        await wait_until(lambda: d.store is not None and d.store.snapshot_id is not None, what=f"{cfg.daemon_id}'s snapshot")
        yield d
    finally:
        await d.stop()


def seed(central: Central) -> None:
    central.load(
        SITE,
        [{"id": "m1", "name": "Ana", "cards": ["C1"]}],
        [{"id": "p1", "member": "m1", "kind": "visits", "balance": 10, "deduct_on": "access", "walk_in_cost": 1,
          "access_windows": {"mon-sun": "06:00-23:00"}}],
        [{"id": "b1", "member": "m1", "pass": "p1", "class": "Spinning", "zone": "main",
          "starts_at": "2026-11-18T10:00", "ends_at": "2026-11-18T10:45", "loyalty_points": 10}],
    )


def events(d: Daemon, kind: str) -> list[dict[str, Any]]:
    assert d.store is not None
    return [e for e in d.store.recent_events(1000) if e["type"] == kind]


def qr(clock: Clock, token: str) -> Credential:
    code = mint(KEY, token_id=token, member="m1", issued=clock(), expires=clock() + timedelta(seconds=60))
    return Credential.qr(code, "test")


async def ticks(n: int = 3) -> None:
    """Let the daemons' schedulers run (once a second)."""
    import asyncio

    await asyncio.sleep(n * 1.05)


async def test_a_class_attended_at_another_turnstile_while_the_desk_daemon_was_down(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    seed(central)
    clock = Clock(DAY)
    clock.to(9, 40)
    desk_cfg = config(tmp_path, mosquitto, "desk", "in-1", finalises=True)
    async with running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock) as in2:
        async with running(desk_cfg, clock) as desk:
            await wait_until(lambda: "in2" in desk.link.session.peers.marks
                             and not desk.link.session.peers.marks["in2"].missing, what="desk hearing in2")
        # the desk daemon is gone; Ana comes to her class through the other turnstile
        clock.to(9, 55)
        r = await in2.handle_credential("in-2", Credential.card("C1", "test"))
        assert (r["decision"], r["reason"], r["booking"]) == ("granted", "booking", "b1")
        clock.to(11, 5)  # 20 minutes past the class's end: its no-shows are due
        async with running(desk_cfg, clock) as desk:
            # its first scheduler runs came before it heard in2 again: nothing settled blind
            await wait_until(lambda: desk.store is not None and desk.store.booking_status("b1") is not None
                             and desk.store.booking_status("b1").value == "attended", what="the attendance at desk")
            await ticks()
            assert events(desk, "attendance") == [] and events(desk, "deduction") == []  # no no-show, no fee
            clock.to(11, 20)  # its points fall due (ends + 30m)
            await wait_until(lambda: len(events(desk, "loyalty")) == 1, what="the class's points")


async def test_a_daemon_never_heard_again_holds_no_shows_until_the_limit_then_is_named(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    seed(central)
    clock = Clock(DAY)
    clock.to(9, 40)
    desk_cfg = config(tmp_path, mosquitto, "desk", "in-1", finalises=True, peer_wait_limit="30m")
    async with running(desk_cfg, clock) as desk:
        async with running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock):
            await wait_until(lambda: "in2" in desk.link.session.peers.marks
                             and not desk.link.session.peers.marks["in2"].missing, what="desk hearing in2")
        # in2 is gone for good (its box died); Ana never came
        clock.to(11, 5)
        await ticks()
        assert events(desk, "attendance") == []  # held: in2 may have let her in
        status = desk.health()["knowledge"]
        assert status["peers"]["in2"]["online"] is False
        clock.to(11, 31)  # past the limit (10:45 + 15m + 30m)
        await wait_until(lambda: len(events(desk, "attendance")) == 1, what="the no-show, at last")
        [no_show] = events(desk, "attendance")
        assert (no_show["booking"], no_show["status"], no_show["unheard"]) == ("b1", "no_show", ["in2"])
        assert [e["amount"] for e in events(desk, "deduction")] == [1]  # the fee, now
        alarms = [e["kind"] for e in events(desk, "alarm")]
        assert "peers_unheard" in alarms


async def both_hearing(a: Daemon, b: Daemon) -> None:
    for x, y in ((a, b), (b, a)):
        await wait_until(lambda x=x, y=y: y.config.daemon_id in x.link.session.peers.marks
                         and x.link.session.peers.marks[y.config.daemon_id].online, what="the daemons hearing each other")


async def test_one_qr_code_shown_at_two_daemons_of_the_site_two_seconds_apart(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    seed(central)
    clock = Clock(DAY)
    clock.to(12, 0)
    async with running(config(tmp_path, mosquitto, "desk", "in-1", finalises=True), clock) as a, \
            running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock) as b:
        await both_hearing(a, b)
        code = qr(clock, "tok-1")
        first = await a.handle_credential("in-1", code)
        assert (first["decision"], first["reason"]) == ("granted", "walk_in")
        import asyncio

        await asyncio.sleep(2.0)
        second = await b.handle_credential("in-2", code)
        assert (second["decision"], second["reason"]) == ("denied", "qr_replayed")


async def test_one_qr_code_shown_at_two_daemons_at_the_same_instant_opens_one(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    import asyncio

    seed(central)
    clock = Clock(DAY)
    clock.to(12, 0)
    async with running(config(tmp_path, mosquitto, "desk", "in-1", finalises=True), clock) as a, \
            running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock) as b:
        await both_hearing(a, b)
        for n in range(3):
            code = qr(clock, f"race-{n}")
            ra, rb = await asyncio.gather(a.handle_credential("in-1", code), b.handle_credential("in-2", code))
            assert sorted((ra["decision"], rb["decision"])) == ["denied", "granted"], (ra, rb)
            loser = ra if ra["decision"] == "denied" else rb
            assert loser["reason"] == "qr_replayed"


def seed_store(cfg: Config, balance: int) -> None:
    """What `gated seed` does: the gate's records without a central system — on a gate
    that has run before (its mark of what it sent is there: a new box would hold its
    events until the central system answers, sync/store/numbering.py)."""
    from sync.records import MemberIn, PassIn
    from sync.store import Store, SyncBatch
    from sync.store.sent_mark import SentMark

    SentMark(cfg.store.path).advance(0, DAY.timestamp())
    store = Store(cfg.store.path, cfg.site_domain(), daemon_id=cfg.daemon_id)
    try:
        visits = PassIn.model_validate({"id": "p1", "member": "m1", "kind": "visits", "balance": balance,
                                        "deduct_on": "access", "walk_in_cost": 1,
                                        "access_windows": {"mon-sun": "06:00-23:00"}})
        store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])], [visits]), DAY)
    finally:
        store.close()


@asynccontextmanager
async def without_central(cfg: Config, clock: Clock) -> AsyncIterator[Daemon]:
    d = Daemon(cfg, clock=clock)
    await d.start()
    try:
        await d.link.wait_connected(WAIT_S)
        yield d
    finally:
        await d.stop()


async def test_the_last_visit_is_not_granted_twice_with_the_central_unreachable(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The site broker is up, the central system is not (the WAN is down): a pass with one
    visit left, used at one turnstile, is used up at the other too."""
    clock = Clock(DAY)
    clock.to(12, 0)
    a_cfg = config(tmp_path, mosquitto, "desk", "in-1", finalises=True)
    b_cfg = config(tmp_path, mosquitto, "in2", "in-2", finalises=False)
    for cfg in (a_cfg, b_cfg):
        seed_store(cfg, balance=1)
    async with without_central(a_cfg, clock) as a, without_central(b_cfg, clock) as b:
        await both_hearing(a, b)
        first = await a.handle_credential("in-1", Credential.card("C1", "test"))
        assert (first["decision"], first["reason"]) == ("granted", "walk_in")
        assert b.store is not None
        await wait_until(lambda: b.store is not None and b.store.balance("p1") == 0, what="the charge heard at in2")
        second = await b.handle_credential("in-2", Credential.card("C1", "test"))
        assert (second["decision"], second["reason"]) == ("denied", "no_balance")


async def test_the_last_visit_charged_at_two_turnstiles_at_once_is_an_overdraft_reported_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    import asyncio

    clock = Clock(DAY)
    clock.to(12, 0)
    a_cfg = config(tmp_path, mosquitto, "desk", "in-1", finalises=True)
    b_cfg = config(tmp_path, mosquitto, "in2", "in-2", finalises=False)
    for cfg in (a_cfg, b_cfg):
        seed_store(cfg, balance=1)
    async with without_central(a_cfg, clock) as a, without_central(b_cfg, clock) as b:
        await both_hearing(a, b)
        ra, rb = await asyncio.gather(a.handle_credential("in-1", Credential.card("C1", "test")),
                                      b.handle_credential("in-2", Credential.card("C1", "test")))
        assert ra["decision"] == rb["decision"] == "granted"  # neither could know
        await wait_until(lambda: a.store is not None and b.store is not None
                         and a.store.balance("p1") == b.store.balance("p1") == -1, what="both charges heard")
        await ticks(1)
        reports = [e for d in (a, b) for e in events(d, "alarm") if e["kind"] == "overdraft"]
        assert len(reports) == 1, reports  # one daemon says it, for the central system and the desk
        assert reports[0]["pass"] == "p1" and reports[0]["balance"] == -1 and len(reports[0]["charges"]) == 2


async def test_a_daemon_whose_status_is_cleared_is_no_longer_waited_for(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """docs/operations.md: a daemon taken out of the site for good — an empty retained
    message on its status topic — is forgotten, durably, and no longer holds no-shows."""
    import aiomqtt

    seed(central)
    clock = Clock(DAY)
    clock.to(9, 40)
    desk_cfg = config(tmp_path, mosquitto, "desk", "in-1", finalises=True)
    async with running(desk_cfg, clock) as desk:
        async with running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock):
            await wait_until(lambda: "in2" in desk.link.session.peers.marks
                             and not desk.link.session.peers.marks["in2"].missing, what="desk hearing in2")
        assert desk.store is not None and "in2" in desk.store.peer_marks()
        async with aiomqtt.Client("127.0.0.1", mosquitto.port) as c:
            await c.publish(f"gated/{SITE}/in2/status", b"", qos=1, retain=True)
        await wait_until(lambda: "in2" not in desk.link.session.peers.marks, what="in2 forgotten")
        await wait_until(lambda: desk.store is not None and "in2" not in desk.store.peer_marks(), what="durably")
        clock.to(11, 5)  # b1's no-shows are due: nobody to wait for
        await wait_until(lambda: len(events(desk, "attendance")) == 1, what="the no-show")
        assert "unheard" not in events(desk, "attendance")[0]


async def test_the_desk_refund_of_a_walk_in_at_a_turnstile_not_heard_yet_waits_for_it(
    mosquitto: Mosquitto, central: Central, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Soak 23's traced day: the desk's daemon restarted and the desk marked a booking
    attended with a refund before it had heard the other turnstile's walk-in charge. It
    answered "no walk-in charge" and the member kept paying twice. Now the refund waits —
    the answer says for whom, the console shows it — and is given back when the charge
    arrives."""
    monkeypatch.setattr(gated.knowledge, "REFUNDS_ALARM", 0.5)
    seed(central)
    clock = Clock(DAY)
    clock.to(9, 15)
    desk_cfg = config(tmp_path, mosquitto, "desk", "in-1", finalises=True)
    in2_cfg = config(tmp_path, mosquitto, "in2", "in-2", finalises=False)
    async with running(in2_cfg, clock) as in2:
        async with running(desk_cfg, clock) as desk:
            await both_hearing(desk, in2)
            await wait_until(lambda: desk.store is not None and "in2" in desk.store.peer_marks(), what="in2's mark kept")
        # the desk's daemon is down; Ana comes early through the other turnstile: a walk-in
        r = await in2.handle_credential("in-2", Credential.card("C1", "test"))
        assert (r["decision"], r["reason"]) == ("granted", "walk_in")
        [charge] = events(in2, "deduction")
    # and in2's box goes down too before the desk's daemon is back
    clock.to(9, 50)
    async with running(desk_cfg, clock) as desk:
        committed = await desk.operator.mark_attended("b1", "desk", refund=True)
        assert [e["type"] for e in committed.events] == ["attendance"]
        assert desk.store is not None
        wanted = desk.store.refund_wanted("b1")
        assert wanted is not None and "in2" in wanted.waiting, wanted
        await ticks()
        assert events(desk, "deduction") == []  # nothing given back blind, nothing guessed
        [gap] = [g for g in desk.health()["knowledge"]["gaps"] if g["kind"] == "refunds_waiting"]
        assert "1 refund(s)" in gap["detail"] and "in2" in gap["detail"]
        assert "refunds_waiting" in [e["kind"] for e in events(desk, "alarm")]
        async with running(in2_cfg, clock):
            await wait_until(lambda: len(events(desk, "deduction")) == 1, what="the refund, once in2 is heard")
        await wait_until(lambda: "refunds_waiting_ended" in [e["kind"] for e in events(desk, "alarm")],
                         what="the gap closed")
        [refund] = events(desk, "deduction")
        assert (refund["cause"], refund["amount"], refund["booking"]) == ("refund", -1, "b1")
        assert refund["refunds"] == {"daemon": "in2", "seq": charge["seq"]}
        assert desk.store.refund_wanted("b1") is None


async def test_a_peer_event_heard_but_not_recorded_is_asked_for_again(
    mosquitto: Mosquitto, central: Central, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The desk's store cannot record in2's walk-in when it arrives (the disk full for a
    moment). The desk does not count it as heard: in2 is unheard up to the charge (a
    refund asked for meanwhile waits), the charge is asked for again by catch-up and
    recorded once the store can write, and the desk's refund then gives it back. Before,
    in2's next heartbeat made it heard: the charge was missing for good and the refund
    answered "none"."""
    seed(central)
    clock = Clock(DAY)
    clock.to(9, 15)
    async with running(config(tmp_path, mosquitto, "desk", "in-1", finalises=True), clock) as desk, \
            running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock) as in2:
        await both_hearing(desk, in2)
        assert desk.store is not None
        # a new daemon holds its events until the central system's word (at its first
        # snapshot); until then it waits for itself too (test_peers)
        await wait_until(lambda: desk.store is not None and desk.store.unsure_after is None, what="the desk settled")
        record, failed = desk.store.record_peer_events, []

        def full(sender: str, events: list[dict[str, Any]], *args: Any, **kw: Any) -> Any:
            if any(e.get("type") == "deduction" for e in events) and not failed:
                failed.append(1)
                raise sqlite3.OperationalError("database or disk is full")
            return record(sender, events, *args, **kw)

        monkeypatch.setattr(desk.store, "record_peer_events", full)
        r = await in2.handle_credential("in-2", Credential.card("C1", "test"))
        assert (r["decision"], r["reason"]) == ("granted", "walk_in")
        await wait_until(lambda: failed, what="the failed record")
        assert desk.link.stats["peer_events_not_recorded"] == 1
        assert desk.knowledge.unheard(clock()) == ["in2"]
        await wait_until(
            lambda: desk.store is not None
            and desk.store.conn.execute("SELECT COUNT(*) FROM site_charges WHERE daemon = 'in2'").fetchone()[0] == 1,
            what="in2's charge recorded after a catch-up")
        clock.to(9, 16)
        await wait_until(lambda: desk.knowledge.unheard(clock()) == [], what="in2 heard up to now")
        committed = await desk.operator.mark_attended("b1", "desk", refund=True)
        if not [e for e in committed.events if e["type"] == "deduction"]:  # waited a heartbeat
            await wait_until(lambda: len(events(desk, "deduction")) == 1, what="the refund")
        [refund] = events(desk, "deduction")
        assert (refund["cause"], refund["amount"], refund["refunds"]["daemon"]) == ("refund", -1, "in2")


async def reload_with(d: Daemon, tmp: Path, broker: Mosquitto, gate: str, *, finalises: bool) -> None:
    """`systemctl reload gated` with the daemon's file changed to `time_driven_work: finalises`."""
    import json

    from gated.reload import reload_config

    path = tmp / f"{d.config.daemon_id}.yaml"  # JSON is YAML
    path.write_text(json.dumps(config_dict(tmp, broker, d.config.daemon_id, gate, finalises=finalises)))
    assert await reload_config(d, path)
    assert d.config.time_driven_work is finalises


def no_shows(*daemons: Daemon) -> list[tuple[str, str]]:
    """(daemon, booking) of every no-show the daemons settled themselves."""
    return [(d.config.daemon_id, e["booking"]) for d in daemons for e in events(d, "attendance")
            if e["status"] == "no_show"]


async def test_the_work_moved_from_one_daemon_to_another_leaves_no_class_unsettled(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """docs/operations.md, "A site with several daemons": the desk's daemon did the site's
    time-driven work; the operator reloads it with `time_driven_work: false`, Ana's
    Spinning (10:00-10:45) falls due (11:00), and only then reloads in2 with `true`. in2
    begins where the desk's heartbeat said it had settled, not at its own first run: the
    class is settled once, by in2. (It was settled by neither: in2 took only what fell
    due after it began, the booking stayed `booked` for good and the fee was never taken.)"""
    seed(central)
    clock = Clock(DAY)
    clock.to(9, 40)
    async with running(config(tmp_path, mosquitto, "desk", "in-1", finalises=True), clock) as desk, \
            running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock) as in2:
        await both_hearing(desk, in2)
        await ticks(2)  # the desk does the work
        clock.to(10, 30)
        await ticks(2)  # and settles on through 10:15: nothing was due
        await reload_with(desk, tmp_path, mosquitto, "in-1", finalises=False)
        await ticks(2)
        clock.to(11, 5)  # the class's no-show falls due between the two reloads
        await ticks(2)
        assert no_shows(desk, in2) == []
        await reload_with(in2, tmp_path, mosquitto, "in-2", finalises=True)
        await wait_until(lambda: no_shows(desk, in2) != [], what="the class settled")
        await ticks(2)
        assert no_shows(desk, in2) == [("in2", "b1")]  # once, by the daemon that does the work now
        assert [(e["cause"], e["amount"]) for e in events(in2, "deduction")] == [("no_show_fee", 1)]
        assert events(desk, "deduction") == []
        await wait_until(lambda: desk.store is not None and desk.store.booking_status("b1") is not None
                         and desk.store.booking_status("b1").value == "no_show", what="the no-show heard at the desk")
        assert "two_workers" not in [e["kind"] for d in (desk, in2) for e in events(d, "alarm")]


async def test_two_daemons_given_the_work_settle_a_class_once_and_raise_an_alarm(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """in2 is reloaded with `time_driven_work: true` while the desk's daemon still does the
    work (the wrong order, or a mistake): it hears the desk's heartbeat say so, raises
    `two_workers` and settles nothing — Ana's class is settled once, by the desk. Once the
    desk is reloaded with `false`, in2 takes over from where the desk had settled. (Both
    settled it: two no-shows, two fees, unless one heard the other's in time.)"""
    seed(central)
    clock = Clock(DAY)
    clock.to(9, 40)
    async with running(config(tmp_path, mosquitto, "desk", "in-1", finalises=True), clock) as desk, \
            running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock) as in2:
        await both_hearing(desk, in2)
        await ticks(2)  # the desk does the work
        await reload_with(in2, tmp_path, mosquitto, "in-2", finalises=True)
        await wait_until(lambda: "two_workers" in [e["kind"] for e in events(in2, "alarm")], what="in2's alarm")
        [gap] = [g for g in in2.health()["knowledge"]["gaps"] if g["kind"] == "two_workers"]
        assert "desk" in gap["detail"]
        clock.to(11, 5)
        await wait_until(lambda: no_shows(desk, in2) != [], what="the class settled")
        await ticks(3)
        assert no_shows(desk, in2) == [("desk", "b1")]
        assert events(in2, "deduction") == []
        # the work handed over the other way round: nothing settled again, the alarm ends
        await reload_with(desk, tmp_path, mosquitto, "in-1", finalises=False)
        await wait_until(lambda: "two_workers_ended" in [e["kind"] for e in events(in2, "alarm")],
                         what="the alarm ended")
        clock.to(11, 30)
        await ticks(3)
        assert no_shows(desk, in2) == [("desk", "b1")]


async def test_an_emergency_release_at_one_daemon_is_an_evacuation_at_the_other(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """The link's filter of another daemon's events dropped its `fire_alarm` (and its
    `passage_unconfirmed`, its exits unrecorded): an emergency release at in2 let its
    evacuees back in free there, while the desk's turnstile refused them anti-passback —
    found by an outside probe with a frozen peer."""
    from sync.store import evacuation

    seed(central)
    clock = Clock(DAY)
    clock.to(9, 0)
    async with running(config(tmp_path, mosquitto, "in2", "in-2", finalises=False), clock) as in2, \
            running(config(tmp_path, mosquitto, "desk", "in-1", finalises=True), clock) as desk:
        assert desk.store is not None and in2.safety is not None
        await wait_until(lambda: "in2" in desk.link.session.peers.marks, what="desk hearing in2")
        await in2.safety.set_emergency(True, "boss", "drill")
        clock.to(9, 5)
        await in2.safety.set_emergency(False, "boss", None)
        # its start and its end are two events: both heard, in their time
        await wait_until(lambda: desk.store is not None and [s[1] is not None for s in evacuation.spans_of(desk.store.conn)]
                         == [True], what="the evacuation, begun and ended, heard at the desk")
