#!/usr/bin/env python3
"""RTP relay through two gateways' relays and a real protocol-v1 link, on loopback.

Two agents (RSA 2048, a `dhtnode` bootstrap on 127.0.0.1) open one link; on each side a
`sipdht.sip.media.Relay` is wired as a call would wire it (each side's channel is the other's
peer channel; the callee relay sends to the "softphone" sink). A generator process sends
172-byte G.711-sized RTP packets (20 ms frames: 50 packets/s per call) to relay A at a total
rate R and receives them at the sink behind relay B; every packet carries its send time
(CLOCK_MONOTONIC, shared by the processes). The same generator then sends to the sink
directly (no relay) in the same run: the baseline.

Printed per rate: delivered packets, loss, one-way latency p50/p99 through the relays and
directly, the added latency (relay minus direct), and packets/s per core = delivered packets
divided by the CPU seconds this process used (both agents, both relays, both link ends).

    PYTHONPATH=. .venv/bin/python bench/sip_relay.py [--rates 1000,5000,10000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sipdht import identity  # noqa: E402
from sipdht.agent import Agent  # noqa: E402
from sipdht.config import Config  # noqa: E402
from sipdht.dht.node import NodeConfig  # noqa: E402
from sipdht.sip.media import Relay  # noqa: E402
from tests.harness.dhtnode import Dhtnode  # noqa: E402

GENERATOR = r"""
import json, socket, struct, sys, time, select
target, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(("127.0.0.1", 0))
print(sink.getsockname()[1], flush=True); sys.stdin.readline()
if target == 0: target = sink.getsockname()[1]
src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); src.setblocking(False)
sink.setblocking(False)
pad = b"\0" * 152
lat = []; sent = 0; start = time.monotonic(); end = start + seconds
while True:
    now = time.monotonic()
    if now < end:
        due = int((now - start) * rate)
        while sent < due:
            hdr = struct.pack("!BBHIIq", 0x80, 0, sent & 0xFFFF, sent, 1, time.monotonic_ns())
            src.sendto(hdr[:12] + hdr[12:] + pad[:152], ("127.0.0.1", target)); sent += 1
    elif now > end + 1.0:
        break
    r, _, _ = select.select([sink], [], [], 0.0005)
    while r:
        try:
            data = sink.recv(2048)
        except BlockingIOError:
            break
        t = struct.unpack("!q", data[12:20])[0]
        lat.append((time.monotonic_ns() - t) / 1e6)
print(json.dumps({"sent": sent, "lat": lat}), flush=True)
"""


def agent(d: Dhtnode, ident, home: Path) -> Agent:
    cfg = Config()
    cfg.identity.path = home / f"id-{ident.account_id[:8]}"
    cfg.ice.host_addresses = ["127.0.0.1"]
    return Agent(cfg, ident, NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=[d.address]))


async def generate(target: int, rate: int, seconds: float,
                   sink_ready) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", GENERATOR, str(target), str(rate), str(seconds),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=1 << 26)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        sink = int(await proc.stdout.readline())
        sink_ready(sink)
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        result = json.loads(await asyncio.wait_for(proc.stdout.readline(), seconds + 30))
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def main(rates: list[int], seconds: float) -> None:
    with tempfile.TemporaryDirectory() as tmp, Dhtnode() as d:
        ids = [identity.generate(2048) for _ in range(2)]
        a, b = agent(d, ids[0], Path(tmp)), agent(d, ids[1], Path(tmp))
        for ag in (a, b):
            await ag.start()
        await asyncio.sleep(0.5)
        try:
            link_a = await a.pool.get(b.account)
            for _ in range(100):
                if b.pool.find(a.account):
                    break
                await asyncio.sleep(0.05)
            link_b = b.pool.find(a.account)
            assert link_b is not None
            print(f"link {link_a.path}; {seconds:g} s per rate; generator and sink in another "
                  "process; CPU = this process (both agents)")
            print(f"{'rate/s':>7} {'calls':>5} {'delivered':>9} {'loss%':>6} "
                  f"{'relay p50':>9} {'p99':>7} {'direct p50':>10} {'p99':>7} "
                  f"{'added p50':>9} {'p99':>7} {'pkt/s/core':>10}")
            for rate in rates:
                relay_a = Relay(link_a, "127.0.0.1", (40000, 49999))
                relay_b = Relay(link_b, "127.0.0.1", (40000, 49999))
                relay_a.peer_channel, relay_b.peer_channel = relay_b.channel, relay_a.channel

                def sink_ready(port: int, rb: Relay = relay_b) -> None:
                    rb.set_phone("127.0.0.1", port, port + 1, True)

                t0 = os.times()
                through = await generate(relay_a.port, rate, seconds, sink_ready)
                t1 = os.times()
                relay_a.close()
                relay_b.close()
                direct = await generate(0, rate, seconds, lambda _p: None)
                cpu = (t1.user - t0.user) + (t1.system - t0.system)
                got = len(through["lat"])
                loss = 100.0 * (1 - got / max(1, through["sent"]))
                r50, r99 = pct(through["lat"], 50), pct(through["lat"], 99)
                d50, d99 = pct(direct["lat"], 50), pct(direct["lat"], 99)
                print(f"{rate:>7} {rate // 50:>5} {got:>9} {loss:>6.2f} {r50:>8.3f}ms "
                      f"{r99:>6.3f}ms {d50:>9.3f}ms {d99:>6.3f}ms {r50 - d50:>8.3f}ms "
                      f"{r99 - d99:>6.3f}ms {got / cpu if cpu else float('nan'):>10.0f}")
        finally:
            await a.stop()
            await b.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="1000,5000,10000")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    asyncio.run(main([int(r) for r in args.rates.split(",")], args.seconds))
