"""The reference central system's database (SQLite through sqlite-utils): members, passes
with the central balance, bookings, the events each daemon sent and what they did,
attendance, points, the numbered deltas. `Central` (simulator/central.py) puts MQTT
around it; this is the part an integrator's own database replaces.

The rules it keeps (docs/protocol.md): each daemon's events applied in seq order, once,
with `applied_seq` in the same transaction; deltas numbered per site without gaps and
never reused; every pass sent with `applied`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlite_utils
from pydantic import BaseModel

from rules.credential import card_from_text, card_key, lookup_keys
from rules.timeutil import iso_utc
from sync.photos import photo_or_none
from sync.protocol import Ack, EventBatch, LookupResponse, ReplayAnswer
from sync.records import BookingIn, MemberIn, PassIn

log = logging.getLogger("gated.central")


def _dump(model: BaseModel) -> str:
    return model.model_dump_json(by_alias=True, exclude_none=True)


@dataclass(slots=True)
class Changes:
    """What a batch of events changed that the site's daemons must be sent (in a delta)."""

    passes: set[str] = field(default_factory=set)  # balances moved
    members: set[str] = field(default_factory=set)  # cards given by a desk (card_enrolled)

    def __bool__(self) -> bool:
        return bool(self.passes or self.members)


class CentralDB:
    def __init__(
        self,
        db_path: str | Path,
        *,
        chunk_rows: int = 500,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        # what it stamps (received_at, a delta's or snapshot's `at`, its status): the wall
        # clock, or the simulated clock the gates of `gated sim day` run on
        self.clock = clock
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.chunk_rows = chunk_rows
        self.conn = sqlite3.connect(str(self.db_path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.db = sqlite_utils.Database(self.conn)
        self._schema()
        self.stats: Counter[str] = Counter()

    # -- storage ------------------------------------------------------------------------------

    def _schema(self) -> None:
        db = self.db
        db.table("sites").create({"site": str, "delta_seq": int}, pk="site", if_not_exists=True)
        db.table("members").create({"site": str, "id": str, "body": str}, pk=("site", "id"), if_not_exists=True)
        db.table("cards").create({"site": str, "card": str, "member": str}, pk=("site", "card"), if_not_exists=True)
        db.table("cards").create_index(["site", "member"], if_not_exists=True)
        db.table("passes").create(
            {"site": str, "id": str, "member": str, "balance": str, "body": str}, pk=("site", "id"), if_not_exists=True
        )
        db.table("passes").create_index(["site", "member"], if_not_exists=True)
        db.table("bookings").create(
            {"site": str, "id": str, "member": str, "body": str}, pk=("site", "id"), if_not_exists=True
        )
        db.table("bookings").create_index(["site", "member"], if_not_exists=True)
        db.table("applied").create({"site": str, "daemon": str, "applied_seq": int}, pk=("site", "daemon"), if_not_exists=True)
        db.table("events").create(
            {"id": str, "site": str, "daemon": str, "seq": int, "type": str, "body": str, "received_at": str},
            pk="id",
            if_not_exists=True,
        )
        db.table("events").create_index(["site", "daemon", "seq"], unique=True, if_not_exists=True)
        db.table("attendance").create({"site": str, "booking": str, "status": str, "by": str}, pk=("site", "booking"), if_not_exists=True)
        db.table("points").create({"site": str, "member": str, "points": int}, pk=("site", "member"), if_not_exists=True)
        db.table("deltas").create({"site": str, "delta_seq": int, "body": str}, pk=("site", "delta_seq"), if_not_exists=True)

    def _begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    @contextlib.contextmanager
    def _tx(self) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def _put_member(self, site: str, m: MemberIn) -> None:
        c = self.conn
        c.execute("INSERT OR REPLACE INTO members(site, id, body) VALUES (?,?,?)", (site, m.id, _dump(m)))
        c.execute("DELETE FROM cards WHERE site = ? AND member = ?", (site, m.id))
        c.executemany(
            "INSERT OR REPLACE INTO cards(site, card, member) VALUES (?,?,?)",
            # canonical keys; untyped strings by the default rule (rules.credential)
            ((site, card_key(card), m.id) for card in m.cards),
        )

    def _put_pass(self, site: str, p: PassIn) -> None:
        data = p.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"applied_seq"})
        for k in ("balance", "walk_in_cost"):  # amounts travel as JSON numbers
            if k in data:
                d = Decimal(str(data[k]))
                data[k] = int(d) if d == d.to_integral_value() else float(d)
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        self.conn.execute(
            "INSERT OR REPLACE INTO passes(site, id, member, balance, body) VALUES (?,?,?,?,?)",
            (site, p.id, p.member, str(p.balance) if p.balance is not None else None, body),
        )

    def _put_booking(self, site: str, b: BookingIn) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO bookings(site, id, member, body) VALUES (?,?,?,?)", (site, b.id, b.member, _dump(b))
        )

    def load(
        self,
        site: str,
        members: Iterable[MemberIn | Mapping[str, Any]] = (),
        passes: Iterable[PassIn | Mapping[str, Any]] = (),
        bookings: Iterable[BookingIn | Mapping[str, Any]] = (),
        *,
        applied: Mapping[str, int] | None = None,
    ) -> None:
        """Bulk-load records without publishing (the initial state; gates get a snapshot).
        `applied`: each daemon's seq the loaded balances already reflect, so its events up
        to there are repeats here, not deductions made twice."""
        with self._tx():
            self.conn.execute("INSERT OR IGNORE INTO sites(site, delta_seq) VALUES (?, 0)", (site,))
            self.conn.executemany(
                "INSERT INTO applied(site, daemon, applied_seq) VALUES (?,?,?) "
                "ON CONFLICT(site, daemon) DO UPDATE SET applied_seq = excluded.applied_seq",
                ((site, d, seq) for d, seq in (applied or {}).items()),
            )
            for m in members:
                self._put_member(site, m if isinstance(m, MemberIn) else MemberIn.model_validate(m))
            for p in passes:
                self._put_pass(site, p if isinstance(p, PassIn) else PassIn.model_validate(p))
            for b in bookings:
                self._put_booking(site, b if isinstance(b, BookingIn) else BookingIn.model_validate(b))

    def delta_seq(self, site: str) -> int:
        row = self.conn.execute("SELECT delta_seq FROM sites WHERE site = ?", (site,)).fetchone()
        return int(row[0]) if row else 0

    def applied_seq(self, site: str, daemon: str) -> int:
        row = self.conn.execute("SELECT applied_seq FROM applied WHERE site = ? AND daemon = ?", (site, daemon)).fetchone()
        return int(row[0]) if row else 0

    def applied_map(self, site: str) -> dict[str, int]:
        return {
            str(d): int(s) for d, s in self.conn.execute("SELECT daemon, applied_seq FROM applied WHERE site = ?", (site,))
        }

    def balance(self, site: str, pass_id: str) -> Decimal | None:
        row = self.conn.execute("SELECT balance FROM passes WHERE site = ? AND id = ?", (site, pass_id)).fetchone()
        return None if row is None or row[0] is None else Decimal(row[0])

    def events(self, site: str, daemon: str) -> list[dict[str, Any]]:
        """The daemon's events as applied here, in the order they were applied."""
        rows = self.conn.execute(
            "SELECT body FROM events WHERE site = ? AND daemon = ? ORDER BY rowid", (site, daemon)
        ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def history(self, site: str, daemon: str, from_seq: int, to_seq: int, since: datetime) -> list[dict[str, Any]]:
        """A daemon's own events applied here, `from_seq`..`to_seq`, those at or after
        `since`, by seq (docs/protocol.md "A gate's own events back")."""
        rows = self.conn.execute(
            "SELECT body FROM events WHERE site = ? AND daemon = ? AND seq BETWEEN ? AND ? ORDER BY seq",
            (site, daemon, from_seq, to_seq),
        ).fetchall()
        out = []
        for (body,) in rows:
            ev = json.loads(body)
            try:
                at = datetime.fromisoformat(str(ev.get("at")).replace("Z", "+00:00"))
            except ValueError:
                continue
            if at.tzinfo is not None and at >= since:
                out.append(ev)
        return out

    def points(self, site: str, member: str) -> int:
        row = self.conn.execute("SELECT points FROM points WHERE site = ? AND member = ?", (site, member)).fetchone()
        return int(row[0]) if row else 0

    def attendance(self, site: str, booking: str) -> str | None:
        row = self.conn.execute("SELECT status FROM attendance WHERE site = ? AND booking = ?", (site, booking)).fetchone()
        return None if row is None else str(row[0])

    def _pass_out(self, site: str, body: str, applied: Mapping[str, int]) -> str:
        return body[:-1] + ',"applied":' + json.dumps(dict(applied), separators=(",", ":")) + "}"

    # -- applying a daemon's events -----------------------------------------------------------------

    def apply_events(self, site: str, batch: EventBatch) -> tuple[Ack, Changes]:
        """Apply in seq order, each once; returns the ack and what the daemons must be sent."""
        daemon = batch.daemon
        changed = Changes()
        gap = False
        now = iso_utc(self.clock())
        with self._tx():
            c = self.conn
            c.execute("INSERT OR IGNORE INTO sites(site, delta_seq) VALUES (?, 0)", (site,))
            row = c.execute("SELECT applied_seq FROM applied WHERE site = ? AND daemon = ?", (site, daemon)).fetchone()
            applied = int(row[0]) if row else 0
            for ev in batch.events:
                if ev.seq <= applied:
                    self.stats["duplicates"] += 1
                    continue
                if ev.seq > applied + 1:
                    gap = True
                    self.stats["gaps"] += 1
                    break
                body = ev.model_dump(mode="json")
                inserted = c.execute(
                    "INSERT OR IGNORE INTO events(id, site, daemon, seq, type, body, received_at) VALUES (?,?,?,?,?,?,?)",
                    (ev.id, site, daemon, ev.seq, ev.type, json.dumps(body), now),
                ).rowcount
                applied = ev.seq
                if not inserted:  # the same id under another seq: never apply twice
                    self.stats["duplicate_ids"] += 1
                    continue
                self._effect(site, body, changed)
                self.stats["events_applied"] += 1
            c.execute(
                "INSERT INTO applied(site, daemon, applied_seq) VALUES (?,?,?) "
                "ON CONFLICT(site, daemon) DO UPDATE SET applied_seq = excluded.applied_seq",
                (site, daemon, applied),
            )
        return Ack(applied_seq=applied, gap=gap), changed

    def _effect(self, site: str, ev: Mapping[str, Any], changed: Changes) -> None:
        c = self.conn
        kind = ev.get("type")
        if kind == "deduction" and ev.get("pass") is not None:
            row = c.execute("SELECT balance FROM passes WHERE site = ? AND id = ?", (site, ev["pass"])).fetchone()
            if row is not None and row[0] is not None:
                new = Decimal(row[0]) - Decimal(str(ev.get("amount", 0)))
                body = json.loads(
                    c.execute("SELECT body FROM passes WHERE site = ? AND id = ?", (site, ev["pass"])).fetchone()[0]
                )
                body["balance"] = int(new) if new == new.to_integral_value() else float(new)
                c.execute(
                    "UPDATE passes SET balance = ?, body = ? WHERE site = ? AND id = ?",
                    (str(new), json.dumps(body, separators=(",", ":")), site, ev["pass"]),
                )
                changed.passes.add(str(ev["pass"]))
            else:
                self.stats["deduction_unknown_pass"] += 1
        elif kind == "attendance" and ev.get("booking"):
            # the site's daemons report independently, in no order between them: a booking
            # attended (at a gate, or marked by staff after its no-show) stays attended
            c.execute(
                "INSERT INTO attendance(site, booking, status, by) VALUES (?,?,?,?) "
                "ON CONFLICT(site, booking) DO UPDATE SET status = excluded.status, by = excluded.by "
                "WHERE NOT (attendance.status = 'attended' AND excluded.status = 'no_show')",
                (site, ev["booking"], ev.get("status"), ev.get("by")),
            )
        elif kind == "loyalty" and ev.get("member"):
            c.execute(
                "INSERT INTO points(site, member, points) VALUES (?,?,?) "
                "ON CONFLICT(site, member) DO UPDATE SET points = points + excluded.points",
                (site, ev["member"], int(ev.get("points") or 0)),
            )
        elif kind == "card_enrolled" and ev.get("member") and ev.get("card"):
            self._enrol(site, str(ev["member"]), str(ev["card"]), changed)
        elif kind == "member_photo" and ev.get("member"):
            self._photo(site, str(ev["member"]), ev.get("photo"), changed)

    def _photo(self, site: str, member: str, photo: Any, changed: Changes) -> None:
        """A desk took a member's photo (docs/protocol.md, "Member photos"): it becomes the
        member's, and goes out in a delta to every gate of the site."""
        body = self._member_body(site, member)
        if body is None or not isinstance(photo, str) or photo_or_none(photo) is None:
            self.stats["member_photo_refused"] += 1
            return
        m = MemberIn.model_validate_json(body)
        self._put_member(site, m.model_copy(update={"photo": photo}))
        changed.members.add(member)
        self.stats["member_photos"] += 1

    def _enrol(self, site: str, member: str, card: str, changed: Changes) -> None:
        """A desk gave `card` to `member` (docs/protocol.md, "Card enrolment"): the card
        moves to them from whoever held it (one card, one member: the same card as this
        system's look-up finds it), and every member touched goes out in a delta."""
        body = self._member_body(site, member)
        if body is None:
            self.stats["card_enrolled_unknown_member"] += 1
            return
        try:
            key, coarser = lookup_keys(card_from_text(card))
        except ValueError:
            self.stats["card_enrolled_bad_card"] += 1
            return
        keys = {key, *coarser}
        marks = ",".join("?" * len(keys))
        holders = [r[0] for r in self.conn.execute(
            f"SELECT DISTINCT member FROM cards WHERE site = ? AND card IN ({marks}) AND member != ?",
            (site, *sorted(keys), member),
        )]
        for other in holders:
            held = MemberIn.model_validate_json(self._member_body(site, other) or "{}")
            self._put_member(site, held.model_copy(update={"cards": [c for c in held.cards if card_key(c) not in keys]}))
            changed.members.add(other)
        m = MemberIn.model_validate_json(body)
        if key not in {card_key(c) for c in m.cards}:
            self._put_member(site, m.model_copy(update={"cards": [*m.cards, key]}))
            changed.members.add(member)
        self.stats["cards_enrolled"] += 1

    def _member_body(self, site: str, member: str) -> str | None:
        row = self.conn.execute("SELECT body FROM members WHERE site = ? AND id = ?", (site, member)).fetchone()
        return str(row[0]) if row is not None else None

    def members(self, site: str, ids: Iterable[str]) -> list[MemberIn]:
        out = []
        for mid in sorted(ids):
            body = self._member_body(site, mid)
            if body is not None:
                out.append(MemberIn.model_validate_json(body))
        return out

    def cards_of(self, site: str, member: str) -> list[str]:
        """The member's cards as this system keys them."""
        rows = self.conn.execute("SELECT card FROM cards WHERE site = ? AND member = ? ORDER BY card", (site, member))
        return [str(r[0]) for r in rows]

    # -- deltas and snapshots ---------------------------------------------------------------

    def _new_delta(
        self,
        site: str,
        members: Sequence[MemberIn] = (),
        passes: Sequence[PassIn] = (),
        bookings: Sequence[BookingIn] = (),
        remove: Mapping[str, Sequence[str]] | None = None,
        pass_ids: Iterable[str] = (),
    ) -> bytes:
        """Store the change and a numbered delta describing it, in one transaction."""
        remove = remove or {}
        with self._tx():
            c = self.conn
            c.execute("INSERT OR IGNORE INTO sites(site, delta_seq) VALUES (?, 0)", (site,))
            for m in members:
                self._put_member(site, m)
            for p in passes:
                self._put_pass(site, p)
            for b in bookings:
                self._put_booking(site, b)
            for mid in remove.get("members", ()):
                c.execute("DELETE FROM members WHERE site = ? AND id = ?", (site, mid))
                c.execute("DELETE FROM cards WHERE site = ? AND member = ?", (site, mid))
            for pid in remove.get("passes", ()):
                c.execute("DELETE FROM passes WHERE site = ? AND id = ?", (site, pid))
            for bid in remove.get("bookings", ()):
                c.execute("DELETE FROM bookings WHERE site = ? AND id = ?", (site, bid))
            seq = self.delta_seq(site) + 1
            applied = self.applied_map(site)
            ids = sorted({p.id for p in passes} | set(pass_ids))
            pass_bodies = []
            for pid in ids:
                row = c.execute("SELECT body FROM passes WHERE site = ? AND id = ?", (site, pid)).fetchone()
                if row is not None:
                    pass_bodies.append(self._pass_out(site, row[0], applied))
            payload = (
                f'{{"v":1,"delta_seq":{seq},"at":"{iso_utc(self.clock())}",'
                f'"members":[{",".join(_dump(m) for m in members)}],'
                f'"passes":[{",".join(pass_bodies)}],'
                f'"bookings":[{",".join(_dump(b) for b in bookings)}],'
                f'"remove":{json.dumps({k: list(remove.get(k, ())) for k in ("members", "passes", "bookings")})}}}'
            )
            c.execute("INSERT INTO deltas(site, delta_seq, body) VALUES (?,?,?)", (site, seq, payload))
            c.execute("UPDATE sites SET delta_seq = ? WHERE site = ?", (seq, site))
        return payload.encode()

    def snapshot_payloads(
        self, site: str, requested_by: Sequence[str] = (), *, full_replacement: bool = False
    ) -> list[bytes]:
        """The site's whole state as chunks, read in one transaction (consistent with its
        delta_seq). `full_replacement`: the gates apply it even if it removes most members."""
        c = self.conn
        c.execute("BEGIN")
        try:
            base = self.delta_seq(site)
            applied = self.applied_map(site)
            rows: list[tuple[int, str]] = [(0, r[0]) for r in c.execute("SELECT body FROM members WHERE site = ? ORDER BY id", (site,))]
            rows += [(1, self._pass_out(site, r[0], applied)) for r in c.execute("SELECT body FROM passes WHERE site = ? ORDER BY id", (site,))]
            rows += [(2, r[0]) for r in c.execute("SELECT body FROM bookings WHERE site = ? ORDER BY id", (site,))]
        finally:
            c.execute("COMMIT")
        n = self.chunk_rows
        chunks = max(1, (len(rows) + n - 1) // n)
        sid = uuid.uuid4().hex
        at = iso_utc(self.clock())
        who = json.dumps(list(requested_by))
        replace = '"full_replacement":true,' if full_replacement else ""
        out = []
        for i in range(chunks):
            part = rows[i * n : (i + 1) * n]
            lists = ([], [], [])  # type: tuple[list[str], list[str], list[str]]
            for k, body in part:
                lists[k].append(body)
            out.append(
                (
                    f'{{"v":1,"snapshot_id":"{sid}","chunk":{i},"chunks":{chunks},"delta_seq":{base},'
                    f'"requested_by":{who},{replace}"at":"{at}","members":[{",".join(lists[0])}],'
                    f'"passes":[{",".join(lists[1])}],"bookings":[{",".join(lists[2])}]}}'
                ).encode()
            )
        return out

    # -- look-ups and replays --------------------------------------------------------------------------------

    def lookup(self, site: str, card: str) -> LookupResponse:
        """By the typed key the gate sends (a plain string is read by its shape): the card
        itself, or an enrolled card that knows less of it (rules/credential.py)."""
        c = self.conn
        try:
            key, coarser = lookup_keys(card_from_text(card))
        except ValueError:
            return LookupResponse(found=False)
        keys = (key, *coarser)
        marks = ",".join("?" * len(keys))
        rows = c.execute(f"SELECT DISTINCT member FROM cards WHERE site = ? AND card IN ({marks})", (site, *keys)).fetchall()
        if len(rows) != 1:  # unknown, or cards of several members: no answer to give
            return LookupResponse(found=False)
        mid = rows[0][0]
        applied = self.applied_map(site)
        m = c.execute("SELECT body FROM members WHERE site = ? AND id = ?", (site, mid)).fetchone()
        passes = [
            self._pass_out(site, r[0], applied)
            for r in c.execute("SELECT body FROM passes WHERE site = ? AND member = ?", (site, mid))
        ]
        bookings = [r[0] for r in c.execute("SELECT body FROM bookings WHERE site = ? AND member = ?", (site, mid))]
        text = (
            f'{{"v":1,"found":true,"members":[{m[0]}],"passes":[{",".join(passes)}],'
            f'"bookings":[{",".join(bookings)}]}}'
        )
        return LookupResponse.model_validate_json(text)

    def _on_replay_answer(self, site: str, daemon: str, answer: ReplayAnswer) -> None:
        """Events the gate no longer holds are gone: record how many, and go on after them
        (else every later event would wait behind the hole for ever)."""
        self.stats["replay_answers"] += 1
        if answer.first_seq <= answer.from_seq:
            return  # nothing pruned: what it holds from there follows on the events topic
        with self._tx():
            applied = self.applied_seq(site, daemon)
            if answer.first_seq > applied + 1:
                self.stats["events_lost"] += answer.first_seq - 1 - applied
                log.warning("%s/%s no longer holds events %d..%d", site, daemon, applied + 1, answer.first_seq - 1)
                self.conn.execute(
                    "INSERT INTO applied(site, daemon, applied_seq) VALUES (?,?,?) "
                    "ON CONFLICT(site, daemon) DO UPDATE SET applied_seq = excluded.applied_seq",
                    (site, daemon, answer.first_seq - 1),
                )


    def renumber_after(self, site: str, delta_seq: int) -> None:
        """A gate has deltas this database never numbered (it was restored from a backup):
        go on after them (a delta_seq is never reused)."""
        with self._tx():
            self.conn.execute("UPDATE sites SET delta_seq = MAX(delta_seq, ?) WHERE site = ?", (delta_seq, site))
