"""Validate the namespace NAT harness itself (tests/harness/netlab.py).

Every probe runs inside a namespace; nothing is sent from the root namespace.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.harness import netlab as nl

pytestmark = pytest.mark.netns

ECHO_PORTS = (5000, 5001)


@pytest.fixture(scope="module")
def echo(netlab):
    """UDP reflector in pub on two ports: replies with the "IP:PORT" source it saw."""
    server = nl.UdpEcho(netlab, ports=ECHO_PORTS)
    try:
        yield server
    finally:
        server.stop()


def assert_silent(agent: nl.UdpAgent, sock: int, timeout: float = 0.5) -> None:
    r = agent.recv(sock, timeout=timeout)
    assert r.get("error") == "timeout", f"expected nothing, got {r}"


def mapped_ports(agent: nl.UdpAgent, sock: int, ports=ECHO_PORTS) -> list[str]:
    """Send from one local socket to each echo port; the "IP:PORT" pub saw for each."""
    seen = []
    for port in ports:
        agent.send(sock, "probe", (nl.PUB_IP, port))
        r = agent.recv(sock, timeout=2.0)
        assert r["ok"], f"no echo from {nl.PUB_IP}:{port}: {r}"
        assert r["addr"] == [nl.PUB_IP, port]
        seen.append(r["data"])
    return seen


@pytest.mark.parametrize("host,wan_ip", [("alice", nl.NAT_A_IP), ("bob", nl.NAT_B_IP)])
def test_host_reaches_pub_through_its_nat(netlab, echo, host, wan_ip):
    assert netlab.ping(host, nl.PUB_IP), f"{host} cannot ping {nl.PUB_IP}"
    # the ping helper can fail: nobody owns .99 (no ARP answer)
    assert not netlab.ping(host, "198.51.100.99", timeout=0.3)
    with nl.UdpAgent(netlab, host) as agent:
        sock = agent.bind()
        (seen,) = mapped_ports(agent, sock, ECHO_PORTS[:1])
    # masqueraded to the router's WAN address; cone NAT keeps the source port
    assert seen == f"{wan_ip}:{sock}"


def test_unsolicited_inbound_udp_is_dropped(netlab, set_nat):
    with nl.UdpAgent(netlab, "alice") as alice, nl.UdpAgent(netlab, "pub") as pub:
        a_sock = alice.bind()
        # pub knocks at natA's public address on the port alice uses: cone NAT drops it ...
        knock = pub.bind(connect=(nl.NAT_A_IP, a_sock))
        assert pub.send(knock, "knock")["ok"]
        assert_silent(alice, a_sock)
        # ... silently (gotcha G1: INPUT DROP, so no ICMP port unreachable, no ECONNREFUSED)
        r = pub.recv(knock, timeout=0.2)
        assert r.get("error") == "timeout", f"natA answered the unsolicited datagram: {r}"

        # G1 regression: the dropped knock left no conntrack entry, so when alice now talks to
        # that very peer, natA still maps her to the same port (not a clash-induced new one)
        assert alice.send(a_sock, "hello", (nl.PUB_IP, knock))["ok"]
        r = pub.recv(knock, timeout=2.0)  # (knock is connected: other source ports are filtered)
        assert r["ok"] and r["addr"] == [nl.NAT_A_IP, a_sock], (
            f"natA did not keep alice's port {a_sock} for this peer: {r}\n{netlab.conntrack('A')}")
        assert pub.send(knock, "reply")["ok"]
        r = alice.recv(a_sock, timeout=2.0)
        assert r["ok"] and r["data"] == "reply" and r["addr"] == [nl.PUB_IP, knock], r

        # port-restricted: another pub port still cannot get in
        other = pub.bind()
        pub.send(other, "intruder", (nl.NAT_A_IP, a_sock))
        assert_silent(alice, a_sock)

        # the router does not forward to its LAN either, even if pub routes 10.200.1.0/24 to it
        netlab.run("pub", ["ip", "route", "add", nl.LAN_A, "via", nl.NAT_A_IP], check=True)
        try:
            pub.send(other, "direct", (nl.ALICE_IP, a_sock))
            assert_silent(alice, a_sock)
        finally:
            netlab.run("pub", ["ip", "route", "del", nl.LAN_A], check=True)

        # control: with a full-cone NAT the same kind of unsolicited datagram does get in
        set_nat(mode_a="fullcone")
        third = pub.bind()
        pub.send(third, "welcome", (nl.NAT_A_IP, a_sock))
        r = alice.recv(a_sock, timeout=2.0)
        assert r["ok"] and r["data"] == "welcome" and r["addr"] == [nl.PUB_IP, third], r


@pytest.mark.parametrize("mode,symmetric", [
    ("cone", False), ("fullcone", False), ("symmetric", True), ("random", True),
])
def test_nat_mapping_per_mode(netlab, echo, set_nat, mode, symmetric):
    set_nat(mode_a=mode)
    assert netlab.nat_mode("A") == mode
    with nl.UdpAgent(netlab, "alice") as agent:
        sock = agent.bind()
        seen = mapped_ports(agent, sock)
    assert all(s.startswith(f"{nl.NAT_A_IP}:") for s in seen), seen
    if symmetric:  # a new (random) port per destination
        assert len(set(seen)) == len(seen), seen
    else:          # endpoint-independent mapping: one port, the original one
        assert seen == [f"{nl.NAT_A_IP}:{sock}"] * len(seen), seen


GATHER_SCRIPT = r"""
import asyncio, json, sys
import aioice

