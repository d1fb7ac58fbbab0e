"""Window arithmetic against a simple independent oracle, for any IANA zone and any instant,
daylight-saving transitions and windows past midnight included; durations round-trip."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from rules.model import Site
from rules.timeutil import (
    DAYS,
    MAX_DURATION,
    WeekSchedule,
    format_duration,
    load_zone,
    parse_day_keys,
    parse_duration,
    parse_instant,
    parse_window,
)

ZONES = sorted(available_timezones())
# zones with unusual transitions: 30-minute DST, southern hemisphere, DST at midnight
DST_ZONES = [
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Havana",
    "Pacific/Chatham",
    "Africa/Casablanca",
]
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def transitions(zone: str, year: int = 2026) -> list[datetime]:
    """UTC instants where the zone's offset changes in `year` (6-hour scan, then bisect)."""
    tz = ZoneInfo(zone)
    out: list[datetime] = []
    t = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    prev = t.astimezone(tz).utcoffset()
    while t < end:
        nxt = t + timedelta(hours=6)
        off = nxt.astimezone(tz).utcoffset()
        if off != prev:
            lo, hi = 0, 6 * 3600  # whole seconds after t: offset prev at lo, changed at hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if (t + timedelta(seconds=mid)).astimezone(tz).utcoffset() == prev:
                    lo = mid
                else:
                    hi = mid
            out.append(t + timedelta(seconds=hi))
            prev = off
        t = nxt
    return out


# -- the oracle -----------------------------------------------------------------------------

Spec = list[tuple[str, str]]  # (day key, "HH:MM-HH:MM")


def oracle_contains(spec: Spec, wall: datetime) -> bool:
    """Straight from SCENARIOS.md: start included, end excluded, 24:00 allowed as an end, an end
    before the start runs past midnight and belongs to the start's day."""
    sec = wall.hour * 3600 + wall.minute * 60 + wall.second + wall.microsecond / 1e6
    today = wall.weekday()
    yesterday = (today - 1) % 7
    for key, text in spec:
        days = set(parse_day_keys(key))
        a, b = text.split("-")
        start = int(a[:2]) * 3600 + int(a[3:]) * 60
        end = int(b[:2]) * 3600 + int(b[3:]) * 60
        if end > start:  # same day (end may be 24:00)
            if today in days and start <= sec < end:
                return True
        else:  # past midnight
            if today in days and sec >= start:
                return True
            if yesterday in days and sec < end:
                return True
    return False


hhmm = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda hm: f"{hm[0]:02d}:{hm[1]:02d}")


@st.composite
def windows(draw: st.DrawFn) -> str:
    start = draw(hhmm)
    end = draw(st.one_of(hhmm, st.just("24:00")))
    assume(end != start)
    return f"{start}-{end}"


day_keys = st.one_of(
    st.sampled_from(DAYS),
    st.tuples(st.sampled_from(DAYS), st.sampled_from(DAYS)).map(lambda ab: f"{ab[0]}-{ab[1]}"),
)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    n = draw(st.integers(1, 5))
    spec: Spec = []
    used: set[str] = set()
    for _ in range(n):
        key = draw(day_keys.filter(lambda k: k not in used))
        used.add(key)
        for w in draw(st.lists(windows(), min_size=1, max_size=3)):
            spec.append((key, w))
    return spec


def schedule_of(spec: Spec) -> WeekSchedule:
    grouped: dict[str, list[str]] = {}
    for key, w in spec:
        grouped.setdefault(key, []).append(w)
    return WeekSchedule.parse(grouped)


instants = st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2060, 1, 1)).map(lambda d: d.replace(tzinfo=UTC))


@st.composite
def near_transition(draw: st.DrawFn) -> tuple[str, datetime]:
    zone = draw(st.sampled_from(DST_ZONES))
    ts = transitions(zone)
    assume(ts)
    base = draw(st.sampled_from(ts))
    return zone, base + timedelta(seconds=draw(st.integers(-4 * 3600, 4 * 3600)))


# -- properties -----------------------------------------------------------------------------


@SETTINGS
@given(spec=specs(), zone=st.sampled_from(ZONES), at=instants)
def test_contains_matches_oracle_any_zone_any_instant(spec: Spec, zone: str, at: datetime) -> None:
    wall = at.astimezone(ZoneInfo(zone))
    assert schedule_of(spec).contains(wall) == oracle_contains(spec, wall)


@SETTINGS
@given(spec=specs(), zi=near_transition())
def test_contains_matches_oracle_around_dst_transitions(spec: Spec, zi: tuple[str, datetime]) -> None:
    zone, at = zi
    wall = at.astimezone(ZoneInfo(zone))
    assert schedule_of(spec).contains(wall) == oracle_contains(spec, wall)


