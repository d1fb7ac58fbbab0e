"""A tap reaches the central system; a central change reaches the next decision; look-ups;
two daemons share presence (site-wide anti-passback, occupancy)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gated.engine import Engine
from rules.credential import Credential
from rules.reasons import Reason
from simulator.central import Central
from sync.link import SyncLink
from sync.protocol import CatchUpRequest
from sync.store.occupancy import occupancy
from tests.broker import (
    GATES,
    POLICY,
    SITE,
    WAIT_S,
    Mosquitto,
    clock,
    make_store,
    running,
    settings_for,
    site,
    wait_until,
)


async def test_tap_reaches_central_and_delta_changes_next_decision(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    now = clock()
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    async with running(link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] == 1, what="initial snapshot")
        assert store.balance("p1") == Decimal(1000)

        pending, committed = engine.tap("in-1", Credential.card("c1"), now())
        assert pending.decision.reason == Reason.WALK_IN
        seqs = [e["seq"] for e in committed.events]
        await wait_until(lambda: store.acked_seq >= seqs[-1], what="ack")
        assert central.balance(SITE, "p1") == Decimal(999)
        assert [e["seq"] for e in central.events(SITE, "gate-a")] == seqs
        await wait_until(lambda: link.stats["deltas_applied"] >= 1, what="balance delta")
        assert store.balance("p1") == Decimal(999), (dict(link.stats), dict(central.stats), store.conn.execute(
            "SELECT central_balance, applied_seq, balance FROM passes WHERE id='p1'").fetchall(),
            store.conn.execute("SELECT seq, amount FROM deductions").fetchall())

        # the back office blocks m2: the next tap is denied
        await central.push(SITE, members=[{"id": "m2", "name": "Ben", "cards": ["C2"], "status": "blocked"}])
        await wait_until(lambda: link.delta_seq == central.delta_seq(SITE), what="delta")
        pending, _ = engine.tap("in-1", Credential.card("C2"), now())
        assert pending.decision.reason == Reason.MEMBER_BLOCKED

        # a top-up with the central applied_seq: the gate's balance rule holds
        await central.push(
            SITE,
            passes=[{"id": "p1", "member": "m1", "kind": "visits", "balance": 50, "deduct_on": "access",
                     "access_windows": {"mon-sun": "00:00-24:00"}}],
        )
        await wait_until(lambda: link.delta_seq == central.delta_seq(SITE), what="top-up")
        assert store.balance("p1") == Decimal(50)


async def test_lookup_unknown_card(mosquitto: Mosquitto, central: Central, tmp_path: Path) -> None:
    store = make_store(tmp_path / "a.db", "gate-a")
    link = SyncLink(store, settings_for(mosquitto, "gate-a"), now=clock(), gates=GATES)
    other = make_store(tmp_path / "b.db", "gate-b")
    other_link = SyncLink(other, settings_for(mosquitto, "gate-b"), now=clock(), gates=GATES)
    async with running(link.run(), other_link.run()):
        await link.wait_connected(WAIT_S)
        await wait_until(lambda: link.stats["snapshots_applied"] >= 1 and other_link.stats["snapshots_applied"] >= 1)
        # a member the central system created a moment ago, not yet sent to the gate
        central.load(SITE, members=[{"id": "m9", "cards": ["NEW9"]}],
                     passes=[{"id": "p9", "member": "m9", "kind": "time"}])
        assert store.member_for_card("NEW9") is None
        assert await link.lookup("NEW9", timeout=5.0)
        assert store.member_for_card("NEW9") == "m9"
        assert [p.id for p in store.passes_of("m9")] == ["p9"]
        # the central system sends the member it was asked about to the whole site
        await wait_until(lambda: other.member_for_card("NEW9") == "m9", what="the looked-up member at gate b")
        await wait_until(lambda: link.delta_seq == other_link.delta_seq == central.delta_seq(SITE), what="the delta")
        assert not await link.lookup("NOPE", timeout=5.0)
    # not connected: no wait, no answer
    assert not await link.lookup("NEW9")


async def test_two_daemons_share_presence_and_occupancy(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    a = make_store(tmp_path / "a.db", "gate-a")
    b = make_store(tmp_path / "b.db", "gate-b")
    now = clock()
    la = SyncLink(a, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    lb = SyncLink(b, settings_for(mosquitto, "gate-b"), now=now, gates=GATES)
    ea, eb = Engine(a, site(), GATES, POLICY), Engine(b, site(), GATES, POLICY)
    async with running(la.run(), lb.run()):
        await la.wait_connected(WAIT_S)
        await lb.wait_connected(WAIT_S)
        await wait_until(lambda: la.stats["snapshots_applied"] >= 1 and lb.stats["snapshots_applied"] >= 1)
        p1, _ = ea.tap("in-1", Credential.card("C1"), now())
        p3, _ = ea.tap("in-1", Credential.card("C3"), now())
        assert p1.decision.granted and p3.decision.granted
        await wait_until(lambda: lb.stats["remote_passages"] >= 2, what="remote passages at b")
        t = now()
        assert occupancy(a, "main", t) == 2
        assert occupancy(b, "main", t) == 2
        # m1 entered at gate A: at gate B (hard anti-passback) m1 is inside
        again, _ = eb.tap("in-1", Credential.card("C1"), now())
        assert again.decision.reason == Reason.ANTI_PASSBACK
        # m3 leaves through B: A sees it
        out, _ = eb.tap("out-1", Credential.card("C3"), now())
        assert out.decision.reason == Reason.EXIT
        await wait_until(lambda: la.stats["remote_passages"] >= 1, what="remote exit at a")
        assert occupancy(a, "main", now()) == 1
        assert occupancy(b, "main", now()) == 1
        # and the deduction made at A reached B through the central balance
        await wait_until(lambda: b.balance("p1") == a.balance("p1") == central.balance(SITE, "p1"))


async def test_a_daemon_that_was_away_gets_what_the_others_did_meanwhile(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """Found by `gated sim day`: a site broker restarted while a member attended a class at
    one turnstile; that daemon sent its events when it was back, before the daemon doing the
    site's no-shows had subscribed again, and the central system acknowledged them — nobody
    would send them again, and the class became a no-show at 19:00. Now a daemon that hears
    of another for the first time (its retained heartbeat) asks it for its events of the
    last day, and one that finds a gap asks from the first missing seq (recorded once)."""
    a = make_store(tmp_path / "a.db", "gate-a")
    b = make_store(tmp_path / "b.db", "gate-b")
    now = clock()
    la = SyncLink(a, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    ea = Engine(a, site(), GATES, POLICY)
    async with running(la.run()):
        await la.wait_connected(WAIT_S)
        await wait_until(lambda: la.stats["snapshots_applied"] >= 1)
        p1, _ = ea.tap("in-1", Credential.card("C1"), now())
        assert p1.decision.granted
        out, _ = ea.tap("out-1", Credential.card("C1"), now())
        assert out.decision.reason == Reason.EXIT
        await wait_until(lambda: a.acked_seq == a.last_seq == central.applied_seq(SITE, "gate-a"), what="acked")
        # b was not there for any of it; it comes online now
        lb = SyncLink(b, settings_for(mosquitto, "gate-b"), now=now, gates=GATES)
        async with running(lb.run()):
            await lb.wait_connected(WAIT_S)
            await wait_until(lambda: lb.stats["remote_passages"] >= 2, what="a's passages at b")
            await wait_until(lambda: lb.stats["snapshots_applied"] >= 1, what="b's first snapshot")
            assert lb.stats["catch_up_requests"] >= 1 and la.stats["catch_up_requests_served"] >= 1
            assert b.peer_marks()["gate-a"][0] == a.last_seq  # heard up to a's last event, durably
            eb = Engine(b, site(), GATES, POLICY)
            back, _ = eb.tap("in-1", Credential.card("C1"), now())
            assert back.decision.granted  # b knows m1 went out (hard anti-passback)

            # a second catch-up (asked again from the start) records nothing twice
            def recorded() -> int:
                return int(b.conn.execute("SELECT COUNT(*) FROM passages WHERE origin = 'gate-a'").fetchone()[0])

            before, answers = recorded(), lb.stats["catch_up_answers"]
            again = CatchUpRequest(daemon="gate-b", peer="gate-a", request_id="again", from_seq=1)
            await la.feed(f"gated/{SITE}/catchup", again.model_dump_json().encode())
            await wait_until(lambda: lb.stats["catch_up_answers"] > answers, what="the second answer")
            assert recorded() == before == 2
async def test_a_late_lookup_answer_is_applied_for_the_next_tap(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The central system answers after `lookup_timeout` (a slow WAN): the tap that asked
    was denied from the cache, but the answer is applied when it comes, and the next tap
    of the same card is decided from it without asking again."""
    store = make_store(tmp_path / "a.db", "gate-a")
    now = clock()
    link = SyncLink(store, settings_for(mosquitto, "gate-a", lookup_timeout=0.1), now=now, gates=GATES)
    engine = Engine(store, site(), GATES, POLICY)
    asked: asyncio.Queue[aiomqtt.Message] = asyncio.Queue()

    async def slow_central() -> None:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.subscribe(f"gated/{SITE}/lookup/request", qos=0)
            ready.set()
            async for m in c.messages:
                await asyncio.sleep(0)
                await asked.put(m)
                reply = await answers.get()
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.CorrelationData = m.properties.CorrelationData  # type: ignore[union-attr]
                await c.publish(m.properties.ResponseTopic, reply, qos=0, properties=props)  # type: ignore[union-attr]

    ready = asyncio.Event()
    answers: asyncio.Queue[bytes] = asyncio.Queue()
    async with running(link.run(), slow_central()):
        await link.wait_connected(WAIT_S)
        await asyncio.wait_for(ready.wait(), WAIT_S)
        assert not await link.lookup("NEW9")  # nobody answered within lookup_timeout
        assert link.stats["lookup_timeouts"] == 1
        request = await asyncio.wait_for(asked.get(), WAIT_S)
        assert json.loads(bytes(request.payload))["card"] == "NEW9"  # type: ignore[arg-type]
        member = {"id": "m9", "cards": ["NEW9"]}
        pass_ = {"id": "p9", "member": "m9", "kind": "time", "access_windows": {"mon-sun": "00:00-24:00"},
                 "applied": {}}
        await answers.put(json.dumps({"v": 1, "found": True, "members": [member], "passes": [pass_]}).encode())
        await wait_until(lambda: store.member_for_card("NEW9") == "m9", what="the late answer applied")
        assert link.stats["lookup_late"] == 1
        pending, _ = engine.tap("in-1", Credential.card("NEW9"), now())
        assert pending.decision.granted


