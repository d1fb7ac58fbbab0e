"""Fixtures shared by the test files — a real mosquitto on a free loopback port and the
reference central system on it (defined in tests/broker.py, registered here once) — and
the tiers of the suite.

Every test gets one tier marker by its file, so a tier can be run alone:

| marker | what | run it |
| --- | --- | --- |
| `unit` | in-process, no other process, no network, no browser: rules, parsers, state machines, the store on a temp file | `make check` (with ruff and mypy, in well under a minute) |
| `integration` | real peers: `gated run` processes, mosquitto, ptys, Modbus servers, tmpfs, libfaketime | `make test` |
| `browser` | headless Chromium through Playwright | `make test` |
| `slow` | minutes each: the simulated days, the crash torture, the package build | `make test`; `pytest -m "not slow"` leaves them out |

A file not listed as unit or browser is integration: a new test file is run by `make
test` whatever its tier, and moved into UNIT here once it needs nothing outside the
process.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import central, mosquitto, mosquitto_factory

__all__ = ["central", "mosquitto", "mosquitto_factory"]

UNIT = {
    "test_admission", "test_backup_schedule", "test_clock_policy", "test_credential", "test_decide", "test_enrolment", "test_fuzz_inputs",
    "test_fuzz_osdp", "test_ledger", "test_messages", "test_outputs_door", "test_outputs_grant", "test_outputs_plan",
    "test_peers", "test_qr_contest", "test_qrtoken", "test_read_models", "test_readers_frames", "test_store_cards", "test_store_files",
    "test_sync_retention", "test_sync_session", "test_timeutil", "test_durability", "test_chunk_rows",
    "test_snapshot_wire", "test_imports", "test_tap", "test_console_alarms", "test_exits_mirror",
    "test_schedule", "test_retention", "test_sent_mark", "test_numbering", "test_simday_chaos", "test_own_history",
    "test_memory", "test_fees_after_a_loss", "test_knowledge", "test_clock_books", "test_outputs_sequence",
    "test_recheck", "test_desk_requests", "test_while_down", "test_doc_references",
    "test_password_hash_messages",
}
BROWSER = {"test_console_browser", "test_console_desk_browser", "test_console_burst"}
SLOW = {"test_simday", "test_torture", "test_package", "test_console_burst"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = Path(str(item.fspath)).stem
        if module in BROWSER:
            item.add_marker(pytest.mark.browser)
        elif module in UNIT:
            item.add_marker(pytest.mark.unit)
        else:
            item.add_marker(pytest.mark.integration)
        if module in SLOW:
            item.add_marker(pytest.mark.slow)


# A test file may leave this many more descriptors open than it found, no more: an xdist
# worker runs many files in one process, and descriptors left open add up until a number
# passes 1024, where select() (pyserial's read) fails — in another file, far from the leak.
# A store opened by a test and never closed holds five or six (its files, its WAL's fd).
FD_LEAK_LIMIT = 100


@pytest.fixture(autouse=True, scope="module")
def _descriptors_given_back(request: pytest.FixtureRequest) -> Iterator[None]:
    fds = Path("/proc/self/fd")
    before = len(list(fds.iterdir()))
    yield
    gc.collect()  # what only the collector would close (a connection nobody holds)
    left = len(list(fds.iterdir())) - before
    assert left <= FD_LEAK_LIMIT, (
        f"{request.module.__name__} left {left} file descriptors open (at most {FD_LEAK_LIMIT}): "
        "close the stores and files its tests open")
