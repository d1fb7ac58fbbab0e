"""The store's own error (a caller's mistake or a database it cannot use)."""

from __future__ import annotations


class StoreError(Exception):
    pass


class SchemaNewer(StoreError):
    """The store was written by a newer gated (a rollback without going back to the copy
    taken before the upgrade): nothing is wrong with it, this version cannot read it."""
