"""asyncio adapter around DhtEngine: UDP sockets, the timer and awaitable operations.

All protocol logic stays in the engine; this file only moves datagrams, arms one
timer, and turns engine events into futures and async iterators.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import write_private
from . import events as ev
from .addresses import family_of
from .bootstrap import Joiner
from .engine import DhtEngine
from .infohash import InfoHash
from .messages import Addr
from .policies import secure_policy
from .storage import EditPolicy
from .values import Query, Value

if TYPE_CHECKING:
    from ..config import DhtConfig

log = logging.getLogger(__name__)

DEFAULT_PORT = 4222
# A bug reached by remote input is logged at most this often (one line, no traceback):
# a peer repeating the datagram must not fill the log.
ERROR_LOG_INTERVAL = 60.0
RECV_BATCH = 64           # datagrams read per wake-up before the loop runs anything else
RECV_SIZE = 65536
MAX_BACKLOG, MAX_BACKLOG_BYTES = 4096, 4 * 1024 * 1024   # sends waiting for the socket


@dataclass
class NodeConfig:
    port: int = 0
    bind4: str = "0.0.0.0"
    bind6: str = "::"
    ipv4: bool = True
    ipv6: bool = True
    network: int = 0
    rate_limit: bool = True
    client_only: bool = False
    max_storage: int = 64 * 1024 * 1024
    max_listeners_per_ip: int = 256      # listeners one source IP may hold here
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    state_file: Path | None = None
    node_id: InfoHash | None = None
    # The store policy; the composition root may pass plain_policy(). The default checks
    # signatures and certificates, importing cryptography only when one arrives.
    policy: EditPolicy = field(default_factory=secure_policy)

    @classmethod
    def from_config(cls, dht: DhtConfig, *, port: int | None = None,
                    bootstrap: list[tuple[str, int]] | None = None, network: int | None = None,
                    client: bool = False, rate_limit: bool | None = None,
                    policy: EditPolicy | None = None) -> NodeConfig:
        """A node as the [dht] section describes it; keyword arguments override it (None:
        keep the section's). A `client` node takes an ephemeral port and serves nobody.
        `rate_limit=False` turns the limits off; True cannot turn on what [dht] turned off."""
        return cls(
            port=port if port is not None else (0 if client else dht.port),
            bind4=dht.bind4, bind6=dht.bind6, ipv4=dht.ipv4, ipv6=dht.ipv6,
            network=network if network is not None else dht.network,
            rate_limit=dht.rate_limit and rate_limit is not False,
            client_only=client or dht.client_only,
            max_storage=dht.max_storage_mb * 1024 * 1024,
            max_listeners_per_ip=dht.max_listeners_per_ip,
            bootstrap=list(bootstrap if bootstrap is not None else dht.bootstrap),
            state_file=dht.state_file,
            policy=policy if policy is not None else secure_policy(),
        )


class _Endpoint:
    """One nonblocking UDP socket on the loop, without an asyncio transport.

    Why not `create_datagram_endpoint`: the transport reads one datagram per loop
    iteration and sends through two layers of Python, which was a third of a node's
    CPU per reply. Here a readable socket is drained (at most RECV_BATCH datagrams, so
    timers still run), each reply goes out with one `sendto` right after its query, and
    the node's events and timer are handled once per batch. A send the kernel cannot
    take now waits in a bounded backlog, as the transport's buffer did.
    """

    def __init__(self, node: DhtNode, sock: socket.socket,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.node, self.sock, self.loop = node, sock, loop
        self.fd = sock.fileno()
        self.backlog: deque[tuple[bytes, Addr]] = deque()
        self.backlog_bytes = 0
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        node, recv = self.node, self.sock.recvfrom
        for _ in range(RECV_BATCH):
            try:
                data, addr = recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:               # e.g. a queued ICMP error
                node.engine.stats["socket_errors"] += 1
                continue
            node._feed(data, (addr[0], addr[1]))
        node._after()

    def sendto(self, data: bytes, addr: Addr) -> None:
        if not self.backlog:
            try:
                self.sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.fd, self._writable)
            except OSError:               # unreachable, refused by a firewall, ...
                self.node.engine.stats["socket_errors"] += 1
                return
        if (len(self.backlog) >= MAX_BACKLOG
                or self.backlog_bytes + len(data) > MAX_BACKLOG_BYTES):
            self.node.engine.stats["send_dropped_backlog"] += 1
            return
        self.backlog.append((data, addr))
        self.backlog_bytes += len(data)

    def _writable(self) -> None:
        while self.backlog:
            data, addr = self.backlog[0]
            try:
                self.sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.node.engine.stats["socket_errors"] += 1
            self.backlog.popleft()
            self.backlog_bytes -= len(data)
        self.loop.remove_writer(self.fd)

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        self.backlog.clear()
        self.sock.close()


class Listen:
    """An async iterator of (kind, value) for one key; `cancel()` ends it."""

    def __init__(self, node: DhtNode, op: int) -> None:
        self.node, self.op = node, op
        self.queue: asyncio.Queue[ev.ListenValues | None] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[tuple[str, Value]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[tuple[str, Value]]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            for value in item.values:
                yield item.kind, value

    def cancel(self) -> None:
        self.node._cancel(self.op)
        self.queue.put_nowait(None)


class DhtNode:
    def __init__(self, config: NodeConfig | None = None) -> None:
        self.config = config or NodeConfig()
        self.engine: DhtEngine = None  # type: ignore[assignment]  # set by start()
        self._endpoints: dict[int, _Endpoint] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._pending: dict[int, asyncio.Future[int]] = {}      # put op -> nodes that took it
        self._streams: dict[int, asyncio.Queue[list[Value] | None]] = {}
        self._listens: dict[int, Listen] = {}
        self._connected = asyncio.Event()
        self._next_error_log = float("-inf")
        self._joining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # start()
        self.port = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        cfg = self.config
        families = tuple(f for f, on in ((4, cfg.ipv4), (6, cfg.ipv6)) if on)
        self.engine = DhtEngine(cfg.node_id, network=cfg.network, rate_limit=cfg.rate_limit,
                                max_storage=cfg.max_storage, client_only=cfg.client_only,
                                policy=cfg.policy, families=families, now=loop.time(),
                                max_listeners_per_ip=cfg.max_listeners_per_ip,
                                epoch_offset=time.time() - loop.time())
        await self._bind(families)
        self.engine.families = tuple(self._endpoints)
        self._load_state()
        joiner = Joiner(self, cfg.bootstrap, self.engine.families)
        # The first attempt is awaited: once start() returns, the bootstrap names are
        # resolved and pinged, so a lookup made at once already has nodes to ask.
        await joiner.attempt()
        self._joining = asyncio.create_task(joiner.run())   # retries, says when unreachable
        self._after()

    async def stop(self) -> None:
        self._save_state()
        if self._joining:
            self._joining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._joining
        if self._timer:
            self._timer.cancel()
        for endpoint in self._endpoints.values():
            endpoint.close()
        self._endpoints.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        for stream in self._streams.values():
            stream.put_nowait(None)      # a get in progress ends with what it has
        for listen in self._listens.values():
            listen.queue.put_nowait(None)

    async def __aenter__(self) -> DhtNode:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _bind(self, families: tuple[int, ...]) -> None:
        loop = asyncio.get_running_loop()
        port = self.config.port
        for fam in families:
            sock = self._socket(fam, port)
            if sock is None:
                continue
            port = port or sock.getsockname()[1]
            self._endpoints[fam] = _Endpoint(self, sock, loop)
        if not self._endpoints:
            raise OSError(f"cannot bind UDP port {self.config.port} for the DHT")
        self.port = port

    def _socket(self, fam: int, port: int) -> socket.socket | None:
        af = socket.AF_INET if fam == 4 else socket.AF_INET6
        sock = socket.socket(af, socket.SOCK_DGRAM)
        try:
            if fam == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((self.config.bind4 if fam == 4 else self.config.bind6, port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        except OSError as exc:
            sock.close()
            if fam == 4 or not self._endpoints and fam == 6 and not self.config.ipv4:
                raise
            log.warning("IPv6 disabled: cannot bind [%s]:%d: %s", self.config.bind6, port, exc)
            return None
        sock.setblocking(False)
        return sock

    # --- state file -------------------------------------------------------------------------

    def _load_state(self) -> None:
        path = self.config.state_file
        if not path or not path.exists():
            return
        try:
            nodes = json.loads(path.read_text())["nodes"]
            now = asyncio.get_running_loop().time()
            for nid, ip, port in nodes[:256]:
                if family_of((ip, port)) in self._endpoints:
                    self.engine.add_known_node(InfoHash(bytes.fromhex(nid)), (ip, port), now)
            log.info("%s: pinging %d saved nodes", path, len(nodes))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: ignoring unreadable state file: %s", path, exc)

    def _save_state(self) -> None:
        path = self.config.state_file
        if not path or self.engine is None:
            return
        now = asyncio.get_running_loop().time()
        nodes = [[n.id.hex(), n.addr[0], n.addr[1]] for n in self.engine.good_nodes(now)]
        if not nodes:
            return
        state = json.dumps({"node_id": self.engine.id.hex(), "nodes": nodes}).encode()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(path, state)      # 0600, atomic: it tells where this node lives
        except OSError as exc:
            log.warning("%s: cannot save the DHT state: %s", path, exc)

    # --- the sans-IO pump -------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time()

    def _feed(self, data: bytes, addr: Addr) -> None:
        """One datagram into the engine, its replies straight out; events wait for _after."""
        engine = self.engine
        try:
            engine.receive_datagram(data, addr, self._loop.time())
        except Exception as exc:  # a bug that remote input reached: count, never crash or flood
            self._remote_error("receive_errors", exc, f"a datagram from {addr[0]}:{addr[1]}")
        self._flush()

    def _flush(self) -> None:
        endpoints = self._endpoints
        for data, addr in self.engine.datagrams_to_send(self._loop.time()):
            endpoint = endpoints.get(6 if ":" in addr[0] else 4)
            if endpoint is not None:
                endpoint.sendto(data, addr)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.engine.handle_timer(self._now())
        except Exception as exc:  # state built from remote input; the timer must keep running
            self._remote_error("timer_errors", exc, "a timer")
        self._after()

    def _remote_error(self, counter: str, exc: Exception, where: str) -> None:
        stats = self.engine.stats
        stats[counter] += 1
        now = self._now()
        if now < self._next_error_log:
            return
        self._next_error_log = now + ERROR_LOG_INTERVAL
        log.warning("handling %s raised %s: %s (%d receive / %d timer errors so far; "
                    "logged at most every %g s)", where, type(exc).__name__, exc,
                    stats["receive_errors"], stats["timer_errors"], ERROR_LOG_INTERVAL)

    def _after(self) -> None:
        engine = self.engine
        while (event := engine.next_event()) is not None:
            self._dispatch(event)
        self._flush()
        when = engine.get_timer()
        if self._timer is not None and (when is None or self._timer.when() != when):
            self._timer.cancel()
            self._timer = None
        if when is not None and self._timer is None and self._endpoints:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _dispatch(self, event: ev.Event) -> None:
        if isinstance(event, ev.Connectivity):
            if event.good_nodes:
                self._connected.set()
            else:
                self._connected.clear()
        elif isinstance(event, ev.GetValues | ev.GetDone):
            stream = self._streams.get(event.op)
            if stream is not None:
                stream.put_nowait(event.values if isinstance(event, ev.GetValues) else None)
        elif isinstance(event, ev.PutDone):
            fut = self._pending.pop(event.op, None)
            if fut is not None and not fut.done():
                fut.set_result(event.stored)
        elif isinstance(event, ev.ListenValues):
            listen = self._listens.get(event.op)
            if listen is not None:
                listen.queue.put_nowait(event)

    def _cancel(self, op: int) -> None:
        self._listens.pop(op, None)
        self._pending.pop(op, None)
        if self.engine is not None:
            self.engine.cancel(op, self._now())
            self._after()

    # --- public API -------------------------------------------------------------------------

    @property
    def id(self) -> InfoHash:
        return self.engine.id

    @property
    def connected(self) -> bool:
        """At least one good node answered us (and we have not lost them all since)."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            return True
        except TimeoutError:
            return False

    def bootstrap(self, *addrs: Addr) -> None:
        self.engine.bootstrap(list(addrs), self._now())
        self._after()

    async def get(self, key: InfoHash, query: Query | None = None) -> list[Value]:
        """Every value found at the key's closest nodes (and stored locally)."""
        return [value async for value in self.get_iter(key, query)]

    async def get_iter(self, key: InfoHash, query: Query | None = None, local: bool = True
                       ) -> AsyncIterator[Value]:
        """Values as they arrive. A caller that has what it needs may stop early; the
        search then finishes in the background. `local=False`: from other nodes only."""
        op = self.engine.get(key, self._now(), query, local)
        queue = self._streams[op] = asyncio.Queue()
        self._after()
        try:
            while (batch := await queue.get()) is not None:
                for value in batch:
                    yield value
        finally:
            self._streams.pop(op, None)

    async def _put(self, key: InfoHash, value: Value, permanent: bool) -> tuple[int, int]:
        op = self.engine.put(key, value, self._now(), permanent)
        fut = self._pending[op] = asyncio.get_running_loop().create_future()
        self._after()     # the engine may already have answered (e.g. no nodes)
        try:
            return op, await fut
        finally:
            self._pending.pop(op, None)

    async def put(self, key: InfoHash, value: Value) -> int:
        """Store a value once; returns how many remote nodes acknowledged it."""
        return (await self._put(key, value, False))[1]

    def listen(self, key: InfoHash) -> Listen:
        op = self.engine.listen(key, self._now())
        listen = self._listens[op] = Listen(self, op)
        self._after()
        return listen

    async def put_permanent(self, key: InfoHash, value: Value) -> tuple[int, int]:
        """Store and keep refreshing a value until `cancel_put(op)`; -> (op, nodes that took it)."""
        return await self._put(key, value, True)

    def cancel_put(self, op: int) -> None:
        self._cancel(op)

    def stats(self) -> dict[str, int]:
        now = self._now()
        out = dict(self.engine.stats)
        for fam, table in self.engine.tables.items():
            out[f"nodes{fam}"] = len(table)
            out[f"good{fam}"] = table.good_count(now)
        out["values"] = self.engine.storage.value_count
        out["storage_bytes"] = self.engine.storage.total_size
        return out
