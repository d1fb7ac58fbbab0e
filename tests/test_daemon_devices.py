"""The daemon and its devices (issue: stopping during a pending grant logged not_opened;
readers' offline/online were no events; reader counters were in neither /metrics nor
status): the Daemon in this loop, a simulated turnstile, readers on ptys."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import generate_latest

from simulator.turnstile import Person
from tests.test_daemon import wait_for
from tests.test_faults_devices import one_gate, running_site


async def test_stopping_during_a_pending_grant_waits_for_the_person_and_raises_no_alarm(
    tmp_path: Path,
) -> None:
    async with running_site(tmp_path, one_gate) as site:
        sim = site.sims["in"]
        sim.queue_people(Person(turns=True, delay=0.8), Person(turns=False))
        first = asyncio.create_task(site.tap("turnstile-1", "04A1B2C3D4"))
        await wait_for(lambda: sim.unlocked, what="the release")
        await site.daemon.stop()  # the person is still on the way: the tap is finished
        result = await first
        assert result["decision"] == "granted" and result["passed"] is True
    assert [e["type"] for e in _events(tmp_path) if e["type"] in ("access", "deduction")] == ["access", "deduction"]
    # the next one walks away while the daemon stops: no deduction and no not_opened
    async with running_site(tmp_path / "b", one_gate) as site:
        sim = site.sims["in"]
        sim.set_person(turns=False)
        second = asyncio.create_task(site.tap("turnstile-1", "0499887766"))
        await wait_for(lambda: sim.unlocked, what="the release")
        await site.daemon.stop()  # passage_timeout is 1.5 s: the grant lapses during the stop
        result = await second
        assert result["passed"] is False and not sim.unlocked
    kinds = [e.get("kind") for e in _events(tmp_path / "b") if e["type"] == "alarm"]
    assert "not_opened" not in kinds
    assert not [e for e in _events(tmp_path / "b") if e["type"] == "deduction"]


def _events(tmp: Path) -> list[dict[str, object]]:
    import contextlib
    import json
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{tmp / 'gated.db'}?mode=ro", uri=True)) as c:
        return [json.loads(r[0]) for r in c.execute("SELECT body FROM events ORDER BY seq")]


async def test_reader_offline_and_online_are_events_and_counters_are_exported(tmp_path: Path) -> None:
    async with running_site(tmp_path, one_gate, readers=("in",)) as site:
        pty = site.readers["in"]
        daemon = site.daemon
        reader = daemon.readers["r-in"][1]
        await wait_for(lambda: reader.health.value == "online", what="reader online")
        assert not site.alarms("reader_online")  # coming up at start is not news
        pty.write(b"\x01\x02garbage-that-is-no-card\r\n")
        await wait_for(lambda: reader.stats["rejected_frames"] >= 1, what="a rejected frame")
        pty.unplug()
        await wait_for(lambda: bool(site.alarms("reader_offline")), what="reader_offline event")
        pty.replug()
        await wait_for(lambda: bool(site.alarms("reader_online")), what="reader_online event")
        offline = site.alarms("reader_offline")[0]
        assert offline["gate"] == "turnstile-1" and offline["reader"] == "r-in"
        status = daemon.health()
        stats = status["readers"]["r-in"]["stats"]
        assert stats["rejected_frames"] >= 1 and stats["reconnects"] >= 1
        assert "modbus_lines" in status
        text = generate_latest(daemon.metrics.registry).decode()
        assert 'gated_reader_total{counter="rejected_frames",reader="r-in"}' in text
        assert 'gated_reader_total{counter="reconnects",reader="r-in"}' in text
        assert "gated_modbus_line_exchanges_total" in text and "gated_modbus_line_max_poll_turns" in text


async def test_the_same_digits_from_two_kinds_of_reader_are_two_cards(tmp_path: Path) -> None:
    """Seen on site: a hex EM reader's `0012345678` admitted the member whose decimal card
    is `0012345678`. Through the daemon, a reader per kind, the member's card enrolled by
    its printed number: the decimal reader lets them in, the hex reader's read of another
    card does not, and the same card on an RDM6300 (40 bits) does."""
    from datetime import UTC, datetime

    from drivers.readers.frames import Checksum, FrameConfig, Framing
    from drivers.readers.payloads import PayloadFormat
    from rules.credential import Card
    from sync.records import MemberIn
    from sync.store.batch import SyncBatch
    from tests.test_faults_devices import serial_reader

    def gates(sims, ptys):  # type: ignore[no-untyped-def]
        readers = [
            {**serial_reader("r-dec", ptys["dec"]), "format": "em-decimal"},
            {**serial_reader("r-hex", ptys["hex"]), "format": "em"},
            {**serial_reader("r-rdm", ptys["rdm"]), "format": "em", "framing": "stx-etx", "checksum": "xor-hex"},
        ]
        return [{"id": "turnstile-1", "zone": "main", "readers": readers}]

    async with running_site(tmp_path, gates, readers=("dec", "hex", "rdm")) as site:
        # the central system enrolled m1's card by the number printed on it
        site.store.apply_sync(SyncBatch(members=[MemberIn(id="m1", cards=["em32:0012345678"])]),
                              datetime.now(UTC))
        ptys = site.readers
        ptys["rdm"].frame = FrameConfig(framing=Framing.STX_ETX, checksum=Checksum.XOR_HEX, format=PayloadFormat.EM)
        for name in ("dec", "hex", "rdm"):
            await wait_for(lambda n=name: site.daemon.readers[f"r-{n}"][1].health.value == "online", what=name)
        ptys["dec"].tap("12345678")
        await wait_for(lambda: len(site.access()) == 1, what="decimal read")
        ptys["hex"].tap("0012345678")  # the hex id 0x0012345678: another card
        await wait_for(lambda: len(site.access()) == 2, what="hex read")
        ptys["rdm"].present(Card.em(0x0A00BC614E))  # the member's card, all 40 bits
        await wait_for(lambda: len(site.access()) == 3, what="RDM6300 read")
        ptys["hex"].tap("04DEADBEEF")
        await wait_for(lambda: len(site.access()) == 4, what="unknown card")
        decided = [(e["member"], e["decision"], e["reason"]) for e in site.access()]
    assert decided == [
        ("m1", "granted", "walk_in"),
        (None, "denied", "unknown_card"),
        ("m1", "granted", "walk_in"),
        (None, "denied", "unknown_card"),
    ]
    # what the desk enrols from an unknown card's event is its typed key
    assert [e.get("card") for e in _events(tmp_path) if e.get("reason") == "unknown_card"] == [
        "em:0012345678", "em:04DEADBEEF",
    ]


async def test_a_reload_swapping_decimal_em_readers_for_hex_ones_retypes_the_cards(tmp_path: Path) -> None:
    """The installer replaces the site's decimal EM readers with hex ones and reloads: the
    daemon now reads 10-digit card strings as hex ids, and knows the stored cards were
    typed the other way (so the link asks for a snapshot; a restart still knows)."""
    from datetime import UTC, datetime

    import yaml

    from gated.reload import reload_config
    from rules.credential import Card, TenDigits
    from sync.records import MemberIn
    from sync.store import Store
    from sync.store.batch import SyncBatch
    from tests.test_faults_devices import make_config, serial_reader

    def gates(fmt: str, ptys):  # type: ignore[no-untyped-def]
        return [{"id": "turnstile-1", "zone": "main", "readers": [{**serial_reader("r-em", ptys["em"]), "format": fmt}]}]

    async with running_site(tmp_path, lambda sims, ptys: gates("em-decimal", ptys), sims=(), readers=("em",)) as site:
        store = site.store
        store.apply_sync(SyncBatch(members=[MemberIn(id="m1", cards=["0012345678"])]), datetime.now(UTC))
        assert store.ten_digits == TenDigits.EM32 and not store.card_rule_changed
        assert store.member_for_card(Card.em32(12345678)) == "m1"
        new = make_config(tmp_path, gates("em", site.readers)).model_dump(mode="json", exclude_none=True)
        path = tmp_path / "gated.yaml"
        path.write_text(yaml.safe_dump(new), encoding="utf-8")
        assert await reload_config(site.daemon, path)
        assert store.ten_digits == TenDigits.EM and store.card_rule_changed
        assert store.card_key("0012345678") == "em:0012345678"  # what the desk enrols now
        assert store.member_for_card(Card.em(0x0012345678)) is None  # until the snapshot
    config = site.daemon.config  # a restart on the new configuration still knows
    reopened = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id, ten_digits=config.ten_digits())
    try:
        assert reopened.card_rule_changed and reopened.cards_typed_as == TenDigits.EM32
    finally:
        reopened.close()


async def test_a_reload_to_a_dead_board_is_an_alarm_and_so_is_its_return(tmp_path: Path) -> None:
    """Issue 24: the installer reloads with a relay board's port wrong (nothing answers
    there): `relay_offline` at once, not only a grey gate card; and when a board answers on
    that port, `relay_online`."""
    import socket

    import yaml

    from gated.reload import reload_config
    from simulator.turnstile import SimTurnstile
    from tests.test_faults_devices import make_config, output

    async with running_site(tmp_path, one_gate) as site:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = int(s.getsockname()[1])
        gates = [{"id": "turnstile-1", "zone": "main", "readers": [],
                  "output": {**output(site.sims["in"]), "port": dead}}]
        path = tmp_path / "gated.yaml"
        path.write_text(yaml.safe_dump(make_config(tmp_path, gates).model_dump(mode="json", exclude_none=True)))
        assert await reload_config(site.daemon, path)
        await wait_for(lambda: len(site.alarms("relay_offline")) == 1, 10, "relay_offline after the reload")
        assert site.daemon.controllers["turnstile-1"].health.value == "offline"
        async with SimTurnstile(transport="tcp", host="127.0.0.1", port=dead):
            await wait_for(lambda: len(site.alarms("relay_online")) == 1, 10, "relay_online when it answers")
