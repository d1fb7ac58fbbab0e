"""The store's own error (a caller's mistake or a database it cannot use)."""

from __future__ import annotations


class StoreError(Exception):
    pass
