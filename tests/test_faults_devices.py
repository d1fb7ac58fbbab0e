"""Device faults against a running daemon, with the simulator standing in for the hardware:
serial readers on real ptys (`simulator.serial_reader`), turnstiles on real Modbus TCP
servers (`simulator.turnstile`), taps decided by the real Daemon.

The gate must lose nothing and let no one in by mistake while the hardware misbehaves:
every fault is an event (`alarm`, `fire_alarm`), no deduction without a confirmed passage,
and the daemon recovers by itself when the device comes back.

The reader unplug test runs the daemon as a separate process (`gated run`, through
tests/test_daemon.py's `running_daemon`); the others start the Daemon in this event loop,
which lets them tap several gates at once and look at the store directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gated.config import Config
from gated.console.alarms import conditions
from gated.control import request
from gated.daemon import Daemon
from gated.seed import batch_from
from gated.status import status_line
from rules.credential import Credential
from simulator.serial_reader import VirtualSerialReader
from simulator.turnstile import Fault, Person, SimTurnstile
from sync.store import Store
from tests.test_daemon import running_daemon, wait_for

WINDOWS = {"mon-sun": "00:00-24:00"}
# card -> member; every member has a 20-visit multipack
CARDS = {"04A1B2C3D4": "m1", "0499887766": "m2", "0411223344": "m3", "0455667788": "m4", "04AABBCCDD": "m5"}
BALANCE = 20


def seed() -> dict[str, Any]:
    return {
        "members": [{"id": m, "name": f"Member {m}", "cards": [c]} for c, m in CARDS.items()],
        "passes": [
            {"id": f"p-{m}", "member": m, "name": "Multipack 20", "kind": "visits", "balance": BALANCE,
             "access_windows": WINDOWS}
            for m in CARDS.values()
        ],
    }


def output(sim: SimTurnstile, **over: Any) -> dict[str, Any]:
    """A gate's relay on the simulator, with short timings (a grant lapses after 1.5 s)."""
    return {
        "transport": "tcp", "host": sim.host, "port": sim.port, "unit": sim.unit, "coil": sim.coil,
        "passage_input": sim.passage_input, "door_contact": sim.door_contact, "pulse": 0.3,
        "passage_timeout": 1.5, "held_open_after": 30, "timeout": 0.3, "retries": 1, "reconnect_max": 0.5,
        "mode": "fail_safe", **over,
    }


def make_config(tmp: Path, gates: list[dict[str, Any]], **extra: Any) -> Config:
    return Config.model_validate(
        {
            "site": {"id": "fault-site", "timezone": "Europe/Madrid"},
            "daemon_id": "gate-f",
            "stale_cache": {"max_age": None, "policy": "keep"},
            "gates": gates,
            "store": {"path": str(tmp / "gated.db")},
            "console": {"enabled": False},
            "metrics": {"enabled": False},
            "control": {"socket": str(tmp / "control.sock")},
            "logging": {"format": "json", "level": "warning"},
            **extra,
        }
    )


@dataclass
class Site:
    daemon: Daemon
    sims: dict[str, SimTurnstile]
    readers: dict[str, VirtualSerialReader] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        assert self.daemon.store is not None
        return self.daemon.store

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        evs = self.store.events_after(0, 100_000)
        return [e for e in evs if type_ is None or e["type"] == type_]

    def alarms(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events("alarm") if e.get("kind") == kind]

    def access(self, member: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events("access") if member is None or e.get("member") == member]

    def balance(self, member: str) -> int:
        b = self.store.balance(f"p-{member}")
        assert b is not None
        return int(b)

    async def tap(self, gate: str, card: str) -> dict[str, Any]:
        return await self.daemon.handle_credential(gate, Credential.card(card, "test"))

    def relay(self, gate: str) -> str:
        return str(self.daemon.health()["gates"][gate]["relay"])


