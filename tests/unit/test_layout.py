"""The house rules the layout keeps: no reaching into another module's private names, no sprawling modules."""

from __future__ import annotations

import ast
from pathlib import Path

import samkit

PACKAGE = Path(samkit.__file__).parent
# ~450 lines is the aim (DESIGN.md); a model file with many small classes (tiny_vit.py) may run a little over.
MAX_LINES = 500


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_reaches(source: str) -> list[str]:
    """``from samkit... import _x`` and ``module._x`` for a samkit module bound by an import."""
    tree = ast.parse(source)
    found: list[str] = []
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("samkit")):
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}")
                else:
                    modules.add(alias.asname or alias.name)  # may be a module (from . import x)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("samkit"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.value, ast.Name):
            if node.value.id in modules:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_checker_sees_private_reaches() -> None:
    assert private_reaches("from ..predictor import _check\n")
    assert private_reaches("from samkit.x import y, _z\n")
    assert private_reaches("from . import batching\nbatching._table\n")
    assert private_reaches("import samkit.io\nsamkit._secret\n")
    assert not private_reaches("from .x import public\nself._own\nargparse._SubParsersAction\n")


def test_no_module_imports_another_modules_private_names() -> None:
    reaches = {str(p.relative_to(PACKAGE)): private_reaches(p.read_text()) for p in _modules()}
    assert {k: v for k, v in reaches.items() if v} == {}


def test_no_module_sprawls() -> None:
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in _modules()}
    assert len(lengths) > 50  # the walk found the package
    assert {k: n for k, n in lengths.items() if n > MAX_LINES} == {}
