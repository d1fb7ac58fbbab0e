"""What the console shows: read models (sync/store/read_models.py) shaped for the pages.

Reads that may scan (member search, the audit log, the loyalty report) run in a worker
thread on a read-only connection of their own, so a search over 100,000 members never
stalls a tap in the event loop. Small indexed look-ups use the store's connection.

About 520 lines: each page's shape of the read models, one method a page; the queries
themselves are in sync/store/read_models.py.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from gated.console.words import ACTIONS, DETAIL_WORDS, HIDDEN_DETAIL, NO_EVENT, notice_text
from gated.operator import OperatorApi
from rules.model import Booking, BookingStatus, Gate, Pass, PassKind
from rules.reasons import Reason
from rules.timeutil import local_date, parse_instant_once, start_of_local_day
from sync.store import Store, evacuation
from sync.store import read_models as rm

DENIALS_DONE = "denials_done"  # the audit action of the desk's "Done" on a denial

NOTABLE = ("access", "override", "attendance", "loyalty", "lockdown", "fire_alarm", "alarm", "deduction",
           "card_enrolled", "passage_unconfirmed", "unknown_cards")


def jsonable(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, datetime | date):
        return v.isoformat()
    return str(v)


def dumps(v: Any) -> str:
    return json.dumps(v, default=jsonable, ensure_ascii=False, separators=(",", ":"))


def photo_url(member_id: str, version: str) -> str:
    """A member's photo, by the version of it (rm.photo_versions): the browser keeps each
    one, and a new photo is a new URL."""
    return f"/api/members/{quote(member_id, safe='')}/photo?v={quote(version, safe='')}"


def open_once_offer(gate: dict[str, Any], *, lockdown: bool, storage_ok: bool) -> dict[str, Any]:
    """Whether the gate card offers "Open once", and if not, why: only where the gate would
    do it (gated/taps.py's override and the relay's state agree with the button)."""
    state = gate.get("state") or {}
    relay = gate.get("relay") or "none"
    why = None
    if relay == "none":
        why = "no relay"
    elif relay != "online":
        why = "offline: cannot open"
    elif lockdown and gate.get("direction") != "out":
        why = "locked down"  # a lockdown keeps people out: the desk still lets someone out
    elif gate.get("direction") != "out" and not storage_ok:
        why = "cannot record an entry"
    elif state.get("held_by_hand"):
        why = "held open by hand"
    elif state.get("released"):
        why = "released"
    return {"offered": why is None, "why": why}


def parse_at(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class StoreUnavailable(Exception):
    """The daemon is starting or stopping: no store to read."""


class Views:
    def __init__(self, backend: OperatorApi):
        self.backend = backend

    # -- context ------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        store = self.backend.store
        if store is None:
            raise StoreUnavailable
        return store

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.backend.config.site.timezone)

    def now(self) -> datetime:
        return self.backend.now()

    def local_time(self, at: datetime | None, fmt: str = "%H:%M:%S") -> str | None:
        return None if at is None else at.astimezone(self.tz).strftime(fmt)

    def stamp(self, at: datetime) -> str:
        """Date, time and the zone's abbreviation: what an auditor needs to place an entry."""
        return at.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S %Z")

    def today(self) -> date:
        return local_date(self.now(), self.tz)

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        return start_of_local_day(day, self.tz), start_of_local_day(day + timedelta(days=1), self.tz)

    def gate_names(self) -> dict[str, str]:
        return {g.id: (g.name or g.id) for g in self.backend.config.gates}

    def gate_directions(self) -> dict[str, str]:
        return {g.id: g.direction for g in self.backend.config.gates}

    # -- the feed -----------------------------------------------------------------------

    def _balance_after(self, ev: dict[str, Any]) -> Any:
        """The balance the deduction of this tap left, else the pass's current balance."""
        pass_id = ev.get("pass")
        if not pass_id:
            return None
        nxt = rm.event_by_seq(self.store.conn, int(ev.get("seq") or 0) + 1)
        if nxt is not None and nxt.get("type") == "deduction" and nxt.get("pass") == pass_id and "balance" in nxt:
            return nxt["balance"]
        bal = self.store.balance(pass_id)
        return None if bal is None else jsonable(bal)

    def feed_items(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        conn = self.store.conn
        names = rm.member_names(conn, {str(m) for e in events if (m := e.get("member"))})
        passes = rm.pass_names(conn, {str(p) for e in events if (p := e.get("pass"))})
        classes = rm.class_names(conn, {str(b) for e in events if (b := e.get("booking"))})
        photos = rm.photo_versions(conn, {str(e["member"]) for e in events if e.get("type") == "access" and e.get("member")})
        out = []
        for ev in events:
            item = self.feed_item(ev, names, passes, classes)
            if item is not None:
                member = item.get("member")
                item["photo"] = photo_url(member, photos[member]) if member in photos else None
                out.append(item)
        return out

    def feed_item(
        self,
        ev: dict[str, Any],
        names: dict[str, str] | None = None,
        passes: dict[str, str] | None = None,
        classes: dict[str, tuple[str, datetime]] | None = None,
    ) -> dict[str, Any] | None:
        t = ev.get("type")
        if t not in NOTABLE:
            return None
        if names is None or passes is None or classes is None:
            items = self.feed_items([ev])
            return items[0] if items else None
        gates = self.gate_names()
        at = parse_at(ev.get("at"))
        member = ev.get("member")
        booking = ev.get("booking")
        cls = classes.get(booking or "")
        item: dict[str, Any] = {
            "seq": ev.get("seq"),
            "type": t,
            "time": self.local_time(at),
            "date": self.local_time(at, "%Y-%m-%d"),
            "gate": ev.get("gate"),
            "gate_name": gates.get(ev.get("gate") or "", ev.get("gate")),
            "member": member,
            "member_name": names.get(member or "", member),
            "booking": booking,
            "class_name": f"{cls[0]} {self.local_time(cls[1], '%H:%M')}" if cls else None,
        }
        if t == "access":
            reason = ev.get("reason")
            item.update(
                decision=ev.get("decision"),
                reason=reason,
                direction=self.gate_directions().get(ev.get("gate") or "", "in"),
                message=ev.get("message") or ("Opened by the front desk" if reason == Reason.OVERRIDE else reason),
                passed=ev.get("passed"),
                operator=ev.get("operator"),
                anti_passback=ev.get("anti_passback"),
                pass_id=ev.get("pass"),
                pass_name=passes.get(ev.get("pass") or "", ev.get("pass")),
                balance=self._balance_after(ev),
                card=ev.get("card") if reason == Reason.UNKNOWN_CARD else None,
                check_in=ev.get("credential") == "desk",
            )
            return item
        text = notice_text(ev, item, passes)
        if text is None:
            return None
        item["text"] = text
        if t == "deduction":
            item["balance"] = ev.get("balance")
        # a relay coming back online is news, not an alarm
        recovered = t == "alarm" and str(ev.get("kind") or "").endswith(("_online", "_closed", "_cleared"))
        item["alert"] = t in ("alarm", "lockdown", "fire_alarm", "passage_unconfirmed", "unknown_cards") and not recovered
        return item

    def recent_feed(self, limit: int = 50) -> list[dict[str, Any]]:
        events = list(reversed(self.store.recent_events(limit * 2, types=NOTABLE)))
        return self.feed_items(events)[-limit:]

    # -- the gate panel, occupancy ------------------------------------------------------

    def presence_since(self, now: datetime) -> tuple[datetime, datetime | None]:
        """Whose entries count as inside now: from the start of today, or from today's
        evacuation (sync/store/evacuation.py: nobody's earlier entry counts), and when."""
        start, _ = self.day_bounds(self.today())
        evacuated = evacuation.since(self.store.conn, start, now)
        return evacuated or start, evacuated

    def occupancy(self) -> list[dict[str, Any]]:
        now = self.now()
        start, evacuated = self.presence_since(now)
        zones: dict[str, None] = {g.zone: None for g in self.backend.config.gates}
        out = []
        for zone in zones:
            cap = self.backend.config.zones.get(zone)
            people = rm.inside(self.store.conn, zone, start, now)
            # exits that opened unrecorded: that many of those who came in before have left
            # (who is not known: each of them "may have left unrecorded")
            gone, last = rm.exits_unrecorded(self.store.conn, zone, start, now)
            out.append({
                "zone": zone,
                "inside": rm.counted((p.since.timestamp() for p in people), gone, last),
                "capacity": cap.capacity if cap is not None else None,
                "anonymous": rm.anonymous_entries(self.store.conn, zone, start, now),
                "evacuated_at": self.local_time(evacuated, "%H:%M"),
                "exits_not_recorded": gone,
                "exits_not_recorded_until": self.local_time(last, "%H:%M"),
                "people": [{"member": p.member, "name": p.name, "since": self.local_time(p.since, "%H:%M"),
                            "gate": p.gate, "maybe_left": last is not None and p.since <= last} for p in people[:200]],
            })
        return out

    def health(self) -> dict[str, Any]:
        h = dict(self.backend.health())
        names = self.gate_names()
        last_sync = parse_at(h.get("last_sync"))
        now = self.now()
        h["cache_age_seconds"] = None if last_sync is None else max(0, int((now - last_sync).total_seconds()))
        h["stale_policy"] = self.backend.config.stale_cache.policy  # for the alarm's words
        h["site_name"] = self.backend.config.site.name or self.backend.config.site.id
        h["now_local"] = self.local_time(now, "%Y-%m-%d %H:%M:%S")
        gates = {}
        storage_ok = (h.get("storage") or {}).get("ok") is not False
        for gid, g in (h.get("gates") or {}).items():
            g = dict(g)
            g["name"] = names.get(gid, gid)
            g["readers"] = {rid: r for rid, r in (h.get("readers") or {}).items() if r.get("gate") == gid}
            last = g.get("last_tap")
            g["last_tap"] = self.feed_item(last) if last else None
            g["open_once"] = open_once_offer(g, lockdown=bool(h.get("lockdown")), storage_ok=storage_ok)
            gates[gid] = g
        h["gates"] = gates
        h["occupancy"] = [{k: v for k, v in z.items() if k != "people"} for z in self.occupancy()]
        return h

    # -- members ------------------------------------------------------------------------

    def search_members(self, q: str, limit: int = 25) -> list[dict[str, Any]]:
        """Runs in a worker thread on its own read-only connection."""
        with rm.read_only(self.store.path) as conn:
            hits = rm.search_members(conn, q, limit)
        return [{"id": h.id, "name": h.name, "status": h.status, "email": h.email, "phone": h.phone,
                 "cards": list(h.cards)} for h in hits]

    def stale_refusal(self, p: Pass) -> str | None:
        """What the gate refuses of this pass while the member data is stale (no sync for
        longer than `stale_cache.max_age`: rules.admission), in the desk's words; None:
        nothing (a fresh cache, the policy `keep`, a time pass under `bookings_and_time_passes`)."""
        policy = self.backend.config.stale_cache.policy
        if policy == "keep" or not self.backend.cache_stale:
            return None
        if policy == "deny":
            return "no entry while the member data is stale"
        if p.kind == PassKind.TIME:
            return None
        return "no walk-in while the member data is stale (bookings and re-entries only)"

    def pass_view(self, p: Pass, today: date) -> dict[str, Any]:
        expired = p.valid_until is not None and p.valid_until < today
        not_yet = p.valid_from is not None and p.valid_from > today
        short = p.kind.has_balance and p.balance is not None and p.balance < p.entry_cost
        stale = self.stale_refusal(p)
        return {
            "id": p.id,
            "name": p.name,
            "kind": p.kind.value,
            "balance": jsonable(p.balance) if p.balance is not None else None,
            "entry_cost": jsonable(p.entry_cost) if p.kind.has_balance else None,
            # what the desk asks first: can it pay an entry, and for how long
            "usable": not (expired or not_yet or short or stale),
            # refused at the gate (walk-ins, or every entry) while the member data is stale;
            # its balance is as of the last sync
            "stale": stale,
            "days_left": (p.valid_until - today).days if p.valid_until is not None and not expired else None,
            "deduct_on": p.deduct_on.value,
            "valid_from": p.valid_from.isoformat() if p.valid_from else None,
            "valid_until": p.valid_until.isoformat() if p.valid_until else None,
            "state": "expired" if expired else ("not yet valid" if not_yet else "valid"),
        }

    def _arrival_window(self, b: Booking) -> tuple[datetime, datetime]:
        """The class's arrival window as the zone's entrance decides it (rules.model.Gate);
        a zone without an entrance gets the rules' defaults."""
        gate = next((g.to_domain() for g in self.backend.config.gates if g.zone == b.zone and g.direction == "in"),
                    Gate(id="", zone=b.zone))
        return gate.arrival_window(b)

    def booking_view(self, b: Booking, names: dict[str, str], passes: dict[str, str],
                     attended: dict[str, datetime]) -> dict[str, Any]:
        now = self.now()
        opens, closes = self._arrival_window(b)
        if b.status == BookingStatus.CANCELLED:
            state = "cancelled"
        elif b.status == BookingStatus.ATTENDED:
            state = "in"
        elif b.status == BookingStatus.NO_SHOW:
            state = "no_show"
        elif now < opens:
            state = "expected"
        elif now < b.starts_at:
            state = "arriving"
        elif now < b.ends_at:
            state = "late"
        else:
            state = "no_show_pending"
        balance = self.store.balance(b.pass_id)
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
            "attended_at": self.local_time(attended[b.id], "%H:%M") if b.id in attended else None,
            "pass": b.pass_id,
            "pass_name": passes.get(b.pass_id, b.pass_id),
            "balance": jsonable(balance) if balance is not None else None,
            "arrival_from": self.local_time(opens, "%H:%M"),
            "arrival_until": self.local_time(closes, "%H:%M"),
        }
        if state not in ("in", "cancelled"):
            start, end = self.day_bounds(local_date(b.starts_at, self.tz))
            conn = self.store.conn
            view["on_site_since"] = self.local_time(rm.first_entry(conn, b.member, b.zone, start, end), "%H:%M")
            charge = rm.refundable_walk_in(conn, self.store.daemon_id, b.member, b.zone, start, min(end, now))
            view["walk_in"] = None if charge is None else {
                "seq": charge.seq, "pass": charge.pass_id, "pass_name": charge.pass_name,
                "amount": jsonable(charge.amount), "time": self.local_time(charge.at, "%H:%M"),
                "daemon": charge.daemon,
            }
        waits = self.store.refund_wanted(b.id) if b.status == BookingStatus.ATTENDED else None
        view["refund_waiting"] = None if waits is None else {"for": list(waits.waiting)}
        return view

    def bookings_view(self, bookings: list[Booking]) -> list[dict[str, Any]]:
        conn = self.store.conn
        names = rm.member_names(conn, {b.member for b in bookings})
        passes = rm.pass_names(conn, {b.pass_id for b in bookings})
        attended = rm.attended_at(conn, [b.id for b in bookings])
        return [self.booking_view(b, names, passes, attended) for b in bookings]

    def member_detail(self, member_id: str) -> dict[str, Any] | None:
        store = self.store
        m = store.member(member_id)
        if m is None:
            return None
        today = self.today()
        start, end = self.day_bounds(today)
        bookings = sorted(store.bookings_of(member_id, start, end - timedelta(microseconds=1)), key=lambda b: b.starts_at)
        taps = [e for e in rm.member_events(store.conn, member_id, 60) if e.get("type") == "access"][:15]
        # as the occupancy counts it (views.occupancy): from today's evacuation, and in doubt
        # when exits opened unrecorded after the entry (one of them may have been this member)
        inside_since, maybe_left = None, False
        now = self.now()
        since, _ = self.presence_since(now)
        for z in sorted({g.zone for g in self.backend.config.gates}):
            for p in rm.inside(store.conn, z, since, now):
                if p.member == member_id:
                    inside_since = self.local_time(p.since, "%H:%M")
                    last = rm.exits_unrecorded(store.conn, z, since, now)[1]
                    maybe_left = last is not None and p.since <= last
        history = rm.loyalty_history(store.conn, member_id, 10)
        booked = rm.class_names(store.conn, {e.booking for e in history if e.booking})
        photo = rm.photo_versions(store.conn, {member_id}).get(member_id)
        gates = self.gate_names()
        return {
            "id": m.id,
            "name": m.name or m.id,
            "status": m.status.value,
            "status_reason": m.status_reason,
            "note": m.note,
            "photo": photo_url(member_id, photo) if photo else None,
            "visits": [{"date": self.local_time(at, "%Y-%m-%d"), "time": self.local_time(at, "%H:%M"),
                        "gate_name": gates.get(gate or "", gate), "zone": zone}
                       for at, gate, zone in rm.last_visits(store.conn, member_id, 5)],
            "email": m.email,
            "phone": rm.member_phone(store.conn, member_id),
            "cards": list(m.cards),
            "passes": [self.pass_view(p, today) for p in store.passes_of(member_id)],
            # no sync for longer than stale_cache.max_age: passes, balances and bookings are
            # as of the last sync (`data_as_of`), and the gate applies its stale policy
            "cache_stale": self.backend.cache_stale,
            "data_as_of": self.local_time(store.last_sync_at(), "%Y-%m-%d %H:%M"),
            "bookings": self.bookings_view(bookings),
            "points": store.points(member_id),
            "inside_since": inside_since,
            "maybe_left": maybe_left,  # exits opened unrecorded since: the gate no longer counts them inside
            "loyalty": [
                {"points": e.points, "reason": e.reason, "operator": e.operator, "booking": e.booking,
                 "class_name": booked[e.booking][0] if e.booking in booked else None,
                 "at": self.local_time(e.at, "%Y-%m-%d %H:%M")}
                for e in history
            ],
            "taps": self.feed_items(list(reversed(taps)))[::-1],
            "today": today.isoformat(),
        }

    # -- classes ------------------------------------------------------------------------

    def classes(self, day: date) -> dict[str, Any]:
        start, end = self.day_bounds(day)
        views = self.bookings_view(self.store.bookings_between(start, end))
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
            g["bookings"].sort(key=lambda v: rm.fold(v["member_name"]))
        return {"day": day.isoformat(), "today": self.today().isoformat(), "classes": list(groups.values())}

    # -- audit and reports --------------------------------------------------------------

    def audit_detail_text(self, detail: dict[str, Any], names: dict[str, dict[str, str]]) -> str:
        """The detail in words: names instead of ids, yes/no, no JSON."""
        gates = self.gate_names()
        parts = []
        for k, v in detail.items():
            if v is None or k in HIDDEN_DETAIL:
                continue
            if isinstance(v, bool):
                v = "yes" if v else "no"
            elif k == "gate":
                v = gates.get(str(v), v)
            elif k in names and str(v) in names[k]:
                v = names[k][str(v)]
            elif k in ("why", "because"):
                v = str(v).replace("_", " ")
            elif k == "asked_at" and isinstance(v, str):
                with contextlib.suppress(ValueError):  # an old or odd row: as it is
                    v = self.stamp(parse_instant_once(v, self.tz))
            elif k == "refunds" and isinstance(v, list) and len(v) == 2:
                v = f"{v[0]}'s charge (event {v[1]})"
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                v = ", ".join(v) or "nobody"
            elif isinstance(v, dict | list):
                v = json.dumps(v, ensure_ascii=False)
            parts.append(f"{DETAIL_WORDS.get(k, k.replace('_', ' '))}: {v}")
        return " · ".join(parts)

    def audit_rows(self, *, operator: str = "", action: str = "", q: str = "", day_from: date | None = None,
                   day_to: date | None = None, limit: int = 500) -> list[dict[str, Any]]:
        """Runs in a worker thread on its own read-only connection."""
        start = self.day_bounds(day_from)[0] if day_from else None
        end = self.day_bounds(day_to)[1] if day_to else None
        with rm.read_only(self.store.path) as conn:
            rows = rm.audit_rows(conn, operator=operator, action=action, q=q, start=start, end=end, limit=limit)

            def ids(key: str) -> set[str]:
                return {str(r.detail[key]) for r in rows if isinstance(r.detail.get(key), str)}

            classes = rm.class_names(conn, ids("booking"))
            names = {
                "member": rm.member_names(conn, ids("member")),
                "pass": rm.pass_names(conn, ids("pass")),
                "booking": {b: f"{c[0]} {self.local_time(c[1], '%d %b %H:%M')}" for b, c in classes.items()},
            }
        return [
            {"id": r.id, "at": self.stamp(r.at), "operator": r.operator, "action": r.action,
             "action_text": ACTIONS.get(r.action, r.action.replace("_", " ")), "detail": r.detail,
             "detail_text": self.audit_detail_text(r.detail, names),
             "seq": None if r.action in NO_EVENT else r.seq}
            for r in rows
        ]

    def audit_facets(self) -> dict[str, list[str]]:
        operators, actions = rm.audit_facets(self.store.conn)
        return {"operators": operators, "actions": actions}

    def loyalty_report(self, day_from: date, day_to: date) -> list[dict[str, Any]]:
        """Runs in a worker thread on its own read-only connection."""
        start, end = self.day_bounds(day_from)[0], self.day_bounds(day_to)[1]
        with rm.read_only(self.store.path) as conn:
            lines = rm.loyalty_report(conn, start, end)
        return [{"member": ln.member, "name": ln.name, "credited": ln.credited, "adjusted": ln.adjusted,
                 "total": ln.total, "classes": ln.classes, "adjustments": ln.adjustments} for ln in lines]