@contextlib.asynccontextmanager
async def running_site(
    tmp: Path,
    gates: Callable[[dict[str, SimTurnstile], dict[str, VirtualSerialReader]], list[dict[str, Any]]],
    *,
    sims: tuple[str, ...] = ("in",),
    readers: tuple[str, ...] = (),
    person: Person | None = None,
    extra: Callable[[dict[str, SimTurnstile]], dict[str, Any]] | None = None,
) -> AsyncIterator[Site]:
    """Simulated turnstiles (one per name in `sims`) and pty readers, a seeded store, and the
    Daemon started in this loop; everything is stopped at the end."""
    async with contextlib.AsyncExitStack() as stack:
        turnstiles = {
            name: await stack.enter_async_context(SimTurnstile(port=0, person=person or Person(delay=0.1)))
            for name in sims
        }
        ptys = {name: stack.enter_context(VirtualSerialReader(tmp / f"reader-{name}")) for name in readers}
        config = make_config(tmp, gates(turnstiles, ptys), **(extra(turnstiles) if extra else {}))
        store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id, ten_digits=config.ten_digits())
        store.apply_sync(batch_from(seed(), config), datetime.now(UTC))
        store.close()
        daemon = Daemon(config)
        await daemon.start()
        try:
            yield Site(daemon, turnstiles, ptys)
        finally:
            await daemon.stop()


def serial_reader(rid: str, pty: VirtualSerialReader) -> dict[str, Any]:
    # debounce 0.2 s: the tests tap the same card again within seconds on purpose
    return {"type": "serial", "id": rid, "device": pty.path, "format": "hex", "debounce": 0.2, "reconnect_max": 0.5}


def no_double_deduction(site: Site) -> None:
    """Every deduction belongs to exactly one passed, granted entry (a re-entry is free),
    and balances add up."""
    passed = {}
    for e in site.access():
        if e["decision"] == "granted" and e.get("passed") and e["reason"] not in ("exit", "reentry"):
            passed[e["member"]] = passed.get(e["member"], 0) + 1
    deducted: dict[str, int] = {}
    for e in site.events("deduction"):
        deducted[e["member"]] = deducted.get(e["member"], 0) + int(e["amount"])
    assert deducted == {m: n for m, n in passed.items() if n}
    for m in CARDS.values():
        assert site.balance(m) == BALANCE - deducted.get(m, 0)
    seqs = [e["seq"] for e in site.events()]
    assert seqs == list(range(1, len(seqs) + 1))  # gap-free


# -- readers ---------------------------------------------------------------------------------


UNPLUG_CYCLES = 10


async def test_reader_unplugged_and_replugged_many_times(tmp_path: Path) -> None:
    """`gated run` as a process: the USB reader is pulled and put back ten times; health
    follows (offline, online), and the tap after every replug is decided and committed."""
    async with running_daemon(tmp_path) as d:
        sock = str(tmp_path / "control.sock")

        async def reader_health() -> str:
            return str((await request(sock, {"cmd": "status"}))["readers"]["r1"]["health"])

        async def wait_health(want: str) -> None:
            deadline = time.monotonic() + 15
            while (got := await reader_health()) != want:
                assert time.monotonic() < deadline, f"reader health stayed {got}, wanted {want}"
                await asyncio.sleep(0.05)

        await wait_health("online")
        last_known: dict[str, float] = {}
        for cycle in range(UNPLUG_CYCLES):
            d.reader.unplug()
            await wait_health("offline")
            d.reader.replug()
            await wait_health("online")
            # known cards every few cycles (debounce is 2 s on this reader), unique unknown ones between
            if cycle % 3 == 0:
                card = "04A1B2C3D4" if cycle % 2 == 0 else "0499887766"
                await asyncio.sleep(max(0.0, 2.2 - (time.monotonic() - last_known.get(card, 0.0))))
                last_known[card] = time.monotonic()
            else:
                card = f"FF{cycle:08X}"
            before = len(d.events())
            d.reader.tap(card)
            await wait_for(lambda b=before: len([e for e in d.events()[b:] if e["type"] == "access"]) == 1,
                           15, f"the tap after replug #{cycle + 1}")
        access = [e for e in d.events() if e["type"] == "access"]
        assert len(access) == UNPLUG_CYCLES
        granted = [e for e in access if e["decision"] == "granted"]
        assert len(granted) == len(range(0, UNPLUG_CYCLES, 3)) and all(e["passed"] for e in granted)
        assert all(e["reason"] == "unknown_card" for e in access if e["decision"] == "denied")
        assert len([e for e in d.events() if e["type"] == "deduction"]) == len(granted)
        assert d.proc.poll() is None


# -- the relay board ---------------------------------------------------------------------------


