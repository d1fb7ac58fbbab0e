"""Bad input from outside never crashes anything: it is a clean, reported rejection."""

from __future__ import annotations

from pathlib import Path

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
    import copy
    import tempfile

    doc = copy.deepcopy(GOOD_DOC)
    for path, value in changes:
        node = doc
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced what this path went through
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
