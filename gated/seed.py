"""Load members, passes and bookings written in the scenario/central format into a store:
for rehearsals, demos and a first import before the MQTT link has run."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from gated.config import Config
from gated.yamlload import load, read_text
from sync.records import BookingIn, MemberIn, PassIn
from sync.store import Store, SyncBatch


class SeedFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    members: list[MemberIn] = []
    passes: list[PassIn] = []
    bookings: list[BookingIn] = []


def batch_from(data: dict[str, Any], config: Config) -> SyncBatch:
    seed = SeedFile.model_validate(data)
    return SyncBatch(members=seed.members, passes=seed.passes, bookings=seed.bookings)


def seed_store(config: Config, path: Path) -> dict[str, int]:
    batch = batch_from(load(read_text(path)).data or {}, config)
    store = Store(config.store.path, config.site_domain(), daemon_id=config.daemon_id, ten_digits=config.ten_digits())
    try:
        store.apply_sync(batch, datetime.now(UTC))
        return store.counts()
    finally:
        store.close()
