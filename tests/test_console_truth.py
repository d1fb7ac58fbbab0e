"""The console tells the desk what the gate knows, no more: an action done is never answered
as not done, a hole in the live feed is never shown as continuous, a doubt the gate has is
shown where the desk looks (a member's page, the banners). Over real HTTP, as
tests/test_console.py (a daemon in-process, a turnstile on a real Modbus server)."""

from __future__ import annotations

import asyncio
import errno
import http.client
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gated.console import api
from gated.console.hub import FeedHub
from sync.store import unrecorded_exits
from tests.test_console import Client, running_site
from tests.test_daemon import wait_for


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


# -- the live feed after a reconnection ------------------------------------------------------------


def _read_stream(port: int, session: str, last_event_id: int, until_seq: dict[str, int],
                 lines: list[tuple[str, dict[str, Any]]], ready: Callable[[], None]) -> None:
    """The browser's EventSource reconnecting (Last-Event-ID), in a thread: every message as
    (event, data), until the feed line of `until_seq["seq"]` (set once the live tap is made)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("GET", "/events", headers={"Cookie": f"gated_session={session}", "Last-Event-ID": str(last_event_id)})
    r = conn.getresponse()
    assert r.status == 200
    ready()
    deadline = time.monotonic() + 15
    kind = "message"
    while time.monotonic() < deadline:
        line = r.fp.readline().decode()
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            lines.append((kind, data))
            kind = "message"
            if until_seq and data.get("seq") == until_seq.get("seq"):
                break
    conn.close()


async def _reconnect(site: Any, c: Client, last_seen: int) -> list[tuple[str, dict[str, Any]]]:
    lines: list[tuple[str, dict[str, Any]]] = []
    marker: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    reader = asyncio.create_task(asyncio.to_thread(
        _read_stream, site.port, c.cookies["gated_session"], last_seen, marker, lines,
        lambda: loop.call_soon_threadsafe(ready.set)))
    await asyncio.wait_for(ready.wait(), 5)
    await asyncio.sleep(0.5)
    marker["seq"] = site.store.last_seq + 1  # the access event of a live tap after the reconnection
    r = await site.tap("0499887766")
    assert r["seq"][0] == marker["seq"]
    await asyncio.wait_for(reader, 20)
    return lines


async def test_a_reconnected_feed_catches_up_on_every_missed_event_or_says_which_it_skips(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream replayed at most 300 missed events, then went live: the rest were neither
    sent nor announced, a silent hole in a feed that looked continuous."""
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        last_seen = site.store.last_seq  # what the page had shown when its connection dropped
        for _ in range(400):  # while the browser is away: 400 denials
            assert (await site.tap("DEADBEEF"))["decision"] == "denied"
        missed = set(range(last_seen + 1, site.store.last_seq + 1))
        lines = await _reconnect(site, c, last_seen)
        seqs = {d["seq"] for kind, d in lines if kind == "feed"}
        assert missed <= seqs, f"{len(missed - seqs)} missed events never sent, first {min(missed - seqs)}"
        assert not [d for kind, d in lines if kind == "gap"]
        assert lines[-1][1]["member"] == "m-bruno"  # then live
        # far behind (past the replay's bound): the oldest are named in a `gap` message, the
        # newest are sent, then live
        monkeypatch.setattr(api, "REPLAY_MAX", 100)
        head = site.store.last_seq
        lines = await _reconnect(site, c, last_seen)
        assert lines[0] == ("gap", {"from": last_seen + 1, "to": head - 100, "missed": head - 100 - last_seen})
        seqs = {d["seq"] for kind, d in lines if kind == "feed"}
        accesses = {e["seq"] for e in site.store.events_after(head - 100, 200) if e["type"] == "access"}
        assert accesses <= seqs and min(seqs) == min(accesses) > head - 100
        assert lines[-1][1]["member"] == "m-bruno"


async def test_events_the_hub_cannot_take_end_every_stream_to_catch_up_from_the_store() -> None:
    """The hub's inbox full (its task that far behind): the event was dropped for every
    stream, silently; now each stream ends, and its browser reconnects and replays."""
    hub = FeedHub(lambda ev: ev)
    q = hub.subscribe()
    for seq in range(hub.inbox.maxsize):
        hub.listener({"seq": seq})
    assert hub.subscribers
    hub.listener({"seq": hub.inbox.maxsize})  # no room: this one reaches no stream
    assert not hub.subscribers and q.get_nowait() is None


# -- a safety switch in force but not stored ---------------------------------------------------------


