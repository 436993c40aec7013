"""The package's layout rules (docs/internals.md): no import cycle between its modules,
function-level imports included; ``svd/`` imports nothing else of ranksearch; no module over
450 lines."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ranksearch"
MAX_LINES = 450


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in it (an ancestor package,
    imported first anyway, left out)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for imported in names:
            parts = imported.split(".")
            found |= {m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                      if m in modules and m != name and not name.startswith(m + ".")}
    return found


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module(path) for path in FILES}
GRAPH = {_module(path): _imports(path, MODULES) for path in FILES}


def test_no_import_cycle() -> None:
    try:
        tuple(graphlib.TopologicalSorter(GRAPH).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_svd_imports_nothing_else_of_ranksearch() -> None:
    outside = {f"{m} imports {i}" for m, found in GRAPH.items() if m.startswith("ranksearch.svd")
               for i in found if not i.startswith("ranksearch.svd")}
    assert not outside


@pytest.mark.parametrize("path", FILES, ids=[_module(p) for p in FILES])
def test_no_module_over_450_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES
