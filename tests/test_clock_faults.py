"""A clock the gate checks (issue: "a clock jump fines every booking of the day"). A real
`gated run` under libfaketime — the wall clock stepped while the process runs, the
monotonic clock left alone (FAKETIME_DONT_FAKE_MONOTONIC) — with a pty reader and a
simulated Modbus turnstile. rules/clock.py is the policy; here, what a member and the
books see:

- a day ahead for 8 s and back: taps decided at the right time (a booked member 10
  minutes before her class is let in on her booking), no no-show, no fee, the QR code
  used before the jump still refused after it, hard anti-passback holding for a member
  who passed during the jump; `gated status` and alarms say so;
- an hour back: the same, and the clock stays untrusted while it is behind;
- a boot in 2000, then NTP's step to today: nothing settled in 2000, the due no-show
  settled once the clock is right.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gated.control import request
from sync.qrtoken import generate_private_key, mint, public_key_text
from tests.gate_process import IN_CARD, OUT_CARD, Gate, gate_process
from tests.test_daemon import wait_for

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))),
                   Path("/usr/lib/faketime/libfaketime.so.1"))
TZ = ZoneInfo("Europe/Madrid")
KEY = generate_private_key()  # this run's QR signing key



@pytest.fixture(autouse=True)
def _libfaketime() -> None:
    # part of what is tested, as mosquitto is: a machine without it fails with the fix
    if not LIBFAKETIME.exists():
        pytest.fail("libfaketime is required to step the clock (make system-deps installs Debian's faketime)")


def local(minutes: float) -> str:
    """A local wall time `minutes` from now, as a seed file writes it."""
    return (datetime.now(TZ) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S")


def records(*, b2_ends_in: float) -> dict[str, Any]:
    return {
        "members": [
            {"id": "m1", "name": "Ana", "cards": [IN_CARD]},
            {"id": "m2", "name": "Bruno", "cards": [OUT_CARD]},
        ],
        "passes": [
            {"id": "p1", "member": "m1", "kind": "visits", "balance": 9, "deduct_on": "access",
             "access_windows": {"mon-sun": "00:00-24:00"}},
            {"id": "p2", "member": "m2", "kind": "visits", "balance": 10, "deduct_on": "access",
             "access_windows": {"mon-sun": "00:00-24:00"}},
        ],
        "bookings": [
            # Ana's class starts in 10 minutes: she may come in on it now (15 minutes before)
            {"id": "b1", "member": "m1", "pass": "p1", "class": "Spinning", "zone": "main",
             "starts_at": local(10), "ends_at": local(55)},
            # Bruno's: its no-show (and fee) falls due 15 minutes after its end
            {"id": "b2", "member": "m2", "pass": "p2", "class": "Yoga", "zone": "main",
             "starts_at": local(b2_ends_in - 45), "ends_at": local(b2_ends_in)},
        ],
    }


@asynccontextmanager
async def faked(tmp_path: Path, start: str, *, b2_ends_in: float, state: Path | None = None,
                seed: bool = True) -> AsyncIterator[tuple[Gate, Path]]:
    """A gate whose wall clock reads the spec in the file it yields (`+1d`, `-1h`, `@2000-…`)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = tmp_path / "faketime"
    spec.write_text(start + "\n")
    env = {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(spec),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    if state is None:
        state = tmp_path / "state"
        state.mkdir()
    extra = {
        "policy": {"no_show_fee": 1, "no_show_after": "15m", "loyalty_delay": "30m"},
        "qr": {"public_keys": [public_key_text(KEY.public_key())]},
        "control": {"socket": str(tmp_path / "control.sock"), "injected_reads": True},
    }
    async with gate_process(tmp_path, state, extra=extra, records=records(b2_ends_in=b2_ends_in), seed=seed,
                            gate_extra={"anti_passback": "hard"}, env=env) as gate:
        yield gate, spec


async def clock_status(gate: Gate) -> dict[str, Any]:
    st = await gate.status()
    return {"clock": st["knowledge"]["clock"], "gaps": [g["kind"] for g in st["knowledge"]["gaps"]]}


async def until_clock(gate: Gate, trusted: bool) -> None:
    """Until the clock is (un)trusted, and the daemon's once-a-second check has said so."""
    for _ in range(200):
        st = await clock_status(gate)
        if st["clock"]["trusted"] is trusted and ("clock_untrusted" in st["gaps"]) is not trusted:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the clock never became {'trusted' if trusted else 'untrusted'}: {await clock_status(gate)}")


def settled(gate: Gate) -> list[dict[str, Any]]:
    """The time-driven work's events so far: no-shows, fees, loyalty."""
    return [e for e in gate.events() if (e["type"] == "attendance" and e["status"] == "no_show")
            or (e["type"] == "deduction" and e["cause"] == "no_show_fee") or e["type"] == "loyalty"]


async def test_a_day_ahead_for_8_s_and_back(tmp_path: Path) -> None:
    async with faked(tmp_path, "+0", b2_ends_in=30) as (gate, spec):
        now = datetime.now(UTC)
        code = mint(KEY, token_id="t1", member="m2", issued=now, expires=now + timedelta(minutes=5))
        first = await request(gate.socket, {"cmd": "tap", "gate": "in-1", "qr": code})
        assert (first["decision"], first["reason"]) == ("granted", "walk_in"), first
        spec.write_text("+1d\n")
        await until_clock(gate, False)
        st = await clock_status(gate)
        assert st["clock"]["state"] == "ahead" and "clock_untrusted" in st["gaps"]
        assert "jumped +86400 s" in st["clock"]["detail"]
        # Ana, 10 minutes before her class: decided at the right time, on her booking
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"]) == ("granted", "booking"), t
        await wait_for(lambda: len(gate.turnstile.passages) == 2, 10, "Ana through")
        await asyncio.sleep(6)  # the scheduler ran through the jump, every second
        spec.write_text("+0\n")
        await until_clock(gate, True)
        await asyncio.sleep(2.5)
        assert settled(gate) == []  # no booking of the day made a no-show, no fee
        again = await request(gate.socket, {"cmd": "tap", "gate": "in-1", "qr": code})
        assert (again["decision"], again["reason"]) == ("denied", "qr_replayed"), again
        inside = await gate.tap(IN_CARD)
        assert (inside["decision"], inside["reason"]) == ("denied", "anti_passback"), inside
        events = gate.events()
        # what was recorded during the jump carries the right time, not tomorrow's
        assert all(e["at"][:10] == datetime.now(UTC).date().isoformat() for e in events if e["seq"] > 2), events
        kinds = [e["kind"] for e in events if e["type"] == "alarm"]
        assert "clock_untrusted" in kinds and "clock_untrusted_ended" in kinds


async def test_an_hour_back(tmp_path: Path) -> None:
    async with faked(tmp_path, "+0", b2_ends_in=30) as (gate, spec):
        spec.write_text("-1h\n")
        await until_clock(gate, False)
        assert (await clock_status(gate))["clock"]["state"] == "behind"
        t = await gate.tap(IN_CARD)  # at the wall clock's time she would be 70 minutes early
        assert (t["decision"], t["reason"]) == ("granted", "booking"), t
        await asyncio.sleep(3)
        assert (await clock_status(gate))["clock"]["trusted"] is False  # never accepted back without NTP
        spec.write_text("+0\n")
        await until_clock(gate, True)
        assert settled(gate) == []


async def test_a_boot_in_2000_then_a_step_to_today(tmp_path: Path) -> None:
    """The box ran yesterday (the gate wrote down the last time it trusted), lost power,
    and boots with its clock in 2000 (a flat RTC cell); NTP steps it a little later."""
    state = tmp_path / "state"
    state.mkdir()
    # Bruno's class ended nearly 15 minutes ago: its no-show falls due in its first seconds,
    # on the real clock (after the gate began its time-driven work: it is the gate's own)
    async with faked(tmp_path / "before", "+0", b2_ends_in=-15 + 12 / 60, state=state) as (gate, _):
        await wait_for(lambda: any(e["type"] == "attendance" for e in gate.events()), 30, "the first run's no-show")
        before = len(settled(gate))
    async with faked(tmp_path / "after", "@2000-01-01 00:00:00", b2_ends_in=-15, state=state, seed=False) as (gate, spec):
        st = await clock_status(gate)
        assert st["clock"]["trusted"] is False and st["clock"]["state"] == "behind"
        assert "before the last time this gate trusted" in st["clock"]["detail"]
        # Ana, 10 minutes before her class: decided at the last trusted time plus the time
        # since (a little before the real time), on her booking — not in the year 2000
        t = await gate.tap(IN_CARD)
        assert (t["decision"], t["reason"]) == ("granted", "booking"), t
        assert all(e["at"] >= "2026" for e in gate.events())  # nothing stamped in 2000
        spec.write_text("+0\n")  # NTP's first step: today
        await until_clock(gate, True)
        assert len(settled(gate)) == before


async def test_a_clock_not_confirmed_is_confirmed_by_an_admin_with_gated_clock_confirm(tmp_path: Path) -> None:
    """The box was last trusted two hours ago and starts now with the system not
    synchronised (no NTP: an isolated LAN, the WAN down): its time of day is not confirmed
    (no-shows and fees wait; time passing never confirms it). An admin who checked the
    time confirms it as a user would, with `gated clock confirm` — a staff login may not."""
    import subprocess
    import sys

    from gated.auth import hash_password
    from gated.clock import system_synchronised
    from rules.model import Site
    from sync.store import Store
    from sync.store.meta import CLOCK_FLOOR_KEY

    def last_trusted_two_hours_ago(db: Path) -> None:
        store = Store(db, Site(TZ, id="storage-site"), daemon_id="gate-s")
        store.set_meta(CLOCK_FLOOR_KEY, repr((datetime.now(UTC) - timedelta(hours=2)).timestamp()))
        store.close()

    extra = {
        "console": {"enabled": False, "users": [
            {"name": "desk", "role": "staff", "password_hash": hash_password("desk-pass")},
            {"name": "boss", "role": "admin", "password_hash": hash_password("boss-pass")},
        ]},
        "control": {"socket": str(tmp_path / "control.sock")},
    }
    state = tmp_path / "state"
    state.mkdir()
    async with gate_process(tmp_path, state, extra=extra, before_start=last_trusted_two_hours_ago) as gate:
        clock = (await gate.status())["knowledge"]["clock"]
        synced = system_synchronised()
        assert clock["trusted"] is True and clock["confirmed"] is (synced is not False), clock
        if synced is False:
            assert "gated clock confirm" in clock["detail"]

        def confirm(user: str, password: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "gated.cli", "clock", "confirm", "-c", str(gate.config),
                                   "--user", user], capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "GATED_PASSWORD": password})

        staff = await asyncio.to_thread(confirm, "desk", "desk-pass")
        assert staff.returncode == 1 and "only an admin" in staff.stdout, staff.stdout + staff.stderr
        assert (await gate.status())["knowledge"]["clock"]["confirmed"] is (synced is not False)
        boss = await asyncio.to_thread(confirm, "boss", "boss-pass")
        assert boss.returncode == 0, boss.stdout + boss.stderr
        answer = json.loads(boss.stdout)["clock"]
        assert answer["confirmed"] is True and answer["trusted"] is True and answer["detail"] is None
        assert (await gate.status())["knowledge"]["clock"]["confirmed"] is True
        with contextlib.closing(sqlite3.connect(f"file:{gate.db}?mode=ro", uri=True)) as c:
            audit = [(r[0], r[1]) for r in c.execute("SELECT operator, action FROM audit")]
        assert ("boss", "clock_confirm") in audit
