"""The store's transactions: everything one change writes — rows, the events reporting
it, their seq — commits together or not at all.

    with store.transaction() as tx:
        tx.emit("alarm", now, gate="g1", kind="door_forced")
        tx.set_meta("some.key", "value")

On any exception — in the body or in the COMMIT itself — the transaction rolls back and
the seqs it handed out are given back (no gap). A failing COMMIT is the usual way a full
disk shows in WAL mode: the body's pages sit in the page cache and only the COMMIT writes
them to the log, so the COMMIT is inside the guarded block, not after it. After the
COMMIT, the store's listeners get the events it wrote (the sync link wakes its publisher,
the console its live feed).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sync.store.audit import write_audit
from sync.store.meta import Meta
from sync.store.outbox import Event, Outbox

Listener = Callable[[list[Event]], None]


@dataclass(slots=True)
class Committed:
    """What one transaction wrote: its events, in seq order."""

    events: list[Event] = field(default_factory=list)


class Transaction:
    """Handed out by `Transactions.open` (Store.transaction); valid inside its `with`."""

    def __init__(self, conn: sqlite3.Connection, outbox: Outbox, meta: Meta):
        self.conn = conn
        self.committed = Committed()
        self._outbox = outbox
        self._meta = meta

    def emit(self, type_: str, now: datetime, **fields: Any) -> Event:
        """A numbered event, committed with the rest of the transaction."""
        event = self._outbox.append(type_, now, fields)
        self.committed.events.append(event)
        return event

    def set_meta(self, key: str, value: str) -> None:
        self._meta.put(key, value)

    def delete_meta(self, key: str) -> None:
        self._meta.delete(key)

    def audit(self, now: datetime, operator: str, action: str, detail: dict[str, Any]) -> None:
        write_audit(self.conn, now, operator, action, detail, self._outbox.last_seq)


class Transactions:
    """Opens transactions on the store's connection; one at a time (one event loop)."""

    def __init__(self, conn: sqlite3.Connection, outbox: Outbox, meta: Meta,
                 committed: Callable[[], None] | None = None):
        self.conn = conn
        self.outbox = outbox
        self.meta = meta
        self.listeners: list[Listener] = []
        self.committed = committed  # told of each COMMIT (the store's WAL flush, sync/store/durability.py)
        # asked before the COMMIT of a transaction that wrote events (the numbering's hold)
        self.before_commit: Callable[[Transaction], None] | None = None
        # small values that ride on a commit that happens anyway (a transaction that wrote
        # events): no commit, no fsync of their own (gated/while_down.py: the boards' counts)
        self.riders: list[Callable[[Transaction], None]] = []

    @contextmanager
    def open(self) -> Iterator[Transaction]:
        seq_before = self.outbox.next_seq
        tx = Transaction(self.conn, self.outbox, self.meta)
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield tx
            if tx.committed.events:
                for ride in self.riders:
                    ride(tx)
                if self.before_commit is not None:
                    self.before_commit(tx)
            self.conn.execute("COMMIT")
            if self.committed is not None:
                self.committed()
        except BaseException:
            self.outbox.next_seq = seq_before
            # SQLite rolls some failed COMMITs back by itself (a full disk, an I/O error)
            # and leaves others open (busy): a ROLLBACK only where one is still open, and
            # one that fails too must not hide the error that brought us here
            if self.conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            raise
        self.notify(tx.committed)

    def notify(self, committed: Committed) -> None:
        if committed.events:
            for listener in self.listeners:
                listener(committed.events)
