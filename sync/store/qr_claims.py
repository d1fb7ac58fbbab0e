"""This daemon's own claims on QR codes, read back from the ledger (sync/link/qr_contest.py).

The contest keeps the claims of its run in memory, a thousand at most; a rival claim that
comes later than that — after a restart, or a long outage's worth of codes — is checked
against what the ledger holds: our `qr_used` event for the code (its `at` is our claim)
and what the tap it was for did, the first access at the same gate for the same member
after it. A grant (or a grant whose passage nobody saw: a crash in between) opened the
gate; a refusal — the contest lost, another reason — did not. A tap not yet committed
counts as opened: an alarm a person looks into rather than a double use nobody hears of.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from rules.timeutil import parse_instant_once

_UTC = ZoneInfo("UTC")
_CHUNK = 500  # tokens per query (SQLite's bound on parameters is higher; one catch-up chunk's worth)


def own_claims(conn: sqlite3.Connection, tokens: Sequence[str]) -> dict[str, tuple[datetime, bool]]:
    """token -> (when we claimed it, whether our gate opened on it), for those of `tokens`
    we used up ourselves and still hold the `qr_used` event of. Only tokens the `qr_used`
    table knows are looked for in the events (a primary-key look-up first: most codes a
    peer uses were never seen here)."""
    out: dict[str, tuple[datetime, bool]] = {}
    for i in range(0, len(tokens), _CHUNK):
        part = list(dict.fromkeys(tokens[i:i + _CHUNK]))
        marks = ",".join("?" * len(part))
        known = [r[0] for r in conn.execute(f"SELECT token_id FROM qr_used WHERE token_id IN ({marks})", part)]
        if not known:
            continue
        marks = ",".join("?" * len(known))
        rows = conn.execute(
            f"SELECT seq, at, gate, member_id, json_extract(body, '$.token') FROM events "
            f"WHERE type = 'qr_used' AND json_extract(body, '$.token') IN ({marks})", known).fetchall()
        for seq, at, gate, member, token in rows:
            try:
                claimed = parse_instant_once(str(at), _UTC)
            except ValueError:
                continue
            out[str(token)] = (claimed, _opened(conn, int(seq), gate, member))
    return out


def _opened(conn: sqlite3.Connection, seq: int, gate: str | None, member: str | None) -> bool:
    row = conn.execute(
        "SELECT type, body FROM events WHERE seq > ? AND gate IS ? AND member_id IS ? "
        "AND type IN ('access', 'passage_unconfirmed') ORDER BY seq LIMIT 1",
        (seq, gate, member),
    ).fetchone()
    if row is None or row[0] == "passage_unconfirmed":
        return True
    return bool(json.loads(row[1]).get("decision") == "granted")
