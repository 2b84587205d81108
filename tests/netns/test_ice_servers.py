"""Every configured STUN/TURN server is used, and a dead one costs nothing.

Before: only the first `stun:`/`turn:` URL was used (and one without a port, or an IPv6 one,
crashed `sipdht run`), so a dead first server meant no reflexive or relayed candidate."""

from __future__ import annotations

import json

import pytest

from tests.harness import netlab as nl

pytestmark = [pytest.mark.netns, pytest.mark.interop]

GATHER = """
import asyncio, json, time
from sipdht.v1.ice import IceConfig, IceSession
cfg = IceConfig(stun=[("198.51.100.99", 3478), ("{pub}", 3478)],
                turn=[("198.51.100.98", 3478), ("{pub}", 3478)],
                turn_username="alice", turn_password="alicepass", host_addresses=["{me}"])
async def main():
    ice = IceSession(cfg, controlling=True)
    t = time.monotonic()
    params = await ice.gather()
    took = time.monotonic() - t
    await ice.close()
    print(json.dumps({{"cands": params.candidates, "took": took}}))
asyncio.run(main())
"""


@pytest.mark.slow
def test_a_dead_first_stun_and_turn_server_is_skipped(netlab, coturn):
    code = GATHER.format(pub=nl.PUB_IP, me=nl.ALICE_IP)
    out = netlab.run("alice", [nl.PYTHON, "-c", code], timeout=60, capture_output=True,
                     text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    types = {c.split()[7]: c for c in result["cands"]}
    assert set(types) == {"host", "srflx", "relay"}, result["cands"]
    assert nl.NAT_A_IP in types["srflx"]            # the live STUN server answered
    assert nl.PUB_IP in types["relay"]              # the next TURN server allocated
