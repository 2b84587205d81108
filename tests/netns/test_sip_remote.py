"""A softphone on another host: refused with 403 unless [sip] allow_remote, and then (with
[sip] username/password) it must pass digest authentication to REGISTER.

The other host is a network namespace joined to this one by a veth pair in 10.200.0.0/16
that the test creates and removes; sipsak runs inside it."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.harness.memlink import MemPool
from tests.harness.netlab import require_netns
from tests.harness.requirements import require_binary, require_root
from tests.harness.sip import ALICE, run, start_gateway

pytestmark = pytest.mark.netns

GW_IP, PHONE_IP = "10.200.77.1", "10.200.77.2"


@pytest.fixture
def phone_ns():
    require_root()
    require_netns()
    require_binary("sipsak")
    ns, veth = f"sdsip{os.getpid()}", f"vs{os.getpid()}"
    cmds = [["ip", "netns", "add", ns],
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"],
            ["ip", "link", "set", veth + "p", "netns", ns],
            ["ip", "addr", "add", f"{GW_IP}/30", "dev", veth],
            ["ip", "link", "set", veth, "up"],
            ["ip", "-n", ns, "addr", "add", f"{PHONE_IP}/30", "dev", veth + "p"],
            ["ip", "-n", ns, "link", "set", veth + "p", "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"]]
    try:
        for cmd in cmds:
            subprocess.run(cmd, check=True, timeout=10, capture_output=True)
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", veth], timeout=10, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], timeout=10, capture_output=True)


def sipsak(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, "sipsak", "-vv", *args]


async def test_remote_client_refused_by_default(phone_ns) -> None:
    gw = await start_gateway(MemPool(ALICE, {}), ALICE, host=GW_IP)
    try:
        rc, out = await run(sipsak(phone_ns, "-s", f"sip:gw@{GW_IP}:{gw.port}"), 15)
        assert rc != 0 and "403" in out, out
        assert gw.stats["refused_remote"] >= 1
        rc, out = await run(sipsak(phone_ns, "-U", "-C", f"sip:x@{PHONE_IP}:5999",
                                   "-s", f"sip:x@{GW_IP}:{gw.port}"), 15)
        assert rc != 0 and "403" in out, out
        assert gw.registrar.bindings(gw.now()) == []
    finally:
        await gw.stop()


async def test_remote_client_allowed_with_digest(phone_ns) -> None:
    gw = await start_gateway(MemPool(ALICE, {}), ALICE, host=GW_IP, allow_remote=True,
                             username="desk", password="s3cret")
    try:
        rc, out = await run(sipsak(phone_ns, "-s", f"sip:gw@{GW_IP}:{gw.port}"), 15)
        assert rc == 0 and "200 OK" in out, out
        register = ["-U", "-x", "300", "-u", "desk", "-C", f"sip:desk@{PHONE_IP}:5999",
                    "-s", f"sip:desk@{GW_IP}:{gw.port}"]
        rc, out = await run(sipsak(phone_ns, *register, "-a", "wrong"), 15)
        assert rc != 0 and "401" in out, out
        assert gw.registrar.bindings(gw.now()) == []
        rc, out = await run(sipsak(phone_ns, *register, "-a", "s3cret"), 15)
        assert rc == 0, out
        [binding] = gw.registrar.bindings(gw.now())
        assert binding.dest.addr == (PHONE_IP, 5999)
    finally:
        await gw.stop()
