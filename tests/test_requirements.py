"""The missing-peer helper: a skip on a developer's machine, a failure under CI."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.harness import netlab as nl
from tests.harness import requirements as req

REPO = Path(__file__).resolve().parent.parent
MISSING = "sipdht-no-such-peer-binary"


@pytest.fixture(params=[True, False], ids=["strict", "not-strict"])
def strict(request, monkeypatch):
    if request.param:
        monkeypatch.setenv(req.STRICT_ENV, "1")
    else:
        monkeypatch.delenv(req.STRICT_ENV, raising=False)
    return request.param


def outcome(check, *args) -> tuple[str, str]:
    try:
        check(*args)
    except pytest.fail.Exception as exc:
        return "failed", str(exc)
    except pytest.skip.Exception as exc:
        return "skipped", str(exc)
    return "passed", ""


def test_missing_binary_fails_only_when_strict(strict):
    kind, reason = outcome(req.require_binary, MISSING, "some-package")
    assert kind == ("failed" if strict else "skipped")
    assert f"{MISSING} is not installed: apt-get install some-package" in reason


def test_present_binary_passes(strict):
    assert outcome(req.require_binary, "sh") == ("passed", "")


def test_not_root_fails_only_when_strict(strict, monkeypatch):
    monkeypatch.setattr(req.os, "geteuid", lambda: 1000)
    kind, reason = outcome(req.require_root)
    assert kind == ("failed" if strict else "skipped") and "needs root" in reason


def test_netns_unavailable_fails_only_when_strict(strict, monkeypatch):
    monkeypatch.setattr(nl, "netns_unavailable_reason", lambda: "`ip netns add` failed: EPERM")
    kind, reason = outcome(nl.require_netns)
    assert kind == ("failed" if strict else "skipped") and "EPERM" in reason


@pytest.mark.parametrize("value", ["", "0", "no", "false"])
def test_strict_off_values(monkeypatch, value):
    monkeypatch.setenv(req.STRICT_ENV, value)
    assert not req.strict()


def test_ci_entry_point_sets_strict():
    assert f"export {req.STRICT_ENV}=1" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("env_value, code, summary", [("1", 1, "1 failed"), (None, 0, "1 skipped")])
def test_pytest_run_outcome(tmp_path, env_value, code, summary):
    """What CI observes: pytest's exit code and summary for a test whose peer is missing."""
    (tmp_path / "test_peer.py").write_text(textwrap.dedent(f"""
        from tests.harness.requirements import require_binary

        def test_needs_peer():
            require_binary("{MISSING}")
    """))
    env = {k: v for k, v in os.environ.items() if k != req.STRICT_ENV}
    env["PYTHONPATH"] = str(REPO)
    if env_value is not None:
        env[req.STRICT_ENV] = env_value
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == code, out.stdout + out.stderr
    assert summary in out.stdout
