"""`.ci/run` as CI runs it, with stand-ins for the venv's tools (no install, no apt, no suite):
lint runs before the tests, the strict-peers switch reaches pytest, and pytest's own exit code
(including 5, "no tests collected") is what CI sees."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def ci(tmp_path):
    """A copy of the CI entry point and Makefile whose venv tools only log their calls."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed: CI needs it for `.ci/run`")
    (tmp_path / ".ci").mkdir()
    shutil.copy2(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        shutil.copy2(REPO / name, tmp_path / name)
    venv, fake = tmp_path / ".venv" / "bin", tmp_path / "fakebin"
    venv.mkdir(parents=True)
    fake.mkdir()
    (tmp_path / ".venv" / ".installed").touch()           # newer than setup.cfg: no install
    _script(fake / "apt-get", 'echo "apt-get" >> calls')  # make test-peers never reaches apt

    def run(pytest_rc: int = 0, lint_rc: int = 0) -> tuple[int, list[str]]:
        _script(venv / "python", 'if [ "$1 $2" = "-m pytest" ]; then\n'
                f'  echo "pytest strict=$SIPDHT_STRICT_PEERS" >> calls; exit {pytest_rc}\nfi\n'
                'echo "python $*" >> calls')
        _script(venv / "ruff", f'echo "ruff $*" >> calls; exit {lint_rc}')
        _script(venv / "mypy", 'echo "mypy $*" >> calls')
        _script(venv / "lint-imports", 'echo "lint-imports $*" >> calls')
        env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
        env.pop("SIPDHT_STRICT_PEERS", None)
        for var in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS"):   # when run under `make test`
            env.pop(var, None)
        out = subprocess.run([str(tmp_path / ".ci" / "run")], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        calls = (tmp_path / "calls").read_text().splitlines()
        (tmp_path / "calls").unlink()
        return out.returncode, [c for c in calls if c != "apt-get"]

    return run


@pytest.mark.parametrize("pytest_rc", [0, 1, 5])
def test_pytest_exit_code_passes_through(ci, pytest_rc):
    rc, calls = ci(pytest_rc=pytest_rc)
    assert rc == pytest_rc
    assert calls == ["ruff check sipdht tests bench plugins tools", "mypy sipdht",
                     "lint-imports --no-cache --no-logo setup.cfg",
                     "python tools/import_cycles.py sipdht", "pytest strict=1"]


def test_lint_failure_stops_before_the_suite(ci):
    rc, calls = ci(lint_rc=1)
    assert rc != 0 and calls == ["ruff check sipdht tests bench plugins tools"]
