"""Several of our DHT nodes in a child process, so that a test's own nodes and the storers do
not share one event loop (and one core).

A test with 10,000 listens puts ~2,000 listen requests a second on the storers; with the storers
and the listener in one process on a 2-core machine, that process's one core is the bottleneck
and the socket buffers overflow, which measures the test rather than the DHT. The child speaks
one JSON line per command on stdin/stdout (`count`: listeners held; `stop`), is stopped by its
PID (SIGTERM, then SIGKILL) and binds 127.0.0.1 only.

    group = NodeGroup(8, bootstrap=("127.0.0.1", 4222), max_listeners_per_ip=40_000).start()
    group.ports; group.listeners(); group.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0
REPLY_TIMEOUT = 20.0


class NodeGroup:
    def __init__(self, count: int, bootstrap: tuple[str, int], *, max_listeners_per_ip: int
                 ) -> None:
        self.count = count
        self.bootstrap = bootstrap
        self.max_listeners_per_ip = max_listeners_per_ip
        self.ports: list[int] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> NodeGroup:
        args = [sys.executable, "-m", "tests.harness.nodegroup", str(self.count),
                self.bootstrap[0], str(self.bootstrap[1]), str(self.max_listeners_per_ip)]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            self.ports = self._reply(START_TIMEOUT)["ports"]
        except BaseException:
            self.stop()
            raise
        return self

    def listeners(self) -> int:
        """Listeners the group's nodes hold (served listens, all keys)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self._reply(REPLY_TIMEOUT)["listeners"])

    def _reply(self, timeout: float) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"node group: no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node group exited (code {self.proc.poll()})")
        return json.loads(line)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with _suppress():
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with _suppress():
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _suppress() -> contextlib.suppress:
    return contextlib.suppress(OSError, ValueError, ProcessLookupError)


async def _serve(count: int, boot: tuple[str, int], max_per_ip: int) -> None:
    from sipdht.dht.node import DhtNode, NodeConfig
    from sipdht.dht.storage import EditPolicy

    async def start(bootstrap: tuple[str, int]) -> DhtNode:
        node = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=[bootstrap],
                                  rate_limit=False, max_listeners_per_ip=max_per_ip,
                                  policy=EditPolicy()))
        await node.start()
        if not await node.wait_connected(10):
            raise RuntimeError("a node of the group could not join")
        return node

    first = await start(boot)
    nodes = [first] + [await start(("127.0.0.1", first.port)) for _ in range(count - 1)]
    print(json.dumps({"ports": [n.port for n in nodes]}), flush=True)
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if line.strip() == "count":
                held = sum(n.engine.listeners.count() for n in nodes)
                print(json.dumps({"listeners": held}), flush=True)
            else:                                   # "stop" or the parent went away (EOF)
                break
    finally:
        for node in nodes:
            await node.stop()


if __name__ == "__main__":
    n, host, port, per_ip = sys.argv[1:5]
    asyncio.run(_serve(int(n), (host, int(port)), int(per_ip)))
