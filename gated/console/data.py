"""What the console shows, read from the daemon's store and health.

Reads that may scan (member search, the audit log) run on a separate read-only SQLite
connection in a worker thread, so a search over 100,000 members never stalls a tap in the
event loop. Small indexed look-ups use the store directly.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from rules.model import Booking, BookingStatus, Pass
from rules.timeutil import local_date, parse_duration, start_of_local_day
from sync.store import open_reader

NOTABLE = ("access", "override", "attendance", "loyalty", "lockdown", "fire_alarm", "alarm", "deduction")
CARD_RE = re.compile(r"^[0-9A-Fa-f:\-]{4,40}$")


def jsonable(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, datetime | date):
        return v.isoformat()
    return str(v)


def dumps(v: Any) -> str:
    return json.dumps(v, default=jsonable, ensure_ascii=False, separators=(",", ":"))


def parse_at(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class ConsoleData:
    def __init__(self, daemon: Any):
        self.daemon = daemon

    # -- context ------------------------------------------------------------------------

    @property
    def store(self) -> Any:
        return self.daemon.store

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.daemon.config.site.timezone)

    def now(self) -> datetime:
        now: datetime = self.daemon.clock()
        return now

    def local_time(self, at: datetime | None, fmt: str = "%H:%M:%S") -> str | None:
        return None if at is None else at.astimezone(self.tz).strftime(fmt)

    def today(self) -> date:
        return local_date(self.now(), self.tz)

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        return start_of_local_day(day, self.tz), start_of_local_day(day + timedelta(days=1), self.tz)

    def gate_names(self) -> dict[str, str]:
        return {g.id: (g.name or g.id) for g in self.daemon.config.gates}

    def _names(self, member_ids: set[str]) -> dict[str, str]:
        ids = [m for m in member_ids if m]
        if not ids or self.store is None:
            return {}
        out: dict[str, str] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = f"SELECT id, name FROM members WHERE id IN ({','.join('?' * len(chunk))})"
            out.update({r[0]: r[1] or r[0] for r in self.store.conn.execute(q, chunk)})
        return out

    def _pass_names(self, pass_ids: set[str]) -> dict[str, str]:
        ids = [p for p in pass_ids if p]
        if not ids or self.store is None:
            return {}
        q = f"SELECT id, name FROM passes WHERE id IN ({','.join('?' * len(ids))})"
        return {r[0]: r[1] or r[0] for r in self.store.conn.execute(q, ids)}

    # -- the feed -----------------------------------------------------------------------

    def _balance_after(self, ev: dict[str, Any]) -> Any:
        """The balance the deduction of this tap left, else the pass's current balance."""
        store = self.store
        pass_id = ev.get("pass")
        if not pass_id or store is None:
            return None
        row = store.conn.execute("SELECT body FROM events WHERE seq = ?", (ev.get("seq", 0) + 1,)).fetchone()
        if row is not None:
            nxt = json.loads(row[0])
            if nxt.get("type") == "deduction" and nxt.get("pass") == pass_id and "balance" in nxt:
                return nxt["balance"]
        bal = store.balance(pass_id)
        return None if bal is None else jsonable(bal)

    def feed_items(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = self._names({str(m) for e in events if (m := e.get("member"))})
        passes = self._pass_names({str(p) for e in events if (p := e.get("pass"))})
        gates = self.gate_names()
        out = []
        for ev in events:
            item = self.feed_item(ev, names, passes, gates)
            if item is not None:
                out.append(item)
        return out

    def feed_item(
        self,
        ev: dict[str, Any],
        names: dict[str, str] | None = None,
        passes: dict[str, str] | None = None,
        gates: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        t = ev.get("type")
        if t not in NOTABLE:
            return None
        if names is None:
            names = self._names({str(ev["member"])} if ev.get("member") else set())
        if passes is None:
            passes = self._pass_names({str(ev["pass"])} if ev.get("pass") else set())
        gates = gates if gates is not None else self.gate_names()
        at = parse_at(ev.get("at"))
        member = ev.get("member")
        item: dict[str, Any] = {
            "seq": ev.get("seq"),
            "type": t,
            "time": self.local_time(at),
            "date": self.local_time(at, "%Y-%m-%d"),
            "gate": ev.get("gate"),
            "gate_name": gates.get(ev.get("gate") or "", ev.get("gate")),
            "member": member,
            "member_name": names.get(member or "", member),
        }
        if t == "access":
            item.update(
                decision=ev.get("decision"),
                reason=ev.get("reason"),
                message=ev.get("message") or ("Opened by the front desk" if ev.get("reason") == "override" else ev.get("reason")),
                passed=ev.get("passed"),
                operator=ev.get("operator"),
                anti_passback=ev.get("anti_passback"),
                booking=ev.get("booking"),
                pass_id=ev.get("pass"),
                pass_name=passes.get(ev.get("pass") or "", ev.get("pass")),
                balance=self._balance_after(ev),
            )
            return item
        if t == "deduction":
            cause = ev.get("cause")
            if cause not in ("refund", "no_show_fee"):
                return None  # shown with its access event
            amount = ev.get("amount")
            pname = passes.get(ev.get("pass") or "", ev.get("pass"))
            item["text"] = (
                f"Refund of {-amount if isinstance(amount, int | float) else amount} to {pname}"
                if cause == "refund"
                else f"No-show fee {amount} from {pname}"
            )
            item["balance"] = ev.get("balance")
        elif t == "override":
            item["text"] = f"Gate opened once by {ev.get('operator')}: {ev.get('reason')}"
        elif t == "attendance":
            by = ev.get("by")
            if ev.get("status") == "no_show":
                item["text"] = f"No-show: booking {ev.get('booking')}"
            else:
                item["text"] = f"Attendance marked for booking {ev.get('booking')}" + (
                    f" by {by}" if by and by != "gate" else " at the gate"
                )
        elif t == "loyalty":
            pts = ev.get("points")
            who = f" by {ev['operator']}" if ev.get("operator") else ""
            why = f": {ev['reason']}" if ev.get("reason") else ""
            item["text"] = f"Loyalty {pts:+d} points{who}{why}" if isinstance(pts, int) else f"Loyalty {pts}"
        elif t == "lockdown":
            item["text"] = f"Lockdown {'ON' if ev.get('active') else 'released'} by {ev.get('operator')}"
        elif t == "fire_alarm":
            item["text"] = f"Emergency release {'ACTIVE' if ev.get('active') else 'ended'} ({ev.get('source')})"
        elif t == "alarm":
            kind = str(ev.get("kind") or "")
            item["text"] = f"Alarm {kind}" + (f": {ev['detail']}" if ev.get("detail") else "")
        # a relay coming back online is news, not an alarm
        recovered = t == "alarm" and str(ev.get("kind") or "").endswith(("_online", "_closed", "_cleared"))
        item["alert"] = t in ("alarm", "lockdown", "fire_alarm") and not recovered
        return item

    def recent_feed(self, limit: int = 50) -> list[dict[str, Any]]:
        if self.store is None:
            return []
        events = list(reversed(self.store.recent_events(limit * 2, types=NOTABLE)))
        return self.feed_items(events)[-limit:]

    # -- the gate panel -----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        h = dict(self.daemon.health())
        names = self.gate_names()
        last_sync = parse_at(h.get("last_sync"))
        h["cache_age_seconds"] = None if last_sync is None else max(0, int((self.now() - last_sync).total_seconds()))
        h["site_name"] = self.daemon.config.site.name or self.daemon.config.site.id
        h["now_local"] = self.local_time(self.now(), "%Y-%m-%d %H:%M:%S")
        gates = {}
        for gid, g in (h.get("gates") or {}).items():
            g = dict(g)
            g["name"] = names.get(gid, gid)
            g["readers"] = {rid: r for rid, r in (h.get("readers") or {}).items() if r.get("gate") == gid}
            last = g.get("last_tap")
            g["last_tap"] = self.feed_item(last) if last else None
            gates[gid] = g
        h["gates"] = gates
        return h

    # -- members ------------------------------------------------------------------------

    def search_members(self, db_path: Path, q: str, limit: int = 25) -> list[dict[str, Any]]:
        """Runs in a worker thread on its own read-only connection."""
        q = q.strip()
        if not q:
            return []
        conn = open_reader(db_path)
        try:
            ids: list[str] = []
            if CARD_RE.match(q):
                card = q.replace(":", "").replace("-", "").upper()
                ids += [r[0] for r in conn.execute("SELECT member_id FROM cards WHERE card = ?", (card,))]
            pattern = _like(q)
            ids += [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM members WHERE name LIKE ? ESCAPE '\\' OR email LIKE ? ESCAPE '\\' OR id = ? "
                    "ORDER BY name LIMIT ?",
                    (pattern, pattern, q, limit),
                )
            ]
            ids = list(dict.fromkeys(ids))[:limit]  # first occurrence of each, in order
            out = []
            for mid in ids:
                row = conn.execute("SELECT id, name, status, email FROM members WHERE id = ?", (mid,)).fetchone()
                if row is None:
                    continue
                cards = [r[0] for r in conn.execute("SELECT card FROM cards WHERE member_id = ?", (mid,))]
                out.append({"id": row[0], "name": row[1] or row[0], "status": row[2], "email": row[3], "cards": cards})
            return out
        finally:
            conn.close()

    def pass_view(self, p: Pass, today: date) -> dict[str, Any]:
        expired = p.valid_until is not None and p.valid_until < today
        not_yet = p.valid_from is not None and p.valid_from > today
        return {
            "id": p.id,
            "name": p.name,
            "kind": p.kind.value,
            "balance": jsonable(p.balance) if p.balance is not None else None,
            "deduct_on": p.deduct_on.value,
            "valid_from": p.valid_from.isoformat() if p.valid_from else None,
            "valid_until": p.valid_until.isoformat() if p.valid_until else None,
            "state": "expired" if expired else ("not yet valid" if not_yet else "valid"),
        }

    def refundable_walk_in(self, member: str, zone: str, day: date) -> dict[str, Any] | None:
        """The walk-in charge mark_attended(refund=True) would give back, if any."""
        start, end = self.day_bounds(day)
        row = self.store.conn.execute(
            "SELECT d.seq, d.pass_id, d.amount, d.at, p.name FROM deductions d LEFT JOIN passes p ON p.id = d.pass_id "
            "WHERE d.member_id = ? AND d.cause = 'walk_in' AND d.zone = ? AND d.at >= ? AND d.at < ? "
            "AND d.refunded_by IS NULL ORDER BY d.at DESC, d.seq DESC LIMIT 1",
            (member, zone, start.timestamp(), min(end, self.now()).timestamp()),
        ).fetchone()
        if row is None:
            return None
        return {
            "seq": row[0],
            "pass": row[1],
            "pass_name": row[4] or row[1],
            "amount": jsonable(Decimal(row[2])),
            "time": self.local_time(datetime.fromtimestamp(row[3], UTC), "%H:%M"),
        }

    def _arrival(self, zone: str) -> tuple[timedelta, timedelta]:
        for g in self.daemon.config.gates:
            if g.zone == zone and g.direction == "in":
                return parse_duration(g.early_arrival), parse_duration(g.late_arrival)
        return timedelta(minutes=15), timedelta(minutes=10)

    def _on_site(self, member: str, zone: str, day: date) -> str | None:
        start, end = self.day_bounds(day)
        row = self.store.conn.execute(
            "SELECT MIN(at) FROM passages WHERE member_id = ? AND zone = ? AND direction = 'in' AND at >= ? AND at < ?",
            (member, zone, start.timestamp(), end.timestamp()),
        ).fetchone()
        return None if row is None or row[0] is None else self.local_time(datetime.fromtimestamp(row[0], UTC), "%H:%M")

    def booking_view(self, b: Booking, names: dict[str, str], passes: dict[str, str], attended_at: dict[str, float]) -> dict[str, Any]:
        now = self.now()
        early, late = self._arrival(b.zone)
        day = local_date(b.starts_at, self.tz)
        if b.status == BookingStatus.CANCELLED:
            state = "cancelled"
        elif b.status == BookingStatus.ATTENDED:
            state = "in"
        elif b.status == BookingStatus.NO_SHOW:
            state = "no_show"
        elif now < b.starts_at - early:
            state = "expected"
        elif now < b.starts_at:
            state = "arriving"
        elif now < b.ends_at:
            state = "late"
        else:
            state = "no_show_pending"
        at = attended_at.get(b.id)
        view: dict[str, Any] = {
            "id": b.id,
            "member": b.member,
            "member_name": names.get(b.member, b.member),
            "class": b.class_name,
            "zone": b.zone,
            "starts": self.local_time(b.starts_at, "%H:%M"),
            "ends": self.local_time(b.ends_at, "%H:%M"),
            "starts_at": b.starts_at.isoformat(),
            "status": b.status.value,
            "state": state,
            "attended_at": self.local_time(datetime.fromtimestamp(at, UTC), "%H:%M") if at else None,
            "pass": b.pass_id,
            "pass_name": passes.get(b.pass_id, b.pass_id),
            "balance": jsonable(self.store.balance(b.pass_id)) if self.store.balance(b.pass_id) is not None else None,
            "arrival_from": self.local_time(b.starts_at - early, "%H:%M"),
            "arrival_until": self.local_time(b.starts_at + late, "%H:%M"),
        }
        if state not in ("in", "cancelled"):
            view["on_site_since"] = self._on_site(b.member, b.zone, day)
            view["walk_in"] = self.refundable_walk_in(b.member, b.zone, day)
        return view

    def _attended_at(self, ids: list[str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            q = f"SELECT id, attended_at FROM bookings WHERE attended_at IS NOT NULL AND id IN ({','.join('?' * len(chunk))})"
            out.update({r[0]: r[1] for r in self.store.conn.execute(q, chunk)})
        return out

    def bookings_view(self, bookings: list[Booking]) -> list[dict[str, Any]]:
        names = self._names({b.member for b in bookings})
        passes = self._pass_names({b.pass_id for b in bookings})
        attended = self._attended_at([b.id for b in bookings])
        return [self.booking_view(b, names, passes, attended) for b in bookings]

    def member_detail(self, member_id: str) -> dict[str, Any] | None:
        store = self.store
        m = store.member(member_id)
        if m is None:
            return None
        today = self.today()
        start, end = self.day_bounds(today)
        bookings = sorted(store.bookings_of(member_id, start, end - timedelta(microseconds=1)), key=lambda b: b.starts_at)
        rows = store.conn.execute(
            "SELECT body FROM events WHERE member_id = ? ORDER BY seq DESC LIMIT 60", (member_id,)
        ).fetchall()
        taps = [json.loads(r[0]) for r in rows]
        taps = [e for e in taps if e.get("type") == "access"][:15]
        loyalty = store.conn.execute(
            "SELECT points, reason, operator, booking_id, at FROM loyalty WHERE member_id = ? ORDER BY id DESC LIMIT 10",
            (member_id,),
        ).fetchall()
        return {
            "id": m.id,
            "name": m.name or m.id,
            "status": m.status.value,
            "email": m.email,
            "cards": list(m.cards),
            "passes": [self.pass_view(p, today) for p in store.passes_of(member_id)],
            "bookings": self.bookings_view(bookings),
            "points": store.points(member_id),
            "loyalty": [
                {
                    "points": r[0],
                    "reason": r[1],
                    "operator": r[2],
                    "booking": r[3],
                    "at": self.local_time(datetime.fromtimestamp(r[4], UTC), "%Y-%m-%d %H:%M"),
                }
                for r in loyalty
            ],
            "taps": [{**i, "date": i["date"]} for i in self.feed_items(list(reversed(taps)))][::-1],
            "today": today.isoformat(),
        }

    # -- classes ------------------------------------------------------------------------

    def classes(self, day: date) -> dict[str, Any]:
        start, end = self.day_bounds(day)
        bookings = self.store.bookings_between(start, end)
        views = self.bookings_view(bookings)
        groups: dict[tuple[str, str, str], dict[str, Any]] = {}
        for v in views:
            key = (v["starts_at"], v["class"], v["zone"])
            g = groups.setdefault(
                key,
                {"class": v["class"], "zone": v["zone"], "starts": v["starts"], "ends": v["ends"], "bookings": [],
                 "counts": {}},
            )
            g["bookings"].append(v)
            g["counts"][v["state"]] = g["counts"].get(v["state"], 0) + 1
        for g in groups.values():
            g["bookings"].sort(key=lambda v: (v["member_name"] or "").lower())
        return {"day": day.isoformat(), "today": self.today().isoformat(), "classes": list(groups.values())}

    # -- audit --------------------------------------------------------------------------

    def audit_rows(
        self,
        db_path: Path,
        *,
        operator: str = "",
        action: str = "",
        q: str = "",
        day_from: date | None = None,
        day_to: date | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """Runs in a worker thread on its own read-only connection."""
        where: list[str] = []
        params: list[str | float | int] = []
        if operator:
            where.append("operator = ?")
            params.append(operator)
        if action:
            where.append("action = ?")
            params.append(action)
        if q:
            where.append("(detail LIKE ? ESCAPE '\\' OR operator LIKE ? ESCAPE '\\' OR action LIKE ? ESCAPE '\\')")
            params += [_like(q)] * 3
        if day_from:
            where.append("at >= ?")
            params.append(self.day_bounds(day_from)[0].timestamp())
        if day_to:
            where.append("at < ?")
            params.append(self.day_bounds(day_to)[1].timestamp())
        sql = "SELECT id, at, operator, action, detail, seq FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        conn = open_reader(db_path)
        try:
            rows = conn.execute(sql, params).fetchall()
        finally:
            conn.close()
        out = []
        for r in rows:
            try:
                detail = json.loads(r[4]) if r[4] else {}
            except ValueError:
                detail = {"raw": r[4]}
            out.append(
                {
                    "id": r[0],
                    "at": self.local_time(datetime.fromtimestamp(r[1], UTC), "%Y-%m-%d %H:%M:%S"),
                    "operator": r[2],
                    "action": r[3],
                    "detail": detail,
                    "seq": r[5],
                }
            )
        return out

    def audit_facets(self) -> dict[str, list[str]]:
        c = self.store.conn
        return {
            "operators": [r[0] for r in c.execute("SELECT DISTINCT operator FROM audit ORDER BY operator") if r[0]],
            "actions": [r[0] for r in c.execute("SELECT DISTINCT action FROM audit ORDER BY action") if r[0]],
        }
