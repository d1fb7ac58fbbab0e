"""Load members, passes and bookings written in the scenario/central format into a store:
for rehearsals, demos and a first import before the MQTT link has run (a site without a
central system loads its members this way: docs/installer-guide.md).

Passes take the protocol's `applied` (each daemon's applied seq, docs/protocol.md) as well
as the scenarios' `applied_seq`; cards take typed keys (`uid:04:A1:B2:C3`, `em:…`) or the
strings readers send. A pass without `access_windows` lets its member in only for a
booked class (no walk-in): the example file says so where a pass is written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gated.config import Config
from gated.state_owner import kept_by_owner
from gated.yamlload import describe_error, load, read_text
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import Store, SyncBatch
from sync.topics import LEVEL


class SeedPass(PassIn):
    """A pass as the central system sends it (`applied`) or as scenarios write it
    (`applied_seq`)."""

    applied: dict[Annotated[str, Field(pattern=LEVEL.pattern)], Annotated[int, Field(ge=0)]] | None = Field(
        None,
        description="Each daemon's applied seq when the balance was computed (docs/protocol.md); "
        "a daemon missing from the map: none of its deductions were applied.",
    )

    def for_daemon(self, daemon: str) -> PassIn:
        if self.applied is None:
            return PassIn.model_validate(self.model_dump(by_alias=True, exclude={"applied"}))
        data = self.model_dump(by_alias=True, exclude={"applied", "applied_seq"})
        return PassIn.model_validate({**data, "applied_seq": self.applied.get(daemon, 0)})


class SeedFile(BaseModel):
    # scenario files carry more (site, gates, steps): only these three are read
    model_config = ConfigDict(extra="ignore")
    members: list[MemberIn] = []
    passes: list[SeedPass] = []
    bookings: list[BookingIn] = []


class SeedError(Exception):
    """The file does not describe members, passes and bookings: (line, key, message) each."""

    def __init__(self, problems: list[tuple[int | None, str, str]]):
        super().__init__("; ".join(f"{ln or '?'}: {k}: {m}" for ln, k, m in problems))
        self.problems = problems


def batch_from(data: dict[str, Any], config: Config) -> SyncBatch:
    seed = SeedFile.model_validate(data)
    passes = [p.for_daemon(config.daemon_id) for p in seed.passes]
    return SyncBatch(members=seed.members, passes=passes, bookings=seed.bookings)


def read_seed(path: Path, config: Config) -> SyncBatch:
    """The file's records; SeedError with every problem and its line. Raises OSError,
    UnicodeDecodeError and YamlError as reading does."""
    marked = load(read_text(path))
    data = marked.data if marked.data is not None else {}
    if not isinstance(data, dict):
        raise SeedError([(1, "(top)", "a seed file is a mapping with members, passes, bookings")])
    try:
        return batch_from(data, config)
    except ValidationError as e:
        raise SeedError(list(dict.fromkeys(describe_error(err, marked) for err in e.errors()))) from e


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