def one_gate(sims: dict[str, SimTurnstile], ptys: dict[str, VirtualSerialReader]) -> list[dict[str, Any]]:
    readers = [serial_reader("r-in", ptys["in"])] if "in" in ptys else []
    return [{"id": "turnstile-1", "zone": "main", "readers": readers, "output": output(sims["in"])}]


async def test_relay_board_silent_or_gone_denies_then_recovers(tmp_path: Path) -> None:
    """Three outages each way (the board stops answering; the board's server goes away):
    taps are denied hardware_fault with nothing deducted, each outage is an alarm, and the
    gate comes back by itself."""
    async with running_site(tmp_path, one_gate, readers=("in",)) as site:
        sim, pty = site.sims["in"], site.readers["in"]
        gate = "turnstile-1"
        await wait_for(lambda: site.daemon.readers["r-in"][1].health.value == "online", what="reader online")
        members = list(CARDS)
        taps = 0
        for cycle in range(6):
            silent = cycle % 2 == 0
            if silent:
                sim.inject("no_answer")
            else:
                await sim.stop_server()
            await wait_for(lambda: site.relay(gate) != "online", 10, "the relay to be reported offline")
            unlocks = sim.unlocks
            card = members[cycle % len(members)]
            pty.tap(card)
            taps += 1
            await wait_for(lambda n=taps: len(site.access()) == n, 10, "the tap during the outage")
            denied = site.access()[-1]
            assert denied["decision"] == "denied" and denied["reason"] == "hardware_fault", denied
            assert sim.unlocks == unlocks  # the coil never moved
            if silent:
                sim.inject("none")
            else:
                await sim.start_server()
            await wait_for(lambda: site.relay(gate) == "online", 15, "the relay to come back")
            await asyncio.sleep(0.3)  # past the reader's debounce: the same card again
            pty.tap(card)
            taps += 1
            await wait_for(lambda n=taps: len(site.access()) == n, 10, "the tap after the outage")
            ok = site.access()[-1]
            assert ok["decision"] == "granted" and ok["passed"] is True, ok
        assert len(site.alarms("relay_offline")) + len(site.alarms("relay_error")) >= 6
        assert len(site.alarms("relay_online")) >= 6
        assert len(site.events("deduction")) == 6
        no_double_deduction(site)


async def test_board_silent_after_the_release_is_passage_unconfirmed(tmp_path: Path) -> None:
    """The relay is released, then the board stops answering before its passage input shows
    the rotation (found by `gated sim day`: the person went through, the tap said `passed:
    false`, and nothing explained the rotation). Nobody can say whether the member passed:
    no deduction, and a `passage_unconfirmed` event, as after a
    crash (because: relay_unreadable); the intent is resolved."""
    async with running_site(tmp_path, one_gate, person=Person(delay=0.8)) as site:
        sim, gate = site.sims["in"], "turnstile-1"
        member = next(iter(CARDS.values()))
        card = next(c for c, m in CARDS.items() if m == member)
        unlocks = sim.unlocks
        tap = asyncio.create_task(site.tap(gate, card))
        await wait_for(lambda: sim.unlocks > unlocks, 10, "the release")
        sim.inject("no_answer")  # the person is about to push the arm
        result = await asyncio.wait_for(tap, 15)
        await wait_for(lambda: len(sim.passages) == 1, 10, "the rotation (latched release)")
        assert result["decision"] == "granted" and result["passed"] is False
        unconfirmed = site.events("passage_unconfirmed")
        assert len(unconfirmed) == 1 and unconfirmed[0]["because"] == "relay_unreadable"
        assert unconfirmed[0]["member"] == member and unconfirmed[0]["gate"] == gate
        assert not site.events("deduction") and site.balance(member) == BALANCE
        assert not site.store.open_intents()
        sim.inject("none")
        await wait_for(lambda: site.relay(gate) == "online", 15, "the relay to come back")


