#!/usr/bin/env python3
"""Call setup time through two agents vs SIPp directly, on loopback.

A `dhtnode` bootstrap, two agents (RSA 2048) with their gateways, and a SIPp UAS (built-in
`uas` scenario: 180 then 200) registered at gateway B. A raw UDP client (this process)
places calls: INVITE to gateway A for B's account, and measures INVITE->180 and INVITE->200,
then ACK and BYE. Reported apart:

* first call: a fresh link each time (the previous link is closed; DHT lookup, offer/answer
  and ICE happen in the call);
* reused link: the link is up (the INVITE travels at once);
* direct: the same client sends the same INVITE straight to the SIPp UAS (the floor).

Prints medians and p95 (ms) and the ratios reused/direct and first/direct.

    PYTHONPATH=. .venv/bin/python bench/sip_setup.py [--calls 50] [--first 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sipdht import identity  # noqa: E402
from sipdht.config import SipConfig  # noqa: E402
from sipdht.sip.gateway import Gateway  # noqa: E402
from tests.harness.dhtnode import Dhtnode  # noqa: E402
from tests.interop.test_signaling_security import make_agent  # noqa: E402
from tests.sip.harness import SipClient, free_port, request  # noqa: E402
from tests.sip.test_sip_calls import register, spawn  # noqa: E402

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


async def one_call(client: SipClient, port: int, user: str, n: int) -> tuple[float, float]:
    call_id = f"bench-{n}-{time.monotonic_ns()}"
    start = time.monotonic()
    client.send(request("INVITE", f"sip:{user}@127.0.0.1:{port}", client.port, call_id=call_id,
                        branch=f"z9hG4bK{call_id}", body=SDP), port)
    ringing = ok = 0.0
    while not ok:
        msg = await client.recv(30)
        if msg.call_id != call_id or not hasattr(msg, "code"):
            continue
        if msg.code == 180 and not ringing:
            ringing = time.monotonic() - start
        elif msg.code >= 200:
            if msg.code != 200:
                raise RuntimeError(f"call failed: {msg.code} {msg.phrase}")
            ok = time.monotonic() - start
    tag = msg.to_address.parameters["tag"]
    target = str(msg.contact[0].uri) if msg.contact else f"sip:{user}@127.0.0.1:{port}"
    for method, cseq in (("ACK", 1), ("BYE", 2)):
        client.send(request(method, target, client.port, call_id=call_id, cseq=cseq,
                            branch=f"z9hG4bK{method}{call_id}", to_tag=tag), port)
    while True:
        msg = await client.recv(30)
        if msg.call_id == call_id and getattr(msg, "code", 0) and msg.cseq.method == "BYE":
            break
    return ringing * 1000, ok * 1000


def summary(name: str, values: list[tuple[float, float]]) -> tuple[float, float]:
    r = [v[0] for v in values]
    o = [v[1] for v in values]

    def p95(x: list[float]) -> float:
        return statistics.quantiles(x, n=20)[18] if len(x) > 1 else x[0]

    print(f"{name:<12} n={len(values):<4} INVITE->180 median {statistics.median(r):7.2f} ms "
          f"p95 {p95(r):7.2f} | INVITE->200 median {statistics.median(o):7.2f} ms "
          f"p95 {p95(o):7.2f}")
    return statistics.median(r), statistics.median(o)


async def main(calls: int, first: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, Dhtnode() as d:
        ids = [identity.generate(2048) for _ in range(2)]
        alice = make_agent(d, ids[0], serve=True, home=Path(tmp))
        bob = make_agent(d, ids[1], serve=True, home=Path(tmp))
        for ag in (alice, bob):
            await ag.start()
        await asyncio.sleep(1.0)
        gws = []
        for ag in (alice, bob):
            gw = Gateway(SipConfig(listen=("127.0.0.1", free_port())), {}, ag.pool, ag.account,
                         "dht")
            await gw.start()
            gws.append(gw)
        gw_a, gw_b = gws
        uas_port = free_port()
        client = await SipClient.open()
        try:
            await register(gw_b, "bob", uas_port)
            async with spawn(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port),
                              "-nostdin"], tmp):
                await asyncio.sleep(0.5)
                fresh = []
                for n in range(first):
                    link = alice.pool.find(bob.account)
                    if link is not None:
                        await link.close("bench: fresh link")
                        await asyncio.sleep(0.3)
                    fresh.append(await one_call(client, gw_a.port, bob.account, n))
                reused = [await one_call(client, gw_a.port, bob.account, 1000 + n)
                          for n in range(calls)]
                direct = [await one_call(client, uas_port, "bob", 2000 + n)
                          for n in range(calls)]
            print(f"loopback; {calls} calls per series, one at a time; RSA 2048; dhtnode bootstrap")
            f180, f200 = summary("first call", fresh)
            r180, r200 = summary("reused link", reused)
            d180, d200 = summary("direct SIPp", direct)
            print(f"ratios (medians): reused/direct 180 {r180 / d180:.1f}x 200 {r200 / d200:.1f}x;"
                  f" first/direct 180 {f180 / d180:.0f}x 200 {f200 / d200:.0f}x")
        finally:
            client.close()
            for gw in gws:
                await gw.stop()
            await alice.stop()
            await bob.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--first", type=int, default=5)
    args = ap.parse_args()
    asyncio.run(main(args.calls, args.first))
