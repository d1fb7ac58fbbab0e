"""The local database (sync/__init__.py has the map of `sync`): the ledger of what happened
at this gate and the replica of the central system's data, two kinds of SQLite file.
`Store` (store.py) is the one object the daemon, the engine, the scenario runner and the
sync link hold; it is a façade over the modules below, one concern each:

| module | concern |
| --- | --- |
| `store.py` | `Store`: the whole public surface, each method a delegation to a module below |
| `attach.py` | the replica attached to the ledger's connection: opening, switching, writing files back; `open_reader` |
| `db.py` | opening SQLite files (WAL, synchronous), background checkpoints |
| `durability.py` | commits made durable off the event loop (the WAL flushed by a thread) |
| `schema.py` | the tables of the ledger and of a replica; migrations |
| `transaction.py` | `Store.transaction()`: one atomic change with its events |
| `outbox.py` | the numbered events (gap-free `seq`), acks, pruning |
| `sent_mark.py`, `numbering.py` | the last seq that left the gate, kept beside the ledger; a ledger without it holds its events until the central system says how far it got |
| `own_history.py`, `lost_part.py` | a lost ledger's own events, asked back from the central system; the no-shows they may bear on, held meanwhile |
| `history_recheck.py` | the taps decided while those events were missing, read for rules/recheck.py once they are back (the repairs: repairs.py) |
| `repairs.py` | what the gate repairs once it learns what it did not know when it charged: its own lost events back, another daemon's earlier events (rules/recheck.py decides) |
| `meta.py`, `audit.py` | named values; the audit log |
| `rows.py`, `batch.py`, `search_text.py` | the one mapping between records and table rows; a sync's records; the desk's search text |
| `replica.py` | members, cards, passes, bookings: reads, applying syncs |
| `replica_file.py` | the replica's file on disk, and its naming |
| `read_contract.py` | the read contract: replica tables by name (TEMP views), with the gate's state |
| `member_view.py` | what the rules decide on: one member's view at one gate |
| `ledger.py` | taps, overrides, attendance, refunds, points, no-shows, presence |
| `intents.py` | grant intents: written before a relay opens, resolved by the commit |
| `enrolment.py` | cards the desk assigned, until the central system has them |
| `desk_requests.py` | the desk's request ids, each done once: kept with the record they produced (a day) |
| `peer_events.py` | what the site's other daemons did, as their events tell it |
| `unconfirmed.py` | grants whose passage nobody saw, here or at another daemon: no no-show fee for them |
| `occupancy.py`, `read_models.py`, `read_day.py` | who is inside; the console's named reads (`read_day.py`: the day's log for the desk — where today starts, denial groups, incidents) |
| `photos.py` | photos taken at the desk (the format is sync/photos.py) |
| `retention.py` | what the ledger forgets: rows the central system has, older than `store.retention` |
| `faults.py` | can the store record an entry right now: storage problems, `STORAGE_ERRORS` |

It imports nothing of sync/link/ or sync/snapshot/ (tests/test_imports.py).
"""

from sync.errors import StoreError
from sync.records import PassRecord
from sync.store.batch import SyncBatch
from sync.store.outbox import Event
from sync.store.retention import Cutoffs, Sweep
from sync.store.schema import SCHEMA_VERSION
from sync.store.store import REPLICA_FILE_KEY, VIEW_HORIZON, Store, open_reader
from sync.store.transaction import Committed, Transaction

__all__ = [
    "REPLICA_FILE_KEY",
    "SCHEMA_VERSION",
    "VIEW_HORIZON",
    "Committed",
    "Cutoffs",
    "Event",
    "PassRecord",
    "Store",
    "StoreError",
    "Sweep",
    "SyncBatch",
    "Transaction",
    "open_reader",
]
