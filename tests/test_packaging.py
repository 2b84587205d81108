"""What `pip install .` puts on a user's machine: only the sipdht package, and only the
dependencies sipdht imports."""

import configparser
import re
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _lines(raw: str) -> list[str]:
    return [line.strip() for line in raw.splitlines() if line.strip()]


def test_only_sipdht_is_installed_as_a_top_level_package():
    cfg = _setup_cfg()
    assert cfg["options"]["packages"].strip() == "find:"
    find = cfg["options.packages.find"] if cfg.has_section("options.packages.find") else {}
    packages = find_packages(str(REPO), include=_lines(find.get("include", "*")) or ("*",),
                             exclude=_lines(find.get("exclude", "")))
    assert "sipdht" in packages and "sipdht.dht" in packages
    assert {p.split(".")[0] for p in packages} == {"sipdht"}, packages


def test_every_dependency_is_imported_by_sipdht():
    requires = [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]
                for r in _lines(_setup_cfg()["options"]["install_requires"])]
    source = "\n".join(p.read_text() for p in (REPO / "sipdht").rglob("*.py"))
    unused = [dist for dist in requires
              if not re.search(rf"^\s*(import|from) {re.escape(dist.replace('-', '_'))}\b", source, re.M)]
    assert requires and unused == []


def test_the_version_is_written_once():
    """setup.cfg reads it from the package, so `sipdht --version` and the installed
    distribution cannot disagree."""
    from importlib.metadata import version

    import sipdht

    assert _setup_cfg()["metadata"]["version"].strip() == "attr: sipdht.__version__"
    assert version("sipdht") == sipdht.__version__
