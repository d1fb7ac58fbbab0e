"""The console tells the desk what the gate knows, no more: an action done is never answered
as not done, a hole in the live feed is never shown as continuous, a doubt the gate has is
shown where the desk looks (a member's page, the banners). Over real HTTP, as
tests/test_console.py (a daemon in-process, a turnstile on a real Modbus server)."""

from __future__ import annotations

import asyncio
import errno
import sqlite3
from pathlib import Path
from typing import Any

from tests.test_console import Client, running_site


def _eio(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


# -- a record committed whose flush failed -------------------------------------------------------


async def test_an_attendance_whose_flush_failed_is_answered_done_not_yet_on_disk(tmp_path: Path) -> None:
    """The commit took effect (attended, the walk-in refunded, in the outbox) and only its
    flush failed: the desk was told 503 "cannot record this now", and its retry 409."""
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        assert (await site.tap("04A1B2C3D4"))["reason"] == "walk_in"  # Ana early: 9 -> 8
        wal = site.store.wal_sync
        assert wal is not None
        wal._fsync = _eio  # the disk starts failing its flushes
        r = await c.post_json("/api/bookings/b-spin/attend", {"refund": True, "request_id": "attend-0001"})
        assert r.status == 200, r.text
        answer = r.json()
        assert answer["not_durable"] is True and "not yet safe on disk" in answer["warning"]
        assert answer["refunded"]["amount"] == 1
        assert site.store.booking_status("b-spin").value == "attended" and site.store.balance("p-ana") == 9
        # the page's dialog submitted again (the same id): the same answer, nothing done twice
        again = await c.post_json("/api/bookings/b-spin/attend", {"refund": True, "request_id": "attend-0001"})
        assert again.status == 200 and again.json()["repeated"] is True
        assert again.json()["refunded"] == answer["refunded"]
        assert site.store.balance("p-ana") == 9
        # the storage watch was told: the status says so, and the banner
        h = (await c.get("/api/health")).json()
        assert h["storage"]["ok"] is False
        assert "storage_fault" in [a["kind"] for a in h["alarms"]]


async def test_points_asked_again_with_the_same_request_id_are_given_once(tmp_path: Path) -> None:
    """A retry of "Adjust points" added them again: no 409 stops it. The page's request id
    (one per dialog) makes the second ask give the first answer."""
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        wal = site.store.wal_sync
        assert wal is not None
        real = wal._fsync
        wal._fsync = _eio
        ask = {"points": 25, "reason": "birthday", "request_id": "points-0001"}
        first = await c.post_json("/api/members/m-ana/points", ask)
        assert first.status == 200, first.text
        assert first.json()["not_durable"] is True and first.json()["points"] == 25
        wal._fsync = real  # the disk answers again: the desk tries once more from the same dialog
        second = await c.post_json("/api/members/m-ana/points", ask)
        assert second.status == 200 and second.json()["repeated"] is True
        await site.store.flushed()
        assert site.store.points("m-ana") == 25
        ev = [e for e in site.store.recent_events(10, types=["loyalty"]) if e.get("operator") == "desk"]
        assert len(ev) == 1
        # the same id with other values: refused (what the first asked is done)
        other = await c.post_json("/api/members/m-ana/points", {**ask, "points": 30})
        assert other.status == 409 and "already made" in other.json()["error"]
        # a new action (a new id) is a new adjustment; two at once with one id: one
        a, b = await asyncio.gather(
            c.post_json("/api/members/m-ana/points", {**ask, "request_id": "points-0002"}),
            c.post_json("/api/members/m-ana/points", {**ask, "request_id": "points-0002"}))
        assert (a.status, b.status) == (200, 200)
        assert site.store.points("m-ana") == 50
        # a request whose commit failed did nothing (503, the storage watch told) and is
        # forgotten: its retry does it
        engine = site.daemon.engine
        assert engine is not None
        adjust = engine.adjust_points

        def full(*a: Any, **kw: Any) -> Any:
            engine.adjust_points = adjust  # type: ignore[method-assign]
            raise sqlite3.OperationalError("database or disk is full")

        engine.adjust_points = full  # type: ignore[method-assign]
        bad = await c.post_json("/api/members/m-ana/points", {**ask, "request_id": "points-0003"})
        assert bad.status == 503 and "cannot record" in bad.json()["error"]
        assert site.store.points("m-ana") == 50
        assert site.daemon.storage is not None and site.daemon.storage.ok is False
        assert (await c.post_json("/api/members/m-ana/points", {**ask, "request_id": "points-0003"})).status == 200
        assert site.store.points("m-ana") == 75
        assert (await c.post_json("/api/members/m-ana/points", {**ask, "request_id": "no"})).status == 400
        # answered durable once the disk works: said so
        assert (await c.post_json("/api/members/m-ana/points", {"points": 1, "reason": "x"})).json()["not_durable"] is False
