"""The import direction of DESIGN.md, read from the source so it cannot drift: `rules` at
the bottom knows nothing of the others; `sync` and `drivers` import `rules`; `simulator`
imports `rules` and `sync`; nothing imports `gated` but tests, benchmarks and its own entry
points; `gated` imports the simulator only inside the function that runs a `gated sim`
command (or the demo), never when the product is loaded. Inside `sync`, the store knows
nothing of the link or the snapshot import (sync/__init__.py).

Every `import`, `from ... import` (under `if TYPE_CHECKING:` too) and import by name
(`importlib.import_module`, `__import__`, `runpy.run_module` with a literal name) counts.
A module name in a command line (`python -m gated.cli run`, as the sim day starts its
daemons) is a process, not an import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rules", "sync", "drivers", "gated", "simulator")

# What each package may import of the others (DESIGN.md, "Layout").
ALLOWED: dict[str, frozenset[str]] = {
    "rules": frozenset(),
    "sync": frozenset({"rules"}),
    "drivers": frozenset({"rules"}),
    "simulator": frozenset({"rules", "sync"}),
    "gated": frozenset({"rules", "sync", "drivers"}),
}

# Exceptions, each with its reason; one that no longer holds fails below (delete it then).
EXCEPTIONS: dict[str, tuple[frozenset[str], str]] = {
    "simulator/serial_reader.py": (
        frozenset({"drivers"}),
        "a stand-in reader writes its frames with the encoders of the framing the readers parse "
        "(drivers.readers.frames, payloads, wiegand): one definition of each wire format",
    ),
    "simulator/rs485_line.py": (
        frozenset({"drivers"}),
        "the emulated RS-485 line times frames with the RTU driver's LineTiming: one definition of a character's time",
    ),
    "simulator/turnstile.py": (
        frozenset({"drivers"}), "its RTU server builds that emulated line, with the same LineTiming",
    ),
}

BY_NAME = {"import_module", "__import__", "run_module"}


@dataclass(frozen=True)
class Import:
    module: str  # the file, relative to the checkout
    name: str  # the imported module's dotted name
    line: int
    in_function: bool

    @property
    def package(self) -> str:
        return self.name.split(".")[0]


def _imports(path: Path, root: Path = ROOT) -> Iterator[Import]:
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(), filename=rel)

    def visit(node: ast.AST, in_function: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                yield from (Import(rel, a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                yield Import(rel, child.module, child.lineno, in_function)
                # `from sync import link`: the submodule too
                base = ROOT.joinpath(*child.module.split("."))
                for a in child.names:
                    if (base / a.name).is_dir() or (base / f"{a.name}.py").is_file():
                        yield Import(rel, f"{child.module}.{a.name}", child.lineno, in_function)
            elif isinstance(child, ast.Call):
                f = child.func
                called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                arg = child.args[0] if child.args else None
                if called in BY_NAME and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    yield Import(rel, arg.value, child.lineno, in_function)
            yield from visit(child, inside)

    yield from visit(tree, False)


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def test_each_package_imports_only_what_the_design_allows() -> None:
    wrong: list[str] = []
    used_exceptions: set[str] = set()
    for package, allowed in ALLOWED.items():
        for path in _modules(package):
            for imp in _imports(path):
                other = imp.package
                if other == package or other not in PACKAGES:
                    continue
                if other in allowed:
                    continue
                extra, _ = EXCEPTIONS.get(imp.module, (frozenset(), ""))
                if other in extra:
                    used_exceptions.add(imp.module)
                    continue
                if package == "gated" and other == "simulator" and imp.in_function:
                    continue  # a `gated sim ...` command (or the demo) loads the simulator when it runs
                where = "at load" if package == "gated" else ""
                wrong.append(f"{imp.module}:{imp.line} imports {imp.name} {where}".rstrip())
    assert not wrong, "imports against DESIGN.md's direction:\n" + "\n".join(wrong)
    stale = sorted(set(EXCEPTIONS) - used_exceptions)
    assert not stale, f"exceptions no longer needed (remove them from EXCEPTIONS): {stale}"


# Inside `sync` (sync/__init__.py): what each of its parts may import of the others. The
# contract (the top-level modules: protocol, events, records, topics, errors, qrtoken) is
# shared by all of them and imports none.
SYNC_PARTS = ("sync.store", "sync.link", "sync.snapshot")
SYNC_ALLOWED: dict[str, frozenset[str]] = {
    "sync": frozenset(),
    "sync.store": frozenset(),
    "sync.snapshot": frozenset({"sync.store"}),
    "sync.link": frozenset({"sync.store", "sync.snapshot"}),
}


def _sync_part(name: str) -> str:
    """The part of `sync` a module (dotted) belongs to: a subpackage, or the contract."""
    return next((p for p in SYNC_PARTS if name == p or name.startswith(p + ".")), "sync")


def test_inside_sync_the_store_knows_nothing_of_the_link_or_the_snapshot_import() -> None:
    """store imports neither sync.link nor sync.snapshot; the snapshot import uses the store,
    never the link; the contract imports none of them; and the link reaches the snapshot
    import only through its port (sync/link/port.py)."""
    wrong: list[str] = []
    for path in _modules("sync"):
        dotted = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__")
        part = _sync_part(dotted)
        for imp in _imports(path):
            if imp.package != "sync" or imp.name == "sync":
                continue
            other = _sync_part(imp.name)
            if other == part or other == "sync":
                continue
            if other not in SYNC_ALLOWED[part]:
                wrong.append(f"{imp.module}:{imp.line} imports {imp.name}")
            elif part == "sync.link" and other == "sync.snapshot" and dotted != "sync.link.port":
                wrong.append(f"{imp.module}:{imp.line} imports {imp.name} (the link's port does that)")
    assert not wrong, "imports against the direction inside sync:\n" + "\n".join(wrong)


def test_the_simulated_day_lives_under_simulator() -> None:
    """The day's harness and checks together (issue 25): nothing of it left in the product."""
    assert not (ROOT / "gated" / "simday").exists()
    day = ROOT / "simulator" / "day"
    for part in ("plan.py", "population.py", "run.py", "args.py", "harness/rig.py", "harness/central_proc.py",
                 "harness/traced.py", "checks/invariants.py"):
        assert (day / part).is_file(), part