async def test_a_stuck_passage_input_is_named_and_its_grants_end_unconfirmed(tmp_path: Path) -> None:
    """The turnstile's passage sensor reads active for good (a jammed sensor, a frozen I/O
    module): members go through and no rotation shows. Before, nothing named it, and every
    grant ended "did not pass" (`passed: false`, a `not_opened` alarm; a booking then went
    unattended). Now: a `passage_input_stuck` alarm, in `gated status`, the console's
    alarms and the status line; each grant a `passage_unconfirmed` (`because:
    passage_input_stuck`), nothing deducted, no `not_opened`; `passage_input_stuck_cleared`
    once it reads inactive, and the next member is charged as usual."""
    async with running_site(tmp_path, one_gate, person=Person(delay=0.1)) as site:
        sim, gate = site.sims["in"], "turnstile-1"
        (first, m1), (second, m2) = list(CARDS.items())[:2]
        sim.stick_passage(True)
        await wait_for(lambda: site.alarms("passage_input_stuck"), 10, "the stuck input named")
        health = site.daemon.health()
        assert health["gates"][gate]["state"]["passage_input_stuck"] is True
        assert ("passage_input_stuck", gate) in [(c.kind, c.gate) for c in conditions(health)]
        assert f"PASSAGE INPUT STUCK ({gate})" in status_line(site.daemon)
        result = await asyncio.wait_for(site.tap(gate, first), 15)
        assert result["decision"] == "granted" and result["passed"] is False, result
        await wait_for(lambda: len(sim.passages) == 1, 10, "the member through")  # unseen
        unconfirmed = site.events("passage_unconfirmed")
        assert [(e["member"], e["because"]) for e in unconfirmed] == [(m1, "passage_input_stuck")], unconfirmed
        assert not site.alarms("not_opened") and not site.events("deduction") and site.balance(m1) == BALANCE
        assert not site.store.open_intents()
        sim.stick_passage(False)
        await wait_for(lambda: site.alarms("passage_input_stuck_cleared"), 10, "the input inactive again")
        assert site.daemon.health()["gates"][gate]["state"]["passage_input_stuck"] is False
        again = await asyncio.wait_for(site.tap(gate, second), 15)
        assert again["passed"] is True and site.balance(m2) == BALANCE - 1, again


async def test_release_whose_answer_is_lost_is_passage_unconfirmed(tmp_path: Path) -> None:
    """The board carries out the release and its answer is lost on the way back (a noisy
    line): the daemon cannot tell this from a board that did nothing, and the member is
    at an open turnstile. Denying hardware_fault would be a free entry with nothing
    recorded; the grant is a `passage_unconfirmed` event instead, with nothing deducted
    and the intent resolved, and the relay relocks when the board answers again."""
    async with running_site(tmp_path, one_gate, person=Person(delay=0.2)) as site:
        sim, gate = site.sims["in"], "turnstile-1"
        member = next(iter(CARDS.values()))
        card = next(c for c, m in CARDS.items() if m == member)
        sim.inject("lost_answer")
        result = await asyncio.wait_for(site.tap(gate, card), 15)
        assert sim.unlocks == 1
        await wait_for(lambda: len(sim.passages) == 1, 10, "the member through the open turnstile")
        assert result["decision"] == "granted" and result["passed"] is False, result
        unconfirmed = site.events("passage_unconfirmed")
        assert len(unconfirmed) == 1 and unconfirmed[0]["member"] == member, unconfirmed
        assert unconfirmed[0]["because"] == "relay_unreadable"
        assert not site.events("deduction") and site.balance(member) == BALANCE
        assert not site.store.open_intents()
        sim.inject("none")
        await wait_for(lambda: site.relay(gate) == "online", 15, "the relay to come back")
        await wait_for(lambda: not sim.unlocked, 10, "the relay relocked")


async def test_slow_board_still_correct_nothing_double(tmp_path: Path) -> None:
    """Every answer 120 ms late (the request timeout is 300 ms): each grant still opens once,
    sees its passage and deducts once."""
    async with running_site(tmp_path, one_gate) as site:
        sim = site.sims["in"]
        sim.inject("slow_answer", slow_ms=120)
        results = []
        for card in CARDS:
            results.append(await site.tap("turnstile-1", card))
        assert [r["decision"] for r in results] == ["granted"] * len(CARDS)
        assert all(r["passed"] for r in results), results
        assert sim.unlocks == len(CARDS)
        # a passage is confirmed as the arm starts turning; the rotation ends a moment later
        await wait_for(lambda: len(sim.passages) == len(CARDS), what="every rotation completed")
        assert not site.alarms("not_opened")
        sim.inject("none")
        no_double_deduction(site)
        assert all(site.balance(m) == BALANCE - 1 for m in CARDS.values())


