"""The snapshot import (sync/__init__.py has the map of `sync`): a full copy of the
central system's data built into a new replica file off the event loop and switched in
whole.

| module | what |
| --- | --- |
| `importer.py` | `SnapshotImporter`, on the daemon's event loop: starts the worker, hands it each chunk, switches the built file in |
| `worker.py` | `python -m sync.snapshot.worker`: the process that validates the chunks and builds the replica file |
| `wire.py` | the one framer of the pipe between the importer and the worker (both sides frame and parse with it only) |
| `parse.py`, `build.py`, `disk.py` | the worker's stages: validating a chunk into rows (in forked parser processes), inserting them and finishing the file, pacing its writes to the disk |
| `chunk_rows.py` | the worker's fast path from a chunk's JSON to table rows |

It uses sync/store/ (the replica's tables, rows and files), never sync/link/: the link
drives an import through its port (sync/link/port.py).
"""

from sync.protocol import SnapshotHeader
from sync.snapshot.importer import (
    SnapshotError,
    SnapshotImporter,
    SnapshotRejected,
    delta_seq,
    payload_of,
)

__all__ = [
    "SnapshotError",
    "SnapshotHeader",
    "SnapshotImporter",
    "SnapshotRejected",
    "delta_seq",
    "payload_of",
]
