"""YAML in, plain Python out, with the line of every key kept for error messages.

Scalars stay strings except `null`/`~`/empty (None) and `true`/`false` (bool): times,
`none`, `off` and card numbers with leading zeros reach the models as written, and the
models decide what they mean. Duplicate keys are an error, not a silent overwrite.

Bounded: a file is outside input. A 1.7 KB "billion laughs" alias bomb expands to hundreds
of millions of nodes, and 100,000 nested brackets overflow PyYAML's recursive composer. So
before anything is built the event stream (PyYAML's parser is iterative) is scanned for
size, nesting depth and alias count, and the conversion counts every node it produces,
aliases expanded: past any limit the file is refused with a clean error and its line,
in bounded time and memory (`Limits`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Path = tuple[str | int, ...]
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


class YamlError(Exception):
    def __init__(self, message: str, line: int | None = None, key: str | None = None, column: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line
        self.key = key
        self.column = column  # 0-based, where the parser gave up (parse errors only)


@dataclass(frozen=True, slots=True)
class Limits:
    """How big a document may be. Generous for any real configuration or scenario (a
    large scenario is a few thousand nodes), far below what would hurt a gate box."""

    max_bytes: int = 4 * 1024 * 1024
    max_depth: int = 64  # nesting of lists and mappings
    max_aliases: int = 1_000  # `*name` references written in the file
    max_nodes: int = 500_000  # values produced, every alias expanded


DEFAULT_LIMITS = Limits()


@dataclass
class Marked:
    """A loaded document and where each of its parts was written (1-based lines)."""

    data: Any
    lines: dict[Path, int] = field(default_factory=dict)

    def line_of(self, path: Path) -> int | None:
        """The line of the deepest part of `path` that exists in the document."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)


class _Budget:
    """Counts the values _convert produces; an alias re-walks its node, so this is what
    bounds an alias bomb's expansion."""

    def __init__(self, limit: int):
        self.left = limit
        self.limit = limit

    def spend(self, node: Node) -> None:
        self.left -= 1
        if self.left < 0:
            raise YamlError(
                f"the document expands to more than {self.limit:,} values (aliases inside aliases?)",
                node.start_mark.line + 1,
            )


def _scan(text: str, limits: Limits) -> None:
    """Refuse what would be too deep or alias too much before composing any of it."""
    depth = aliases = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > limits.max_depth:
                raise YamlError(f"YAML nests deeper than {limits.max_depth} levels", _line(event))
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > limits.max_aliases:
                raise YamlError(f"more than {limits.max_aliases:,} aliases (*name)", _line(event))


def _line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark is not None else None


def _convert(node: Node, path: Path, lines: dict[Path, int], budget: _Budget) -> Any:
    budget.spend(node)
    lines[path] = node.start_mark.line + 1
    if isinstance(node, ScalarNode):
        if node.style is None or node.style == "":  # plain scalar: the only kind that may mean null/bool
            if _NULL.match(node.value):
                return None
            if node.value in _BOOL:
                return _BOOL[node.value]
        elif node.style == '"' and not node.value.isascii():
            # a double-quoted "\ud800" is a lone surrogate: no text, and SQLite and every
            # output refuse to encode it (a traceback deep in a run). Refused here, at its line
            try:
                node.value.encode("utf-8")
            except UnicodeEncodeError:
                raise YamlError("a string holds a lone surrogate escape (\\uD800-\\uDFFF): not text",
                                node.start_mark.line + 1, dotted(path) if "<key>" not in path else None) from None
        return node.value
    if isinstance(node, SequenceNode):
        return [_convert(child, (*path, i), lines, budget) for i, child in enumerate(node.value)]
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlError("merge keys (<<) are not supported", key_node.start_mark.line + 1, "<<")
            key = _convert(key_node, (*path, "<key>"), {}, budget)
            if not isinstance(key, str | int | bool) and key is not None:
                raise YamlError("a key must be a plain value", key_node.start_mark.line + 1)
            key = str(key).lower() if isinstance(key, bool) else ("" if key is None else str(key))
            if key in out:
                raise YamlError(f"duplicate key {key!r}", key_node.start_mark.line + 1, key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, (*path, key), lines, budget)
            # the key's own line is what an installer looks for
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    raise YamlError(f"unsupported YAML node {node.tag}", node.start_mark.line + 1)  # pragma: no cover


def read_text(path: str | FilePath, limits: Limits = DEFAULT_LIMITS) -> str:
    """A YAML file's text, refused unread when it is larger than `limits.max_bytes`.
    Raises OSError / UnicodeDecodeError as reading does; YamlError when too large."""
    p = FilePath(path)
    with p.open("rb") as f:
        data = f.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise YamlError(f"the file is larger than {limits.max_bytes:,} bytes", None)
    return data.decode("utf-8")


def load(text: str, limits: Limits = DEFAULT_LIMITS) -> Marked:
    if len(text) > limits.max_bytes:
        raise YamlError(f"the document is larger than {limits.max_bytes:,} bytes", None)
    try:
        _scan(text, limits)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise YamlError(
            f"YAML does not parse: {e.problem or e}", mark.line + 1 if mark else None, column=mark.column if mark else None
        ) from e
    except yaml.YAMLError as e:
        raise YamlError(f"YAML does not parse: {e}") from e
    if node is None:
        return Marked(None, {(): 1})
    lines: dict[Path, int] = {}
    try:
        return Marked(_convert(node, (), lines, _Budget(limits.max_nodes)), lines)
    except RecursionError:  # an alias inside itself (`a: &x [*x]`): its own nesting is endless
        raise YamlError("YAML nests too deep (a recursive alias?)", node.start_mark.line + 1) from None


def dotted(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top)"


def error_path(err: Mapping[str, Any], marked: Marked) -> Path:
    """The document's own keys and indexes where one pydantic error is.

    pydantic puts validator and union tags ("function-after[...]", "str", "serial") in
    `loc`; only the document's keys and indexes are kept (a key may itself contain "[",
    and a misspelled key may start with "str"). A model-level check that knows which key
    is at fault says so with an exception carrying `field`.
    """
    raw = err["loc"]
    kept: list[str | int] = []
    for n, part in enumerate(raw):
        own = isinstance(part, int) or (*kept, part) in marked.lines
        if own or (n == len(raw) - 1 and err["type"] in ("extra_forbidden", "missing")):
            kept.append(part)
    field_name = getattr(err.get("ctx", {}).get("error"), "field", None)
    if isinstance(field_name, str):
        kept.append(field_name)
    return tuple(kept)


def describe_error(err: Mapping[str, Any], marked: Marked) -> tuple[int | None, str, str]:
    """(line, key path, message) for one pydantic error on a document loaded here."""
    loc = error_path(err, marked)
    last = loc[-1] if loc else "(top)"
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {last!r}"
    elif err["type"] == "missing":
        msg = f"required key {last!r} is missing"
    elif "expected" in err.get("ctx", {}):
        msg = f"{msg} (got {err.get('input')!r})"
    elif err["type"] != "value_error" and "input" in err and not isinstance(err["input"], dict | list):
        msg = f"{msg} (got {err['input']!r})"
    return marked.line_of(loc), dotted(loc), msg.removeprefix("Value error, ")
