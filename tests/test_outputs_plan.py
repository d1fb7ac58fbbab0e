"""The relay plan, the passage detector and the line's queue/timing/load: pure, table tests;
then the line's promise against a real RTU peer — a request once on the wire is never cut."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.outputs.bus import LineTiming, LoadMeter, ModbusLine, Priority, RequestQueue
from drivers.outputs.plan import PassageCounter, PassageDetector, RelayPlan, ReleaseTail, StuckInput

# -- RelayPlan --------------------------------------------------------------------------

# (step, now, argument) -> expected writes, then (desired, rest, pulsing)
PLAN_TIMELINE = [
    ("pulse", 0.0, 1.0, [True], (True, False, True)),
    ("due", 0.5, None, [], (True, False, True)),
    ("pulse", 0.6, 1.0, [False, True], (True, False, True)),  # retrigger: a fresh edge
    ("due", 1.5, None, [], (True, False, True)),  # extended to 1.6
    ("due", 1.6, None, [False], (False, False, False)),
    ("end", 1.7, None, [], (False, False, False)),  # nothing to end
    ("pulse", 2.0, 5.0, [True], (True, False, True)),
    ("hold", 2.1, True, [True], (True, True, False)),  # fire release cancels the pulse
    ("due", 9.0, None, [], (True, True, False)),  # ...so it cannot relock after it
    ("pulse", 9.5, 1.0, [True], (True, True, True)),
    ("end", 9.6, None, [True], (True, True, False)),  # a pulse returns to the rest level
    ("hold", 10.0, False, [False], (False, False, False)),
    ("pulse", 11.0, 1.0, [True], (True, False, True)),
    ("end", 11.2, None, [False], (False, False, False)),  # the person passed: relock now
]


def test_relay_plan_timeline() -> None:
    plan = RelayPlan()
    for step, now, arg, writes, state in PLAN_TIMELINE:
        if step == "pulse":
            assert isinstance(arg, float)
            got = plan.pulse(now, arg)
        elif step == "due":
            got = plan.due(now)
        elif step == "end":
            got = plan.end_pulse()
        else:
            assert isinstance(arg, bool)
            got = plan.hold(arg)
        assert got == writes, (step, now)
        assert (plan.desired, plan.rest, plan.pulsing) == state, (step, now)


def test_a_failed_write_falls_back_to_the_rest_level() -> None:
    plan = RelayPlan()
    plan.hold(True)  # fire release
    plan.pulse(0.0, 1.0)
    plan.write_failed()
    assert plan.desired is True and not plan.pulsing
    plan.hold(False)
    plan.pulse(0.0, 1.0)
    plan.write_failed()
    assert plan.desired is False


# -- PassageDetector ----------------------------------------------------------------------

DETECTOR = [
    # readings, edges expected after each
    ([False, True, True, False, True], [0, 1, 1, 1, 2]),
    ([True, True, False, True], [0, 0, 0, 1]),  # active at start: the previous person
    ([False, None, True, False, True], [0, 0, 0, 0, 1]),  # unknown forgets the level
    ([None, None], [0, 0]),
]


@pytest.mark.parametrize("readings,edges", DETECTOR)
def test_passage_detector(readings: list[bool | None], edges: list[int]) -> None:
    detector = PassageDetector()
    seen = []
    for level in readings:
        detector.observe(level)
        seen.append(detector.edges)
    assert seen == edges


STUCK = [
    # (now, level) readings of a passage input, limit 2 s; what each reading says
    ([(0, True), (0.5, False), (1, True), (2, True)], [None] * 4),  # rotations: never 2 s long
    ([(0, True), (1, True), (2.1, True), (5, True), (6, False), (7, True)], [None, None, True, None, False, None]),
    ([(0, True), (1.5, None), (3, True), (4, True), (5.1, True)], [None, None, None, None, True]),  # a silence: since then
    ([(0, True), (3, True), (4, None), (5, True), (6, False)], [None, True, None, None, False]),  # stuck across a silence
]


@pytest.mark.parametrize("readings,said", STUCK)
def test_a_passage_input_active_longer_than_any_rotation_is_stuck(
    readings: list[tuple[float, bool | None]], said: list[bool | None]
) -> None:
    """Named once when it has read active past the limit, once when it reads inactive
    again; an unknown level (the board silent) neither raises nor clears it."""
    stuck = StuckInput(2.0)
    assert [stuck.observe(level, now) for now, level in readings] == said


COUNTER = [
    # readings of the board's counter, people counted after each
    ([7, 7, 8, 10], [0, 0, 1, 3]),  # the first reading is the baseline; two between polls
    ([65534, 65535, 0, 2], [0, 1, 2, 4]),  # 16 bits: it wraps
    # across a silence the board may have restarted: the step is no count, a new baseline
    ([5, None, 9, 10], [0, 0, 0, 1]),
    ([None, 3, 3], [0, 0, 0]),
    ([120, None, 0, 2], [0, 0, 0, 2]),  # back from a restart, its counter from 0: a new baseline
    ([3, None, 1], [0, 0, 0]),  # restarted, and one person since: not 65,534 people
    ([65000, None, 0, 1], [0, 0, 0, 1]),  # restarted near the wrap: not 536 people
    ([3, None, 0], [0, 0, 0]),  # restarted after a person went through (3 -> 4 -> 0): not 65,533
    ([10, 2000], [0, 0]),  # a step no crowd makes between two polls: a restart
]


@pytest.mark.parametrize("readings,people", COUNTER)
def test_passage_counter(readings: list[int | None], people: list[int]) -> None:
    counter = PassageCounter()
    seen = []
    for count in readings:
        counter.observe(count)
        seen.append(counter.people)
    assert seen == people


def test_a_new_baseline_says_so() -> None:
    """The first reading, the first after a failed one, and a step beyond MAX_STEP are new
    baselines: a grant waiting then cannot trust the counter (grant.py)."""
    counter = PassageCounter()
    said = [tuple(counter.observe(c)) for c in (7, 8, None, None, 9, 10, 5000)]
    assert said == [(0, True), (1, False), (0, False), (0, False), (0, True), (1, False), (0, True)]


# -- the line ---------------------------------------------------------------------------


def test_release_tail_covers_the_relock_and_one_reading_after_it() -> None:
    tail = ReleaseTail()
    assert not any(tail.covers(n) for n in range(1, 5))  # no release ended yet
    tail.ending("a fire alarm")
    assert tail.covers(5) and tail.covers(6) and tail.why == "a fire alarm"  # relock being written
    tail.relocked(6, now=100.0, turn_window=8.0)  # six readings had come back when its write returned
    assert tail.covers(6) and tail.covers(7)  # 7: the previous reading predates the relock
    assert not tail.covers(8)  # taken after a reading that followed the relock


def test_release_tail_leaves_one_turn_for_the_passage_timeout() -> None:
    tail = ReleaseTail()
    assert not tail.last_turn("door", 0.0)  # no release ended yet
    tail.ending("a fire alarm")
    tail.relocked(3, now=100.0, turn_window=8.0)
    # the armed turn: one door opening and one rotation, each once
    assert tail.last_turn("door", 101.0) and not tail.last_turn("door", 101.5)
    assert tail.last_turn("rotation", 101.2) and not tail.last_turn("rotation", 101.6)
    tail.ending("a hand's hold (gated relay on)")
    assert tail.last_turn("door", 150.0)  # seen while the relock is being written: spent
    tail.relocked(9, now=200.0, turn_window=8.0)
    assert not tail.last_turn("door", 201.0)  # the relock's return does not arm it again
    tail.ending("a fire alarm")
    tail.relocked(12, now=300.0, turn_window=8.0)  # each release arms its own turn
    assert not tail.last_turn("door", 308.01)  # too late: the window is the grant's
    assert tail.last_turn("rotation", 307.9) and tail.why == "a fire alarm"
    tail.ending("a fire alarm", door_open=True)  # a turn under way as the release ends
    tail.relocked(15, now=400.0, turn_window=8.0)
    assert not tail.last_turn("door", 401.0)  # its door opening was the release's
    assert tail.last_turn("rotation", 401.0)  # its rotation may still come round
    tail.ending("a fire alarm", latches=False)  # a door: its lock holds once relocked
    tail.relocked(18, now=500.0, turn_window=8.0)
    assert not tail.last_turn("door", 501.0) and tail.covers(19)  # only the reading's doubt


def test_one_device_sends_its_writes_before_its_polls() -> None:
    q: RequestQueue[str] = RequestQueue()
    for item, prio in [("p1", Priority.POLL), ("p2", Priority.POLL), ("w1", Priority.WRITE),
                       ("p3", Priority.POLL), ("w2", Priority.WRITE)]:  # fmt: skip
        q.put(item, prio)
    assert len(q) == 5
    assert [q.take() for _ in range(6)] == ["w1", "w2", "p1", "p2", "p3", None]


W, P = Priority.WRITE, Priority.POLL

# Steps on one line: ("put", device, priority, request) or ("take", request sent). Devices
# take turns, the one whose last exchange is the oldest first; a device's writes go before
# its reads.
TURNS = {
    "issue 22: three gates tapped at once": [
        # the three releases, in the order the taps came (no device has had a turn yet)
        ("put", "A", W, "A on"), ("put", "B", W, "B on"), ("put", "C", W, "C on"),
        ("take", "A on"), ("take", "B on"),
        # each gate reads right after its release
        ("put", "A", P, "A read"), ("put", "B", P, "B read"),
        ("take", "C on"), ("put", "C", P, "C read"),
        ("take", "A read"),
        # A sees its person: relock and a reading of the rotation's end...
        ("put", "A", W, "A off"), ("put", "A", P, "A read 2"),
        ("take", "B read"),
        ("put", "B", W, "B off"), ("put", "B", P, "B read 2"),
        # ...but C, whose turn is the oldest, is read before either (with writes first,
        # C waited for A off, A read 2, B off, B read 2: 238-294 ms on site)
        ("take", "C read"),
        ("take", "A off"), ("take", "B off"),
        ("put", "C", P, "C read 2"),  # A and B used their turns on their relocks
        ("take", "C read 2"), ("take", "A read 2"), ("take", "B read 2"),
        ("take", None),
    ],
    "a tap at a quiet gate goes before busy gates' reads": [
        ("put", "A", P, "A read"), ("take", "A read"),
        ("put", "B", P, "B read"), ("take", "B read"),
        ("put", "B", P, "B read 2"), ("put", "A", P, "A read 2"),
        ("put", "C", W, "C on"),  # C never sent anything: its turn is the oldest
        ("take", "C on"), ("take", "A read 2"), ("take", "B read 2"),
    ],
    "a tap waits for at most one exchange of each other device": [
        ("put", "B", P, "B read"), ("put", "C", P, "C read"), ("take", "B read"), ("take", "C read"),
        ("put", "A", P, "A read"), ("take", "A read"),  # A's turn is now the newest
        ("put", "C", P, "C read 2"), ("put", "B", P, "B read 2"), ("put", "A", W, "A on"),
        ("take", "B read 2"), ("take", "C read 2"), ("take", "A on"),
    ],
    "a gate's own relock goes before its own reading": [
        ("put", "A", P, "A read"), ("put", "A", W, "A off"), ("put", "B", P, "B read"),
        ("take", "A off"), ("take", "B read"), ("take", "A read"),
    ],
}


@pytest.mark.parametrize("steps", TURNS.values(), ids=TURNS.keys())
def test_devices_take_turns_on_the_line(steps: list[tuple[object, ...]]) -> None:
    q: RequestQueue[str] = RequestQueue()
    for step in steps:
        if step[0] == "put":
            _, device, priority, request = step
            assert isinstance(priority, Priority) and isinstance(request, str)
            q.put(request, priority, device)
        else:
            assert q.take() == step[1], step
    assert q.max_waited[Priority.POLL] <= 2 and q.max_waited[Priority.WRITE] <= 2


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([W, P]), st.booleans()), max_size=80))
def test_no_request_waits_for_two_exchanges_of_another_device(
    ops: list[tuple[int, Priority, bool]],
) -> None:
    # put on device d, then maybe take: whatever the mix, between a request (or its own
    # device's last exchange) and its turn, each other device sends at most once
    q: RequestQueue[tuple[int, int]] = RequestQueue()
    sent: list[int] = []  # device of each exchange, in order
    queued_at: dict[tuple[int, int], int] = {}

    def take() -> None:
        item = q.take()
        if item is None:
            return
        device = item[0]
        since = queued_at.pop(item)
        own = [i for i, d in enumerate(sent) if d == device and i >= since]
        since = own[-1] + 1 if own else since
        others = sent[since:]
        assert all(others.count(d) <= 1 for d in set(others)), (item, sent)
        sent.append(device)

    for n, (device, priority, then_take) in enumerate(ops):
        item = (device, n)
        queued_at[item] = len(sent)
        q.put(item, priority, device)
        if then_take:
            take()
    while q:
        take()
    assert q.max_waited[W] <= 4 and q.max_waited[P] <= 4


def test_a_request_given_up_is_dropped_without_using_a_turn() -> None:
    q: RequestQueue[str] = RequestQueue()
    q.put("A read", P, "A")
    q.put("B read", P, "B")
    q.put("A read 2", P, "A")
    assert q.take(live=lambda r: r != "A read") == "B read"  # A keeps its (older) turn
    q.put("B read 2", P, "B")
    assert q.take() == "A read 2"
    assert q.take() == "B read 2"


def test_a_device_leaving_the_line_hands_back_what_it_had_queued() -> None:
    q: RequestQueue[str] = RequestQueue()
    q.put("A read", P, "A")
    q.put("A off", W, "A")
    q.put("B read", P, "B")
    assert q.stations == 2
    assert q.forget("A") == ["A off", "A read"]
    assert q.stations == 1 and len(q) == 1
    assert q.forget("A") == []
    assert q.clear() == ["B read"] and len(q) == 0


# the shortest passage pulse sure to be read (docs/hardware-outputs.md's table), in ms:
# (baud, parity, devices on the line, poll interval) -> ms
SHORTEST_PULSE = [
    (9600, "N", 1, 0.02, 41.9),
    (9600, "N", 3, 0.02, 89.8),  # three gates on a 9,600-baud line: 100 ms pulses are seen
    (9600, "E", 3, 0.02, 96.8),  # 11-bit characters
    (9600, "N", 3, 0.05, 119.8),  # the old RTU default pause would not do it
    (9600, "N", 6, 0.02, 161.7),
    (19200, "N", 3, 0.02, 54.9),
    (115200, "N", 8, 0.02, 58.9),  # silence fixed at 1.75 ms above 19,200 baud
]


@pytest.mark.parametrize("baud,parity,devices,interval,ms", SHORTEST_PULSE)
def test_shortest_pulse_seen(baud: int, parity: str, devices: int, interval: float, ms: float) -> None:
    assert LineTiming(baud, parity).shortest_pulse_seen_s(devices, interval) * 1000 == pytest.approx(ms, abs=0.05)


def test_inputs_far_apart_cost_two_reads_and_two_rounds() -> None:
    t = LineTiming(9600)
    one = t.read_bits_s(1)
    assert t.shortest_pulse_seen_s(3, 0.02, [one, one]) == pytest.approx(2 * one + 0.02 + 2 * 2 * t.write_coil_s())


def test_wire_times_at_9600() -> None:
    t = LineTiming(9600, "N", 1)
    assert t.char_s == pytest.approx(10 / 9600)
    assert t.write_coil_s() == pytest.approx(2 * (8 + 3.5) * 10 / 9600)
    assert t.read_bits_s(2) == pytest.approx((8 + 3.5 + 6 + 3.5) * 10 / 9600)
    assert LineTiming(9600, "E", 1).write_coil_s() == pytest.approx(0.02635, abs=1e-4)  # 11 bits
    assert LineTiming(115200).silence_s == 0.00175


def test_load_meter_window_and_warning_crossings() -> None:
    meter = LoadMeter(window=10.0, threshold=0.5)
    for i in range(20):  # 60 % busy for 2 s
        meter.record(0.1 * (i + 1), 0.06)
    assert meter.load(2.0) == pytest.approx(0.6, abs=0.02)
    assert meter.crossing(2.0) is True
    assert meter.crossing(2.0) is None  # once per crossing
    assert meter.load(30.0) == 0.0  # the window moved on
    assert meter.crossing(30.0) is False


async def test_a_caller_cancelled_mid_exchange_does_not_cut_it() -> None:
    line = ModbusLine("test", None)
    order: list[str] = []
    release = asyncio.Event()

    async def slow_poll() -> str:
        order.append("poll sent")
        await release.wait()
        order.append("poll answered")
        return "poll"

    async def write() -> str:
        order.append("write sent")
        return "write"

    poll = asyncio.create_task(line.submit(slow_poll, priority=Priority.POLL))
    while not order:
        await asyncio.sleep(0)
    poll.cancel()  # the caller gives up while its request is on the wire
    writer = asyncio.create_task(line.submit(write, priority=Priority.WRITE))
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["poll sent"]  # the write waits for the exchange in flight
    release.set()
    assert await writer == "write"
    assert order == ["poll sent", "poll answered", "write sent"]
    assert line.stats["abandoned"] == 1
    await line.close()


async def test_a_caller_cancelled_before_its_turn_sends_nothing() -> None:
    line = ModbusLine("test", None)
    release = asyncio.Event()
    sent: list[str] = []

    async def blocker() -> None:
        sent.append("blocker")
        await release.wait()

    async def never() -> None:
        sent.append("never")

    first = asyncio.create_task(line.submit(blocker, priority=Priority.POLL))
    queued = asyncio.create_task(line.submit(never, priority=Priority.POLL))
    while not sent:
        await asyncio.sleep(0)
    queued.cancel()
    release.set()
    await first
    await asyncio.wait([queued])
    await line.submit(lambda: asyncio.sleep(0), priority=Priority.POLL)
    assert sent == ["blocker"]
    await line.close()


async def test_a_device_closing_takes_its_queued_requests_off_the_line() -> None:
    # Two gates share an RS-485 line; one is closed (a reload removed it) while its read
    # waits its turn: that read must not go out after its device is gone.
    line = ModbusLine("test", None)
    release = asyncio.Event()
    sent: list[str] = []

    async def blocker() -> None:
        sent.append("A read")
        await release.wait()

    async def gone() -> None:
        sent.append("B read")

    first = asyncio.create_task(line.submit(blocker, priority=Priority.POLL, station="A"))
    queued = asyncio.create_task(line.submit(gone, priority=Priority.POLL, station="B"))
    while not sent:
        await asyncio.sleep(0)
    line.forget("B")
    release.set()
    await first
    await asyncio.wait([queued])
    assert queued.cancelled()
    await line.submit(lambda: asyncio.sleep(0), priority=Priority.WRITE, station="A")
    assert sent == ["A read"] and line.snapshot()["stations"] == 1
    await line.close()


async def test_closing_the_line_as_an_answer_arrives_ends_its_worker() -> None:
    """pymodbus awaits asyncio.wait_for for each answer; on Python 3.11 that returns the
    answer when its task is cancelled at the instant the answer arrives, and the
    cancellation is lost. The line's worker awaits pymodbus in a task of its own
    (drivers/guard.py), so closing the line still ends it. Awaited by the worker itself,
    the close waited for ever (a gate's stop hung in a clean-clone make test)."""
    line = ModbusLine("test", None)
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    asked = asyncio.Event()

    async def exchange() -> str:
        asked.set()
        return await asyncio.wait_for(answer, 5)  # noqa: TID251 - as pymodbus awaits an answer

    caller = asyncio.create_task(line.submit(exchange, priority=Priority.POLL))
    await asked.wait()
    answer.set_result("coil on")  # the answer arrives ...
    async with asyncio.timeout(5):
        await line.close()  # ... as the line closes
    await asyncio.wait({caller}, timeout=1)
    assert caller.done()
