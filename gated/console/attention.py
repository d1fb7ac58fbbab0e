"""*Needs attention*: today's denials the desk has not dealt with, one item per member (per
card for a card nobody has), and the unknown cards to assign.

Nothing is cut silently: every group of the day is counted, a page of them is shown with
how many more there are, and each can be reached. A group is dealt with in one action
("Done"): every denial in it up to the newest the desk saw is marked done, in one audit row
(`denials_done`, read back after a restart), so a denial that arrives after the page was
drawn is not dismissed unseen.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from gated.console.views import DENIALS_DONE, Views, parse_at, photo_url
from sync.store import read_models as rm

# how far before local midnight the bisection for the day's first event starts: a clock
# stepped back can put a few of today's events before the bound (rm.first_seq_at)
DAY_SLACK = timedelta(hours=1)


class Attention:
    def __init__(self, views: Views):
        self.views = views

    def groups(self, done: frozenset[int]) -> tuple[list[dict[str, Any]], int]:
        """Every group of today's undealt denials, newest first, and the last event the
        answer has surely seen (a page merges the live denials after it). Runs in a worker
        thread on its own read-only connection (it reads the day's access events)."""
        v = self.views
        start, _ = v.day_bounds(v.today())
        gates = v.gate_names()
        with rm.read_only(v.store.path) as conn:
            seen = rm.last_seq(conn)  # read first: the groups read after it see at least this
            first = rm.first_seq_at(conn, start - DAY_SLACK)
            groups = rm.denial_groups(conn, first, start, set(done))
            members = {g.member for g in groups if g.member}
            names = rm.member_names(conn, members)
            photos = rm.photo_versions(conn, members)
        out = []
        for g in groups:
            ev = g.latest
            at, first_at = parse_at(ev.get("at")), parse_at(g.first_at)
            out.append({
                "key": g.key,
                "member": g.member,
                "member_name": names.get(g.member or "", g.member),
                "card": g.card,
                "count": len(g.seqs),
                "seqs": g.seqs,
                "through": max(g.seqs),
                "time": v.local_time(at, "%H:%M:%S"),
                "first_time": v.local_time(first_at, "%H:%M") if len(g.seqs) > 1 else None,
                "gate": ev.get("gate"),
                "gate_name": gates.get(ev.get("gate") or "", ev.get("gate")),
                "reason": ev.get("reason"),
                "message": ev.get("message") or ev.get("reason"),
                "photo": photo_url(g.member, photos[g.member]) if g.member and g.member in photos else None,
            })
        return out, seen

    @staticmethod
    def page(groups: list[dict[str, Any]], seen: int, offset: int, limit: int) -> dict[str, Any]:
        shown = groups[offset : offset + limit]
        return {
            "groups": shown,
            "last_seq": seen,
            "offset": offset,
            "total": len(groups),
            "denials": sum(g["count"] for g in groups),
            "more": max(0, len(groups) - offset - len(shown)),
        }

    @staticmethod
    def seqs_to_dismiss(groups: list[dict[str, Any]], keys: set[str] | None, through: int) -> list[int]:
        """The denials of these groups (all groups: None) up to `through`, the newest seq
        the desk had on screen."""
        return sorted(s for g in groups if keys is None or g["key"] in keys for s in g["seqs"] if s <= through)

    def done_on(self, day: date) -> set[int]:
        """The denials the desk marked done on `day` (from the audit log: they stay done
        across a restart, and each mark says who made it)."""
        start, end = self.views.day_bounds(day)
        rows = rm.audit_rows(self.views.store.conn, action=DENIALS_DONE, start=start, end=end, limit=5000)
        return {s for r in rows for s in r.detail.get("denials", []) if isinstance(s, int) and not isinstance(s, bool)}

    def unknown_cards(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest unknown cards read at the gates (full number: the desk enrols them).
        Any other card is assigned by typing its number in the assign dialog."""
        v = self.views
        seen: dict[str, dict[str, Any]] = {}
        gates = v.gate_names()
        for ev in rm.anonymous_access_events(v.store.conn, 300):
            card = ev.get("card")
            if ev.get("reason") != "unknown_card" or not isinstance(card, str) or not card:
                continue
            at = parse_at(ev.get("at"))
            if card in seen:
                seen[card]["count"] += 1
                continue
            if v.store.member_for_card(card) is not None:
                continue  # enrolled since
            seen[card] = {"card": card, "gate": ev.get("gate"), "gate_name": gates.get(ev.get("gate") or ""),
                          "time": v.local_time(at, "%H:%M") if at else None,
                          "date": v.local_time(at, "%Y-%m-%d") if at else None, "count": 1, "seq": ev.get("seq")}
            if len(seen) >= limit:
                break
        return list(seen.values())


__all__ = ["Attention"]
