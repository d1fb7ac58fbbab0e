"""Durations, local wall times and weekly windows — the calendar arithmetic of a gym.

Everything here is pure: the caller passes the instant and the timezone. Windows compare
*wall-clock* times, so "06:30-22:00" means the same on the day clocks go back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_DURATION = re.compile(r"^(\d+[smhd])+$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
MINUTES_PER_DAY = 24 * 60
MAX_DURATION = timedelta(days=3660)  # ten years and their leap days
FIRST_YEAR, LAST_YEAR = 1900, 9000  # instants: far enough from the calendar's ends for local time and durations


def parse_duration(text: str) -> timedelta:
    """`90s`, `15m`, `3h`, `2d`, or a sum of them (`1h30m`), at most MAX_DURATION: beyond
    it a date moved by it leaves the calendar (`99999999999d` overflowed `timedelta`, and
    a smaller one a booking's start minus its arrival window)."""
    s = text.strip() if isinstance(text, str) else ""
    if not _DURATION.match(s):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 3h, 2d)")
    seconds = sum(int(n) * _UNIT[u] for n, u in _DURATION_PART.findall(s))
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"too long a duration: {text!r} (at most {MAX_DURATION.days}d)")
    return timedelta(seconds=seconds)


def format_duration(d: timedelta) -> str:
    secs = int(d.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs and secs % size == 0:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError) as e:  # OSError: a name too long for a file
        raise ValueError(f"unknown timezone: {str(name)[:64]!r}") from e


@lru_cache(maxsize=65536)
def parse_instant(text: str, tz: ZoneInfo) -> datetime:
    """A wall time in the site's zone (`2026-11-18T13:00`) or with an explicit offset/Z.

    Returns an aware datetime in UTC. Cached: a snapshot repeats the same class times for
    hundreds of thousands of bookings, and each is checked on input and again on use. An
    instant seen once (an event's `at`) goes through `parse_instant_once`: 65,536 cached
    timestamps are 18 MB that a daemon would only free by restarting.
    """
    return parse_instant_once(text, tz)


def parse_instant_once(text: str, tz: ZoneInfo) -> datetime:
    """parse_instant without its cache."""
    if not isinstance(text, str):
        raise ValueError(f"not a date-time: {text!r} (use e.g. 2026-11-18T13:00)")
    s = text.strip()
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError as e:
        raise ValueError(f"not a date-time: {text!r} (use e.g. 2026-11-18T13:00)") from e
    if not FIRST_YEAR <= dt.year < LAST_YEAR:
        # 9999-12-31T23:59Z is year 10000 in Madrid (a decision on it overflowed), and
        # 0001-01-01T00:00 east of Greenwich year 0; the year as written decides, so that
        # a text valid in one zone is valid in every other
        raise ValueError(f"out of range: {text!r} (a date-time between {FIRST_YEAR} and {LAST_YEAR})")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(UTC)


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except (ValueError, AttributeError) as e:
        raise ValueError(f"not a date: {text!r} (use e.g. 2026-12-25)") from e


def local(at: datetime, tz: ZoneInfo) -> datetime:
    return at.astimezone(tz)


def local_date(at: datetime, tz: ZoneInfo) -> date:
    return at.astimezone(tz).date()


def start_of_local_day(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def iso_utc(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at.microsecond == 0 else (
        at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class Window:
    """Minutes from the start of the day it belongs to; end may pass 24:00 (overnight)."""

    start: int
    end: int

    def __str__(self) -> str:
        def hm(m: int) -> str:
            m %= MINUTES_PER_DAY if m != MINUTES_PER_DAY else MINUTES_PER_DAY + 1
            return f"{m // 60:02d}:{m % 60:02d}"

        return f"{hm(self.start)}-{hm(self.end)}"


def parse_window(text: str) -> Window:
    m = _WINDOW.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not a window: {text!r} (use HH:MM-HH:MM)")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise ValueError(f"not a time of day in window {text!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end < start:  # runs past midnight: belongs to the day it starts on
        end += MINUTES_PER_DAY
    if end == start:
        raise ValueError(f"empty window {text!r}")
    return Window(start, end)


@lru_cache(maxsize=4096)
def _parse_schedule(spec: tuple[tuple[str, tuple[str, ...]], ...]) -> WeekSchedule:
    # cached: the store rebuilds passes for every tap, and most share a handful of schedules
    per_day: list[list[Window]] = [[] for _ in range(7)]
    for key, texts in spec:
        windows = [parse_window(t) for t in texts]
        for d in parse_day_keys(key):
            per_day[d].extend(windows)
    return WeekSchedule(tuple(tuple(sorted(ws, key=lambda w: w.start)) for ws in per_day), spec)


def parse_day_keys(key: str) -> list[int]:
    """`mon`, `mon-fri`, `fri-mon` (wrapping), `mon,wed` → weekday numbers (Mon=0)."""
    days: list[int] = []
    for part in str(key).lower().split(","):
        part = part.strip()
        if "-" in part:
            a, b = (p.strip() for p in part.split("-", 1))
            if a not in DAYS or b not in DAYS:
                raise ValueError(f"unknown day range {key!r} (days are mon..sun)")
            i, j = DAYS.index(a), DAYS.index(b)
            while True:
                days.append(i)
                if i == j:
                    break
                i = (i + 1) % 7
        elif part in DAYS:
            days.append(DAYS.index(part))
        else:
            raise ValueError(f"unknown day {key!r} (days are mon..sun)")
    return days


@dataclass(frozen=True, slots=True)
class WeekSchedule:
    """Windows per weekday (Mon=0). Checked against local wall-clock time."""

    days: tuple[tuple[Window, ...], ...]
    # the installer's text, kept so the schedule can be stored and shown as written
    spec: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, spec: Mapping[str, str | Iterable[str]]) -> WeekSchedule:
        return _parse_schedule(tuple((str(k), (v,) if isinstance(v, str) else tuple(v)) for k, v in spec.items()))

    def spec_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.spec}

    @classmethod
    def always(cls) -> WeekSchedule:
        return cls(tuple((Window(0, MINUTES_PER_DAY),) for _ in range(7)))

    def contains(self, wall: datetime) -> bool:
        """Is this local wall time inside a window (today's, or yesterday's overnight)?"""
        minute = wall.hour * 60 + wall.minute + wall.second / 60
        wd = wall.weekday()
        if any(w.start <= minute < w.end for w in self.days[wd]):
            return True
        prev = self.days[(wd - 1) % 7]
        return any(w.end > MINUTES_PER_DAY and minute + MINUTES_PER_DAY < w.end for w in prev)

    def next_opening(self, wall: datetime) -> datetime | None:
        """The next window start after `wall` within a week (for human messages)."""
        base = wall.replace(hour=0, minute=0, second=0, microsecond=0)
        minute = wall.hour * 60 + wall.minute
        for offset in range(8):
            for w in self.days[(wall.weekday() + offset) % 7]:
                if offset > 0 or w.start > minute:
                    return base + timedelta(days=offset, minutes=w.start)
        return None