async def test_person_who_never_turns(tmp_path: Path) -> None:
    """Granted, the turnstile released, nobody pushes: passed false, no deduction, a
    not_opened alarm; the next person who does turn is charged normally."""
    async with running_site(tmp_path, one_gate) as site:
        sim = site.sims["in"]
        sim.set_person(turns=False)
        for card in ("04A1B2C3D4", "0499887766", "04A1B2C3D4"):
            r = await site.tap("turnstile-1", card)
            assert r["decision"] == "granted" and r["passed"] is False, r
        await wait_for(lambda: len(site.alarms("not_opened")) == 3, what="three not_opened alarms")
        assert not site.events("deduction")
        assert site.balance("m1") == BALANCE and site.balance("m2") == BALANCE
        sim.set_person(turns=True, delay=0.1)
        r = await site.tap("turnstile-1", "04A1B2C3D4")
        assert r["passed"] is True
        no_double_deduction(site)
        assert site.balance("m1") == BALANCE - 1


async def test_door_contact_flapping(tmp_path: Path) -> None:
    """The door is forced open and shut eight times, taps in between: a door_forced alarm
    (and its clearing) each time, and every tap decided as usual."""
    async with running_site(tmp_path, one_gate) as site:
        sim = site.sims["in"]
        cards = list(CARDS)
        ctl = site.daemon.controllers["turnstile-1"]
        for cycle in range(8):
            # the last member's door has shut (forcing it while it is still open is no new opening)
            await wait_for(lambda: not sim.door_open and ctl.door_open is False, 10, "the door closed")
            sim.force_door_open()
            await wait_for(lambda c=cycle: len(site.alarms("door_forced")) == c + 1, 10, "door_forced")
            sim.close_door()
            await wait_for(lambda c=cycle: len(site.alarms("door_forced_cleared")) == c + 1, 10, "cleared")
            r = await site.tap("turnstile-1", cards[cycle % len(cards)])
            assert r["decision"] == "granted" and r["passed"] is True, r
        # a forced door during a tap does not confirm a passage nobody made
        sim.set_person(turns=False)
        sim.force_door_open()
        r = await site.tap("turnstile-1", cards[0])
        sim.close_door()
        assert r["decision"] == "granted" and r["passed"] is False
        assert sim.unlocks == 9
        no_double_deduction(site)


def fire_site(sims: dict[str, SimTurnstile], ptys: dict[str, VirtualSerialReader]) -> list[dict[str, Any]]:
    return [
        {"id": "in-1", "zone": "main", "direction": "in", "output": output(sims["in"])},
        {"id": "out-1", "zone": "main", "direction": "out", "output": output(sims["out"])},
        {"id": "out-plain", "zone": "main", "direction": "out"},  # an exit without a lock
    ]


def fire_input(sims: dict[str, SimTurnstile]) -> dict[str, Any]:
    sim = sims["in"]
    return {"fire_alarm": {"transport": "tcp", "host": sim.host, "port": sim.port, "unit": sim.unit,
                           "input": sim.fire_alarm_input, "active_low": False, "poll_interval": 0.05,
                           "timeout": 0.3}}


