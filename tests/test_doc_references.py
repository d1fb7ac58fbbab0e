"""A reference to the documentation in what a user reads from gated — `--help`, the
configuration's schema (an editor's hover text), the messages and docs of gated/, the
example files in config/ — names a file in docs/ and, when it names a section
(`docs/X.md, "Section"`), a heading of that file: `gated clock confirm --help` sent
installers to docs/operations.md, "The clock", a section only docs/rules.md has."""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path

from gated.cli import build_parser
from gated.config import json_schema

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# docs/X.md, "Section" — also without the comma, or the section in parentheses
REFERENCE = re.compile(r'docs/([\w.-]+\.md)(?:,?\s*\(?"([^"]+)")?')


def headings(doc: Path) -> list[str]:
    return [re.sub(r"^#+\s+", "", ln).strip() for ln in doc.read_text(encoding="utf-8").splitlines()
            if re.match(r"^#{1,6}\s", ln)]


def resolves(section: str, heads: list[str]) -> bool:
    """A heading is the section, or begins with it ("Records" is "Records: members, passes,
    bookings"; "A day at two sites" is "A day at two sites (`make soak`)")."""
    want = section.casefold()
    return any(h.casefold() == want or (h.casefold().startswith(want) and not h[len(want)].isalnum())
               for h in heads)


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def texts() -> Iterator[tuple[str, str]]:
    """(where, text) for everything a reference may stand in, whitespace made single."""
    for parser in parsers(build_parser()):
        yield f"`{parser.prog} --help`", parser.format_help()
    for text in strings(json_schema()):
        yield "the configuration's schema", text
    for source in sorted((ROOT / "gated").rglob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                yield f"{source.relative_to(ROOT)}:{node.lineno}", node.value
    for example in sorted((ROOT / "config").iterdir()):
        if example.is_file() and example.suffix != ".json":  # the schema is json_schema() above
            yield str(example.relative_to(ROOT)), example.read_text(encoding="utf-8")


def references() -> list[tuple[str, str, str | None]]:
    return [(where, m[1], m[2]) for where, text in texts() for m in REFERENCE.finditer(" ".join(text.split()))]


def test_every_reference_names_a_doc_and_a_heading_of_it() -> None:
    found = references()
    wrong = []
    for where, doc, section in found:
        path = DOCS / doc
        if not path.is_file():
            wrong.append(f"{where}: docs/{doc} does not exist")
        elif section is not None and not resolves(section, headings(path)):
            wrong.append(f"{where}: docs/{doc} has no heading {section!r}")
    assert not wrong, "\n".join(wrong)
    # the scan sees what it is meant to: help texts, the schema, messages
    assert sum(1 for _, _, section in found if section) >= 10, found


def test_clock_confirm_help_names_the_section_that_says_it() -> None:
    found = [(doc, section) for where, doc, section in references() if where == "`gated clock confirm --help`"]
    assert found == [("rules.md", "When the clock cannot be trusted")], found
    assert resolves("When the clock cannot be trusted", headings(DOCS / "rules.md"))


def test_a_section_is_a_heading_not_any_text() -> None:
    heads = ["The clock", "Records: members, passes, bookings", "A day at two sites (`make soak`)"]
    assert resolves("Records", heads) and resolves("A day at two sites", heads) and resolves("the clock", heads)
    assert not resolves("The clo", heads) and not resolves("Login limits", heads)
