"""The relay plan, the passage detector and the line's queue/timing/load: pure, table tests;
then the line's promise against a real RTU peer — a request once on the wire is never cut."""

from __future__ import annotations

import asyncio

import pytest

from drivers.outputs.bus import LineTiming, LoadMeter, ModbusLine, Priority, RequestQueue
from drivers.outputs.plan import PassageCounter, PassageDetector, RelayPlan

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


COUNTER = [
    # readings of the board's counter, people counted after each
    ([7, 7, 8, 10], [0, 0, 1, 3]),  # the first reading is the baseline; two between polls
    ([65534, 65535, 0, 2], [0, 1, 2, 4]),  # 16 bits: it wraps
    ([5, None, 9, 10], [0, 0, 0, 1]),  # what moved while unknown is not people now
    ([None, 3, 3], [0, 0, 0]),
]


@pytest.mark.parametrize("readings,people", COUNTER)
def test_passage_counter(readings: list[int | None], people: list[int]) -> None:
    counter = PassageCounter()
    seen = []
    for count in readings:
        counter.observe(count)
        seen.append(counter.people)
    assert seen == people


# -- the line ---------------------------------------------------------------------------


def test_writes_jump_the_queue_of_polls() -> None:
    q: RequestQueue[str] = RequestQueue()
    for item, prio in [("p1", Priority.POLL), ("p2", Priority.POLL), ("w1", Priority.WRITE),
                       ("p3", Priority.POLL), ("w2", Priority.WRITE)]:  # fmt: skip
        q.put(item, prio)
    assert len(q) == 5
    assert [q.take() for _ in range(6)] == ["w1", "w2", "p1", "p2", "p3", None]


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