async def test_fire_alarm_raised_during_taps(tmp_path: Path) -> None:
    """The fire panel's contact (on the simulator's input 2) goes active while members tap:
    fail-safe doors are released and held, entries are refused (fire_alarm), exits are
    granted; when it clears the gates lock again and entries work. Both changes are
    `fire_alarm` events. Three alarms in a row."""
    async with running_site(tmp_path, fire_site, sims=("in", "out"), extra=fire_input) as site:
        sim_in, sim_out = site.sims["in"], site.sims["out"]
        daemon = site.daemon
        cards = list(CARDS)
        for _round in range(3):
            # two members come in normally
            for card in cards[:2]:
                r = await site.tap("in-1", card)
                assert r["decision"] == "granted" and r["passed"], r
            # the alarm goes off while three more are tapping
            taps = [asyncio.create_task(site.tap("in-1", card)) for card in cards[2:]]
            sim_in.set_fire_alarm(True)
            results = await asyncio.gather(*taps)
            await wait_for(lambda: daemon.fire_alarm, 10, "the daemon to see the fire input")
            for r in results:
                assert r["decision"] == "granted" or r["reason"] == "fire_alarm", r
            await wait_for(lambda: sim_in.unlocked and sim_out.unlocked, 10, "fail-safe doors released")
            # nobody gets in, everybody gets out
            for card in cards:
                r = await site.tap("in-1", card)
                assert r["decision"] == "denied" and r["reason"] == "fire_alarm", r
            r = await site.tap("out-1", cards[0])
            assert r["decision"] == "granted" and r["reason"] == "exit", r
            r = await site.tap("out-plain", cards[1])
            assert r["decision"] == "granted" and r["reason"] == "exit", r
            assert sim_in.unlocked and sim_out.unlocked  # an exit does not end the release
            # the evacuees the release let go are through (an arm released by the alarm is
            # armed for one turn: one still on the way at the all-clear goes round after the
            # relock, a forced door; seen once in a clean-clone run on a loaded machine)
            await wait_for(lambda: sim_in.people_moving == 0 and sim_out.people_moving == 0, 10,
                           "the evacuees through")
            # the panel is reset
            sim_in.set_fire_alarm(False)
            await wait_for(lambda: not daemon.fire_alarm, 10, "the fire alarm to clear")
            await wait_for(lambda: not sim_in.unlocked and not sim_out.unlocked, 10, "doors locked again")
            for card in cards:  # leave, so the next round starts with everybody outside
                await site.tap("out-plain", card)
            # inside when the alarm went off, out through the released exit: back in free
            r = await site.tap("in-1", cards[0])
            assert r["decision"] == "granted" and r["reason"] == "reentry" and r["passed"], r
            await site.tap("out-plain", cards[0])
        fire = [e for e in site.events("fire_alarm") if e.get("source") == "input"]
        assert [e["active"] for e in fire if e["active"]] == [True, True, True]
        assert [e["active"] for e in fire][-1] is False
        assert not site.alarms("door_forced")  # the release is not a forced door
        no_double_deduction(site)


def hard_fire_site(sims: dict[str, SimTurnstile], ptys: dict[str, VirtualSerialReader]) -> list[dict[str, Any]]:
    gates = fire_site(sims, ptys)
    gates[0]["anti_passback"] = "hard"
    return gates


async def test_members_evacuated_come_back_in_free_after_the_fire_alarm(tmp_path: Path) -> None:
    """Two members are inside (hard anti-passback, a visit each) when the fire alarm goes
    off; they leave through the released exit without a tap. After the reset, the gate
    does not take them for still inside: both come back in, free (`reentry`), and the zone
    counts them once. A member who had left before the alarm pays as usual."""
    async with running_site(tmp_path, hard_fire_site, sims=("in", "out"), extra=fire_input) as site:
        sim_in, daemon = site.sims["in"], site.daemon
        m1, m2, m3 = list(CARDS)[:3]
        for card in (m1, m2, m3):
            r = await site.tap("in-1", card)
            assert r["reason"] == "walk_in" and r["passed"], r
        await site.tap("out-plain", m3)  # m3 goes home before the alarm
        assert daemon.occupancy("main") == 2
        sim_in.set_fire_alarm(True)
        await wait_for(lambda: daemon.fire_alarm, 10, "the daemon to see the fire input")
        sim_in.set_fire_alarm(False)
        await wait_for(lambda: not daemon.fire_alarm, 10, "the fire alarm to clear")
        assert daemon.occupancy("main") == 0  # nobody is known to be inside any more
        before = {card: site.balance(CARDS[card]) for card in (m1, m2, m3)}
        for card in (m1, m2):
            r = await site.tap("in-1", card)
            assert r["decision"] == "granted" and r["reason"] == "reentry" and r["passed"], r
        r = await site.tap("in-1", m3)
        assert r["reason"] == "walk_in" and r["passed"], r
        assert {card: site.balance(CARDS[card]) for card in (m1, m2, m3)} == {**before, m3: before[m3] - 1}
        assert daemon.occupancy("main") == 3
        r = await site.tap("in-1", m1)  # inside again, as the rules say
        assert r["decision"] == "denied" and r["reason"] == "anti_passback", r