@SETTINGS
@given(spec=specs(), zi=near_transition(), closed=st.booleans())
def test_site_is_open_follows_wall_clock_and_closed_dates(spec: Spec, zi: tuple[str, datetime], closed: bool) -> None:
    zone, at = zi
    tz = ZoneInfo(zone)
    wall = at.astimezone(tz)
    closed_dates = frozenset({wall.date()}) if closed else frozenset()
    site = Site(tz, schedule_of(spec), closed_dates)
    assert site.is_open(at) == (not closed and oracle_contains(spec, wall))
    assert Site(tz).is_open(at)  # no opening hours, no closed dates: always open


@SETTINGS
@given(zone=st.sampled_from(ZONES), at=instants)
def test_always_contains_everything(zone: str, at: datetime) -> None:
    assert WeekSchedule.always().contains(at.astimezone(ZoneInfo(zone)))


@settings(max_examples=60, deadline=None)
@given(spec=specs())
def test_keys_naming_the_same_day_add_up(spec: Spec) -> None:
    """A schedule equals the union of its keys' schedules, whatever the grouping; checked at
    every window bound and the minute either side, on every day of a week."""
    whole = schedule_of(spec)
    parts = [schedule_of([item]) for item in spec]
    marks = {0, 24 * 60 - 1}
    for _, w in spec:
        for hm in w.split("-"):
            m = int(hm[:2]) * 60 + int(hm[3:])
            marks |= {(m - 1) % 1440, m % 1440, (m + 1) % 1440}
    for day in range(7):
        for minute in sorted(marks):
            wall = datetime(2026, 11, 16 + day, minute // 60, minute % 60)  # 2026-11-16 is a Monday
            assert whole.contains(wall) == any(p.contains(wall) for p in parts) == oracle_contains(spec, wall)


@pytest.mark.parametrize(
    ("spec", "wall", "inside"),
    [
        ([("sat", "22:00-02:00")], datetime(2026, 11, 22, 1, 30), True),  # Sunday 01:30
        ([("sat", "22:00-02:00")], datetime(2026, 11, 22, 2, 0), False),
        ([("sat", "22:00-02:00")], datetime(2026, 11, 21, 1, 30), False),  # Saturday 01:30: Friday had none
        ([("sun", "22:00-02:00")], datetime(2026, 11, 23, 1, 0), True),  # wraps into Monday
        ([("sun", "20:00-24:00")], datetime(2026, 11, 22, 23, 59, 59), True),
        ([("sun", "20:00-24:00")], datetime(2026, 11, 23, 0, 0), False),
        ([("mon-fri", "06:30-22:00"), ("wed", "22:00-23:00")], datetime(2026, 11, 18, 22, 30), True),
        ([("mon-fri", "06:30-22:00"), ("wed", "22:00-23:00")], datetime(2026, 11, 19, 22, 30), False),
        ([("fri-mon", "10:00-11:00")], datetime(2026, 11, 23, 10, 0), True),  # Monday, wrapped range
        ([("fri-mon", "10:00-11:00")], datetime(2026, 11, 24, 10, 0), False),
    ],
)
def test_contains_examples(spec: Spec, wall: datetime, inside: bool) -> None:
    assert schedule_of(spec).contains(wall) is inside
    assert oracle_contains(spec, wall) is inside


def test_dst_wall_clock_examples() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    s = WeekSchedule.parse({"sun": "02:00-02:30"})
    # autumn 2026-10-25: 02:15 happens twice, both inside
    assert s.contains(datetime(2026, 10, 25, 0, 15, tzinfo=UTC).astimezone(berlin))
    assert s.contains(datetime(2026, 10, 25, 1, 15, tzinfo=UTC).astimezone(berlin))
    # spring 2026-03-29: 02:00-03:00 does not exist; 03:00 CEST is outside
    assert not s.contains(datetime(2026, 3, 29, 1, 0, tzinfo=UTC).astimezone(berlin))
    assert transitions("Europe/Berlin") == [datetime(2026, 3, 29, 1, 0, tzinfo=UTC), datetime(2026, 10, 25, 1, 0, tzinfo=UTC)]


# -- windows and day keys -----------------------------------------------------------------


@SETTINGS
@given(w=windows())
def test_window_text_round_trip(w: str) -> None:
    parsed = parse_window(w)
    assert parse_window(str(parsed)) == parsed


@pytest.mark.parametrize("bad", ["", "6-22", "06:00", "06:00-06:00", "25:00-26:00", "06:60-07:00", "24:00-01:00", "06:00-24:01", "a-b"])
def test_bad_windows(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_window(bad)


@pytest.mark.parametrize("bad", ["monday", "mon-funday", "", "mon-"])
def test_bad_day_keys(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_day_keys(bad)


# -- durations ----------------------------------------------------------------------------


@SETTINGS
@given(st.integers(min_value=0, max_value=10**8))
@example(0)
@example(90)
@example(86400)
def test_duration_format_parse_round_trip(seconds: int) -> None:
    d = timedelta(seconds=seconds)
    text = format_duration(d)
    assert parse_duration(text) == d
    assert format_duration(parse_duration(text)) == text


@SETTINGS
@given(n=st.integers(min_value=0, max_value=3660), unit=st.sampled_from("smhd"))
def test_duration_parse_format_round_trip(n: int, unit: str) -> None:
    d = parse_duration(f"{n}{unit}")
    assert d == timedelta(seconds=n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])
    assert parse_duration(format_duration(d)) == d


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("3h", 10800), ("2d", 172800), ("0m", 0)])
def test_duration_examples(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@SETTINGS
@given(st.from_regex(r"\A(\d{1,40}[smhd]){1,4}\Z"))
@example("99999999999d")  # overflowed timedelta: a crash, not a config error
@example("3660d")
@example("3660d1s")
def test_duration_well_formed_of_any_size_is_a_duration_or_a_value_error(text: str) -> None:
    try:
        d = parse_duration(text)
    except ValueError as e:
        assert "too long" in str(e) or "not a duration" in str(e)
    else:
        assert timedelta(0) <= d <= MAX_DURATION


@pytest.mark.parametrize("bad", ["", "15", "m", "-5m", "1.5h", "15 minutes", "15min", "3w", " ", "15m "[:-1] + "x",
                                 "3661d", "87841h"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@SETTINGS
@given(st.text(max_size=12))
def test_duration_parse_garbage_raises_value_error_only(text: str) -> None:
    try:
        d = parse_duration(text)
    except ValueError:
        return
    assert d >= timedelta(0)


# -- instants and zones -------------------------------------------------------------------


def test_load_zone() -> None:
    assert load_zone("Europe/Madrid") == ZoneInfo("Europe/Madrid")
    for bad in ["Europe/Atlantis", "", "../etc/passwd", "Not a zone"]:
        with pytest.raises(ValueError):
            load_zone(bad)


@SETTINGS
@given(zi=near_transition())
def test_parse_instant_wall_time_and_offsets(zi: tuple[str, datetime]) -> None:
    zone, at = zi
    tz = ZoneInfo(zone)
    assert parse_instant(at.strftime("%Y-%m-%dT%H:%M:%SZ"), tz) == at.replace(microsecond=0)
    wall = at.astimezone(tz).replace(microsecond=0)
    # written with its offset, an instant means itself in any zone
    assert parse_instant(wall.isoformat(), ZoneInfo("UTC")) == at.replace(microsecond=0)
    # written as a bare wall time, it means that wall time in the site's zone (first of a repeat)
    parsed = parse_instant(wall.replace(tzinfo=None).isoformat(), tz)
    assert parsed.astimezone(tz).replace(tzinfo=None) == wall.replace(tzinfo=None)
    assert parsed.tzinfo == UTC


def test_parse_instant_local_date() -> None:
    madrid = ZoneInfo("Europe/Madrid")
    assert parse_instant("2026-11-18T13:00", madrid) == datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
    assert parse_instant("2026-07-18T13:00", madrid) == datetime(2026, 7, 18, 11, 0, tzinfo=UTC)
    assert parse_instant("2026-11-18T13:00+00:00", madrid) == datetime(2026, 11, 18, 13, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_instant("tomorrow", madrid)
    assert date(2026, 11, 18) == parse_instant("2026-11-18T00:30", madrid).astimezone(madrid).date()


@pytest.mark.parametrize(("text", "ok"), [
    ("9999-12-31T23:59:59Z", False),  # year 10000 in Madrid: a decision on it overflowed
    ("0001-01-01T00:00", False),  # year 0 in UTC: astimezone overflowed
    ("1899-12-31T23:00Z", False), ("9000-01-01T00:00Z", False),
    ("1900-01-01T00:00Z", True), ("8999-12-31T23:59Z", True), ("2026-12-05T13:00", True),
    ("1900-01-01T00:00", True),  # 1899 in UTC: the year as written decides, in every zone alike
])
def test_instants_stay_clear_of_the_calendars_ends(text: str, ok: bool) -> None:
    from rules.timeutil import parse_instant_once

    tz = ZoneInfo("Europe/Madrid")
    if ok:
        at = parse_instant_once(text, tz)
        assert at.astimezone(tz) + MAX_DURATION > at - MAX_DURATION  # local time and durations hold
    else:
        with pytest.raises(ValueError, match="out of range"):
            parse_instant_once(text, tz)
