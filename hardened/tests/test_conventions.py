"""Project conventions that code review would otherwise have to catch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "hardened" / "src" / "hardened"
TEST_FILES = sorted(
    [*ROOT.glob("hardened/tests/**/test_*.py"), *ROOT.glob("shopfront/tests/**/test_*.py")]
)
SOURCE_FILES = sorted([*LIBRARY.rglob("*.py"), *(ROOT / "shopfront" / "src").rglob("*.py")])


def _tests(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    ]


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_states_its_behaviour_in_one_line(path: Path) -> None:
    """Each test function has a docstring whose summary is a single line."""
    missing = []
    for node in _tests(ast.parse(path.read_text())):
        doc = ast.get_docstring(node)
        if not doc or "\n" in doc.strip():
            missing.append(node.name)
    assert not missing, f"tests without a one-line docstring: {missing}"


def test_library_modules_declare_all() -> None:
    """Every library module except package markers declares an explicit __all__."""
    lacking = []
    for path in LIBRARY.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Name)
        }
        if "__all__" not in names and path.name != "__main__.py":
            lacking.append(str(path.relative_to(ROOT)))
    assert not lacking


@pytest.mark.parametrize("path", SOURCE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_forbidden_imports(path: Path) -> None:
    """Banned libraries and BaseHTTPMiddleware are never imported; nor is shopfront by hardened."""
    forbidden = {"passlib", "jose", "pybreaker", "sqlalchemy_utils"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
            names = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            assert module.split(".")[0] not in forbidden, module
            if LIBRARY in path.parents:
                assert not module.startswith("shopfront"), module
        assert "BaseHTTPMiddleware" not in names
