"""Load members, passes and bookings written in the scenario/central format into a store:
for rehearsals, demos and a first import before the MQTT link has run (a site without a
central system loads its members this way: docs/installer-guide.md).

The file's model is sync/records.py's SeedFile, which `gated sim central --seed` reads
too (through read_seed_file here): one file rehearses a site with or without a central
system. Passes take the protocol's `applied` (each daemon's applied seq, docs/protocol.md)
as well as the scenarios' `applied_seq`; cards take typed keys (`uid:04:A1:B2:C3`, `em:…`) or the
strings readers send. A pass without `access_windows` lets its member in only for a
booked class (no walk-in): the example file says so where a pass is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from gated.config import Config
from gated.state_owner import kept_by_owner
from gated.yamlload import YamlError, describe_error, load, read_text
from sync.records import SeedFile
from sync.store import Store, SyncBatch

S = TypeVar("S", bound=SeedFile)


class SeedError(Exception):
    """The file does not describe members, passes and bookings: (line, key, message) each."""

    def __init__(self, problems: list[tuple[int | None, str, str]]):
        super().__init__("; ".join(f"{ln or '?'}: {k}: {m}" for ln, k, m in problems))
        self.problems = problems


def for_store(seed: SeedFile, config: Config) -> SyncBatch:
    """The seed's records as this gate's store takes them (its own entry of each `applied`)."""
    passes = [p.for_daemon(config.daemon_id) for p in seed.passes]
    return SyncBatch(members=seed.members, passes=passes, bookings=seed.bookings)


def batch_from(data: dict[str, Any], config: Config) -> SyncBatch:
    return for_store(SeedFile.model_validate(data), config)


def read_seed_file(path: Path, model: type[S]) -> S:
    """The file as `model` (a gate's seed, or a central system's: sync/records.py);
    SeedError with every problem and its line. Raises OSError, UnicodeDecodeError and
    YamlError as reading does."""
    marked = load(read_text(path))
    data = marked.data if marked.data is not None else {}
    if not isinstance(data, dict):
        raise SeedError([(1, "(top)", "a seed file is a mapping with members, passes, bookings")])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise SeedError(list(dict.fromkeys(describe_error(err, marked) for err in e.errors()))) from e


def explain(path: Path, error: Exception) -> list[str]:
    """What to print for a seed file that could not be read (the errors read_seed_file raises)."""
    if isinstance(error, SeedError):
        return [f"{path}:{line or '?'}: {key}: {msg}" for line, key, msg in error.problems] + [
            f"{len(error.problems)} problem(s); nothing loaded"
        ]
    if isinstance(error, YamlError):
        return [f"{path}:{error.line or '?'}: {error.message}"]
    return [f"{path}: cannot read: {error}"]


def read_seed(path: Path, config: Config) -> SyncBatch:
    """The file's records as this gate's store takes them; errors as read_seed_file."""
    return for_store(read_seed_file(path, SeedFile), config)


def bookings_only(batch: SyncBatch) -> list[str]:
    """The passes that let their member in only for a booked class (no access_windows)."""
    return [f"pass {p.id} ({p.member}) has no access_windows: its member gets in only for a booked class"
            for p in batch.passes if p.access_windows is None]


def seed_store(config: Config, path: Path, notes: list[str] | None = None) -> dict[str, int]:
    batch = read_seed(path, config)
    if notes is not None:
        notes.extend(bookings_only(batch))
    with kept_by_owner(Path(config.store.path).parent):
        store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id, ten_digits=config.ten_digits())
        try:
            store.apply_sync(batch, datetime.now(UTC))
            return store.counts()
        finally:
            store.close()
