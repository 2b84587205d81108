"""The `sipdht` DHT commands as a user runs them, against real dhtnode processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.harness.configs import loopback_ini
from tests.harness.dhtnode import Dhtnode

pytestmark = pytest.mark.interop


def sipdht(*args, timeout=60, config=None):
    cmd = [sys.executable, "-m", "sipdht", *args]
    if config:
        cmd += ["--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def net(dhtnode_bin):
    d0 = Dhtnode(identity=True).start()     # only d0 can sign / encrypt
    d1 = Dhtnode(bootstrap=f"127.0.0.1:{d0.port}").start()
    yield d0, d1
    d1.stop()
    d0.stop()


@pytest.fixture
def ini(tmp_path):
    return loopback_ini(tmp_path / "s.ini")


def test_put_get_listen_and_exit_codes(net, ini):
    d0, d1 = net
    boot = ["-b", f"127.0.0.1:{d0.port}"]
    out = sipdht("put", *boot, "cli-key", "hello from the cli", config=ini)
    assert out.returncode == 0, out.stderr
    vid, vtype, text = out.stdout.strip().split(" ", 2)
    assert len(vid) == 16 and vtype == "0" and text == "hello from the cli"
    assert "stored on" in out.stderr
    m = d1.cmd("g cli-key")
    d1.wait_for('"hello from the cli"', 15, m)

    got = sipdht("get", *boot, "cli-key", config=ini)
    assert got.returncode == 0 and got.stdout.strip() == f"{vid} 0 hello from the cli"
    none = sipdht("get", *boot, "--timeout", "3", "nothing-here", config=ini)
    assert none.returncode == 1 and none.stdout == ""

    listen = subprocess.Popen([sys.executable, "-m", "sipdht", "listen", *boot, "--count", "1",
                               "--timeout", "20", "--config", str(ini), "cli-listen"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        d1.cmd("p cli-listen pushed")
        out, err = listen.communicate(timeout=30)
    finally:
        if listen.poll() is None:
            listen.kill()
            listen.wait()
    assert listen.returncode == 0, err
    assert out.strip().endswith(" 0 pushed")


def test_usage_errors(ini):
    assert sipdht("get", "x", config=ini).returncode == 2          # no bootstrap anywhere
    assert sipdht("get", "-b", "nohost:notaport", "x", config=ini).returncode == 2


def test_signed_and_encrypted_markers(net, ini):
    d0, d1 = net
    boot = ["-b", f"127.0.0.1:{d0.port}"]
    assert sipdht("init", config=ini).returncode == 0
    me = sipdht("id", config=ini).stdout.strip()
    m = d0.cmd("s cli-signed by-dhtnode")
    d0.wait_for("Put signed: success", 10, m)
    got = sipdht("get", *boot, "cli-signed", config=ini)
    assert got.returncode == 0
    assert got.stdout.strip().endswith(f" 0 by-dhtnode signed-by={d0.key_id}")

    put = sipdht("put", "--signed", *boot, "cli-signed2", "by-sipdht", config=ini)
    assert put.returncode == 0, put.stderr
    got = sipdht("get", *boot, "cli-signed2", config=ini)
    assert got.stdout.strip().endswith(f" 0 by-sipdht signed-by={me}")
    m = d1.cmd("g cli-signed2")
    d1.wait_for(r'signed \(v\d\) data\(text/plain\):"by-sipdht"', 10, m)

    enc = sipdht("put", *boot, "--encrypt-to", d0.key_id, "cli-enc", "for-d0", config=ini)
    assert enc.returncode == 0, enc.stderr
    m = d0.cmd("g cli-enc")
    d0.wait_for(r'decrypted data\(text/plain\):"for-d0"', 10, m)

    # The agent publishes our certificate, so dhtnode can encrypt to our account id.
    loopback_ini(ini, bootstrap=f"127.0.0.1:{d0.port}")
    agent = subprocess.Popen([sys.executable, "-m", "sipdht", "run", "--config", str(ini)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:   # until the agent's certificate is on the DHT
            m = d0.cmd(f"e cli-enc2 {me} for-sipdht")
            if d0.wait_for("Put encrypted: (success|failure)", 10, m).group(1) == "success":
                break
            assert time.monotonic() < deadline, "dhtnode never found our certificate"
            time.sleep(1.0)
        got = sipdht("get", *boot, "cli-enc2", config=ini)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip().endswith(f" 0 for-sipdht signed-by={d0.key_id} encrypted")
    finally:
        agent.send_signal(signal.SIGINT)
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0
