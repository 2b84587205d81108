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


# --- what `lookup` and the node commands build on, without a network -------------------------


def test_lookup_prints_the_account_then_its_devices():
    import io

    from sipdht.account import Device, Lookup
    from sipdht.commands.agent import print_lookup

    acct = "a" * 40
    found = Lookup(acct, (Device(acct, "d1", True, 12.4, protocols=("sipdht/1",)),
                          Device(acct, "d2", False, 300.0, protocols=("sipdht/1",))))
    out = io.StringIO()
    assert print_lookup(found, out) == 0
    assert out.getvalue() == (f"{acct} online record-age=12s\n"
                              "  device d1 online age=12s sipdht/1\n"
                              "  device d2 offline age=300s sipdht/1\n")
    out = io.StringIO()
    assert print_lookup(Lookup(acct, found.devices[1:]), out) == 1
    assert out.getvalue().startswith(f"{acct} offline record-age=300s\n")
    out = io.StringIO()
    assert print_lookup(Lookup(acct), out) == 1
    assert out.getvalue() == f"{acct} offline no-record\n"


async def test_agent_lookup_asks_every_account_type(tmp_path):
    """The agent answers `lookup` through sipdht.account's AccountType.resolve, not through
    one account type's own classes."""
    from sipdht import identity
    from sipdht.account import Device
    from sipdht.agent import Agent
    from sipdht.config import load_config
    from sipdht.dht.node import NodeConfig

    class Accounts:
        def __init__(self, name: str, devices: list[Device]) -> None:
            self.name, self.devices, self.asked = name, devices, []

        async def resolve(self, account: str) -> list[Device]:
            self.asked.append(account)
            return self.devices

    acct = "b" * 40
    config = load_config(loopback_ini(tmp_path / "s.ini"))
    agent = Agent(config, identity.generate(identity.MIN_KEY_BITS), NodeConfig(), serve=False)
    one = Accounts("one/1", [Device(acct, "d1", False, 50.0)])
    two = Accounts("two/1", [Device(acct, "d2", True, 5.0)])
    agent.pool.accounts = [one, two]
    found = await agent.lookup(acct)
    assert one.asked == two.asked == [acct]
    assert [d.id for d in found.devices] == ["d1", "d2"]
    assert found.online and found.record_age == 5.0


def test_a_node_config_is_built_from_the_dht_section_without_argparse(tmp_path):
    from sipdht.commands import load_all
    from sipdht.commands.base import UsageError
    from sipdht.commands.dht import node_config
    from sipdht.config import load_config
    from sipdht.dht.node import NodeConfig
    from sipdht.dht.storage import EditPolicy

    ini = tmp_path / "d.ini"
    ini.write_text("[dht]\nport = 4333\nnetwork = 7\nbootstrap = 203.0.113.1:4222\n"
                   "max_storage_mb = 2\nrate_limit = true\n")
    dht = load_config(ini).dht
    cfg = NodeConfig.from_config(dht)
    assert (cfg.port, cfg.network, cfg.bootstrap, cfg.max_storage) == \
        (4333, 7, [("203.0.113.1", 4222)], 2 * 1024 * 1024)
    assert cfg.rate_limit and not cfg.client_only and isinstance(cfg.policy, EditPolicy)
    client = NodeConfig.from_config(dht, client=True, network=0, bootstrap=[("::1", 5)],
                                    rate_limit=False)
    assert (client.port, client.network, client.bootstrap) == (0, 0, [("::1", 5)])
    assert client.client_only and not client.rate_limit
    assert NodeConfig.from_config(dht, client=True, port=4444).port == 4444

    load_all()
    from sipdht.cli import build_parser

    args = build_parser().parse_args(["node", "-p", "0", "-n", "3", "-U"])
    via_cli = node_config(args, load_config(ini), client=False)
    assert (via_cli.port, via_cli.network, via_cli.rate_limit) == (0, 3, False)
    with pytest.raises(UsageError, match="--port: expected 0-65535, got 70000"):
        node_config(build_parser().parse_args(["node", "-p", "70000"]), load_config(ini), False)
