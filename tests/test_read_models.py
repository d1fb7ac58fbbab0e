"""The console's named reads (sync/store/read_models.py) on a real store: search that ignores
accents and case and finds any part of a card, e-mail or phone; who is inside; the loyalty
report; the walk-in a refund would give back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from rules.decide import Decision
from rules.model import Gate, Site
from rules.reasons import Reason
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import Store, SyncBatch
from sync.store import read_models as rm
from tests.tap_fixtures import tap_of

TZ = ZoneInfo("Europe/Madrid")
NOW = datetime(2026, 11, 18, 11, 40, tzinfo=UTC)
GATE = Gate(id="in", zone="main")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "g.db", Site(timezone=TZ), daemon_id="t")
    s.apply_sync(_batch(), NOW)
    yield s  # type: ignore[misc]
    s.close()


def _batch() -> SyncBatch:
    windows = {"mon-sun": "00:00-24:00"}
    members = [
        {"id": "m-ana", "name": "Ana López", "cards": ["04A1B2C3D4"], "email": "ana.lopez@example.org",
         "phone": "+34 612 345 678"},
        {"id": "m-jose", "name": "José Ñúñez", "cards": ["0499887766"], "email": "JOSE@Example.org"},
        {"id": "m-zoe", "name": "Zoë Müller", "cards": ["A1:B2:C3:D4"]},
    ]
    passes = [{"id": "p-ana", "member": "m-ana", "name": "Multipack 10", "kind": "visits", "balance": 9,
               "deduct_on": "access", "access_windows": windows}]
    bookings: list[dict[str, object]] = []
    return SyncBatch(
        members=[MemberIn.model_validate(m) for m in members],
        passes=[PassIn.model_validate(p) for p in passes],
        bookings=[BookingIn.model_validate(b) for b in bookings],
    )


@pytest.mark.parametrize(("q", "expected"), [
    ("lopez", ["m-ana"]), ("LÓPEZ", ["m-ana"]), ("ana", ["m-ana"]), ("nunez", ["m-jose"]), ("josé", ["m-jose"]),
    ("zoe", ["m-zoe"]), ("muller", ["m-zoe"]), ("example.org", ["m-ana", "m-jose"]), ("jose@example", ["m-jose"]),
    ("b2c3", ["m-ana", "m-zoe"]), ("887766", ["m-jose"]), ("04a1", ["m-ana"]), ("m-zoe", ["m-zoe"]),
    ("612345", ["m-ana"]), ("612 345 678", ["m-ana"]), ("+34612", ["m-ana"]),
    ("%", []), ("_", []), ("", []), ("nobody", []),
])
def test_search(store: Store, q: str, expected: list[str]) -> None:
    with rm.read_only(store.path) as conn:
        assert sorted(h.id for h in rm.search_members(conn, q)) == expected


def test_read_only_connection_cannot_write(store: Store) -> None:
    import sqlite3

    with rm.read_only(store.path) as conn, pytest.raises(sqlite3.OperationalError):
        conn.execute("DELETE FROM members")


def test_inside_loyalty_and_walk_in(store: Store) -> None:
    walk_in = Decision(True, Reason.WALK_IN, "m-ana", pass_id="p-ana", amount=__import__("decimal").Decimal(1), cause="walk_in")
    store.commit_tap(tap_of(GATE, walk_in, NOW), passed=True, now=NOW)
    for gate, reason, minutes in ((GATE, Reason.WALK_IN, 1), (Gate(id="out", zone="main"), Reason.EXIT, 2)):
        at = NOW + timedelta(minutes=minutes)
        store.commit_tap(tap_of(gate, Decision(True, reason, "m-jose"), at), passed=True, now=at)
    start = datetime(2026, 11, 17, 23, 0, tzinfo=UTC)  # local midnight
    later = NOW + timedelta(minutes=3)
    people = rm.inside(store.conn, "main", start, later)
    assert [(p.member, p.name) for p in people] == [("m-ana", "Ana López")]
    charge = rm.refundable_walk_in(store.conn, store.daemon_id, "m-ana", "main", start, later)
    assert charge is not None and charge.pass_name == "Multipack 10" and charge.amount == 1
    assert charge.daemon == store.daemon_id
    # one the site's other turnstile took later is the one a refund would give back
    store.record_peer_events("other", [{
        "seq": 4, "type": "deduction", "at": (NOW + timedelta(minutes=2)).isoformat(), "gate": "in-2",
        "member": "m-ana", "pass": "p-ana", "amount": 2, "cause": "walk_in", "booking": None,
    }], {"in-2": "main"})
    peer = rm.refundable_walk_in(store.conn, store.daemon_id, "m-ana", "main", start, later)
    assert peer is not None and (peer.daemon, peer.seq, peer.amount) == ("other", 4, 2)
    assert peer.pass_name == "Multipack 10"
    assert rm.first_entry(store.conn, "m-ana", "main", start, later) == NOW

    store.adjust_points("m-ana", 15, "desk", "birthday", NOW)
    store.adjust_points("m-jose", -5, "desk", "correction", NOW)
    store.adjust_points("m-ana", 3, "desk", "last month", NOW - timedelta(days=40))
    with rm.read_only(store.path) as conn:
        lines = rm.loyalty_report(conn, start, start + timedelta(days=1))
    assert [(ln.member, ln.credited, ln.adjusted, ln.total, ln.adjustments) for ln in lines] == [
        ("m-ana", 0, 15, 15, 1), ("m-jose", 0, -5, -5, 1),
    ]
    assert rm.member_names(store.conn, ["m-ana", "nope"]) == {"m-ana": "Ana López"}


def _deny(store: Store, member: str | None, at: datetime, card: str | None = None) -> int:
    reason = Reason.UNKNOWN_CARD if member is None else Reason.MEMBER_BLOCKED
    tap = tap_of(GATE, Decision(False, reason, member), at, card=card or "C0")
    committed = store.commit_tap(tap, passed=False, now=at)
    return int(next(e["seq"] for e in committed.events if e["type"] == "access"))


def test_denials_grouped_by_member_or_card_every_one_of_the_day(store: Store) -> None:
    start = datetime(2026, 11, 17, 23, 0, tzinfo=UTC)  # local midnight
    yesterday = _deny(store, "m-jose", start - timedelta(hours=2))
    jose = [_deny(store, "m-jose", NOW + timedelta(seconds=i)) for i in range(8)]
    cards = [_deny(store, None, NOW + timedelta(minutes=1, seconds=i), card=f"uid:C{i:03d}") for i in range(40)]
    again = _deny(store, None, NOW + timedelta(minutes=2), card="uid:C000")
    store.commit_tap(tap_of(GATE, Decision(True, Reason.WALK_IN, "m-ana"), NOW), passed=True, now=NOW)
    first = rm.first_seq_at(store.conn, start)
    assert yesterday < first <= jose[0]
    groups = rm.denial_groups(store.conn, first, start, done={cards[5]})
    assert len(groups) == 1 + 39  # Jose once, every card but the one done, nothing capped
    assert groups[0].key == "card:uid:C000" and groups[0].seqs == [again, cards[0]]  # newest first
    (j,) = [g for g in groups if g.member == "m-jose"]
    assert j.key == "member:m-jose" and sorted(j.seqs) == jose and yesterday not in j.seqs
    assert "card:uid:C005" not in {g.key for g in groups}
    assert rm.first_seq_at(store.conn, NOW + timedelta(days=1)) == store.last_seq + 1


def test_a_photo_the_desk_took_wins_over_the_central_systems(store: Store) -> None:
    from tests.photos import ANA_URL, BRUNO_URL, jpeg

    assert rm.member_photo(store.conn, "m-ana") is None and rm.photo_versions(store.conn, ["m-ana"]) == {}
    store.apply_sync(SyncBatch(members=[MemberIn(id="m-ana", name="Ana López", photo=ANA_URL),
                                        MemberIn(id="m-zoe", name="Zoë", photo="https://example.org/z.jpg")]), NOW)
    central = rm.member_photo(store.conn, "m-ana")
    assert central is not None and (central.mime, central.data) == ("image/jpeg", jpeg(ANA_URL))
    assert rm.member_photo(store.conn, "m-zoe") is None  # a URL is not shown (not even fetched)
    store.set_member_photo("m-ana", jpeg(BRUNO_URL), "desk", NOW)
    desk = rm.member_photo(store.conn, "m-ana")
    assert desk is not None and desk.data == jpeg(BRUNO_URL) and desk.version != central.version
    assert rm.photo_versions(store.conn, ["m-ana", "m-zoe", "m-jose"]) == {"m-ana": desk.version}
    with pytest.raises(ValueError):
        store.set_member_photo("m-ana", b"GIF89a", "desk", NOW)
    later = NOW + timedelta(hours=1)
    store.commit_tap(tap_of(GATE, Decision(True, Reason.WALK_IN, "m-ana"), later), passed=True, now=later)
    assert [g for _, g, _ in rm.last_visits(store.conn, "m-ana")] == ["in"]
