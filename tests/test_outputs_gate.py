"""GateController against a simulated turnstile on a real pymodbus TCP server (loopback)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from drivers.outputs import FireAlarmInputConfig
from drivers.outputs.fire import FireAlarmMonitor
from drivers.outputs.gate import GateController, GrantRefused
from drivers.outputs.grant import Passage, Unseen
from drivers.outputs.modbus import OutputFault, OutputHealth, OutputUncertain
from simulator.turnstile import Person, SimTurnstile
from tests.outputs_fixtures import *  # noqa: F403 (pytest fixtures)
from tests.outputs_fixtures import output_cfg, wait_until


async def test_grant_sets_coil_and_sees_passage(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp)
    assert await gate.grant() is True
    assert sim_tcp.unlocks == 1
    assert [raw for _, raw in sim_tcp.coil_history] == [True, False]
    # Relocked once the person is through, rather than at the end of the pulse.
    assert not sim_tcp.unlocked
    await wait_until(lambda: len(sim_tcp.passages) == 1, what="rotation completed")
    assert "not_opened" not in alarms.kinds()


async def test_person_who_does_not_turn(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp)
    sim_tcp.set_person(turns=False)
    assert await gate.grant() is False
    gate_id, _, detail = await alarms.wait_for("not_opened")
    assert gate_id == "turnstile-1"
    assert "no passage" in detail
    assert sim_tcp.passages == []


async def test_scripted_queue_one_person_per_grant(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp)
    sim_tcp.queue_people(Person(turns=True, delay=0.05), Person(turns=False), Person(delay=0.05))
    results = [await gate.grant() for _ in range(3)]
    assert results == [True, False, True]
    assert alarms.kinds().count("not_opened") == 1


async def test_startup_drives_coil_to_safe_state() -> None:
    # The board powers up with the relay energised (a stuck or mis-set output).
    async with SimTurnstile(initial_coil=True) as sim:
        gate = GateController("turnstile-1", output_cfg(sim))
        assert sim.unlocked
        await gate.start()
        try:
            assert not sim.unlocked
            assert sim.coil_history[0][1] is False  # the very first write locked it
            assert gate.state["relay"] == "online"
            assert gate.state["door"] == "closed"
        finally:
            await gate.stop()


async def test_active_low_inverts_every_coil_write(make_gate) -> None:
    async with SimTurnstile(active_low=True) as sim:
        sim.set_person(turns=True, delay=0.05)
        assert sim.coil_state is True  # active-low board idles with the coil ON
        gate, _ = await make_gate(sim)
        assert sim.coil_state is True and not sim.unlocked
        assert await gate.grant() is True
        assert (False in [raw for _, raw in sim.coil_history]) is True  # released = coil OFF
        await wait_until(lambda: sim.coil_state is True, what="coil back ON (locked)")
        await gate.set_lockdown(True)
        assert sim.coil_state is True
        await gate.set_lockdown(False)
        await gate.set_fire_alarm(True)  # fail_safe: released = coil OFF
        assert sim.coil_state is False
        await gate.set_fire_alarm(False)
        assert sim.coil_state is True


async def test_server_goes_away_and_comes_back(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp)
    assert gate.health is OutputHealth.ONLINE
    await sim_tcp.stop_server()
    # The first release after the board went away is sent and never answered: for all the
    # daemon can tell, the board carried it out, so the grant is UNKNOWN, not refused.
    assert await gate.grant_passage() is Passage.UNKNOWN
    assert sim_tcp.unlocks == 0
    assert gate.health is OutputHealth.OFFLINE
    assert gate.state["relay"] == "offline"
    assert gate.state["door"] == "unknown"
    await alarms.wait_for("relay_offline")
    # Fails fast while offline: no wait for a timeout on every tap.
    with pytest.raises(OutputFault):
        await gate.grant()
    await sim_tcp.start_server()
    await wait_until(lambda: gate.health is OutputHealth.ONLINE, what="reconnect")
    await wait_until(lambda: alarms.kinds()[-1] == "relay_online", what="relay_online alarm")
    assert await gate.grant() is True


async def test_board_silent_marks_offline_and_recovers(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp)
    sim_tcp.inject("no_answer")
    await alarms.wait_for("relay_offline")
    with pytest.raises(OutputFault):
        await gate.grant()
    assert sim_tcp.unlocks == 0
    sim_tcp.inject("none")
    await wait_until(lambda: gate.health is OutputHealth.ONLINE, what="reconnect")
    assert await gate.grant() is True


@pytest.mark.parametrize("sensors", [True, False])
async def test_release_whose_answer_is_lost_is_unknown_not_refused(sensors: bool, make_gate) -> None:
    """The board carries out the release and its answer is lost: the turnstile is open, so
    a refusal (hardware_fault, nothing recorded) would be a free entry. The grant is UNKNOWN
    (the daemon reports passage_unconfirmed), and the relay relocks once the board answers."""
    wiring = {} if sensors else {"passage_input": None, "door_contact": None}
    async with SimTurnstile(person=Person(delay=0.1), **wiring) as sim:
        gate, alarms = await make_gate(sim)
        sim.inject("lost_answer")
        assert await gate.grant_passage() is Passage.UNKNOWN
        assert sim.unlocks == 1
        await wait_until(lambda: len(sim.passages) == 1, what="the person went through")
        sim.inject("none")
        await wait_until(lambda: gate.health is OutputHealth.ONLINE, what="reconnect")
        await wait_until(lambda: not sim.unlocked, what="relocked by the reconnect probe")
        assert "relay_offline" in alarms.kinds()


async def test_release_refused_while_known_offline_raises(sim_tcp: SimTurnstile, make_gate) -> None:
    """The other side of the line: a board known to be down is not written to at all, so
    nothing was released and the tap can be denied (hardware_fault)."""
    gate, alarms = await make_gate(sim_tcp)
    sim_tcp.inject("lost_answer")
    await alarms.wait_for("relay_offline")
    with pytest.raises(OutputFault) as refused:
        await gate.grant_passage()
    assert not isinstance(refused.value, OutputUncertain)
    assert sim_tcp.unlocks == 0


@pytest.mark.parametrize("counted", [False, True])
async def test_a_pulse_shorter_than_a_poll_is_counted_by_the_boards_counter(counted: bool, make_gate) -> None:
    """A turnstile whose passage pulse (5 ms) falls between two polls (every 0.25 s): the
    level alone misses the person (the grant lapses, no charge for someone who went in);
    the board's pulse counter (passage_counter) sees them."""
    async with SimTurnstile(person=Person(delay=0.05), passage_pulse=0.005,
                            passage_counter=5 if counted else None) as sim:
        extra = {"passage_counter": 5} if counted else {}
        gate, alarms = await make_gate(sim, passage_poll_interval=0.25, poll_interval=0.25, **extra)
        results = [await gate.grant() for _ in range(3)]
        await wait_until(lambda: len(sim.passages) == 3, what="three people through")
        if counted:
            assert results == [True, True, True]
            assert gate.state["passages"] == 3 and "not_opened" not in alarms.kinds()
        else:
            assert results.count(True) < 3  # what the counter is for