async def evacuee_through_without_alarm(site: Any, sim_out: SimTurnstile) -> None:
    """Once the door is shut again: no `door_forced`, and the rotation reported, as every
    unclaimed one is, as an evacuee's — not for the desk to settle as a pushed arm."""
    await wait_for(lambda: not sim_out.door_open, 10, "the door closed")
    await asyncio.sleep(0.5)  # readings of the closed door
    assert not site.alarms("door_forced")
    out = [a for a in site.alarms("passage_while_released") if a["gate"] == "out-1"]
    assert out and out[-1]["detail"].endswith("while the gate stood released for a fire alarm"), out
    assert not [a for a in site.alarms("passage_without_grant") if a["gate"] == "out-1"]


async def test_evacuee_mid_push_as_the_fire_alarm_resets_is_no_forced_door(tmp_path: Path) -> None:
    """The panel is reset while someone pushes through the released exit: the relock lands
    (slowly: the board answers late) after they have opened the door. That opening began
    while the door stood released, so it is no `door_forced`; a door opened after the
    relock still is."""
    async with running_site(tmp_path, fire_site, sims=("in", "out"), extra=fire_input) as site:
        sim_in, sim_out = site.sims["in"], site.sims["out"]
        # the person the release lets through pushes 1 s after it, and holds the door; the
        # rotation's pulse outlasts a slow answer, else the readings can fall either side of it
        # (a board without a counter loses a pulse shorter than its reading interval)
        sim_out.set_person(turns=True, delay=1.0, hold_door=1.0)
        sim_out.passage_pulse = 0.6
        sim_in.set_fire_alarm(True)
        await wait_for(lambda: sim_out.unlocked, 10, "the exit released")
        released_at = sim_out.coil_history[-1][0]
        # reset 0.15 s before they push; the exit's board then takes 0.25 s per answer, so
        # its relock lands at least 0.05 s (the fire input's poll) + 0.25 s after the reset
        await asyncio.sleep(max(0.0, released_at + 0.85 - time.monotonic()))
        sim_out.inject(Fault.SLOW_ANSWER, slow_ms=250)
        sim_in.set_fire_alarm(False)
        await wait_for(lambda: not sim_out.unlocked, 10, "the exit relocked")
        relocked_at = sim_out.coil_history[-1][0]
        await wait_for(lambda: sim_out.passages, 10, "the evacuee through")
        pushed_at = sim_out.passages[-1] - sim_out.passage_pulse
        assert released_at < pushed_at < relocked_at, "the push was not inside the release"
        sim_out.inject(Fault.NONE)
        await evacuee_through_without_alarm(site, sim_out)
        sim_out.force_door_open()  # and now someone does force it
        await wait_for(lambda: site.alarms("door_forced"), 10, "door_forced after the relock")
        sim_out.close_door()


async def test_evacuee_whose_armed_turn_comes_round_after_the_all_clear_is_no_forced_door(tmp_path: Path) -> None:
    """An evacuee pushed the released exit's arm, which latches that turn, and comes round
    a second after the panel's reset and the relock — many readings later. The turn the
    release armed is the release's, as a pulse's turn is its grant's: no `door_forced`, and
    the rotation is an evacuee's `passage_while_released`. It is one turn: a door forced
    open after it is `door_forced`, and before the fix this evacuee was one too."""
    async with running_site(tmp_path, fire_site, sims=("in", "out"), extra=fire_input) as site:
        sim_in, sim_out = site.sims["in"], site.sims["out"]
        sim_out.set_person(turns=False)  # nobody at the arm as it is released
        sim_in.set_fire_alarm(True)
        await wait_for(lambda: sim_out.unlocked, 10, "the exit released")
        await asyncio.sleep(0.3)  # readings of the released gate
        # pushed while released; the arm latched, the person on their way for 1 s (the
        # gate's passage_timeout, and so the armed turn's window, is 1.5 s)
        assert sim_out.push_through(Person(turns=True, delay=1.0, hold_door=0.5))
        sim_in.set_fire_alarm(False)
        await wait_for(lambda: not sim_out.unlocked, 10, "the exit relocked")
        relocked_at = sim_out.coil_history[-1][0]
        await wait_for(lambda: sim_out.passages, 10, "the evacuee through")
        assert sim_out.passages[-1] - sim_out.passage_pulse > relocked_at + 0.5, "the turn came before the relock"
        await evacuee_through_without_alarm(site, sim_out)
        sim_out.force_door_open()  # the armed turn is spent: this one is forced
        await wait_for(lambda: site.alarms("door_forced"), 10, "door_forced after the armed turn")
        sim_out.close_door()
