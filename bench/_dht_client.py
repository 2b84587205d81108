#!/usr/bin/env python3
"""One DHT client in its own process, driven by JSON lines on stdin (bench/warm_ops.py and
bench/kill_nodes.py): OpenDHT's own Python client (`--impl opendht`, run with Debian's
/usr/bin/python3 and python3-opendht) or sipdht's DhtNode (`--impl sipdht`, the venv's python).

Both time each operation inside the client, around the call a user of that library makes:
OpenDHT's blocking `DhtRunner.get(key)` / `put(key, value)` (they return when the search
reports done: the get's done callback, the put acknowledged by the storers), sipdht's
`await node.get(key)` / `await node.put(key, value)`. One reply line per command:

    {"op": "get", "key": K, "expect": V}          -> {"ok": bool, "ms": float, "n": values}
    {"op": "put", "key": K, "value": V}           -> {"ok": bool, "ms": float}
    {"op": "fresh_get", "key": K, "expect": V, "port": P}
        a new client node bootstraps from 127.0.0.1:P (the join is not timed), one get is
        timed, the node is stopped                -> {"ok", "ms", "n", "join_ms"}
    {"op": "quit"}

At start: `--bootstrap PORT`; the warm node joins and prints {"ready": true, "join_ms": ...}.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

GET_TIMEOUT = 15.0      # ours; OpenDHT's blocking calls end on their own (search expiry)
JOIN_TIMEOUT = 10.0


def reply(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- OpenDHT's python client ------------------------------------------------------------------


def opendht_main(port: int) -> int:
    import opendht  # python3-opendht, /usr/bin/python3 only

    def start(boot: int) -> tuple[Any, float]:
        node = opendht.DhtRunner()
        node.run(port=0, ipv4="127.0.0.1")
        t0 = time.perf_counter()
        node.bootstrap("127.0.0.1", str(boot))
        deadline = time.monotonic() + JOIN_TIMEOUT
        while time.monotonic() < deadline:      # good nodes in the routing table
            if "[good]" in node.getRoutingTablesLog(socket.AF_INET):
                break
            time.sleep(0.001)
        return node, (time.perf_counter() - t0) * 1e3

    def get(node, key: str, expect: str) -> dict:
        h = opendht.InfoHash.get(key)
        t0 = time.perf_counter()
        values = node.get(h)
        ms = (time.perf_counter() - t0) * 1e3
        ok = any(bytes(v.data) == expect.encode() for v in values)
        return {"ok": ok, "ms": ms, "n": len(values)}

    warm, join_ms = start(port)
    reply({"ready": True, "join_ms": join_ms})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "quit":
            break
        if op == "get":
            reply(get(warm, cmd["key"], cmd["expect"]))
        elif op == "put":
            h = opendht.InfoHash.get(cmd["key"])
            t0 = time.perf_counter()
            ok = warm.put(h, opendht.Value(cmd["value"].encode()))
            reply({"ok": bool(ok), "ms": (time.perf_counter() - t0) * 1e3})
        elif op == "fresh_get":
            node, join = start(cmd["port"])
            try:
                out = get(node, cmd["key"], cmd["expect"])
            finally:
                node.join()         # stops the runner and its thread
            reply({**out, "join_ms": join})
    warm.join()
    return 0


# --- sipdht -----------------------------------------------------------------------------------


async def sipdht_main(port: int) -> int:
    import asyncio

    from sipdht.dht.infohash import InfoHash
    from sipdht.dht.node import DhtNode, NodeConfig
    from sipdht.dht.values import new_value

    async def start(boot: int, client_only: bool) -> tuple[DhtNode, float]:
        node = DhtNode(NodeConfig(port=0, bind4="127.0.0.1", ipv6=False, client_only=client_only,
                                  bootstrap=[("127.0.0.1", boot)]))
        t0 = time.perf_counter()
        await node.start()
        await node.wait_connected(JOIN_TIMEOUT)
        return node, (time.perf_counter() - t0) * 1e3

    async def get(node: DhtNode, key: str, expect: str) -> dict:
        t0 = time.perf_counter()
        try:
            values = await asyncio.wait_for(node.get(InfoHash.get(key)), GET_TIMEOUT)
        except TimeoutError:
            values = []
        ms = (time.perf_counter() - t0) * 1e3
        return {"ok": any(v.data == expect.encode() for v in values), "ms": ms, "n": len(values)}

    loop = asyncio.get_running_loop()
    warm, join_ms = await start(port, client_only=False)    # a SIP agent's node
    reply({"ready": True, "join_ms": join_ms})
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "quit":
                break
            if op == "get":
                reply(await get(warm, cmd["key"], cmd["expect"]))
            elif op == "put":
                value = new_value(cmd["value"].encode())
                t0 = time.perf_counter()
                try:
                    stored = await asyncio.wait_for(warm.put(InfoHash.get(cmd["key"]), value),
                                                    GET_TIMEOUT)
                except TimeoutError:
                    stored = 0
                reply({"ok": stored > 0, "ms": (time.perf_counter() - t0) * 1e3,
                       "stored": stored})
            elif op == "fresh_get":   # as `sipdht get`: a client-only node
                node, join = await start(cmd["port"], client_only=True)
                try:
                    out = await get(node, cmd["key"], cmd["expect"])
                finally:
                    await node.stop()
                reply({**out, "join_ms": join})
    finally:
        await warm.stop()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", choices=("opendht", "sipdht"), required=True)
    ap.add_argument("--bootstrap", type=int, required=True, help="port on 127.0.0.1")
    args = ap.parse_args()
    if args.impl == "opendht":
        return opendht_main(args.bootstrap)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import asyncio
    return asyncio.run(sipdht_main(args.bootstrap))


if __name__ == "__main__":
    sys.exit(main())
