"""Bad input from outside never crashes anything: it is a clean, reported rejection."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gated.config import ConfigError, load_config
from gated.control import Command
from gated.scenario_file import ScenarioInvalid, load_scenario
from gated.yamlload import YamlError, load

GOOD = (Path(__file__).parent / "configs" / "good.yaml").read_text()

yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300))
def test_yaml_loader_never_crashes(text: str) -> None:
    try:
        load(text)
    except YamlError as e:
        assert e.message


@settings(max_examples=100, deadline=None)
@given(doc=yaml_values)
@example(doc={"\u00b2": None})  # a key str.isdigit() takes and int() does not (CI found it)
@example(doc={"site": {"id": "s"}, "gates": [{"nam\u00b2e": 1, "a.b[0]": 2}]})
def test_config_loader_rejects_cleanly(doc: object) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(yaml.safe_dump(doc))
    try:
        load_config(f.name)
    except ConfigError as e:
        assert e.problems and all(isinstance(p[2], str) for p in e.problems)
    finally:
        Path(f.name).unlink()


def _paths(node: object, at: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every key and list position of a document, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [at] + [p for k, v in items for p in _paths(v, (*at, k))]


def _replaced(doc: Any, changes: list[tuple[tuple[str | int, ...], object]]) -> Any:
    """A deep copy of `doc` with each (path, value) of `changes` put in place."""
    import copy

    out = copy.deepcopy(doc)
    for path, value in changes:
        node = out
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced what this path went through
    return out


GOOD_DOC = yaml.safe_load(GOOD)
GOOD_PATHS = [p for p in _paths(GOOD_DOC) if p]
extreme_values = st.sampled_from([
    10**20, -(10**20), 1e308, float("inf"), float("nan"), -1, 0, "", "x" * 5000, "99999999999d", "3661d",
    "9999-12-31", "0001-01-01", "9999-12-31T23:59:59Z", "25:99-26:00", "00:00-24:00", "\x00", "../../etc/passwd",
    {"a": 1}, [1] * 50, None, True, {"mon-sun": "00:00-24:00"}, {"zzz": "x"},
]) | yaml_values


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(GOOD_PATHS), extreme_values), min_size=1, max_size=3))
@example([(("site", "timezone"), "x" * 300)])  # a zone name too long for a file name: OSError
@example([(("gates", 0, "readers", 0, "format"), {"a": 1})])  # an unhashable format: TypeError in a warning
@example([(("gates", 0, "early_arrival"), "99999999999d")])  # overflowed timedelta
def test_config_values_replaced_reject_cleanly(changes: list[tuple[tuple[str | int, ...], object]]) -> None:
    """Values anywhere in a good file replaced by extreme ones (huge numbers, a dict where
    a string goes, a duration past the calendar): a ConfigError naming the problems, never
    another exception (three crashes found so: docs/reliability.md)."""
    import tempfile

    doc = _replaced(GOOD_DOC, changes)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(yaml.safe_dump(doc, allow_unicode=True))
    try:
        cfg = load_config(f.name)
        cfg.site_domain()
        cfg.gates_domain()
    except ConfigError as e:
        assert e.problems and all(isinstance(p[2], str) for p in e.problems)
    finally:
        Path(f.name).unlink()


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_config_mutations_reject_cleanly(data: st.DataObject) -> None:
    import tempfile

    lines = GOOD.splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    lines[i] = data.draw(st.text(max_size=40))
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("\n".join(lines))
    try:
        load_config(f.name)
    except ConfigError as e:
        assert e.problems
    finally:
        Path(f.name).unlink()


@settings(max_examples=100, deadline=None)
@given(doc=yaml_values)
def test_scenario_loader_rejects_cleanly(doc: object) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(yaml.safe_dump(doc))
    try:
        load_scenario(Path(f.name))
    except ScenarioInvalid as e:
        assert e.message
    finally:
        Path(f.name).unlink()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_control_commands_validate(line: bytes) -> None:
    try:
        Command.validate_json(line)
    except ValidationError:
        pass


# -- records from the central system ---------------------------------------------------------

DELTA = {
    "v": 1, "delta_seq": 1,
    "members": [{"id": "m1", "name": "Ana", "cards": ["AA01"], "status": "active"}],
    "passes": [
        {"id": "p1", "member": "m1", "name": "10", "kind": "visits", "balance": 5, "deduct_on": "access",
         "walk_in_cost": 1, "access_windows": {"mon-sun": "00:00-24:00"}, "applied": {}, "valid_from": "2026-01-01",
         "valid_until": "2027-01-01", "zones": ["main"]},
        {"id": "p2", "member": "m1", "name": "cr", "kind": "credits", "balance": "5.5", "deduct_on": "booking",
         "walk_in_cost": "1.5", "applied": {}},
    ],
    "bookings": [{"id": "b1", "member": "m1", "pass": "p1", "class": "Spin", "zone": "main",
                  "starts_at": "2026-12-05T13:00", "ends_at": "2026-12-05T13:45", "deducted": True, "cost": 1,
                  "loyalty_points": 5}],
}
DELTA_PATHS = [p for p in _paths(DELTA) if p]
record_values: st.SearchStrategy[Any] = st.sampled_from([
    10**30, -(10**30), 2**63, "9e999999", "-9e999999", "1e-999999", "0.0000001", 1e308, -1, 0, "x" * 300, "",
    "9999-12-31", "0001-01-01", "9999-12-31T23:59", "0001-01-01T00:00Z", {"mon": ["00:00-01:00"] * 50}, [],
    None, True, "m1", "p1", "AA01", "em:0A00BC614E", "99999999999999999999999999999",
]) | yaml_values


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(DELTA_PATHS), record_values), min_size=1, max_size=3))
@example([(("bookings", 0, "loyalty_points"), 10**30)])  # overflowed SQLite's INTEGER: the delta failed for good
@example([(("passes", 0, "applied"), {"d1": 2**63})])
@example([(("passes", 1, "balance"), "9e999999"), (("passes", 1, "walk_in_cost"), "-9e999999")])
def test_central_records_with_extreme_values_are_refused_or_work(
    tmp_path_factory: Any, changes: list[tuple[tuple[str | int, ...], object]]
) -> None:
    """A delta whose values are replaced by extreme ones is refused by its validation, or
    it is applied, decided on (now, in five minutes, in a year) and worked through by the
    time-driven work without any other exception."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from rules.credential import CredentialKind
    from rules.decide import Presented, decide
    from rules.model import Gate, Policy, Site
    from sync.link.port import StorePort
    from sync.protocol import Delta
    from sync.store import Store

    doc = _replaced(DELTA, changes)
    try:
        delta = Delta.model_validate(doc)
    except ValidationError:
        return
    site, gate, policy = Site(ZoneInfo("Europe/Madrid"), id="s"), Gate("in", "main"), Policy(no_show_fee=Decimal(1))
    now = datetime(2026, 12, 5, 12, 50, tzinfo=UTC)
    store = Store(tmp_path_factory.mktemp("fuzz") / "g.db", site, durable=False)
    try:
        StorePort(store, "d1", 500).apply_delta(delta, now)
        for t in (now, now + timedelta(minutes=5), now + timedelta(days=365)):
            decide(store.view("m1", gate, t), Presented(CredentialKind.CARD), gate, site, policy, t)
        store.run_due(policy, now + timedelta(hours=3))
    finally:
        store.close()