def test_the_check_sees_what_it_is_for(tmp_path: Path) -> None:
    """The walker finds a module-level, a lazy, a type-only and a by-name import."""
    src = tmp_path / "m.py"
    src.write_text(
        "from typing import TYPE_CHECKING\nimport importlib\nfrom gated.clock import utc_now\n"
        "if TYPE_CHECKING:\n    from sync.store import Store\n"
        "def f():\n    from simulator.central import Central\n    return importlib.import_module('gated.cli')\n"
    )
    found = {(i.name, i.in_function) for i in _imports(src, tmp_path)}
    assert {("gated.clock", False), ("sync.store", False), ("simulator.central", True), ("gated.cli", True)} <= found


def test_the_front_ends_meet_only_at_the_operator_api() -> None:
    """Issue 25: the console and the control socket both talk to the daemon through
    gated/operator.py; neither imports the other, nor the daemon (no console <-> daemon
    circle), and the operator API imports neither front end."""
    console = sorted((ROOT / "gated" / "console").rglob("*.py"))
    fronts = {"gated.console": console, "gated.control": [ROOT / "gated" / "control.py"]}
    wrong: list[str] = []
    for front, paths in fronts.items():
        forbidden = {"gated.daemon", *(f for f in fronts if f != front)}
        for path in paths:
            for imp in _imports(path):
                if any(imp.name == f or imp.name.startswith(f + ".") for f in forbidden):
                    wrong.append(f"{imp.module}:{imp.line} imports {imp.name}")
    for imp in _imports(ROOT / "gated" / "operator.py"):
        if imp.name.startswith(("gated.console", "gated.control")):
            wrong.append(f"{imp.module}:{imp.line} imports {imp.name}")
    assert not wrong, "front ends tangled:\n" + "\n".join(wrong)