async def main(ip, port, user, password):
    conn = aioice.Connection(ice_controlling=True, stun_server=(ip, port), turn_server=(ip, port),
                             turn_username=user, turn_password=password, use_ipv6=False)
    try:
        await asyncio.wait_for(conn.gather_candidates(), 10)
        print(json.dumps([{"type": c.type, "host": c.host, "port": c.port,
                           "related": c.related_address} for c in conn.local_candidates]))
    finally:
        await conn.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
"""


@pytest.mark.interop
@pytest.mark.parametrize("host,lan_ip,wan_ip", [
    ("alice", nl.ALICE_IP, nl.NAT_A_IP), ("bob", nl.BOB_IP, nl.NAT_B_IP),
])
def test_coturn_gives_srflx_and_relay(netlab, coturn, host, lan_ip, wan_ip):
    ip, port = coturn.address
    r = netlab.python(host, GATHER_SCRIPT, ip, port, host, nl.TURN_USERS[host], timeout=20)
    assert r.returncode == 0, r.stderr
    cands = json.loads(r.stdout.strip().splitlines()[-1])
    by_type = {t: [c for c in cands if c["type"] == t] for t in ("host", "srflx", "relay")}
    assert [c["host"] for c in by_type["host"]] == [lan_ip], cands
    assert [(c["host"], c["related"]) for c in by_type["srflx"]] == [(wan_ip, lan_ip)], cands
    assert [c["host"] for c in by_type["relay"]] == [nl.PUB_IP], cands
    assert coturn.min_port <= by_type["relay"][0]["port"] <= coturn.max_port


def sipdht(netlab, host, ini, *args, timeout=25):
    argv = [sys.executable, "-m", "sipdht", *args[:1], "--config", str(ini),
            "-b", f"{nl.PUB_IP}:{nl.DHT_PORT}", "--timeout", "10", *args[1:]]
    return netlab.run(host, argv, timeout=timeout)


@pytest.mark.interop
def test_dht_bootstrap_reachable_from_behind_nat(netlab, dht_bootstrap, tmp_path):
    ini = tmp_path / "sipdht.ini"
    ini.write_text(f"[identity]\npath = {tmp_path / 'id'}\n"
                   "[dht]\nipv6 = no\nport = 0\nstate_file =\n[log]\nstats_interval = 0\n")
    put = sipdht(netlab, "alice", ini, "put", "netlab-key", "hello")
    assert put.returncode == 0, put.stderr
    assert put.stdout.split(" ", 2)[2].strip() == "hello", put.stdout
    for host in ("alice", "bob"):  # bob: another LAN behind another NAT
        got = sipdht(netlab, host, ini, "get", "netlab-key")
        assert got.returncode == 0, got.stderr
        assert [line.split(" ", 2)[2] for line in got.stdout.splitlines()] == ["hello"], got.stdout