async def test_a_person_through_while_the_counting_board_is_silent_is_unconfirmed(make_gate) -> None:
    """The board stops answering just after the release, the person turns meanwhile, the
    board answers again: its counter moved by one — or the board restarted and counts from
    0 again, which the step cannot tell (a restart near the wrap reads as hundreds). The
    step across a silence is no count: the grant ends unconfirmed (passage_unconfirmed,
    for the desk), never "did not pass" and never charged from a step that may be a
    restart. (Before the count was kept across failed readings, this passage was in
    nobody's books: neither passed nor reported, found by a simulated day.)"""
    async with SimTurnstile(person=Person(delay=0.3), passage_pulse=0.05, passage_counter=5) as sim:
        gate, alarms = await make_gate(sim, passage_poll_interval=0.05, poll_interval=0.05, passage_counter=5)
        granted = asyncio.create_task(gate.grant_passage())
        await wait_until(lambda: sim.unlocked, what="the release")
        sim.inject("no_answer")
        await wait_until(lambda: len(sim.passages) == 1, what="the person through")
        await asyncio.sleep(0.3)
        sim.inject("none")
        assert await granted is Passage.UNKNOWN
        assert gate.unconfirmed_because is Unseen.RELAY_UNREADABLE
        assert "not_opened" not in alarms.kinds() and "passage_without_grant" not in alarms.kinds()


