"""How tests share code: helpers are imported from tests/harness/ (plain modules), fixtures
come from conftest.py files through pytest. No module imports a test module (``test_*``) or
a conftest: importing one runs its tests' module code twice and registers its fixtures again,
once per importer (a session fixture then exists twice)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, as an absolute dotted name (relative imports resolved,
    ``from package import module`` counted as the module)."""
    package = ".".join(path.relative_to(TESTS.parent).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def is_test_or_conftest(module: str) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return module.startswith("tests.") and (leaf.startswith("test_") or leaf == "conftest")


def forbidden_imports() -> set[tuple[str, str]]:
    return {(path.relative_to(TESTS).as_posix(), module)
            for path in sorted(TESTS.rglob("*.py"))
            for module in imported_modules(path) if is_test_or_conftest(module)}


def test_no_module_imports_a_test_module_or_a_conftest():
    assert forbidden_imports() == set()


def test_the_check_sees_every_kind_of_import(tmp_path, monkeypatch):
    """Absolute, relative and ``from package import test_module`` forms are all caught."""
    pkg = tmp_path / "tests" / "unit"
    pkg.mkdir(parents=True)
    lines = ["from tests.unit.test_a import x", "from .test_b import y", "from . import test_c",
             "import tests.interop.test_d", "from tests.netns.conftest import netlab",
             "from tests.harness.engine import feed", "from .helpers import z"]
    (pkg / "test_e.py").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sys.modules[__name__], "TESTS", tmp_path / "tests")
    bad = {module for _, module in forbidden_imports()}
    assert {"tests.unit.test_a", "tests.unit.test_b", "tests.unit.test_c",
            "tests.interop.test_d", "tests.netns.conftest"} <= bad
    assert not any("harness" in m or "helpers" in m for m in bad)
