"""The central system restored from a backup (docs/protocol.md, "Recovery after a restore"):
its database forgets the last events it applied and the deltas it numbered. The gate still
holds them (acknowledged events are kept for a retention period): the central system asks
for a replay and renumbers its deltas after the gate's, and in the end every event is
applied exactly once and the balances agree again."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gated.engine import Engine
from rules.credential import Credential
from simulator.central import Central
from sync.link import SyncLink
from tests.broker import (
    GATES,
    POLICY,
    SEED,
    SITE,
    WAIT_S,
    Mosquitto,
    central_settings,
    clock,
    make_store,
    running,
    settings_for,
    site,
    wait_until,
)


@pytest.mark.parametrize("pruned", [False, True], ids=["held", "pruned"])
async def test_a_central_restored_from_a_backup_gets_every_event_again(
    mosquitto: Mosquitto, tmp_path: Path, pruned: bool
) -> None:
    """`held`: the gate still holds every event the backup lacks: all are applied again.
    `pruned`: the retention was over for them: the replay answer says which are gone, the
    central system records the loss and goes on after them; nothing else is lost."""
    db = tmp_path / "central.db"
    central = Central(central_settings(mosquitto), db)
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    store = make_store(tmp_path / "gate.db", "gate-a")
    now = clock()
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)

    decided: list[Counter[str]] = []  # each batch's reasons: what a failure below says

    def taps(n: int) -> None:
        decided.append(Counter())
        for i in range(n):
            tap, _ = engine.tap("in-1" if i % 2 == 0 else "out-1", Credential.card(("C1", "C2")[(i // 2) % 2]), now())
            decided[-1][str(tap.decision.reason)] += 1

    def settled(c: Central) -> bool:
        return (
            store.acked_seq == store.last_seq == c.applied_seq(SITE, "gate-a")
            and link.delta_seq == c.delta_seq(SITE)
            and not link.awaiting_snapshot
            and all(store.balance(p) == c.balance(SITE, p) for p in ("p1", "p2"))
        )

    central_task = asyncio.create_task(central.run())
    try:
        async with running(link.run()):
            await central.wait_connected(WAIT_S)
            await link.wait_connected(WAIT_S)
            taps(30)
            await wait_until(lambda: settled(central), what="settled before the backup")
            backup = sqlite3.connect(tmp_path / "backup.db")
            central.conn.backup(backup)  # last night's backup
            backup.close()
            behind = central.delta_seq(SITE)
            taps(30)
            await wait_until(lambda: settled(central), what="settled after the backup")
            assert central.delta_seq(SITE) > behind, (
                f"no delta after the backup: taps decided {decided}, gate balances "
                f"{[store.balance(p) for p in ('p1', 'p2')]}, last_seq {store.last_seq}, link {dict(link.stats)}, "
                f"central {dict(central.stats)}")
            in_backup = sqlite3.connect(tmp_path / "backup.db").execute(
                "SELECT applied_seq FROM applied WHERE daemon = 'gate-a'").fetchone()[0]
            gone = 0
            if pruned:  # the retention is over for every acknowledged event
                gone = store.prune_acked(now() + timedelta(days=30), keep_max=0)
                assert gone == store.acked_seq and store.first_seq == store.last_seq + 1

            # the central system's server is lost; its database restored from the backup
            central_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await central_task
            central.conn.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            shutil.copy(tmp_path / "backup.db", db)
            restored = Central(central_settings(mosquitto), db)
            assert restored.applied_seq(SITE, "gate-a") < store.acked_seq
            central_task = asyncio.create_task(restored.run())
            await restored.wait_connected(WAIT_S)
            taps(10)
            await wait_until(lambda: settled(restored), timeout=60, what="settled after the restore")
    finally:
        central_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await central_task

    events = restored.events(SITE, "gate-a")
    lost = list(range(in_backup + 1, gone + 1))
    assert [e["seq"] for e in events] == [s for s in range(1, store.last_seq + 1) if s not in lost]
    assert len({e["id"] for e in events}) == len(events)
    assert restored.stats["replays_requested"] >= 1 and restored.stats["delta_seq_behind"] >= 1
    assert restored.stats["events_lost"] == len(lost)
    assert link.stats["replays"] >= 1
    taken = {p: sum(e["amount"] for e in events if e["type"] == "deduction" and e["pass"] == p) for p in ("p1", "p2")}
    for p in ("p1", "p2"):
        # what the central system applied, and the gate's view of it, agree (the lost
        # deductions are the central system's to settle: it knows which seqs)
        assert restored.balance(SITE, p) == 1000 - taken[p] == store.balance(p)


async def test_a_replay_answer_nobody_asked_for_skips_no_event(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A replay request the central system did not send (from far beyond the gate's last
    event), and a replay answer it did not ask for: the central system's `applied_seq`
    does not jump to the answer's `first_seq` — which would have it take every later event
    for one it already had (found by tests/test_sync_fuzz.py: no tap was acknowledged again)."""
    import aiomqtt

    central = Central(central_settings(mosquitto), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    store = make_store(tmp_path / "gate.db", "gate-a")
    now = clock()
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    central_task = asyncio.create_task(central.run())
    try:
        async with running(link.run()):
            await central.wait_connected(WAIT_S)
            await link.wait_connected(WAIT_S)
            engine.tap("in-1", Credential.card("C1"), now())
            await wait_until(lambda: central.applied_seq(SITE, "gate-a") == store.last_seq >= 1, what="applied")
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as evil:
                await evil.publish(f"gated/{SITE}/gate-a/replay", b'{"v": 1, "request_id": "x1", "from_seq": 1000000}',
                                   qos=1)
                await evil.publish(f"gated/{SITE}/gate-a/replay/answer",
                                   b'{"v": 1, "daemon": "gate-a", "request_id": "x2", "from_seq": 1, '
                                   b'"first_seq": 5000, "last_seq": 1}', qos=1)
            await wait_until(lambda: central.stats["replay_answers"] + central.stats["replay_answers_unasked"] == 2,
                             what="both answers read")
            engine.tap("out-1", Credential.card("C1"), now())
            await wait_until(lambda: store.acked_seq == store.last_seq == central.applied_seq(SITE, "gate-a"),
                             what="the next tap applied")
            assert central.stats["replay_answers_unasked"] == 2
    finally:
        central_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await central_task
    assert central.stats["events_lost"] == 0
    assert [e["seq"] for e in central.events(SITE, "gate-a")] == list(range(1, store.last_seq + 1))


def walk_ins(engine: Engine, now: Any, n: int) -> None:
    """In and out by turns, two members by turns: walk-ins, charged."""
    for i in range(n):
        engine.tap("in-1" if i % 2 == 0 else "out-1", Credential.card(("C1", "C2")[(i // 2) % 2]), now())


def in_step(central: Central, store: Any, link: SyncLink) -> bool:
    """Every event applied at the central system, every delta at the gate, the balances equal."""
    return (
        store.acked_seq == store.last_seq == central.applied_seq(SITE, "gate-a")
        and link.delta_seq == central.delta_seq(SITE)
        and all(store.balance(p) == central.balance(SITE, p) for p in ("p1", "p2"))
    )


async def backed_up_gate(central: Central, mosquitto: Mosquitto, db: Path, now: Any) -> dict[str, Any]:
    """A gate that took ten walk-ins, was backed up (`<db>.backup`), took ten more, each
    batch applied at the central system; closed. Its last seq and balances."""
    from gated.store_checks import backup

    store = make_store(db, "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: in_step(central, store, link), what="the first snapshot")
        walk_ins(engine, now, 10)
        await wait_until(lambda: in_step(central, store, link), what="settled before the backup")
        backup(db, Path(f"{db}.backup"))
        walk_ins(engine, now, 10)
        await wait_until(lambda: in_step(central, store, link), what="settled after the backup")
    out = {"sent": store.last_seq, "balances": {p: store.balance(p) for p in ("p1", "p2")}}
    store.close()
    return out


async def stopped(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_gate_restored_from_its_backup_loses_no_new_event(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """The gate's ledger put back from last night's backup, as docs/operations.md ("A
    damaged store") tells: its events since then had reached the central system. Numbering
    on from the backup would give the next taps the numbers of those events, and the
    central system would drop them as repeats; the gate numbers on after the last event it
    had sent (`void` in between, a `ledger_restored` alarm), every new tap is applied and
    the balances agree again."""
    db = tmp_path / "gate.db"
    now = clock(datetime.now(UTC) - timedelta(hours=1))  # today's: the lost part's events are asked back for a day
    sent = (await backed_up_gate(central, mosquitto, db, now))["sent"]

    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "gate.db.backup", db)
    store = make_store(db, "gate-a")
    assert store.last_seq == sent + 1  # the numbers sent since the backup, void; the alarm
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        walk_ins(engine, now, 6)
        await wait_until(lambda: in_step(central, store, link), timeout=30, what="settled after the restore")
        # what the copy lacked came back from the central system: its charges under their numbers
        await wait_until(lambda: store.own_history_wanted() is None, what="the lost part's events back")
        back = [s for (s,) in store.conn.execute("SELECT seq FROM main.deductions WHERE seq <= ? ORDER BY seq", (sent,))]
    last = store.last_seq
    after = store.events_after(sent + 1, 1000)  # the taps since the restore, as the gate has them
    store.close()
    events = central.events(SITE, "gate-a")
    assert [e["seq"] for e in events] == list(range(1, last + 1))
    assert all(e["type"] != "void" for e in events[:sent])  # the central kept the real ones
    assert events[sent]["kind"] == "ledger_restored"
    assert [e["id"] for e in events[sent + 1:]] == [e["id"] for e in after]  # every one applied
    assert any(e["type"] == "deduction" for e in after)
    assert central.stats["duplicates"] >= 1  # the void numbers it already had
    assert back == [e["seq"] for e in events[:sent] if e["type"] == "deduction"]


@pytest.mark.parametrize("box", ["new", "backup_only"])
async def test_a_gate_whose_ledger_and_mark_are_gone_loses_no_new_event(
    mosquitto: Mosquitto, tmp_path: Path, box: str
) -> None:
    """The gate's box replaced (`new`: a fresh ledger and replica, the same daemon id), or
    its ledger put back from a copy kept elsewhere without `gated.db.sent` beside it
    (`backup_only`: the replica still there, the central system away at the restart):
    the central system holds events of this daemon the ledger knows nothing of. The gate
    holds its new events until the central system says how far it got (an ack, or the
    `applied` of its passes), then numbers them on after that (`void` in between, a
    `ledger_restored` alarm): every new tap is applied, and meanwhile the local balances
    count the new charges."""
    central = Central(central_settings(mosquitto), tmp_path / "central.db")
    central.load(SITE, SEED["members"], SEED["passes"], SEED["bookings"])
    db = tmp_path / "gate.db"
    now = clock()
    central_task = asyncio.create_task(central.run())
    try:
        await central.wait_connected(WAIT_S)
        before = await backed_up_gate(central, mosquitto, db, now)
        sent, balances = before["sent"], before["balances"]

        for f in tmp_path.glob("gate.*"):
            if f.name != "gate.db.backup" and (box == "new" or not f.name.startswith("gate.replica")):
                f.unlink()
        if box == "backup_only":
            shutil.copy(tmp_path / "gate.db.backup", db)
            await stopped(central_task)
        store = make_store(db, "gate-a")
        kept = store.last_seq
        link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
        assert kept < sent and store.unsure_after == kept
        engine = Engine(store, site(), GATES, POLICY)
        async with running(link.run()):
            await link.wait_connected(WAIT_S)
            if box == "backup_only":  # decided from the replica, charged, held
                walk_ins(engine, now, 6)
                held = store.events_after(kept, 1000)
                charged = {p: sum(Decimal(str(e["amount"])) for e in held if e["type"] == "deduction" and e["pass"] == p)
                           for p in balances}
                assert any(charged.values())
                assert {p: store.balance(p) for p in balances} == {p: balances[p] - charged[p] for p in balances}
                await asyncio.sleep(1.0)
                assert store.unsure_after == kept and link.port.last_seq == kept  # nothing left meanwhile
                central_task = asyncio.create_task(central.run())
                await central.wait_connected(WAIT_S)
            else:
                await wait_until(lambda: in_step(central, store, link), what="the new box's snapshot")
                walk_ins(engine, now, 6)
            await wait_until(lambda: in_step(central, store, link), timeout=30, what="settled on the new box")
            assert store.last_seq > sent and store.unsure_after is None
        last = store.last_seq
        after = [e for e in store.events_after(sent, 1000) if e["type"] != "void"]
        store.close()
        store = make_store(db, "gate-a")
        store.hold_unsure()
        assert store.unsure_after is None  # the mark is there for the next start
        store.close()
    finally:
        await stopped(central_task)
    events = central.events(SITE, "gate-a")
    assert [e["seq"] for e in events] == list(range(1, last + 1))
    assert all(e["type"] != "void" for e in events[:sent])  # the central kept the real ones
    assert any(e.get("kind") == "ledger_restored" for e in events[sent:])
    assert [e["id"] for e in events[sent:] if e["type"] != "void"] == [e["id"] for e in after]
    assert sum(e["type"] == "deduction" for e in after) >= 2


@pytest.mark.parametrize("answers", [True, False], ids=["answered", "central_without_history"])
async def test_a_new_box_gets_back_what_the_old_one_knew_of_today(
    mosquitto: Mosquitto, central: Central, tmp_path: Path, answers: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The box replaced at 10:00 (docs/operations.md "A gate's box replaced"): member 1 had
    walked in through it and out again, member 2 had walked in and is inside. Once the
    new box's numbering is settled it asks the central system for its own events it lost
    (docs/protocol.md "A gate's own events back"): member 1's re-entry within the grace
    is free, member 2 is refused by hard anti-passback, and member 1's walk-in charge is
    the gate's to refund again. A central system that does not answer: the gate says what
    it is missing (`own_history_missing`) and decides without it — member 1 pays again."""
    from dataclasses import replace as dc_replace

    import simulator.central
    from rules.reasons import Reason

    gates = {**GATES, "in-1": dc_replace(GATES["in-1"], reentry_grace=timedelta(hours=2))}
    db = tmp_path / "gate.db"
    now = clock()
    store = make_store(db, "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=gates)
    engine = Engine(store, site(), gates, POLICY)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: in_step(central, store, link), what="the first snapshot")
        m1, m2 = Credential.card("C1"), Credential.card("C2")
        assert engine.tap("in-1", m1, now())[0].decision.reason == Reason.WALK_IN
        engine.tap("out-1", m1, now())
        assert engine.tap("in-1", m2, now())[0].decision.reason == Reason.WALK_IN
        await wait_until(lambda: in_step(central, store, link), what="the old box's taps applied")
        sent = store.last_seq
    store.close()
    balances = {p: central.balance(SITE, p) for p in ("p1", "p2")}

    for f in tmp_path.glob("gate.*"):
        f.unlink()
    monkeypatch.setattr(simulator.central, "HISTORY_CHUNK", 2)  # the old box's five events in three chunks
    if not answers:
        async def silent(site: str, ask: Any) -> None:
            central.stats["history_requests_ignored"] += 1
        central._answer_history = silent  # type: ignore[method-assign]
    store = make_store(db, "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=gates)
    engine = Engine(store, site(), gates, POLICY)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: store.unsure_after is None and store.last_seq > sent, timeout=30,
                         what="the new box's numbering settled")
        if answers:
            await wait_until(lambda: store.own_history_wanted() is None, what="the old box's events back")
            assert link.session.own_history.wanted is None
            assert central.stats["history_events_sent"] == sent and link.session.stats["history_events"] == sent
            # the ledger holds the old box's events again under their numbers, as the central does
            assert [e["id"] for e in store.events_after(0, sent)] == [e["id"] for e in central.events(SITE, "gate-a")[:sent]]
            again = engine.tap("in-1", m1, now())[0]
            assert again.granted and again.decision.reason == Reason.REENTRY  # free: the walk-in was an hour ago
            inside = engine.tap("in-1", m2, now())[0]
            assert not inside.granted and inside.decision.reason == Reason.ANTI_PASSBACK
            # the walk-in the old box charged is the gate's own again: the desk can refund it
            row = store.conn.execute(
                "SELECT seq, cause FROM main.deductions WHERE member_id = (SELECT member_id FROM main.deductions "
                "ORDER BY seq LIMIT 1) ORDER BY seq").fetchall()
            assert row and row[0][0] <= sent and row[0][1] == "walk_in"
        else:
            await wait_until(lambda: central.stats["history_requests_ignored"] >= 1, what="the request")
            wanted = store.own_history_wanted()
            assert wanted is not None and (wanted.from_seq, wanted.to_seq) == (1, sent)
            assert link.session.own_history.wanted == wanted
            assert engine.tap("in-1", m1, now())[0].decision.reason == Reason.WALK_IN  # decided without it
        await wait_until(lambda: in_step(central, store, link), timeout=30, what="settled on the new box")
        charged = {p: balances[p] - central.balance(SITE, p) for p in balances}
    store.close()
    # the old box's charges are not counted twice by the new box's balances (in_step), and
    # the new box charged nothing more when it knew
    assert (sum(charged.values()) == 0) == answers


async def test_a_walk_in_charged_while_the_old_box_history_was_missing_is_given_back_once(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """The box replaced after member 1 walked in and out and member 2 walked in (hard
    anti-passback, a 2-hour re-entry grace), with a central system that does not answer
    history requests at first: the new box decides without the old box's day — member 1's
    re-entry is charged a second walk-in, member 2 is let in again. The box restarts before
    the answer. When the central system answers, the gate decides those taps again: member
    1's second walk-in given back (a `refund` naming the charge, `because: reentry_grace`),
    member 2's entry an `anti_passback_missed` alarm for the desk — once, also across a
    second restart; the central system's balances equal the gate's."""
    from dataclasses import replace as dc_replace

    from rules.reasons import Reason

    gates = {**GATES, "in-1": dc_replace(GATES["in-1"], reentry_grace=timedelta(hours=2))}
    db = tmp_path / "gate.db"
    now = clock()
    store = make_store(db, "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=gates)
    engine = Engine(store, site(), gates, POLICY)
    m1, m2 = Credential.card("C1"), Credential.card("C2")
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: in_step(central, store, link), what="the first snapshot")
        assert engine.tap("in-1", m1, now())[0].decision.reason == Reason.WALK_IN
        engine.tap("out-1", m1, now())
        assert engine.tap("in-1", m2, now())[0].decision.reason == Reason.WALK_IN
        await wait_until(lambda: in_step(central, store, link), what="the old box's taps applied")
    store.close()
    old_box = {p: central.balance(SITE, p) for p in ("p1", "p2")}

    for f in tmp_path.glob("gate.*"):
        f.unlink()
    answer = central._answer_history

    async def silent(site: str, ask: Any) -> None:
        central.stats["history_requests_ignored"] += 1
    central._answer_history = silent  # type: ignore[method-assign]
    store = make_store(db, "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=gates)
    engine = Engine(store, site(), gates, POLICY)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: central.stats["history_requests_ignored"] >= 1, timeout=30, what="the request")
        again = engine.tap("in-1", m1, now())[0]
        assert again.decision.reason == Reason.WALK_IN  # decided without the old box's day: charged
        assert engine.tap("in-1", m2, now())[0].granted  # inside, as the old box knew: let in
        charge = max(s for (s,) in store.conn.execute(
            "SELECT seq FROM main.deductions WHERE member_id = 'm1' AND cause = 'walk_in'"))
        assert store.own_history_gap() == (2, 2)
        await wait_until(lambda: in_step(central, store, link), timeout=30, what="the gap's taps applied")
    store.close()  # a restart between the taps and the answer

    def given_back(store: Any) -> list[tuple[Any, ...]]:
        return store.conn.execute(
            "SELECT amount, json_extract(e.body, '$.refunds.seq'), json_extract(e.body, '$.because') "
            "FROM main.deductions r JOIN main.events e ON e.seq = r.seq WHERE r.cause = 'refund'").fetchall()

    def missed(store: Any) -> list[Any]:
        return [m for (m,) in store.conn.execute(
            "SELECT member_id FROM main.events WHERE type = 'alarm' "
            "AND json_extract(body, '$.kind') = 'anti_passback_missed'")]

    async def restarted(first: bool) -> None:
        store = make_store(db, "gate-a")
        link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=gates)
        async with running(link.run()):
            await link.wait_connected(WAIT_S)
            await wait_until(lambda: store.own_history_wanted() is None, timeout=30, what="the old box's events back")
            await wait_until(lambda: in_step(central, store, link), timeout=30, what="settled after the answer")
            assert given_back(store) == [("-1", charge, "reentry_grace")]
            assert missed(store) == ["m2"]
            if first:
                assert link.session.stats["history_refunded"] == 1
                assert link.session.stats["history_anti_passback_missed"] == 1
        store.close()

    central._answer_history = answer  # type: ignore[method-assign]
    await restarted(True)
    await restarted(False)  # once: nothing more after a second restart
    refunds = [e for e in central.events(SITE, "gate-a") if e["type"] == "deduction" and e["cause"] == "refund"]
    assert [(e["refunds"]["seq"], e["because"]) for e in refunds] == [(charge, "reentry_grace")]
    # member 1 paid once in all (the old box's walk-in); member 2's second entry stands, for the desk
    assert central.balance(SITE, "p1") == old_box["p1"]
    assert central.balance(SITE, "p2") == old_box["p2"] - 1