# -- events of the site's other daemons ------------------------------------------------------

PEER_EVENTS: list[dict[str, Any]] = [
    {"id": "e1", "seq": 1, "type": "access", "at": "2026-12-05T12:00:00Z", "gate": "in-2", "member": "m1",
     "decision": "granted", "reason": "walk_in", "passed": True, "direction": "in"},
    {"id": "e2", "seq": 2, "type": "deduction", "at": "2026-12-05T12:00:00Z", "gate": "in-2", "member": "m1",
     "pass": "p1", "amount": 1, "booking": None, "cause": "walk_in"},
    {"id": "e3", "seq": 3, "type": "attendance", "at": "2026-12-05T12:00:00Z", "member": "m1", "booking": "b1",
     "status": "attended", "by": "gate"},
    {"id": "e4", "seq": 4, "type": "deduction", "at": "2026-12-05T12:01:00Z", "gate": "in-2", "member": "m1",
     "pass": "p1", "amount": -1, "booking": None, "cause": "refund", "refunds": {"daemon": "d2", "seq": 2}},
    {"id": "e5", "seq": 5, "type": "fire_alarm", "at": "2026-12-05T12:03:00Z", "active": True},
]
PEER_PATHS = [p for p in _paths(PEER_EVENTS) if p]
peer_values: st.SearchStrategy[Any] = st.sampled_from([
    10**30, 2**63, -1, 0, "9e999999", "-9e999999", "NaN", "Infinity", 1e308, "x" * 300, "",
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", None, True, [], {}, {"daemon": "d2", "seq": 10**30}, "m1", "p1",
]) | yaml_values


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PEER_PATHS), peer_values), min_size=1, max_size=3))
@example([((3, "refunds"), {"daemon": "d2", "seq": 10**30})])  # overflowed the refund's insert
@example([((0, "at"), "9999-12-31T23:59:59Z")])  # year 10000 in Madrid: the member's next decision overflowed
@example([((1, "amount"), "9e999999"), ((3, "amount"), "-9e999999")])
def test_peer_events_with_extreme_values_are_counted_or_work(
    tmp_path_factory: Any, changes: list[tuple[tuple[str | int, ...], object]]
) -> None:
    """Another daemon's events with values replaced by extreme ones: refused by the batch's
    validation, counted invalid, or recorded — and the member's decisions, the pass's
    balance and the time-driven work go on without another exception."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    from rules.credential import CredentialKind
    from rules.decide import Presented, decide
    from rules.model import Gate, Policy, Site
    from sync.protocol import EventBatch
    from sync.records import MemberIn, PassIn
    from sync.store import Store, SyncBatch

    events = _replaced(PEER_EVENTS, changes)
    try:
        batch = EventBatch.model_validate({"v": 1, "daemon": "d2", "events": events, "zones": {"in-2": "main"}})
    except ValidationError:
        return
    site, gate = Site(ZoneInfo("Europe/Madrid"), id="s"), Gate("in", "main")
    now = datetime(2026, 12, 5, 12, 50, tzinfo=UTC)
    store = Store(tmp_path_factory.mktemp("peers") / "g.db", site, daemon_id="d1", durable=False)
    try:
        visits = PassIn.model_validate({"id": "p1", "member": "m1", "kind": "visits", "balance": 5, "applied_seq": 0,
                                        "walk_in_cost": 1, "deduct_on": "access"})
        store.apply_sync(SyncBatch([MemberIn(id="m1", name="Ana", cards=["C1"])], [visits], []), now)
        store.record_peer_events("d2", [e.model_dump(mode="json") for e in batch.events], {"in-2": "main"})
        for t in (now, now + timedelta(days=1)):
            decide(store.view("m1", gate, t), Presented(CredentialKind.CARD), gate, site, Policy(), t)
        store.balance("p1")
        store.run_due(Policy(no_show_fee=Decimal(1)), now + timedelta(hours=3))
    finally:
        store.close()
