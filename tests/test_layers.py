"""The checks `make lint` runs on the import graph: the layer contracts (lint-imports with
setup.cfg's [importlinter]) and tools/import_cycles.py. Each is shown to catch what it is
there for, so a green `make lint` means something."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _cycles_tool():
    spec = importlib.util.spec_from_file_location("import_cycles", REPO / "tools" / "import_cycles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cycles_are_the_groups_that_reach_each_other():
    tool = _cycles_tool()
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"a"}}
    assert tool.cycles(graph) == [["a", "b", "c"], ["e"]]
    assert tool.cycles({"a": {"b"}, "b": set()}) == []


def test_a_cycle_through_a_lazy_and_a_type_only_import_fails_the_check(tmp_path, monkeypatch,
                                                                       capsys):
    package = tmp_path / "knot"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("def later():\n    from . import c\n")
    (package / "c.py").write_text("from typing import TYPE_CHECKING\n\n"
                                  "if TYPE_CHECKING:\n    from .a import X\n")
    (package / "d.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tool = _cycles_tool()
    assert tool.main(["knot"]) == 1
    out = capsys.readouterr().out
    assert "import cycle between 3 modules: knot.a, knot.b, knot.c" in out
    assert "knot.b -> knot.c (line 2)" in out and "knot.d" not in out
    (package / "c.py").write_text("")
    assert tool.main(["knot"]) == 0


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", "setup.cfg"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def test_the_package_keeps_the_layer_contract():
    kept = _lint_imports(REPO)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "Contracts: 4 kept, 0 broken." in kept.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("dht/values.py", "import sipdht.v1.link", "dht/ is the bottom"),
    ("sip/sdp.py", "import msgpack", "sip/ speaks SIP over links"),
    ("v1/framing.py", "from sipdht.dht import infohash", "v1's link, sealing, framing and ICE"),
    ("tasks.py", "def later():\n    from sipdht.commands import base", "only the command line"),
])
def test_the_layer_contract_fails_on_a_forbidden_import(tmp_path, module, line, broken):
    shutil.copytree(REPO / "sipdht", tmp_path / "sipdht",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "setup.cfg", tmp_path / "setup.cfg")
    with open(tmp_path / "sipdht" / module, "a") as f:
        f.write(f"\n{line}\n")
    failed = _lint_imports(tmp_path)
    assert failed.returncode != 0
    assert broken in failed.stdout and "BROKEN" in failed.stdout, failed.stdout
    assert "sipdht." + module.removesuffix(".py").replace("/", ".") in failed.stdout
