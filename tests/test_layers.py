"""Imports go downward only (docs/architecture.md): an AST walk over the package."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "datarax"

# Lowest layer first; a module may import its own layer and any layer below it.
LAYERS = [
    "typing",
    "core",
    "batching",
    "samplers",
    "operators",
    "sources",
    "distributed",
    "checkpoint",
    "pipeline",
    "testing",
    "config",
    "cli",
]


def _layer(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "datarax"
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    # Imports under `if TYPE_CHECKING:` never run, so they cannot form cycles.
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            node.body = []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("datarax")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("datarax"):
            found.append(node.module)
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path


@pytest.mark.parametrize(("name", "path"), list(_modules()), ids=lambda x: str(x))
def test_imports_point_downward(name, path):
    layer = _layer(name)
    if layer == "__init__":
        return  # the top-level package re-exports the public API
    assert layer in LAYERS, f"{name} is in no layer; add it to LAYERS and docs/architecture.md"
    rank = LAYERS.index(layer)
    for imported in _imports(path):
        other = _layer(imported)
        assert other != "__init__", f"{name} imports the top-level package ({imported})"
        assert LAYERS.index(other) <= rank, f"{name} ({layer}) imports upward: {imported} ({other})"


def test_typing_is_a_leaf():
    assert _imports(PACKAGE / "typing.py") == []