async def test_a_passage_hidden_by_a_board_restart_is_unconfirmed_not_did_not_pass(make_gate) -> None:
    """Three people counted (counter 3). A member is released; the board goes silent; the
    member turns the arm (counter 4) and the board restarts before it is read (its counter
    begins again at 0). The counter took the step 3 -> 0 for a restart and began again
    from it, but the tracker trusted its counter ("a silence hides no passage") and ended
    the grant NOT_PASSED: a `not_opened`, "did not pass", for a member who went through."""
    async with SimTurnstile(person=Person(delay=0.05), passage_pulse=0.05, passage_counter=5) as sim:
        gate, alarms = await make_gate(sim, passage_poll_interval=0.05, poll_interval=0.05, passage_counter=5)
        for _ in range(3):
            assert await gate.grant() is True
        assert sim.pulse_count == 3
        sim.set_person(turns=True, delay=0.3)
        granted = asyncio.create_task(gate.grant_passage())
        await wait_until(lambda: sim.unlocked, what="the release")
        sim.inject("no_answer")
        await wait_until(lambda: len(sim.passages) == 4, what="the member through")
        assert sim.pulse_count == 4
        sim.pulse_count = 0  # the board power-cycles: its counter starts again
        await asyncio.sleep(0.3)
        sim.inject("none")
        outcome = await granted
        assert len(sim.passages) == 4  # the member did go through
        assert outcome is Passage.UNKNOWN, (outcome, alarms.kinds())
        assert "not_opened" not in alarms.kinds()


async def test_a_board_restart_near_the_counter_wrap_is_not_taken_for_people(make_gate) -> None:
    """A busy gate's 16-bit counter stands at 65,000 (about two months at 1,000 a day). The
    board restarts (counter 0) while a member is released who then does not turn. The
    step 65,000 -> 0 is 536 modulo 2^16, under MAX_STEP: it was taken for 536 people — the
    grant PASSED (the member charged for a passage that never happened) and 535
    passage_without_grant alarms."""
    async with SimTurnstile(person=Person(turns=False), passage_pulse=0.05, passage_counter=5) as sim:
        sim.pulse_count = 65000
        gate, alarms = await make_gate(sim, passage_poll_interval=0.05, poll_interval=0.05, passage_counter=5)
        granted = asyncio.create_task(gate.grant_passage())
        await wait_until(lambda: sim.unlocked, what="the release")
        sim.inject("no_answer")
        await asyncio.sleep(0.3)
        sim.pulse_count = 0  # the board power-cycles
        sim.inject("none")
        outcome = await granted
        await asyncio.sleep(0.3)
        assert len(sim.passages) == 0  # nobody went through
        assert outcome is Passage.UNKNOWN, (outcome, gate.state["passages"])
        assert gate.state["passages"] == 0 and "passage_without_grant" not in alarms.kinds()


async def test_slow_board_within_timeout_still_works(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp, timeout=1.0)
    sim_tcp.inject("slow_answer", slow_ms=30)
    assert await gate.grant() is True
    assert "relay_offline" not in alarms.kinds()


