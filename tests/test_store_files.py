"""The store's files: a version 1 database (replica inside the ledger) migrated to a
ledger plus a replica file; orphans removed at start; a lost replica replaced by an empty
one (the link then asks for a snapshot); the read contract on another connection."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from rules.credential import TenDigits
from rules.model import BookingStatus
from sync.store import Store, open_reader
from sync.store.schema import MIGRATIONS, SCHEMA_VERSION
from tests.broker import site

T0 = datetime(2026, 11, 18, 9, 0, tzinfo=UTC).timestamp()


def version_1(path: Path) -> None:
    """A database as gated wrote it before the replica had a file of its own."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    MIGRATIONS[0](conn, path, TenDigits.EM32)
    conn.executemany("INSERT INTO members VALUES (?,?,?,?,?,?)", [("m1", "Ana", "active", None, None, T0)])
    conn.execute("INSERT INTO cards VALUES ('K1', 'm1')")
    conn.execute(
        "INSERT INTO passes VALUES ('p1', 'm1', 'Multipack', 'visits', '10', 3, '8', 'access', NULL, NULL, NULL, NULL, "
        "?)",
        (json.dumps({"mon-sun": ["00:00-24:00"]}),),
    )
    bookings = [
        # (id, ends_at offset h, outcome, loyalty_credited, status)
        ("b-done", -5, "attended", 1, "booked"),
        ("b-attended", -1, "attended", 0, "booked"),
        ("b-noshow", -3, "no_show", 0, "booked"),
        ("b-open", 2, None, 0, "booked"),
        ("b-cancelled", -4, None, 0, "cancelled"),
    ]
    for bid, h, outcome, credited, status in bookings:
        conn.execute(
            "INSERT INTO bookings VALUES (?, 'm1', 'p1', 'Spin', 'main', ?, ?, ?, ?, 1, '1', 10, ?, ?)",
            (bid, T0 + (h - 1) * 3600, T0 + h * 3600, status, outcome, credited, T0 if outcome == "attended" else None),
        )
    # our deductions: seq 3 (already applied centrally: applied_seq 3) and 5 (not yet)
    for seq in (3, 5):
        conn.execute(
            "INSERT INTO deductions VALUES (?, 'p1', 'm1', NULL, '1', 'walk_in', 'main', ?, NULL)", (seq, T0)
        )
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("sync.delta_seq", "7"), ("sync.snapshot_id", "s-old"), ("last_sync_at", str(T0)), ("next_seq", "6")],
    )
    conn.close()