async def test_a_lockdown_in_force_but_not_stored_is_an_alarm_that_says_do_not_restart(tmp_path: Path) -> None:
    """The daemon knew (`safety.not_durable`, the switch's answer) and the console said
    nothing: an admin restarting to clear the storage banner would have unlocked the site."""
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("boss")
        set_meta = site.store.set_meta

        def broken(*a: Any, **kw: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        site.store.set_meta = broken  # type: ignore[method-assign]  # the store cannot write
        r = await c.post_json("/api/lockdown", {"on": True, "confirm": "LOCKDOWN", "reason": "intruder"})
        assert r.status == 200 and r.json()["not_durable"] == ["lockdown"], r.text
        h = (await c.get("/api/health")).json()
        [alarm] = [a for a in h["alarms"] if a["kind"] == "lockdown_not_stored"]
        assert alarm["severity"] == "bad" and "do not restart" in alarm["title"]
        assert "UNLOCK the site" in alarm["detail"]
        # the store works again: the lockdown is written, the alarm is over
        site.store.set_meta = set_meta  # type: ignore[method-assign]
        await wait_for(lambda: site.daemon.safety is not None and not site.daemon.safety.not_durable, timeout=10)
        h = (await c.get("/api/health")).json()
        assert "lockdown_not_stored" not in [a["kind"] for a in h["alarms"] if a["active"]]


# -- the member page's "inside since" ------------------------------------------------------------------


async def test_the_member_page_says_inside_in_doubt_after_exits_opened_unrecorded(tmp_path: Path) -> None:
    """The occupancy marked the member "may have left unrecorded" and no longer counted them;
    the member page said "inside since 10:00", flat."""
    async with running_site(tmp_path) as site:
        c = Client(site.port)
        await c.login("desk")
        assert (await site.tap("0499887766"))["decision"] == "granted"  # Bruno walks in
        detail = (await c.get("/api/members/m-bruno")).json()
        assert detail["inside_since"] is not None and detail["maybe_left"] is False
        now = site.daemon.clock()
        # then the exit let someone out unrecorded (a storage fault): it may have been Bruno
        with site.store.transaction() as tx:
            unrecorded_exits.record(tx.conn, site.store.daemon_id, {"exit": 1},
                                    {"exit": "main", "turnstile-in": "main"}, now, now)
        [zone] = (await c.get("/api/occupancy")).json()["zones"]
        [bruno] = [p for p in zone["people"] if p["member"] == "m-bruno"]
        assert bruno["maybe_left"] is True and zone["inside"] == 0
        detail = (await c.get("/api/members/m-bruno")).json()
        assert detail["inside_since"] == bruno["since"] and detail["maybe_left"] is True
        # Ana, who came in after that exit, is inside without doubt
        await asyncio.sleep(0.01)
        assert (await site.tap("04A1B2C3D4"))["decision"] == "granted"
        ana = (await c.get("/api/members/m-ana")).json()
        assert ana["inside_since"] is not None and ana["maybe_left"] is False


# -- a stale member cache ------------------------------------------------------------------------------


async def test_a_stale_cache_is_an_alarm_and_the_member_page_marks_what_the_gate_refuses(tmp_path: Path) -> None:
    """"Member data is stale" was said only on the feed page's side panel: the members page
    (whose banners are the alarms) showed Bruno's pass *usable* with its old balance, while
    the gate refused him `cache_stale`."""
    # a central system configured and not reachable: without one the seed never goes stale
    extra = {"stale_cache": {"max_age": "2s", "policy": "bookings_and_time_passes"},
             "mqtt": {"host": "127.0.0.1", "port": 9, "backoff_initial": 0.5, "backoff_max": 5}}
    async with running_site(tmp_path, extra=extra) as site:
        c = Client(site.port)
        await c.login("desk")
        fresh = (await c.get("/api/members/m-bruno")).json()
        assert fresh["cache_stale"] is False and fresh["passes"][0]["usable"] is True
        assert fresh["passes"][0]["stale"] is None
        assert "cache_stale" not in [a["kind"] for a in (await c.get("/api/health")).json()["alarms"]]
        await asyncio.sleep(3)  # no sync since the seed: the cache is stale now
        r = await site.tap("0499887766")  # Bruno, visits pass, walk-in
        assert (r["decision"], r["reason"]) == ("denied", "cache_stale")
        h = (await c.get("/api/health")).json()
        [alarm] = [a for a in h["alarms"] if a["kind"] == "cache_stale"]
        assert alarm["severity"] == "warn" and "walk-ins on visit" in alarm["detail"]
        detail = (await c.get("/api/members/m-bruno")).json()
        assert detail["cache_stale"] is True and detail["data_as_of"] is not None
        [p] = detail["passes"]
        assert p["usable"] is False and "no walk-in while the member data is stale" in p["stale"]
        assert p["balance"] == 10  # as of the last sync, said so by data_as_of


async def test_events_no_longer_in_the_store_are_a_gap_not_a_silent_jump() -> None:
    """Events pruned after the central system had them (a page away for a week): named."""
    from types import SimpleNamespace

    kept = [{"seq": s} for s in range(50, 61)]
    store = SimpleNamespace(last_seq=60, events_after=lambda seq, n: [e for e in kept if e["seq"] > seq][:n])
    views = SimpleNamespace(store=store, feed_items=lambda evs: [{"seq": e["seq"], "type": "access"} for e in evs])
    out = [text async for _, text in api.replay(views, 10) if text]
    assert out[0].startswith("id: 49\nevent: gap\n") and '"from":11,"to":49,"missed":39' in out[0]
    assert [t.split("\n")[0] for t in out[1:]] == [f"id: {s}" for s in range(50, 61)]