async def test_a_daemon_paused_as_the_board_released_does_not_call_the_passage_absent(make_gate) -> None:
    """The daemon's process paused the instant the board released the arm (an outside probe
    froze it there: a VM paused, a stalled box), the person through during the pause, the
    passage input's 100 ms pulse over before the daemon ran again. Watched only from the
    board's answer, the grant saw a quiet input and ended "did not pass": nothing charged,
    nobody inside, and a member let in for her class fined a no-show. Unread that long
    since the release was written, it is a passage nobody could see. The board runs in a
    thread of its own, as a real one runs on its own; the daemon's loop is paused by a
    blocking sleep scheduled into it as the arm is released."""
    loop = asyncio.get_running_loop()
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, SimTurnstile] = {}

    def board() -> None:
        async def serve() -> None:
            async with SimTurnstile(person=Person(delay=0.2), passage_pulse=0.1) as sim:
                sim.on_release = lambda: loop.call_soon_threadsafe(time.sleep, 1.5)
                box["sim"] = sim
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.02)

        asyncio.run(serve())

    thread = threading.Thread(target=board, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        sim = box["sim"]
        gate, _alarms = await make_gate(sim, timeout=3.0, passage_poll_interval=0.05, poll_interval=0.05)
        outcome = await gate.grant_passage()
        assert len(sim.passages) == 1  # the person went through, unseen
        assert outcome is Passage.UNKNOWN, (outcome, gate.state)
        assert gate.unconfirmed_because is Unseen.INPUTS_UNREAD  # the board was fine: the daemon was paused
    finally:
        stop.set()
        thread.join(10)


async def test_lockdown_refuses_grants_without_pulsing(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, _ = await make_gate(sim_tcp)
    await gate.set_lockdown(True)
    assert gate.state["lockdown"] is True
    writes_before = len(sim_tcp.coil_history)
    with pytest.raises(GrantRefused) as refused:
        await gate.grant()
    assert refused.value.reason == "lockdown"
    assert len(sim_tcp.coil_history) == writes_before
    assert not sim_tcp.unlocked
    # Nor the desk's "open once": the lockdown's promise (rules.admission.plan_release) ...
    with pytest.raises(GrantRefused) as refused:
        await gate.open_once()
    assert refused.value.reason == "lockdown" and len(sim_tcp.coil_history) == writes_before
    # ... while nobody is kept in: an exit opens, and the desk's "open once" at an exit
    assert await gate.open_passage() is Passage.PASSED
    assert await gate.open_once(at_exit=True) is True
    await gate.set_lockdown(False)
    assert await gate.grant() is True


async def test_lockdown_cuts_a_running_pulse(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, _ = await make_gate(sim_tcp, pulse=5.0)
    sim_tcp.set_person(turns=False)
    await gate.output.pulse()
    assert sim_tcp.unlocked
    await gate.set_lockdown(True)
    assert not sim_tcp.unlocked


async def test_fire_alarm_releases_fail_safe(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp, mode="fail_safe")
    await gate.set_lockdown(True)
    await gate.set_fire_alarm(True)  # life safety beats lockdown
    assert sim_tcp.unlocked
    assert gate.state["released"] is True
    with pytest.raises(GrantRefused) as refused:
        await gate.grant()
    assert refused.value.reason == "fire_alarm"  # the rules' order: life safety, then lockdown
    assert await gate.open_passage() is Passage.PASSED  # an exit: the door stands released, no pulse
    await gate.set_lockdown(False)
    with pytest.raises(GrantRefused) as refused:
        await gate.grant()
    assert refused.value.reason == "fire_alarm"
    await gate.set_fire_alarm(True, emergency=True)  # an admin's emergency release instead
    with pytest.raises(GrantRefused) as refused:
        await gate.grant()
    assert refused.value.reason == "emergency_release"
    await gate.set_fire_alarm(True)
    sim_tcp.force_door_open()  # evacuation through the released door: no alarm
    await wait_until(lambda: gate.state["door"] == "open", what="door seen open")
    await gate.set_fire_alarm(False)
    assert not sim_tcp.unlocked
    sim_tcp.close_door()
    await wait_until(lambda: gate.state["door"] == "closed", what="door seen closed")
    assert "door_forced" not in alarms.kinds()
    assert await gate.grant() is True


async def test_fire_alarm_keeps_fail_secure_locked(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, _ = await make_gate(sim_tcp, mode="fail_secure", pulse=5.0)
    sim_tcp.set_person(turns=False)
    await gate.output.pulse()
    await gate.set_fire_alarm(True)
    assert not sim_tcp.unlocked  # a running pulse is cut, too
    assert gate.state["released"] is False
    await gate.set_fire_alarm(False)
    assert not sim_tcp.unlocked


async def test_door_forced_open(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp)
    sim_tcp.force_door_open()
    _, _, detail = await alarms.wait_for("door_forced")
    assert detail == "door opened without a grant"
    assert gate.state["door_forced"] is True
    sim_tcp.close_door()
    await alarms.wait_for("door_forced_cleared")
    assert gate.state["door_forced"] is False


async def test_door_held_open(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp, held_open_after=0.3)
    sim_tcp.queue_people(Person(turns=True, delay=0.05, hold_door=1.0))
    assert await gate.grant() is True
    await alarms.wait_for("door_held")
    await alarms.wait_for("door_held_cleared")
    assert "door_forced" not in alarms.kinds()


async def test_gate_without_sensors_commits_on_grant(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp, passage_input=None, door_contact=None)
    sim_tcp.set_person(turns=False)
    assert await gate.grant() is True
    assert gate.state["door"] == "unknown"
    assert "not_opened" not in alarms.kinds()


async def test_door_only_gate_confirms_with_door_contact(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, alarms = await make_gate(sim_tcp, passage_input=None)
    assert await gate.grant() is True
    sim_tcp.set_person(turns=False)
    assert await gate.grant() is False
    await alarms.wait_for("not_opened")


async def test_fire_alarm_monitor_drives_gates(sim_tcp: SimTurnstile, make_gate) -> None:
    gate, _ = await make_gate(sim_tcp, mode="fail_safe")
    seen: list[bool] = []

    async def on_change(active: bool) -> None:
        seen.append(active)
        await gate.set_fire_alarm(active)

    cfg = FireAlarmInputConfig(
        transport="tcp",
        host=sim_tcp.host,
        port=sim_tcp.port,
        unit=sim_tcp.unit,
        input=sim_tcp.fire_alarm_input,
        active_low=False,
        poll_interval=0.05,
    )
    monitor = FireAlarmMonitor(cfg, on_change)
    await monitor.start()
    try:
        assert seen == [False]
        sim_tcp.set_fire_alarm(True)
        await wait_until(lambda: sim_tcp.unlocked, what="fire release")
        assert monitor.active is True
        sim_tcp.set_fire_alarm(False)
        await wait_until(lambda: not sim_tcp.unlocked, what="back to locked")
        assert seen == [False, True, False]
    finally:
        await monitor.stop()


async def test_the_previous_persons_rotation_is_not_the_next_persons(
    sim_tcp: SimTurnstile, make_gate
) -> None:
    gate, _ = await make_gate(sim_tcp)
    sim_tcp.passage_pulse = 0.6  # a slow rotation: still reported when the next grant comes
    sim_tcp.queue_people(Person(delay=0.0), Person(turns=False))
    assert await gate.grant() is True
    assert sim_tcp.passage_active
    assert await gate.grant() is False  # nobody turned for the second grant
    assert gate.state["passages"] == 1


async def test_stopping_during_a_pending_grant_abandons_it_without_not_opened(
    sim_tcp: SimTurnstile, make_gate
) -> None:
    import asyncio

    gate, alarms = await make_gate(sim_tcp, passage_timeout=1.5)
    sim_tcp.set_person(turns=False)
    grant = asyncio.create_task(gate.grant())
    await wait_until(lambda: sim_tcp.unlocked, what="released")
    await gate.abandon_grants()
    assert await grant is False
    assert not sim_tcp.unlocked  # relocked at once
    with pytest.raises(OutputFault):
        await gate.grant()  # no new grant while stopping
    await gate.stop()
    assert "not_opened" not in alarms.kinds()


async def test_grant_whose_inputs_went_unread_is_unknown_not_a_no_show(sim_tcp: SimTurnstile, make_gate) -> None:
    """Issue 22: a flood starved the event loop (EMFILE logged in a tight loop) between the
    release and the grant's deadline; no reading came back, the grant lapsed as "did not
    pass" while the arm had turned: no deduction, no passage_unconfirmed. A lapsed grant
    whose inputs were not read all along is UNKNOWN (the daemon reports it unconfirmed)."""
    gate, _ = await make_gate(sim_tcp, passage_timeout=1.0)
    sim_tcp.set_person(turns=False)  # nothing this test can see; the loop is what fails

    def starve() -> None:
        time.sleep(1.5)  # the loop does nothing else meanwhile: no poll, no passage seen

    grant = asyncio.ensure_future(gate.grant_passage())
    await wait_until(lambda: sim_tcp.unlocked, what="released")
    asyncio.get_running_loop().call_soon(starve)
    assert await grant is Passage.UNKNOWN
    assert gate.unconfirmed_because is Unseen.INPUTS_UNREAD  # the board answered: the daemon did not read
    # the same grant watched all along is a plain "did not pass"
    assert await gate.grant_passage() is Passage.NOT_PASSED


async def test_a_stop_at_the_instant_the_supervisor_wakes_still_stops_it(sim_tcp: SimTurnstile, make_gate) -> None:
    """Python 3.11's asyncio.wait_for returns the inner result when the task is cancelled
    as that result arrives, and the cancellation is lost: a supervisor woken by a grant
    at the instant the daemon stops polled on for good, and stop() waited for it forever
    (found as an OSDP reader test hanging once in CI). The gate waits with asyncio.timeout."""
    gate, _ = await make_gate(sim_tcp, poll_interval=5.0)
    await asyncio.sleep(0.3)  # start-up's reading and the supervisor's first
    reads = sim_tcp.input_reads
    await asyncio.sleep(0.3)
    assert sim_tcp.input_reads == reads  # the supervisor is waiting out its interval
    gate._wake.set()  # what a grant does: poll now — and in the same instant, stop
    async with asyncio.timeout(5):
        await gate.stop()


@pytest.mark.parametrize("case", ["active_low_locked", "fire_released"])
async def test_a_coil_reset_by_a_board_restart_is_written_again(case: str, make_gate) -> None:
    """A board that restarts between two polls (a brown-out, its watchdog) comes back with
    its coil at the power-on level (off), no request failing: no reconnect probe wrote the
    planned level again, and the poller read only the inputs. Active-low wiring: the
    turnstile stood released while the gate believed it locked (free entries, unrecorded);
    a fail-safe door released for a fire alarm: locked again while the gate said released.
    The coil is read back every few idle polls and written again, with an alarm."""
    async with SimTurnstile(active_low=(case == "active_low_locked"), person=Person(turns=False)) as sim:
        gate, alarms = await make_gate(sim, poll_interval=0.05)
        if case == "fire_released":
            await gate.set_fire_alarm(True)  # fail-safe door held released
            await wait_until(lambda: sim.unlocked, what="released")
        assert sim.unlocked is gate.state["released"]
        writes = len(sim.coil_history)
        sim._coil_raw = False  # the board restarts between two polls: its coil at power-on level
        assert sim.unlocked is not gate.state["released"]
        _, _, detail = await alarms.wait_for("relay_state_mismatch", timeout=2.0)
        await wait_until(lambda: sim.unlocked is gate.state["released"], timeout=1.0, what="the plan written again")
        assert len(sim.coil_history) == writes + 1, sim.coil_history
        want = "released" if case == "fire_released" else "locked"
        assert f"should stand {want}" in detail, detail
        assert alarms.kinds().count("relay_state_mismatch") == 1  # once: the coil holds again


async def test_the_coil_read_back_raises_nothing_across_pulses(make_gate, sim_tcp: SimTurnstile) -> None:
    """Grants pulse the coil while it is being read back: a reading taken as a write goes
    out proves nothing, and no alarm is raised for a coil on its way to the new level."""
    gate, alarms = await make_gate(sim_tcp, poll_interval=0.01)
    for _ in range(5):
        assert await gate.grant() is True
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    assert "relay_state_mismatch" not in alarms.kinds()
