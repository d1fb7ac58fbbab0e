"""Files an installer's command writes into the daemon's state directory stay the daemon's.

Under the unit the daemon runs as a dynamic user that owns /var/lib/gated; `gated seed`,
`gated store upgrade` (the package's postinst) and `gated store rebuild-replica` are run as
root. A file root creates there — the ledger's `-wal`, a new replica file, a copy — would
be one the daemon cannot write: it would start with a `read_only` store. So, run as root,
these commands hand what they created or touched in that directory to its owner.

A directory root owns (the very first seed, before the daemon ever ran) is left as it is:
systemd hands a state directory whose owner is not the service's to the service, whole.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def kept_by_owner(directory: Path) -> Iterator[None]:
    """Around a command writing into `directory`: afterwards every file in it owned by
    root belongs to the directory's owner (when we are root and the owner is not)."""
    try:
        yield
    finally:
        hand_over(directory)


def hand_over(directory: Path) -> list[Path]:
    """chown root's files in `directory` to its owner; the files changed."""
    if os.geteuid() != 0:
        return []
    try:
        st = directory.stat()
    except OSError:
        return []
    if st.st_uid == 0:
        return []
    changed = []
    for entry in directory.iterdir():
        try:
            est = entry.lstat()
            if est.st_uid == 0 and not entry.is_symlink():
                os.chown(entry, st.st_uid, st.st_gid)
                changed.append(entry)
        except OSError:
            continue  # a -wal that was removed meanwhile
    return changed


__all__ = ["hand_over", "kept_by_owner"]
