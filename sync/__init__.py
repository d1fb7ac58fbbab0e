"""The gate's local data and its link to the central system (DESIGN.md, "Layout"), in
three subsystems beside the contract they share:

| where | what lives there |
| --- | --- |
| `sync/store/` | the local database: the ledger of what happened here and the replica of the central system's data, in SQLite (`Store`, the façade, and the modules it delegates to) |
| `sync/link/` | the MQTT link: the sans-I/O protocol session, the asyncio shell around aiomqtt (`SyncLink`), the broker settings, and the link's port into the store |
| `sync/snapshot/` | the snapshot import: the importer on the event loop, the worker process that builds a replica file, the one framer of the wire between them |
| `sync/protocol.py`, `sync/events.py`, `sync/records.py`, `sync/topics.py` | the protocol's contract (payloads, event bodies, the central system's records, the MQTT topics): shared by the store, the link, the snapshot import and simulator/central.py |
| `sync/errors.py` | the store's own error |
| `sync/qrtoken.py` | signed QR tokens (Ed25519): verified at the gate, minted by the central system |
| `sync/photos.py` | members' photos: the one format (inline `data:` URLs, bounded, checked) the central's records, the desk's camera and the console share |

The import direction inside `sync` (tests/test_imports.py checks it): the contract
modules import none of the subsystems; `store` knows nothing of `link` or `snapshot`;
`snapshot` uses `store`; `link` uses `store` and reaches the snapshot import through
its port (sync/link/port.py). Each subpackage's `__init__` names what other packages
use of it (`from sync.store import Store`); anything else is imported by its module's
path (`from sync.store.ledger import CURSOR_KEY`).
"""
