"""Talking to one sans-IO engine (or a few) with synthetic datagrams, the test owning the clock.

Requests go in as OpenDHT wire format (encode_query / msgpack maps); what the engine sends
comes back decoded, as a stock dhtnode would see it. `Net` delivers between engines by address.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from sipdht.dht import events as ev
from sipdht.dht.engine import DhtEngine
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import Message, decode, encode_query
from sipdht.dht.values import Value, pack

T0 = 1000.0
ME = InfoHash(b"\x55" * 20)
PEER = InfoHash(b"\x11" * 20)
OTHER = InfoHash(b"\x22" * 20)
H = InfoHash.get("sip:alice@example.org")
A = ("203.0.113.10", 4222)          # the requester
B = ("203.0.113.20", 5000)          # another peer
A6 = ("2001:db8::10", 4222)
LA = ("203.0.113.30", 6000)         # the listener
LISTENER = InfoHash(b"\x33" * 20)


@dataclass
class Out:
    dst: tuple[str, int]
    raw: bytes
    obj: dict
    msg: Message


MAINTENANCE = ("ping", "find")


def drain(e: DhtEngine, now: float = T0, maintenance: bool = False) -> list[Out]:
    """What the engine sent; its own pings/finds (e.g. of a newcomer) are left out unless asked."""
    out = []
    for data, dst in e.datagrams_to_send(now):
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not maintenance and obj.get("y") == "q" and obj.get("q") in MAINTENANCE:
            continue
        out.append(Out(dst, data, obj, decode(data)))
    return out


def feed(e: DhtEngine, data: bytes, addr=A, now: float = T0) -> list[Out]:
    e.receive_datagram(data, addr, now)
    return drain(e, now)


def silent(e: DhtEngine, data: bytes, addr=A, now: float = T0) -> bool:
    """The datagram produced nothing at all, not even a ping."""
    e.receive_datagram(data, addr, now)
    return e.datagrams_to_send(now) == []


def query(name: str, tid: int = 1, sender: bytes = PEER, network: int = 0, **args) -> bytes:
    return encode_query(name, tid, {"id": sender, **args}, network=network)


def engine(prove: bool = True, **kw) -> DhtEngine:
    """An engine for which the test's peers have already proven their addresses, so it
    answers them in full (answers to unproven ones: test_engine_hardening.py)."""
    e = DhtEngine(ME, now=T0, **kw)
    if prove:
        for addr in (A, B, A6, LA):
            e.proofs.prove(addr[0], T0)
    return e


def token_for(e: DhtEngine, addr=A, now: float = T0, sender: bytes = PEER) -> bytes:
    reply = feed(e, query("get", 900, sender=sender, h=H), addr, now)[0]
    return reply.msg.token


def put(e: DhtEngine, values: list[Value], addr=A, tid: int = 2, now: float = T0,
        sender: bytes = PEER, key: bytes = H, token: bytes | None = None) -> list[Out]:
    if token is None:
        token = token_for(e, addr, now, sender)
    return feed(e, query("put", tid, sender=sender, h=key, token=token,
                         values=[pack(v) for v in values]), addr, now)


def dropped(e: DhtEngine) -> int:
    return sum(n for k, n in e.stats.items() if k.startswith("dropped_"))


class Net:
    """Delivers datagrams between engines by address; everything sent is logged."""

    def __init__(self, **engines: DhtEngine) -> None:
        self.nodes: dict[tuple[str, int], DhtEngine] = {}
        self.log: list[tuple[tuple[str, int], tuple[str, int], bytes]] = []
        for i, name in enumerate(engines):
            self.nodes[(f"203.0.113.{i + 1}", 4222)] = engines[name]

    def addr(self, e: DhtEngine) -> tuple[str, int]:
        return next(a for a, x in self.nodes.items() if x is e)

    def pump(self, now: float, rounds: int = 200, drop=lambda src, data, dst: False) -> None:
        """Deliver until nothing is sent; `drop(src, data, dst)` loses chosen datagrams."""
        for _ in range(rounds):
            batch = [(src, data, dst) for src, e in self.nodes.items()
                     for data, dst in e.datagrams_to_send(now)]
            if not batch:
                return
            self.deliver(batch, now, drop)
        raise AssertionError("the network did not settle")

    def deliver(self, batch, now: float, drop) -> None:
        for src, data, dst in batch:
            self.log.append((src, dst, data))
            if dst in self.nodes and not drop(src, data, dst):
                self.nodes[dst].receive_datagram(data, src, now)


def events(e: DhtEngine) -> list:
    out = []
    while (x := e.next_event()) is not None:
        out.append(x)
    return out


def connected_pair() -> tuple[Net, DhtEngine, DhtEngine]:
    srv, cli = DhtEngine(InfoHash(b"\xa0" * 20), now=T0), DhtEngine(InfoHash(b"\xb0" * 20), now=T0)
    net = Net(srv=srv, cli=cli)
    cli.add_known_node(srv.id, net.addr(srv), T0)
    net.pump(T0)
    assert any(isinstance(x, ev.Connectivity) and x.good_nodes == 1 for x in events(cli))
    return net, srv, cli


def listen(e: DhtEngine, sid: int = 4242, ve: int | None = 1, now: float = T0) -> list[Out]:
    args = {"h": H, "token": token_for(e, LA, now, LISTENER), "sid": sid}
    if ve is not None:
        args["ve"] = ve
    return feed(e, query("listen", 60, sender=LISTENER, **args), LA, now)


def to(outs: list[Out], addr) -> list[Out]:
    return [o for o in outs if o.dst == addr]
