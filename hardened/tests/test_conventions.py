"""Project conventions that code review would otherwise have to catch."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import hardened
from hardened.errors import HardenedError

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "hardened" / "src" / "hardened"
TEST_FILES = sorted(
    [*ROOT.glob("hardened/tests/**/test_*.py"), *ROOT.glob("shopfront/tests/**/test_*.py")]
)
SOURCE_FILES = sorted([*LIBRARY.rglob("*.py"), *(ROOT / "shopfront" / "src").rglob("*.py")])
# Everything but the library's own white-box tests, which may reach into what they test.
IMPORTING_FILES = sorted(
    [*SOURCE_FILES, *(ROOT / "bench").rglob("*.py"), *(ROOT / "shopfront" / "tests").rglob("*.py")]
)
# Error codes: ``area.snake_case``, lower case, at least one dot, no hyphens.
ERROR_CODE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
CODE_LITERAL = re.compile(r"""\bcode\s*(?::\s*[\w\[\]]+\s*)?=\s*(["'])(.*?)\1""")


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


def _module_name(path: Path) -> str | None:
    """The dotted name of a file under a ``src`` folder; None for scripts and tests."""
    for src in (LIBRARY.parent, ROOT / "shopfront" / "src"):
        if src in path.parents:
            return ".".join(path.relative_to(src).with_suffix("").parts)
    return None


def private_imports(source: str, module: str | None) -> list[str]:
    """Imports in ``source`` (the text of ``module``) of another package's private module.

    A private module ``a.b._m`` belongs to package ``a.b``: only modules inside
    ``a.b`` may import it. Anything else must use a public name.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [node.module]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            private = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
            if private is None or parts[private].startswith("__"):
                continue
            owner = ".".join(parts[:private]) + "."
            if module is None or not (module + ".").startswith(owner):
                found.append(target)
    return found


def test_the_private_import_rule_refuses_a_sibling_and_allows_the_owner() -> None:
    """A private module is refused to siblings, shopfront and scripts, allowed to its package."""
    planted = "from hardened.stores._contracts import Script\n"
    assert private_imports(planted, "hardened.ratelimit._core") == ["hardened.stores._contracts"]
    assert private_imports(planted, "shopfront.app") == ["hardened.stores._contracts"]
    assert private_imports(planted, None) == ["hardened.stores._contracts"]
    assert private_imports("import hardened.http._csrf\n", "hardened.idempotency") != []
    assert private_imports(planted, "hardened.stores.redis") == []
    assert private_imports("from hardened._context import x\n", "hardened.http._csrf") == []
    assert private_imports("from hardened.stores import Script\n", "shopfront.app") == []


@pytest.mark.parametrize("path", IMPORTING_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_packages_private_module(path: Path) -> None:
    """Library packages, shopfront and the benchmarks use only public names of other packages."""
    assert private_imports(path.read_text(), _module_name(path)) == []


def _subclasses(cls: type[HardenedError]) -> list[type[HardenedError]]:
    found: list[type[HardenedError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_library_error_class_has_an_area_snake_case_code() -> None:
    """Each HardenedError subclass anywhere in the library declares a code like area.snake_case."""
    for module in pkgutil.walk_packages(hardened.__path__, "hardened."):
        importlib.import_module(module.name)
    classes: list[type[HardenedError]] = [HardenedError, *_subclasses(HardenedError)]
    ours = [c for c in classes if c.__module__.startswith("hardened.")]
    assert len(ours) > 20  # the walk imported the components, not just hardened.errors
    bad = {
        f"{c.__module__}.{c.__qualname__}": c.code for c in ours if not ERROR_CODE.fullmatch(c.code)
    }
    assert not bad, f"error codes not in area.snake_case: {bad}"


def _library_errors() -> list[type[HardenedError]]:
    for module in pkgutil.walk_packages(hardened.__path__, "hardened."):
        importlib.import_module(module.name)
    return [c for c in _subclasses(HardenedError) if c.__module__.startswith("hardened.")]


def test_error_classes_live_in_errors_modules() -> None:
    """The base tree is in hardened.errors and each package's refusals in its own _errors module."""
    misplaced = [
        f"{c.__module__}.{c.__qualname__}"
        for c in _library_errors()
        if c.__module__ != "hardened.errors" and not c.__module__.endswith("._errors")
    ]
    assert not misplaced, f"error classes outside an _errors module: {misplaced}"


def test_the_error_tree_in_the_errors_docstring_is_complete() -> None:
    """Every public error class appears in hardened.errors' tree with its status and code."""
    import hardened.errors

    tree = hardened.errors.__doc__ or ""
    missing = [
        f"{c.__name__} ({c.status} {c.code})"
        for c in [HardenedError, *_library_errors()]
        if not c.__name__.startswith("_") and f"{c.__name__} ({c.status} {c.code})" not in tree
    ]
    assert not missing, f"not drawn in the hardened.errors tree: {missing}"


def test_every_code_literal_in_the_sources_is_area_snake_case() -> None:
    """Every code="..." written in the library or shopfront sources is an area.snake_case code."""
    literals = [
        (f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}", m.group(2))
        for path in SOURCE_FILES
        for text in [path.read_text()]
        for m in CODE_LITERAL.finditer(text)
    ]
    assert len(literals) > 50  # the pattern finds the codes (keyword arguments and class bodies)
    bad = [(where, code) for where, code in literals if not ERROR_CODE.fullmatch(code)]
    assert not bad, f"code literals not in area.snake_case: {bad}"