async def test_a_card_enrolled_at_one_gate_opens_the_sites_other_gate(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """The desk at gate A gives a card to Ana that Ben held: the reference central system
    applies `card_enrolled` (the card moves from Ben to Ana) and sends both members in a
    delta, so gate B knows the card is Ana's; the enrolment at A settles (the central
    system has it) and nothing else at either gate changed."""
    a, b = make_store(tmp_path / "a.db", "gate-a"), make_store(tmp_path / "b.db", "gate-b")
    now = clock()
    link_a = SyncLink(a, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    link_b = SyncLink(b, settings_for(mosquitto, "gate-b"), now=now, gates=GATES)
    async with running(link_a.run(), link_b.run()):
        await wait_until(lambda: link_a.stats["snapshots_applied"] == 1 and link_b.stats["snapshots_applied"] == 1,
                         what="initial snapshots")
        assert b.member_for_card("C2") == "m2"
        a.enrol_card("C2", "m1", "desk", now())
        assert a.member_for_card("C2") == "m1"  # at once, here
        await wait_until(lambda: b.member_for_card("C2") == "m1", what="the card at the other gate")
        assert central.cards_of(SITE, "m1") == sorted([a.card_key("C1"), a.card_key("C2")])
        assert central.cards_of(SITE, "m2") == []
        await wait_until(lambda: link_a.delta_seq == central.delta_seq(SITE), what="the delta at gate A")
        assert a.conn.execute("SELECT COUNT(*) FROM card_enrolments").fetchone()[0] == 0  # settled
        assert a.member_for_card("C2") == "m1" and a.member_for_card("C1") == "m1"
        assert b.member_for_card("C1") == "m1" and b.member_for_card("C3") == "m3"
        assert central.stats["cards_enrolled"] == 1


async def test_a_photo_taken_at_one_gates_desk_shows_at_the_sites_other_gate(
    mosquitto: Mosquitto, central: Central, tmp_path: Path
) -> None:
    """The desk at gate A takes Ana's photo: a `member_photo` event, which the reference
    central system keeps as her `photo` and sends in a delta, so gate B's replica has it
    too (docs/protocol.md, "Member photos")."""
    from sync.store.read_models import member_photo
    from tests.photos import ANA_URL, jpeg

    a, b = make_store(tmp_path / "a.db", "gate-a"), make_store(tmp_path / "b.db", "gate-b")
    now = clock()
    link_a = SyncLink(a, settings_for(mosquitto, "gate-a"), now=now, gates=GATES)
    link_b = SyncLink(b, settings_for(mosquitto, "gate-b"), now=now, gates=GATES)
    async with running(link_a.run(), link_b.run()):
        await wait_until(lambda: link_a.stats["snapshots_applied"] == 1 and link_b.stats["snapshots_applied"] == 1,
                         what="initial snapshots")
        assert member_photo(b.conn, "m1") is None
        a.set_member_photo("m1", jpeg(ANA_URL), "desk", now())
        shown = member_photo(a.conn, "m1")
        assert shown is not None and shown.data == jpeg(ANA_URL)  # at once, here
        await wait_until(lambda: member_photo(b.conn, "m1") is not None, what="the photo at the other gate")
        there = member_photo(b.conn, "m1")
        assert there is not None and (there.mime, there.data) == ("image/jpeg", jpeg(ANA_URL))
        assert central.stats["member_photos"] == 1
