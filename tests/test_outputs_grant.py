"""drivers/outputs/grant.py as a table: one grant's readings and time in, one outcome out,
and every rotation no grant claims kept for the desk."""

from __future__ import annotations

import pytest

from drivers.outputs.grant import GrantTracker, Passage, Unclaimed, Unseen, describe

T = 3.0  # passage_timeout
STALL = 10.0
# the board read every half second, as a polled gate is (a gap over a second is blindness)
ANSWERING = [("read", 0.5 * i, 5 + i, True, 0) for i in range(1, 6)]
QUIET: list[Passage | None] = [None] * len(ANSWERING)


def play(steps: list[tuple[str, float, int, bool, int]], *, counts_unseen: bool = False) -> list[Passage | None]:
    """Steps: ("release", now, readings, ok, 0) | ("read", now, number, ok, people) | ("tick", now, ...)."""
    t = GrantTracker(T, STALL, counts_unseen=counts_unseen)
    out: list[Passage | None] = []
    for kind, now, n, ok, people in steps:
        if kind == "release":
            t.release(now, n, board_ok=ok)
        elif kind == "read":
            out.append(t.reading(now, n, ok, people))
        else:
            out.append(t.tick(now))
    return out


@pytest.mark.parametrize(
    "name, steps, expected",
    [
        ("a passage after the release", [("release", 0, 5, True, 0), ("read", 0.5, 6, True, 0), ("read", 1.0, 7, True, 1)],
         [None, Passage.PASSED]),
        ("an edge read before the release is not this grant's",
         [("release", 0, 5, True, 0), ("read", 0.1, 5, True, 1), *ANSWERING, ("tick", 3.2, 0, True, 0)],
         [None, *QUIET, Passage.NOT_PASSED]),
        ("nobody, the board answering", [("release", 0, 5, True, 0), *ANSWERING, ("tick", 3.0, 0, True, 0)],
         [*QUIET, Passage.NOT_PASSED]),
        ("nobody seen, but nobody read for 1.5 s (the loop starved): a passage may have gone unseen",
         [("release", 0, 5, True, 0), ("read", 0.5, 6, True, 0), ("read", 2.0, 7, True, 0), ("read", 2.5, 8, True, 0),
          ("tick", 3.0, 0, True, 0)],
         [None, None, None, Passage.UNKNOWN]),
        ("a stall does not count: the board back, the person through",
         [("release", 0, 5, True, 0), ("read", 0.5, 6, False, 0), ("tick", 3.5, 0, True, 0), ("read", 4.0, 7, True, 0),
          ("read", 4.8, 8, True, 1)],
         [None, None, None, Passage.PASSED]),
        ("a stall then nobody: a passage may have gone unseen",
         [("release", 0, 5, True, 0), ("read", 0.5, 6, False, 0), ("read", 2.0, 7, True, 0), ("tick", 5.1, 0, True, 0)],
         [None, None, Passage.UNKNOWN]),
        ("a board silent for the stall limit", [("release", 0, 5, False, 0), ("tick", 5.0, 0, True, 0),
                                                ("tick", 10.1, 0, True, 0)],
         [None, Passage.UNKNOWN]),
    ],
)
def test_one_grant_one_outcome(name: str, steps: list[tuple[str, float, int, bool, int]],
                               expected: list[Passage | None]) -> None:
    assert play(steps) == expected, name


def test_a_pulse_counter_covers_a_gate_nobody_read() -> None:
    """Nobody read the board for 1.5 s (the loop starved), the board answering: its counter
    saw every pulse meanwhile, so no passage went unseen."""
    steps = [("release", 0.0, 5, True, 0), ("read", 0.5, 6, True, 0), ("read", 2.0, 7, True, 0), ("tick", 5.1, 0, True, 0)]
    assert play(steps, counts_unseen=True) == [None, None, Passage.NOT_PASSED]


def test_a_counter_that_began_again_covers_nothing() -> None:
    """The board was silent and its next reading is a new baseline (plan.PassageCounter: it
    may have restarted, its count lost): a person may have gone through uncounted — the
    grant ends unconfirmed, never "did not pass" (a `not_opened` for a member who went
    through, when the board restarted after they turned)."""
    t = GrantTracker(T, STALL, counts_unseen=True)
    t.release(0.0, 5)
    assert t.reading(0.5, 6, False) is None  # silent
    assert t.reading(1.0, 7, True, 0, rebased=True) is None  # back, its counter from a new start
    assert t.reading(2.0, 8, True) is None
    assert t.tick(3.6) is Passage.UNKNOWN and t.because is Unseen.RELAY_UNREADABLE


@pytest.mark.parametrize("counts_unseen", [False, True])
def test_a_grant_while_the_passage_input_reads_stuck_is_unknown_never_not_passed(counts_unseen: bool) -> None:
    """A passage input stuck active shows nobody going through (no edge, and a pulse
    counter counts none): a grant that sees no passage cannot say "did not pass"."""
    def lapse(stuck_at_release: bool, stuck_from: float | None) -> GrantTracker:
        t = GrantTracker(T, STALL, counts_unseen=counts_unseen)
        t.release(0.0, 5, stuck=stuck_at_release)
        for _, at, n, ok, people in ANSWERING:
            stuck = stuck_from is not None and at >= stuck_from
            assert t.reading(at, n, ok, people, stuck=stuck) is None
        t.tick(3.0)
        return t

    for stuck_at_release, stuck_from in ((True, 0.0), (False, 1.0)):  # from the start, or named mid-grant
        t = lapse(stuck_at_release, stuck_from)
        assert (t.outcome, t.because) == (Passage.UNKNOWN, Unseen.PASSAGE_INPUT_STUCK)
    watched = lapse(False, None)
    assert (watched.outcome, watched.because) == (Passage.NOT_PASSED, None)
    # an edge still wins: the input worked again for this person
    t = GrantTracker(T, STALL, counts_unseen=counts_unseen)
    t.release(0.0, 5, stuck=True)
    assert t.reading(0.5, 6, True, 1) is Passage.PASSED and t.because is None


