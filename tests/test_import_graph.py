"""calibkit's own import graph: layers without circles, and no module above the CLI.

Walks every module of the package with ``ast`` (no third-party tool) and fails on

* any circle among calibkit's modules, counting every import statement: at module
  level, inside functions and under ``TYPE_CHECKING`` alike;
* any import of ``calibkit.cli`` from outside the CLI;
* a calibkit module imported inside a function without a ``# Deferred: ...`` comment
  right above the imports saying why (a heavy third-party import behind it, or the
  start-up time of ``calibkit --help``): such an import is otherwise the sign of a
  module in the wrong layer.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "calibkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(node: ast.Import | ast.ImportFrom, importer: str) -> set[str]:
    """The calibkit modules one import statement names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in MODULES}
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    if node.level:
        base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        found.add(candidate if candidate in MODULES else base)
    return {name for name in found if name in MODULES}


def function_import_groups(tree: ast.Module) -> Iterator[list[ast.Import | ast.ImportFrom]]:
    """Runs of consecutive import statements inside function bodies."""
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        bodies = [
            getattr(node, field)
            for node in ast.walk(function)
            for field in ("body", "orelse", "finalbody")
            if isinstance(getattr(node, field, None), list)
        ]
        for body in bodies:
            group: list[ast.Import | ast.ImportFrom] = []
            for statement in [*body, None]:
                if isinstance(statement, (ast.Import, ast.ImportFrom)):
                    group.append(statement)
                    continue
                if group:
                    yield group
                group = []


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets |= imported_modules(node, name)
        edges[name] = targets - {name}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_circles() -> None:
    assert circles(graph()) == []


def test_only_the_cli_imports_the_cli() -> None:
    offenders = {
        name: sorted(t for t in targets if t == "calibkit.cli" or t.startswith("calibkit.cli."))
        for name, targets in graph().items()
        if not (name == "calibkit.cli" or name.startswith("calibkit.cli."))
        and name != "calibkit.__main__"
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_function_level_calibkit_imports_say_why() -> None:
    unexplained = []
    for name, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for group in function_import_groups(ast.parse(source)):
            if not any(imported_modules(node, name) for node in group):
                continue
            above = lines[group[0].lineno - 2].strip() if group[0].lineno > 1 else ""
            if not above.lower().startswith("# deferred"):
                unexplained.append(f"{path.relative_to(REPO)}:{group[0].lineno}")
    assert unexplained == []


def test_the_walker_sees_a_circle_and_a_cli_import() -> None:
    """The checks above can fail: a made-up graph with a circle is reported."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "calibkit.cli.app" in graph()["calibkit.cli.evaluate"]


def test_moved_names_keep_their_old_path_with_a_warning() -> None:
    """Names that moved in the layout redesign import from the old place for one release."""
    import warnings

    import calibkit.calibrate
    import calibkit.cases
    import calibkit.evaluate
    import calibkit.io.temperature
    import calibkit.temperature

    moved = [
        (calibkit.evaluate, "to_probabilities", calibkit.cases),
        (calibkit.calibrate, "save_temperature", calibkit.io.temperature),
        (calibkit.calibrate, "calibrate_logits", calibkit.temperature),
    ]
    for old, name, new in moved:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert getattr(old, name) is getattr(new, name)
        assert [w.category for w in caught] == [DeprecationWarning], name
        assert f"moved to {new.__name__}.{name}" in str(caught[0].message)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        calibkit.evaluate.nothing_here  # noqa: B018
