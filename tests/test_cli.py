"""The `sipdht` command as a user runs it: exit codes, one-line errors, files."""

import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from tests.harness.configs import loopback_ini


def sipdht(*args, cwd=None, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "sipdht", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def ini(tmp_path):
    return loopback_ini(tmp_path / "conf" / "s.ini", identity="../var/me")


# What a user of this release expects `sipdht --help` to offer (README "Commands").
EXPECTED_COMMANDS = ["init", "id", "run", "node", "get", "put", "listen", "lookup", "ping"]


def test_help_lists_every_subcommand():
    out = sipdht("--help")
    assert out.returncode == 0
    listed = re.findall(r"^    (\S+)  +\S", out.stdout, re.M)     # the COMMAND list
    missing = [name for name in EXPECTED_COMMANDS if name not in listed]
    assert not missing, out.stdout
    for name in EXPECTED_COMMANDS:
        assert sipdht(name, "--help").returncode == 0, name


def test_init_then_id(ini, tmp_path):
    out = sipdht("init", "--config", str(ini))
    assert out.returncode == 0, out.stderr
    account = out.stdout.strip()
    assert len(account) == 40
    key = tmp_path / "var" / "me.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sipdht("--config", str(ini), "id").stdout.strip() == account
    again = sipdht("init", "--config", str(ini))
    assert again.returncode == 1 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    forced = sipdht("init", "--force", "--config", str(ini))
    assert forced.returncode == 0 and forced.stdout.strip() != account


def test_encrypted_identity_via_env(tmp_path):
    ini = tmp_path / "s.ini"
    ini.write_text("[identity]\npath = me\nkey_bits = 2048\npassphrase_env = SIPDHT_PW\n")
    env = dict(os.environ, SIPDHT_PW="pw")
    assert sipdht("init", "--config", str(ini), env=env).returncode == 0
    assert b"ENCRYPTED" in (tmp_path / "me.pem").read_bytes()
    assert sipdht("id", "--config", str(ini), env=env).returncode == 0
    bad = sipdht("id", "--config", str(ini), env=dict(env, SIPDHT_PW="no"))
    assert bad.returncode == 1 and "wrong passphrase" in bad.stderr


def test_config_error_exit_2_one_line(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[dht]\nport = abc\n")
    out = sipdht("id", "--config", str(ini))
    assert out.returncode == 2
    assert out.stderr.strip() == f"sipdht: {ini} [dht] port: expected an integer 0-65535, got 'abc'"


def test_usage_error_exit_2():
    out = sipdht("frobnicate")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_missing_identity_exit_1(ini):
    out = sipdht("id", "--config", str(ini))
    assert out.returncode == 1 and "sipdht init" in out.stderr and "Traceback" not in out.stderr


def interrupted(argv: list[str], wait) -> tuple[int, str]:
    """Start `sipdht ARGV`, call `wait(proc)`, send SIGINT: (exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "sipdht", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait(proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_run_creates_identity_and_stops_on_sigint(ini, tmp_path):
    def started(proc) -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "var" / "me.pem").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        assert proc.poll() is None, proc.stderr.read()

    rc, err = interrupted(["run", "--config", str(ini)], started)
    assert rc == 0, err
    assert "Traceback" not in err
    assert "account " in err


def test_the_log_file_is_private(tmp_path):
    """Before: the [log] file was created 0644 (it names accounts and peers' addresses)."""
    ini = loopback_ini(tmp_path / "s.ini", extra="file = sipdht.log\n")
    assert sipdht("init", "--config", str(ini)).returncode == 0
    log = tmp_path / "sipdht.log"
    assert log.exists() and stat.S_IMODE(log.stat().st_mode) == 0o600


@pytest.mark.parametrize("command", ["run", "node"])
def test_a_signal_during_start_up_is_a_clean_stop(ini, command):
    """Before: SIGINT while the modules were loading killed `sipdht run` (exit -2, seen in
    CI when a test stopped an agent it had just started)."""
    assert sipdht("init", "--config", str(ini)).returncode == 0
    # 0.1 s: while the modules are still loading
    rc, err = interrupted([command, "--config", str(ini)], lambda proc: time.sleep(0.1))
    assert rc == 0 and "Traceback" not in err, err