def test_why_a_passage_could_not_be_seen() -> None:
    silent = GrantTracker(T, STALL)
    silent.release(0.0, 5, board_ok=False)
    assert silent.tick(STALL) is Passage.UNKNOWN and silent.because is Unseen.RELAY_UNREADABLE
    # The board answered every reading, but none was taken for 1.5 s (the daemon paused
    # or starved): the daemon's own blindness, not the relay's (a freeze probe's desk read
    # "relay_unreadable" for a board that was fine).
    unread = GrantTracker(T, STALL)
    unread.release(0.0, 5)
    assert unread.reading(0.1, 6, True) is None
    assert unread.reading(1.6, 7, True) is None
    assert unread.tick(T + 0.1) is Passage.UNKNOWN and unread.because is Unseen.INPUTS_UNREAD
    # paused between the release's write and its answer (GrantTracker.release `since`)
    paused = GrantTracker(T, STALL)
    paused.release(2.0, 5, since=0.0)
    assert paused.reading(2.1, 6, True) is None
    assert paused.tick(2.0 + T) is Passage.UNKNOWN and paused.because is Unseen.INPUTS_UNREAD
    # both: the board was silent for a reading too — the board's silence is what is said
    both = GrantTracker(T, STALL)
    both.release(0.0, 5)
    assert both.reading(1.6, 6, False) is None
    assert both.reading(1.8, 7, True) is None
    assert both.tick(T + 1.0) is Passage.UNKNOWN and both.because is Unseen.RELAY_UNREADABLE
    stopping = GrantTracker(T, STALL)
    stopping.release(0.0, 5)
    assert stopping.abandon(1.0) is Passage.UNKNOWN and stopping.because is Unseen.STOPPING


def test_rotations_no_grant_claims_are_kept_with_the_last_grant() -> None:
    t = GrantTracker(T, STALL)
    assert t.reading(0.0, 1, True, 1) is None  # nobody granted
    t.release(1.0, 1)
    assert t.reading(1.5, 2, True, 2) is Passage.PASSED  # two people on one release: one is extra
    t.release(5.0, 2)
    for i in range(1, 6):
        assert t.reading(5.0 + 0.5 * i, 2 + i, True, 0) is None
    assert t.tick(8.0) is Passage.NOT_PASSED
    assert t.reading(8.4, 8, True, 1) is None  # the slow one, after the gate gave up
    got = [(u.at, None if u.after is None else (u.after[0], round(u.after[1], 2))) for u in t.take_unclaimed()]
    assert got == [(0.0, None), (1.5, (Passage.PASSED, 0.0)), (8.4, (Passage.NOT_PASSED, 0.4))]
    assert t.take_unclaimed() == []


def test_a_gap_longer_than_the_passage_pulse_is_blindness() -> None:
    """The passage input pulses 100 ms per rotation: readings 50 ms apart cannot miss it, a
    300 ms stall between two readings can (a loaded box; the soak's seed 996441 lost a
    rotation so). A grant that then lapses is UNKNOWN, watched all along NOT_PASSED."""

    def lapse(times: list[float]) -> Passage | None:
        t = GrantTracker(T, STALL, blind_limit=0.1)
        t.release(0.0, 0)
        for n, at in enumerate(times, 1):
            assert t.reading(at, n, True, 0) is None
        return t.tick(3.0)

    steady = [0.05 * i for i in range(1, 59)]
    assert lapse(steady) is Passage.NOT_PASSED
    stalled = [at for at in steady if not 1.0 < at < 1.3]  # 1.0 -> 1.3: 300 ms without a reading
    assert lapse(stalled) is Passage.UNKNOWN


@pytest.mark.parametrize(("written_at", "expected"), [(0.95, Passage.NOT_PASSED), (0.5, Passage.UNKNOWN)])
def test_the_time_the_release_was_on_its_way_is_blind_too(written_at: float, expected: Passage) -> None:
    """The release written at `written_at`, its answer handled at 1.0: the daemon paused in
    between (an outside probe froze it the instant the coil read released), and the person
    turned meanwhile. Watched only from the answer, every reading after was clean and the
    passage ended "did not pass": nothing charged, nobody inside, a booking fined as a
    no-show. Longer than `blind_limit` on the way is a blind gate."""
    t = GrantTracker(T, STALL, blind_limit=0.3)
    t.release(1.0, 0, since=written_at)
    for n in range(1, 59):  # a reading every 50 ms until just before the timeout
        assert t.reading(1.0 + 0.05 * n, n, True, 0) is None
    assert t.tick(1.0 + T + 0.1) is expected


def test_the_desk_reads_what_an_unclaimed_rotation_followed() -> None:
    assert describe(Unclaimed(1.0, None)) == "a rotation with no grant"
    assert describe(Unclaimed(9.0, (Passage.NOT_PASSED, 0.4))) == (
        "a rotation with no grant, 0.4 s after a grant that saw no passage")
    assert describe(Unclaimed(1.0, None), "a fire alarm") == (
        "a rotation with no grant, while the gate stood released for a fire alarm")