def test_version_1_database_is_migrated_to_a_replica_file(tmp_path: Path) -> None:
    db = tmp_path / "gate.db"
    version_1(db)
    store = Store(db, site(), daemon_id="gate-a")
    try:
        assert store.replica_path.parent == tmp_path and store.replica_path.name.startswith("gate.replica-1-")
        assert store.member_for_card("k1") == "m1"
        # central 10 as of seq 3, minus our deduction 5: derived, not the stored 8
        assert store.balance("p1") == Decimal(9)
        assert (store.delta_seq, store.snapshot_id) == (7, "s-old")
        assert store.last_seq == 5
        status = {b: store.booking_status(b) for b in ("b-done", "b-attended", "b-noshow", "b-open", "b-cancelled")}
        assert status == {
            "b-done": BookingStatus.ATTENDED, "b-attended": BookingStatus.ATTENDED,
            "b-noshow": BookingStatus.NO_SHOW, "b-open": BookingStatus.BOOKED, "b-cancelled": BookingStatus.CANCELLED,
        }
        # the ledger keeps no replica table; the read contract shows them all the same
        names = {r[0] for r in store.conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
        assert not names & {"members", "cards", "passes", "bookings"}
        assert {"site_charges", "site_refunds"} <= names  # migration 7: the site's other daemons
        assert "peer_marks" in names  # migration 8: how far each of them is heard
        assert "member_photos" in names  # migration 9: photos taken at the desk
        assert store.conn.execute("SELECT value FROM main.meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        assert store.conn.execute("SELECT balance FROM passes WHERE id = 'p1'").fetchone()[0] == "9"
        # the no-show walk starts after the migrated outcomes: only what falls due later
        from rules.model import Policy

        later = datetime.fromtimestamp(T0 + 3 * 3600, UTC)
        events = store.run_due(Policy(), later).events
        assert [(e["type"], e.get("booking"), e.get("status")) for e in events] == [
            ("loyalty", "b-attended", None),
            ("attendance", "b-open", "no_show"),
        ]
    finally:
        store.close()
    # opened again: the same files, nothing migrated twice
    again = Store(db, site(), daemon_id="gate-a")
    try:
        assert again.balance("p1") == Decimal(9) and again.counts()["bookings"] == 5
    finally:
        again.close()


def test_orphans_go_and_a_lost_replica_is_replaced_by_an_empty_one(tmp_path: Path) -> None:
    db = tmp_path / "gate.db"
    store = Store(db, site(), daemon_id="gate-a")
    current = store.replica_path
    store.close()
    (tmp_path / "gate.replica-9-deadbeef.db").write_bytes(b"half built")
    (tmp_path / "gate.snapshot-0badf00d.spool").write_bytes(b"chunks")
    (tmp_path / "other.replica-1-00000000.db").write_bytes(b"another store's")
    store = Store(db, site(), daemon_id="gate-a")
    assert store.replica_path == current
    ours = {p.name for p in tmp_path.iterdir() if p.name.startswith("gate.replica") or p.suffix == ".spool"}
    assert ours <= {current.name + s for s in ("", "-wal", "-shm")} and current.name in ours
    assert (tmp_path / "other.replica-1-00000000.db").exists()
    store.close()
    current.unlink()
    store = Store(db, site(), daemon_id="gate-a")
    try:
        assert store.replica_path != current and store.replica_path.exists()
        assert store.snapshot_id is None and store.counts()["members"] == 0  # the link asks for a snapshot
    finally:
        store.close()


def test_reader_sees_the_replica_by_name_from_another_connection(tmp_path: Path) -> None:
    db = tmp_path / "gate.db"
    version_1(db)
    Store(db, site(), daemon_id="gate-a").close()
    with open_reader(db) as conn:
        assert conn.execute("SELECT name FROM members WHERE id = 'm1'").fetchone()[0] == "Ana"
        assert conn.execute("SELECT member_id FROM cards WHERE card = 'text:K1'").fetchone()[0] == "m1"  # typed
        assert conn.execute("SELECT outcome, attended_at FROM bookings WHERE id = 'b-attended'").fetchone() == (
            "attended", T0,
        )
        assert conn.execute("SELECT outcome FROM bookings WHERE id = 'b-cancelled'").fetchone()[0] is None
        try:
            conn.execute("INSERT INTO main.audit(at, operator, action, detail, seq) VALUES (0, 'x', 'y', '{}', 0)")
        except sqlite3.OperationalError as e:
            assert "readonly" in str(e)
        else:
            raise AssertionError("the reader could write")


def test_a_version_2_replica_is_upgraded_in_place_keeping_its_records(tmp_path: Path) -> None:
    """A replica written before passes kept the other daemons' `applied` entries: a site
    seeded without a central system must not lose its members to the upgrade."""
    from sync.records import MemberIn, PassIn
    from sync.store import SyncBatch

    db = tmp_path / "gate.db"
    store = Store(db, site(), daemon_id="gate-a")
    visits = PassIn.model_validate({"id": "p1", "member": "m1", "kind": "visits", "balance": 4})
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])], [visits]), datetime.now(UTC))
    replica = store.replica_path
    store.close()
    with sqlite3.connect(replica) as c:  # as version 2 wrote it
        c.execute("ALTER TABLE passes DROP COLUMN applied_peers")
        c.execute("ALTER TABLE members DROP COLUMN note")
        c.execute("ALTER TABLE members DROP COLUMN status_reason")
        c.execute("UPDATE meta SET value = '2' WHERE key = 'replica_schema'")
    again = Store(db, site(), daemon_id="gate-a")
    try:
        assert again.replica_path == replica
        assert again.member_for_card("C1") == "m1" and again.balance("p1") == Decimal(4)
        assert again.replica.meta("replica_schema") == "4"
        with open_reader(db) as reader:  # the read contract too
            assert reader.execute("SELECT balance FROM passes WHERE id = 'p1'").fetchone()[0] == "4"
    finally:
        again.close()


def test_a_version_3_replica_gains_notes_and_drops_photos_the_gate_cannot_show(tmp_path: Path) -> None:
    """Version 3 had no `note` or `status_reason` and kept any `photo` text: upgraded in
    place, the members stay, a photo that is no inline image (a URL) is dropped, a good one
    kept, and the new fields are written and read from then on."""
    from sync.records import MemberIn
    from sync.store import SyncBatch
    from tests.photos import ANA_URL

    db = tmp_path / "gate.db"
    store = Store(db, site(), daemon_id="gate-a")
    store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"]), MemberIn(id="m2", name="Bo")]),
                     datetime.now(UTC))
    replica = store.replica_path
    store.close()
    with sqlite3.connect(replica) as c:  # as version 3 wrote it: the photo fourth, any text
        c.execute("DROP TABLE members")
        c.execute("CREATE TABLE members (id TEXT PRIMARY KEY, name TEXT, status TEXT NOT NULL, email TEXT, "
                  "photo TEXT, synced_at REAL, phone TEXT, search TEXT)")
        c.execute("INSERT INTO members VALUES ('m1', 'Ana', 'active', NULL, ?, 0, NULL, 'ana')", (ANA_URL,))
        c.execute("INSERT INTO members VALUES ('m2', 'Bo', 'active', NULL, 'https://cdn.example/bo.jpg', 0, NULL, 'bo')")
        c.execute("UPDATE meta SET value = '3' WHERE key = 'replica_schema'")
    again = Store(db, site(), daemon_id="gate-a")
    try:
        assert again.replica_path == replica and again.replica.meta("replica_schema") == "4"
        assert again.member_for_card("C1") == "m1"
        photos = dict(again.conn.execute("SELECT id, photo FROM members").fetchall())
        assert photos == {"m1": ANA_URL, "m2": None}
        again.apply_sync(SyncBatch([MemberIn(id="m2", name="Bo", status="blocked", note="  pays  cash\n",
                                              status_reason="card payment failed")]), datetime.now(UTC))
        m2 = again.member("m2")
        assert m2 is not None and (m2.note, m2.status_reason) == ("pays cash", "card payment failed")
    finally:
        again.close()
