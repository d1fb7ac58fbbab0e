"""Cards in the store: keyed by typed keys, found by every reader that can read them,
migrated from the untyped strings of schema 1, moved and removed with their members."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from rules.credential import Card, Credential, TenDigits
from rules.model import Member, Site
from sync.records import MemberIn
from sync.store import Store, schema
from sync.store.batch import SyncBatch

SITE = Site(ZoneInfo("Europe/Madrid"), id="s")
NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)


def _store(path: Path, **kw: object) -> Store:
    return Store(path, SITE, daemon_id="g", durable=False, background_checkpoints=False, **kw)  # type: ignore[arg-type]


def _members(store: Store, *members: tuple[str, list[str]], snapshot: bool = False) -> None:
    batch = SyncBatch(members=[MemberIn(id=m, cards=cards) for m, cards in members])
    store.apply_sync(batch, NOW, snapshot=snapshot)


def test_one_card_many_readers(tmp_path: Path) -> None:
    store = _store(tmp_path / "g.db")
    _members(store, ("ana", ["em:0A00BC614E"]), ("ben", ["em32:0000000099"]), ("cai", ["123:45678"]))
    reads = {
        Card.em(0x0A00BC614E): "ana",  # RDM6300
        Card.em32(12345678): "ana",  # decimal reader
        Card.wiegand(26, 188, 24910): "ana",  # Wiegand 26 output of an EM reader
        Card.em(0x0700000063): "ben",  # an RDM6300 reads ben's card, enrolled by number
        Card.wiegand(26, 123, 45678): "cai",  # the converter's reading, via OSDP too
        Card.em(0x0012345678): None,  # hex digits of ana's number: another card
        Card.em(0x0B00BC614E): None,  # ana's number, another version byte
    }
    for card, member in reads.items():
        assert store.member_for_card(card) == member, card.key
    assert store.member("ana") is not None and store.member("ana").cards == ("em:0A00BC614E",)  # type: ignore[union-attr]


def test_a_read_two_members_cards_could_be_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "g.db")
    _members(store, ("ana", ["em:0A00BC614E"]), ("ben", ["em:0B00BC614E"]))
    found = store.resolve_card(Card.em32(12345678))
    assert found.member is None and found.ambiguous
    assert store.member_for_card(Card.em(0x0B00BC614E)) == "ben"


def test_cards_move_and_leave_with_their_members(tmp_path: Path) -> None:
    store = _store(tmp_path / "g.db")
    _members(store, ("ana", ["em:0A00BC614E"]))
    _members(store, ("ben", ["0A00BC614E"]))  # the central system gave the card to ben
    assert store.member_for_card(Card.em32(12345678)) == "ben"
    _members(store, ("ben", ["uid:04A1B2C3"]))  # ben's cards replaced
    assert store.member_for_card(Card.em32(12345678)) is None
    keys = store.conn.execute("SELECT COUNT(*) FROM card_keys").fetchone()[0]
    assert keys == 0  # the projections went with the card
    store.apply_sync(SyncBatch(remove_members=["ben"]), NOW, snapshot=False)
    assert store.member_for_card("uid:04A1B2C3") is None
    _members(store, ("cai", ["0012345678"]), snapshot=True)
    assert store.member_for_card(Card.wiegand(26, 188, 24910)) == "cai"


def test_untyped_ten_digits_follow_the_sites_readers(tmp_path: Path) -> None:
    decimal_site = _store(tmp_path / "d.db")
    _members(decimal_site, ("ana", ["0012345678"]))
    assert decimal_site.member_for_card(Card.em32(12345678)) == "ana"
    assert decimal_site.member_for_card(Card.em(0x0012345678)) is None
    hex_site = _store(tmp_path / "h.db", ten_digits=TenDigits.EM)
    _members(hex_site, ("ana", ["0012345678"]))
    assert hex_site.member_for_card(Card.em(0x0012345678)) == "ana"
    assert hex_site.member_for_card(Card.em32(12345678)) is None
    assert hex_site.card_key("0012345678") == "em:0012345678"
    assert hex_site.card_key("em32:12345678") == "em32:0012345678"  # typed keys are as given


def _schema_1(path: Path, cards: list[tuple[str, str]]) -> None:
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    schema.MIGRATIONS[0](conn, path, TenDigits.EM32)  # the first layout, at version 1
    conn.executemany(
        "INSERT INTO members(id, name, status) VALUES (?, ?, 'active')",
        [(m, m) for m in sorted({m for _, m in cards})],
    )
    conn.executemany("INSERT INTO cards(card, member_id) VALUES (?, ?)", cards)
    conn.close()


def test_migration_of_untyped_card_strings(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _schema_1(
        path,
        [
            ("04A1B2C3D4E5F6", "ana"),  # a 7-byte UID
            ("0012345678", "ben"),  # 10 digits: the EM number (decimal site)
            ("123:45678", "cai"),  # a Wiegand 26 reading
            ("04:A1:B2", "dora"),  # grouped: the UID 04A1B2 ...
            ("04A1B2", "eve"),  # ... the same card: eve, the later row, keeps it
            ("CARD-FRED", "fred"),  # an identifier of no known shape
            ("\x07", "gus"),  # no card at all: dropped
        ],
    )
    store = _store(path)
    rows = dict(store.conn.execute("SELECT card, member_id FROM cards").fetchall())
    assert rows == {
        "uid:04A1B2C3D4E5F6": "ana",
        "em32:0012345678": "ben",
        "w26:123:45678": "cai",
        "uid:04A1B2": "eve",
        "text:CARD-FRED": "fred",
    }
    assert store.meta("cards.merged") == "1" and store.meta("cards.dropped") == "1"
    assert store.meta("schema_version") == str(schema.SCHEMA_VERSION)
    assert store.member_for_card(Card.em(0x0700BC614E)) == "ben"  # an RDM6300 finds it now
    assert store.member_for_card(Credential.card("card-fred").typed or "") == "fred"
    store.close()
    assert _store(path).member_for_card("04a1b2") == "eve"  # reopening migrates nothing again


def test_member_records_accept_typed_keys_and_untyped_strings() -> None:
    m = MemberIn(id="m", cards=[" em:0a00bc614e ", "04a1b2c3", "w26:1:2"]).to_domain()
    assert isinstance(m, Member) and m.cards == ("em:0a00bc614e", "04a1b2c3", "w26:1:2")
    for bad in ("em:123", "w26:999:1", "\x00"):
        try:
            MemberIn(id="m", cards=[bad])
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_the_desk_enrols_cards_by_typed_key(tmp_path: Path) -> None:
    store = _store(tmp_path / "g.db")
    _members(store, ("ana", []), ("ben", []))
    # the console upper-cases what it is given: a typed key from an unknown card's event...
    store.enrol_card("EM:0A00BC614E", "ana", "desk", NOW)
    # ...or the number printed on a card, read with the site's rule (decimal here)
    store.enrol_card(" 0000000099 ", "ben", "desk", NOW)
    rows = dict(store.conn.execute("SELECT card, member_id FROM card_enrolments").fetchall())
    assert rows == {"em:0A00BC614E": "ana", "em32:0000000099": "ben"}
    assert store.member_for_card(Card.em32(12345678)) == "ana"  # a decimal reader finds it
    assert store.member_for_card(Card.em(0x0700000063)) == "ben"  # an RDM6300 too
    assert store.member_for_card(Card.em(0x0012345678)) is None
    try:
        store.enrol_card("em:123", "ana", "desk", NOW)
    except ValueError:
        pass
    else:
        raise AssertionError("a malformed typed key was enrolled")


def test_a_changed_card_rule_is_noticed_and_kept_until_a_snapshot(tmp_path: Path) -> None:
    """Decimal EM readers swapped for hex ones: the stored 10-digit cards were typed as
    card numbers and no longer match what the new readers read."""
    path = tmp_path / "g.db"
    store = _store(path)
    _members(store, ("ana", ["0012345678"]), snapshot=True)
    assert store.cards_typed_as == TenDigits.EM32 and not store.card_rule_changed
    store.close()
    store = _store(path, ten_digits=TenDigits.EM)  # restarted with the hex readers
    assert store.card_rule_changed and store.cards_typed_as == TenDigits.EM32
    assert store.member_for_card(Card.em(0x0012345678)) is None  # why a snapshot is needed
    _members(store, ("bruno", ["0099999999"]))  # a delta is typed under the new rule...
    assert store.member_for_card(Card.em(0x0099999999)) == "bruno"
    assert store.card_rule_changed  # ...but the old cards are still to be typed again
    store.close()
    store = _store(path, ten_digits=TenDigits.EM)
    assert store.card_rule_changed  # a restart does not forget it
    _members(store, ("ana", ["0012345678"]), ("bruno", ["0099999999"]), snapshot=True)
    assert not store.card_rule_changed and store.cards_typed_as == TenDigits.EM
    assert store.member_for_card(Card.em(0x0012345678)) == "ana"
    store.close()


def test_a_reload_that_changes_the_rule_writes_down_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = _store(path)
    _members(store, ("ana", ["0012345678"]))
    # a replica from before the rule was recorded: it was typed under the rule it opened with
    store.conn.execute("DELETE FROM replica.meta WHERE key = ?", (schema.CARDS_TYPED_AS,))
    assert store.cards_typed_as == TenDigits.EM32 and not store.card_rule_changed
    store.set_ten_digits(TenDigits.EM)
    assert store.card_rule_changed and store.card_key("0012345678") == "em:0012345678"
    store.close()
    store = _store(path, ten_digits=TenDigits.EM)
    assert store.card_rule_changed and store.cards_typed_as == TenDigits.EM32
    store.set_ten_digits(TenDigits.EM32)  # and back: nothing is left to do
    assert not store.card_rule_changed
    store.close()
