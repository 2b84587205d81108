"""Joining through bootstrap hosts: the public default, never reached by a test; a host that
cannot be resolved or does not answer is named in one log line and retried.

Unresolvable names are RFC 6761 `.invalid` ones; the only peers are loopback sockets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sipdht.cli import build_parser
from sipdht.commands.dht import node_config
from sipdht.config import PUBLIC_BOOTSTRAP, load_config
from sipdht.dht import bootstrap
from sipdht.dht.node import DhtNode, NodeConfig
from tests.harness import netlab as nl
from tests.harness.configs import loopback_ini

UNRESOLVABLE = "bootstrap.invalid"
TEST_NETS = [ipaddress.ip_network(n) for n in
             ("127.0.0.0/8", "198.51.100.0/24", "203.0.113.0/24", "10.200.0.0/16")]


# --- the default, and the configs tests use --------------------------------------------------


def test_default_config_joins_the_public_network(tmp_path):
    from sipdht import commands

    commands.load_all()         # importing a command module registers its commands

    assert PUBLIC_BOOTSTRAP == ("bootstrap.jami.net", 4222)
    assert load_config(None).dht.bootstrap == [PUBLIC_BOOTSTRAP]
    shipped = load_config(Path(__file__).resolve().parent.parent / "conf" / "sipdht.ini")
    assert shipped.dht.bootstrap == [PUBLIC_BOOTSTRAP]
    args = build_parser().parse_args(["node"])
    assert node_config(args, load_config(None), client=False).bootstrap == [PUBLIC_BOOTSTRAP]
    empty = tmp_path / "e.ini"
    empty.write_text("[dht]\nbootstrap =\n")
    assert load_config(empty).dht.bootstrap == []        # removable in the INI


def _test_addresses_only(hosts: list[tuple[str, int]]) -> None:
    for host, _port in hosts:
        assert any(ipaddress.ip_address(host) in net for net in TEST_NETS), host


def test_harness_configs_never_use_the_public_bootstrap(tmp_path):
    from bench._common import write_sipdht_config

    inis = [loopback_ini(tmp_path / "a.ini"),
            loopback_ini(tmp_path / "b.ini", bootstrap="127.0.0.1:4000"),
            nl.agent_config(tmp_path, "alice"), nl.agent_config(tmp_path, "bob"),
            write_sipdht_config(tmp_path)]
    for ini in inis:
        hosts = load_config(ini).dht.bootstrap
        assert PUBLIC_BOOTSTRAP not in hosts, ini
        _test_addresses_only(hosts)


def test_an_accidental_public_lookup_is_refused(no_public_bootstrap):
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo(PUBLIC_BOOTSTRAP[0], 4222)
    assert no_public_bootstrap == [PUBLIC_BOOTSTRAP[0]]
    no_public_bootstrap.clear()      # this test asked on purpose


# --- the joiner ------------------------------------------------------------------------------


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(bootstrap, "RETRY_FIRST", 0.2)
    monkeypatch.setattr(bootstrap, "RETRY_MAX", 0.4)
    monkeypatch.setattr(bootstrap, "CHECK_CONNECTED", 0.1)
    monkeypatch.setattr(bootstrap, "RESOLVE_TIMEOUT", 0.3)   # a slow resolver still fails fast


def _node(boot: list[tuple[str, int]]) -> DhtNode:
    return DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=boot))


def _warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == bootstrap.log.name and r.levelno == logging.WARNING]


async def test_unresolvable_host_is_named_once_per_attempt_and_retried(caplog, fast_retries):
    with caplog.at_level(logging.INFO):
        node = _node([(UNRESOLVABLE, 4222)])
        await node.start()
        await asyncio.sleep(1.0)
        stats = node.stats()
        await node.stop()
    lines = _warnings(caplog)
    assert len(lines) >= 2                                   # retried, not given up
    for r in lines:
        msg = r.getMessage()
        assert msg.startswith(f"bootstrap {UNRESOLVABLE}:4222: cannot resolve the name (")
        assert "retrying in" in msg and "\n" not in msg and r.exc_info is None
    assert stats.get("sent", 0) == 0                 # nothing was sent anywhere


async def test_silent_host_is_named_with_its_address(caplog, fast_retries):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # never answers
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        with caplog.at_level(logging.INFO):
            node = _node([("localhost", port)])
            await node.start()
            await asyncio.sleep(0.7)
            await node.stop()
        silent.settimeout(0)
        assert silent.recv(2048)                             # it was pinged
    finally:
        silent.close()
    msgs = [r.getMessage() for r in _warnings(caplog)]
    assert msgs and msgs[0] == (f"bootstrap localhost:{port} (127.0.0.1:{port}): no answer "
                                "within 0.2 s; retrying in 0.4 s")


async def test_joins_once_the_name_resolves(caplog, fast_retries, monkeypatch):
    """DNS fails twice (no network yet), then answers: the node joins without a restart."""
    calls = []
    with caplog.at_level(logging.INFO):
        peer = _node([])
        await peer.start()

        async def flaky(host, port, families):
            calls.append(host)
            if len(calls) <= 2:
                raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
            return [("127.0.0.1", peer.port)]

        monkeypatch.setattr(bootstrap, "resolve", flaky)
        node = _node([(UNRESOLVABLE, 4222)])
        await node.start()
        try:
            joined = await node.wait_connected(5.0)
            await asyncio.sleep(2 * bootstrap.POLL)          # the joiner notices it too
        finally:
            await node.stop()
            await peer.stop()
    assert joined
    assert calls == [UNRESOLVABLE] * 3
    msgs = [r.getMessage() for r in caplog.records if r.name == bootstrap.log.name]
    assert msgs[:2] == [f"bootstrap {UNRESOLVABLE}:4222: cannot resolve the name (Temporary "
                        f"failure in name resolution); retrying in {w:g} s" for w in (0.2, 0.4)]
    assert msgs[2] == "bootstrap: the DHT answered after all"


def test_cli_names_the_unreachable_host_without_a_traceback(tmp_path):
    ini = loopback_ini(tmp_path / "s.ini")
    out = subprocess.run([sys.executable, "-m", "sipdht", "get", "--config", str(ini),
                          "-b", UNRESOLVABLE, "--timeout", "2", "some-key"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert "Traceback" not in out.stderr
    named = [line for line in out.stderr.splitlines() if f"{UNRESOLVABLE}:4222" in line]
    assert len(named) == 1 and "cannot resolve the name" in named[0], out.stderr
    assert out.stderr.strip().splitlines()[-1] == "sipdht: no DHT node answered within 2 s"
