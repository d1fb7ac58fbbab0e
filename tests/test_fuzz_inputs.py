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
