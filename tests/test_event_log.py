"""The event log stays gap-free whatever fails (issue: "a brief disk-full stops a gate's
events reaching the central system, for good").

In WAL mode the pages of a transaction's body stay in SQLite's page cache; only the
COMMIT writes them to the log. So on a full disk it is the COMMIT that fails, after every
`emit` of the body has taken its seq. These tests fill a real tmpfs and check that the
numbers taken by a transaction whose COMMIT failed are given back, and that a store left
with holes by an earlier version has them filled at open (a `void` event per lost
number), so the central system's `applied_seq` can move past them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gated.status import status_line
from rules.model import Site
from simulator.central import Central
from sync.events import BY_TYPE
from sync.store import Store
from tests.broker import WAIT_S, Mosquitto, wait_until
from tests.test_storage_faults import fill, mount_tmpfs, umount

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
SITE = Site(id="s1", timezone="Europe/Madrid")

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


def seqs(store: Store) -> list[int]:
    return [int(r[0]) for r in store.conn.execute("SELECT seq FROM events ORDER BY seq")]


@root_only
def test_a_commit_failing_on_a_full_disk_gives_its_numbers_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    mount_tmpfs(state, "2m")
    try:
        store = Store(state / "gated.db", SITE, daemon_id="g1", background_checkpoints=False)
        try:
            for i in range(3):
                with store.transaction() as tx:
                    tx.emit("note", NOW, n=i)
            filler = fill(state)
            failures_at_commit = 0
            for i in range(10):
                body_done = False
                try:
                    with store.transaction() as tx:
                        # a few events per tap, as a tap's access + deduction + attendance
                        for k in range(3):
                            tx.emit("note", NOW, n=100 + i, k=k, pad="x" * 2000)
                        body_done = True
                except sqlite3.OperationalError as e:
                    assert "full" in str(e), e
                    failures_at_commit += body_done
            # the failure this issue is about: the COMMIT, after the body took its seqs
            assert failures_at_commit > 0
            filler.unlink()
            for i in range(3):
                with store.transaction() as tx:
                    tx.emit("note", NOW, n=200 + i)
            held = seqs(store)
            assert held == list(range(1, len(held) + 1)), held
            assert store.last_seq == held[-1]
        finally:
            store.close()
        # and a fresh open agrees with what the daemon believed
        again = Store(state / "gated.db", SITE, daemon_id="g1", background_checkpoints=False)
        try:
            assert seqs(again) == list(range(1, again.last_seq + 1))
        finally:
            again.close()
    finally:
        umount(state)


def test_holes_left_by_an_earlier_version_are_filled_at_open(tmp_path: Path) -> None:
    db = tmp_path / "gated.db"
    store = Store(db, SITE, daemon_id="g1", background_checkpoints=False)
    for i in range(20):
        with store.transaction() as tx:
            tx.emit("note", NOW, n=i)
    store.ack(3)
    store.close()
    # what the old bug left: 1..6, then 17..20, with next_seq at 21
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM events WHERE seq BETWEEN 7 AND 16")
    store = Store(db, SITE, daemon_id="g1", background_checkpoints=False)
    try:
        assert seqs(store) == list(range(1, 21))
        assert store.last_seq == 20
        voids = [json.loads(r[0]) for r in store.conn.execute("SELECT body FROM events WHERE type = 'void'")]
        assert [v["seq"] for v in voids] == list(range(7, 17))
        assert all(v["reason"] == "seq_lost" for v in voids)
        for v in voids:  # as docs/schemas/event.schema.json describes them
            BY_TYPE["void"].model_validate(v)
        with store.transaction() as tx:
            assert tx.emit("note", NOW)["seq"] == 21
    finally:
        store.close()


def test_a_commit_that_fails_for_any_reason_gives_its_numbers_back(tmp_path: Path) -> None:
    """Without a tmpfs: a COMMIT refused because a deferred constraint fails at COMMIT."""
    store = Store(tmp_path / "gated.db", SITE, daemon_id="g1", background_checkpoints=False)
    try:
        store.conn.execute(
            "CREATE TABLE IF NOT EXISTS main.t_parent (id INTEGER PRIMARY KEY)"
        )
        store.conn.execute(
            "CREATE TABLE IF NOT EXISTS main.t_child (p INTEGER REFERENCES t_parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        store.conn.execute("PRAGMA foreign_keys = ON")
        with store.transaction() as tx:
            tx.emit("note", NOW)
        with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
            tx.emit("note", NOW)
            tx.emit("note", NOW)
            store.conn.execute("INSERT INTO t_child(p) VALUES (42)")  # checked only at COMMIT
        assert not store.conn.in_transaction
        with store.transaction() as tx:
            assert tx.emit("note", NOW)["seq"] == 2
        assert seqs(store) == [1, 2]
    finally:
        store.close()


# -- the whole daemon: a disk full during taps, then the central system applies everything --

@root_only
async def test_a_disk_full_during_taps_leaves_nothing_the_central_cannot_apply(
    tmp_path: Path, mosquitto: Mosquitto, central: Central
) -> None:
    """The fault the issue measured: events 1..6 then 17.. after filling the disk during
    10 taps, and the central's applied_seq stuck at 6 for good. Now every seq the gate
    holds reaches the central system once the disk has room again."""
    from tests.gate_process import IN_CARD, OUT_CARD, gate_process
    from tests.test_daemon import SEED, wait_for

    central.load("storage-site", SEED["members"], SEED["passes"], SEED.get("bookings", []))
    state = tmp_path / "state"
    mount_tmpfs(state, "3m")
    mqtt = {"host": "127.0.0.1", "port": mosquitto.port, "ack_timeout": 1.0, "backoff_initial": 0.05,
            "backoff_max": 0.5, "resync_retry": 2.0, "keepalive": 5}
    try:
        async with gate_process(tmp_path, state, extra={"mqtt": mqtt}) as gate:
            await wait_for(lambda: central.applied_seq("storage-site", "gate-s") > 0 or True, 5)
            for card, out in ((IN_CARD, False), (OUT_CARD, True), (IN_CARD, False)):
                await gate.tap(card, exit_gate=out)
            filler = fill(state)
            for i in range(10):
                await gate.tap(OUT_CARD if i % 2 else IN_CARD, exit_gate=bool(i % 2))
            filler.unlink()
            for _ in range(200):
                if (await gate.status())["storage"]["ok"]:
                    break
                await asyncio.sleep(0.1)
            t = await gate.tap(IN_CARD)
            assert t["decision"] == "granted", t
            last = max(e["seq"] for e in gate.events())

            def applied() -> int:
                return central.applied_seq("storage-site", "gate-s")

            await wait_for(lambda: applied() == last, 30, f"the central applying every event (at {applied()} of {last})")
            held = [e["seq"] for e in gate.events()]
            assert held == list(range(held[0], last + 1))
            assert [e["seq"] for e in central.events("storage-site", "gate-s")] == list(range(1, last + 1))
    finally:
        umount(state)


async def test_events_the_central_does_not_acknowledge_are_an_alarm_with_the_reason(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """`mqtt.uplink_alarm_after`: events waiting that long without the central's
    applied_seq moving is `uplink_stalled` in `gated status` and an alarm, with why."""
    from gated.config import Config
    from gated.daemon import Daemon
    from rules.credential import Credential
    from tests.broker import SEED, SITE, central_settings
    from tests.test_daemon_mqtt import config as mqtt_config

    central = Central(central_settings(mosquitto), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    task = asyncio.create_task(central.run())
    cfg = mqtt_config(tmp_path, mosquitto).model_dump()
    cfg["mqtt"]["uplink_alarm_after"] = 1.0
    d = Daemon(Config.model_validate(cfg))
    await d.start()
    try:
        await d.link.wait_connected(WAIT_S)
        await wait_until(lambda: d.link.stats["snapshots_applied"] >= 1, what="the first snapshot")
        task.cancel()  # the central system goes away (it says so: its status goes offline)
        await asyncio.wait([task])
        await wait_until(lambda: d.link.central_online is False, what="the gate hearing it")
        r = await d.handle_credential("in-1", Credential.card("C1", "test"))
        assert r["decision"] == "granted"
        await wait_until(lambda: any(g["kind"] == "uplink_stalled" for g in d.health()["knowledge"]["gaps"]),
                         timeout=10, what="the gap in gated status")
        [gap] = [g for g in d.health()["knowledge"]["gaps"] if g["kind"] == "uplink_stalled"]
        assert "the central system is offline" in gap["detail"] and "2 event(s) waiting" in gap["detail"]
        assert "UPLINK STALLED" in status_line(d)
        assert d.metrics.knowledge_gap.labels("uplink_stalled")._value.get() == 1
        task = asyncio.create_task(central.run())  # back
        await wait_until(lambda: not d.health()["knowledge"]["gaps"], timeout=20, what="the gap to close")
        assert d.store is not None
        kinds = [e["kind"] for e in d.store.recent_events(100, ["alarm"])]
        assert "uplink_stalled" in kinds and "uplink_stalled_ended" in kinds
    finally:
        await d.stop()
        task.cancel()
        await asyncio.wait([task])


async def test_a_new_box_holds_its_events_until_the_central_says_how_far_it_got(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gate started on a ledger without `gated.db.sent` (a new box): its events wait for
    the central system's word on this daemon's numbering (sync/store/numbering.py), which
    `gated status`, the metrics and an alarm say while it lasts; then they leave."""
    import gated.knowledge
    from gated.config import Config
    from gated.daemon import Daemon
    from rules.credential import Credential
    from tests.broker import SEED, SITE, central_settings
    from tests.test_daemon_mqtt import config as mqtt_config

    monkeypatch.setattr(gated.knowledge, "NUMBERING_ALARM", 0.5)
    central = Central(central_settings(mosquitto), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    d = Daemon(Config.model_validate(mqtt_config(tmp_path, mosquitto).model_dump()))
    await d.start()
    task: asyncio.Task[None] | None = None
    try:
        await d.link.wait_connected(WAIT_S)
        r = await d.handle_credential("in-1", Credential.card("C1", "test"))  # no member yet: refused, recorded
        assert r["decision"] == "denied"
        await wait_until(lambda: any(g["kind"] == "numbering_unsure" for g in d.health()["knowledge"]["gaps"]),
                         timeout=10, what="the gap in gated status")
        assert d.store is not None and d.store.sendable_seq == 0 < d.store.last_seq
        assert "NUMBERING UNSURE" in status_line(d)
        assert d.metrics.knowledge_gap.labels("numbering_unsure")._value.get() == 1
        # the old box's events are not here either, held or not: a refund the desk asks for
        # now waits for them (the old box may have charged the walk-in, or given it back)
        assert d.knowledge.unheard(d.clock()) == [d.config.daemon_id]
        task = asyncio.create_task(central.run())
        await wait_until(lambda: central.applied_seq(SITE, d.config.daemon_id) == d.store.last_seq > 0,  # type: ignore[union-attr]
                         timeout=20, what="the held events applied")
        await wait_until(lambda: not d.health()["knowledge"]["gaps"], timeout=10, what="the gap to close")
        kinds = [e["kind"] for e in d.store.recent_events(100, ["alarm"])]
        assert "numbering_unsure" in kinds and "numbering_unsure_ended" in kinds
    finally:
        await d.stop()
        if task is not None:
            task.cancel()
            await asyncio.wait([task])


async def test_a_new_box_whose_settle_cannot_be_written_tries_again(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The central system's word on a new box's numbering comes while its disk is full (a
    clean-clone `make test` under load: the snapshot landed in the test's full-disk
    window): the settle fails. The word is tried again every second, and the held events
    leave once the disk has room. Before, they stayed held until the next reconciliation
    (30 minutes): nothing of ours leaves while held, so no ack brought the word again."""
    from gated.config import Config
    from gated.daemon import Daemon
    from rules.credential import Credential
    from tests.broker import SEED, SITE, central_settings
    from tests.test_daemon_mqtt import config as mqtt_config

    central = Central(central_settings(mosquitto), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    d = Daemon(Config.model_validate(mqtt_config(tmp_path, mosquitto).model_dump()))
    await d.start()
    assert d.store is not None
    settle, failures = d.store.settle_numbering, []

    def full(*args: object, **kw: object) -> None:
        if len(failures) < 3:
            failures.append(1)
            raise sqlite3.OperationalError("database or disk is full")
        settle(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(d.store, "settle_numbering", full)
    r = await d.handle_credential("in-1", Credential.card("C1", "test"))  # an event held
    assert r["decision"] == "denied"
    task = asyncio.create_task(central.run())
    try:
        await d.link.wait_connected(WAIT_S)
        await wait_until(lambda: len(failures) == 3, timeout=20, what="three failed settles")
        await wait_until(lambda: central.applied_seq(SITE, d.config.daemon_id) == d.store.last_seq > 0,  # type: ignore[union-attr]
                         timeout=10, what="the held events applied")
        assert d.link.stats["numbering_not_settled"] == 3
    finally:
        await d.stop()
        task.cancel()
        await asyncio.wait([task])


async def test_gated_tap_says_so_when_the_daemon_dies_mid_tap(tmp_path: Path) -> None:
    """`gated tap` (docs: README's commands) waiting on a tap whose daemon is killed -9
    while the member is at the turnstile: one line saying what happened, exit 1, no
    traceback; the next start reports the grant (passage_unconfirmed)."""
    import signal
    import subprocess

    from tests.gate_process import IN_CARD, gate_process
    from tests.test_daemon import GATED

    state = tmp_path / "state"
    state.mkdir()
    extra = {"control": {"socket": str(tmp_path / "control.sock"), "injected_reads": True}}
    async with gate_process(tmp_path, state, extra=extra) as gate:
        gate.turnstile.set_person(turns=False)  # nobody goes through: the tap waits for the passage
        tap = await asyncio.create_subprocess_exec(
            *GATED, "tap", "in-1", IN_CARD, "-c", str(gate.config),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for _ in range(100):  # the grant's intent is written: the daemon is waiting for the passage
            if gate.turnstile.unlocks:
                break
            await asyncio.sleep(0.05)
        assert gate.turnstile.unlocks == 1
        gate.proc.send_signal(signal.SIGKILL)
        out, err = await asyncio.wait_for(tap.communicate(), 30)
        assert tap.returncode == 1
        text = err.decode()
        assert "Traceback" not in text and "stopped answering" in text and "passage_unconfirmed" in text


async def test_a_new_box_says_what_it_has_not_got_back(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The central system holds this morning's events of the daemon (an old box's: Ana
    walked in an hour ago); the new box settles after them and asks for them back
    (sync/store/own_history.py). While the central system does not answer — or its answer
    cannot be recorded (the disk full) — `gated status`, the metrics and an alarm say so;
    once it is recorded, the gap closes and the old box's passage is the gate's."""
    from datetime import timedelta

    import gated.knowledge
    from gated.config import Config
    from gated.daemon import Daemon
    from sync.protocol import EventBatch
    from tests.broker import SEED, SITE, central_settings
    from tests.test_daemon_mqtt import config as mqtt_config

    monkeypatch.setattr(gated.knowledge, "HISTORY_ALARM", 0.5)
    central = Central(central_settings(mosquitto), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    central.apply_events(SITE, EventBatch.model_validate({"v": 1, "daemon": "gate-a", "events": [
        {"id": "old-1", "seq": 1, "type": "access", "at": hour_ago, "gate": "in-1", "member": "m1",
         "decision": "granted", "reason": "walk_in", "passed": True, "pass": "p1"},
        {"id": "old-2", "seq": 2, "type": "deduction", "at": hour_ago, "gate": "in-1", "member": "m1",
         "pass": "p1", "amount": 1, "booking": None, "cause": "walk_in", "balance": 999},
    ]}))
    answer = central._answer_history

    async def silent(site: str, ask: object) -> None:
        central.stats["history_ignored"] += 1

    central._answer_history = silent  # type: ignore[method-assign]
    d = Daemon(Config.model_validate(mqtt_config(tmp_path, mosquitto).model_dump()))
    task = asyncio.create_task(central.run())
    await d.start()
    try:
        await d.link.wait_connected(WAIT_S)
        d.link.session.own_history.retry = 0.5
        await wait_until(lambda: any(g["kind"] == "own_history_missing" for g in d.health()["knowledge"]["gaps"]),
                         timeout=10, what="the gap in gated status")
        [gap] = [g for g in d.health()["knowledge"]["gaps"] if g["kind"] == "own_history_missing"]
        assert "events 1..2" in gap["detail"] and "re-entry" in gap["detail"]
        assert "OWN HISTORY MISSING" in status_line(d)
        assert d.metrics.knowledge_gap.labels("own_history_missing")._value.get() == 1
        assert d.store is not None
        assert d.store.conn.execute("SELECT COUNT(*) FROM main.passages WHERE member_id = 'm1'").fetchone()[0] == 0
        # the answer comes while the store cannot write (the disk full): still wanted, asked again
        record, failures = d.store.record_own_history, []

        def full(*args: object, **kw: object) -> object:
            if not failures:
                failures.append(1)
                raise sqlite3.OperationalError("database or disk is full")
            return record(*args, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(d.store, "record_own_history", full)
        central._answer_history = answer  # type: ignore[method-assign]
        await wait_until(lambda: d.link.stats["history_not_recorded"] == 1, timeout=10, what="the failed record")
        assert any(g["kind"] == "own_history_missing" for g in d.health()["knowledge"]["gaps"])
        await wait_until(lambda: not d.health()["knowledge"]["gaps"], timeout=10, what="the gap to close")
        assert d.store.own_history_wanted() is None
        assert d.store.conn.execute("SELECT COUNT(*) FROM main.passages WHERE member_id = 'm1'").fetchone()[0] == 1
        kinds = [e["kind"] for e in d.store.recent_events(100, ["alarm"])]
        assert "own_history_missing" in kinds and "own_history_missing_ended" in kinds
        assert central.stats["history_ignored"] >= 1
    finally:
        await d.stop()
        task.cancel()
        await asyncio.wait([task])
