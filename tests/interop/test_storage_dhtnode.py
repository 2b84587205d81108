"""Storage policy against real `dhtnode` (OpenDHT 2.4.12): what both store, what both refuse,
and where our node is stricter (per-source caps, remote lifetimes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import msgpack
import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import encode_fragment
from sipdht.dht.node import DhtNode
from sipdht.dht.storage import MAX_REMOTE_LIFETIME, MAX_VALUES_PER_SOURCE_KEY
from sipdht.dht.values import CERTIFICATE_TYPE, Value
from tests.harness.dht import our_node
from tests.harness.dhtnode import Dhtnode

pytestmark = [pytest.mark.interop, pytest.mark.async_timeout(300)]
WEEK = 7 * 86400


async def wait_stored(node: DhtNode, key: InfoHash, timeout: float = 20.0) -> list[Value]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (values := node.engine.storage.get(key)):
        assert loop.time() < deadline, f"nothing stored at {key.hex()}"
        await asyncio.sleep(0.1)
    return values


async def get_fresh(bootstrap, key: InfoHash) -> list[Value]:
    """A get from a new client node (so no local copy of a put answers it)."""
    client = await our_node(bootstrap, client_only=True)
    try:
        return await asyncio.wait_for(client.get(key), 20)
    finally:
        await client.stop()


async def test_dhtnode_certificate_is_stored_for_a_week(dhtnode_bin):
    """dhtnode -i publishes its certificate (fragmented, ~2 KB) at its key id; our node,
    the only storer, keeps it under OpenDHT's certificate policy with its 7-day life."""
    node = await our_node()
    d = Dhtnode(identity=True, bootstrap=f"127.0.0.1:{node.port}").start()
    try:
        key = InfoHash(bytes.fromhex(d.key_id))
        [cert] = await wait_stored(node, key)
        assert cert.type == CERTIFICATE_TYPE and len(cert.data) > 1280
        stored = node.engine.storage.get_stored(key, cert.id)
        assert stored.source == "127.0.0.1"
        assert stored.expiration - stored.created == WEEK
    finally:
        d.stop()
        await node.stop()


async def certificate_of(d: Dhtnode, node: DhtNode) -> Value:
    return (await wait_stored(node, InfoHash(bytes.fromhex(d.key_id))))[0]


async def test_misplaced_or_fake_certificates_refused_like_dhtnode(dhtnode_bin):
    """A real certificate at another key, or garbage typed 8 at the right key: dhtnode
    refuses both, and so does our node."""
    ours = await our_node()
    ident_node = Dhtnode(identity=True, bootstrap=f"127.0.0.1:{ours.port}").start()
    plain = Dhtnode().start()              # a separate network of one stock node
    try:
        cert = await certificate_of(ident_node, ours)
        right_key = InfoHash(bytes.fromhex(ident_node.key_id))
        cases = [(InfoHash.get("not its key id"), Value(id=7, type=CERTIFICATE_TYPE,
                                                        data=cert.data)),
                 (right_key, Value(id=8, type=CERTIFICATE_TYPE,
                                   data=msgpack.packb(b"not a certificate")))]
        for storer in (plain, ours):
            client = await our_node(storer, client_only=True)
            try:
                for key, value in cases:
                    await asyncio.wait_for(client.put(key, value), 20)
            finally:
                await client.stop()
            for key, value in cases:
                got = [v for v in await get_fresh(storer, key) if v.id == value.id]
                assert got == [], f"{type(storer).__name__} stored {value.id} at {key.hex()}"
    finally:
        plain.stop()
        ident_node.stop()
        await ours.stop()


async def test_per_source_cap_where_dhtnode_has_none(dhtnode_bin):
    """One IP puts more values at one key than our per-source cap: dhtnode keeps them all
    (OpenDHT caps 65,536 per key, none per source); our node keeps its cap."""
    count = MAX_VALUES_PER_SOURCE_KEY + 20
    key = InfoHash.get("one source, many values")
    values = [Value(id=i + 1, data=b"v") for i in range(count)]
    ours = await our_node()
    d = Dhtnode().start()
    try:
        for storer in (d, ours):
            client = await our_node(storer, client_only=True)
            try:
                for i in range(0, count, 50):      # batches: stay under the rate limits
                    await asyncio.gather(*(asyncio.wait_for(client.put(key, v), 30)
                                           for v in values[i:i + 50]))
            finally:
                await client.stop()
        assert len(await get_fresh(d, key)) == count
        assert len(ours.engine.storage.get(key)) == MAX_VALUES_PER_SOURCE_KEY
        lifetimes = {round(sv.expiration - sv.created, 3)
                     for v in ours.engine.storage.get(key)
                     if (sv := ours.engine.storage.get_stored(key, v.id))}
        assert lifetimes == {min(600.0, MAX_REMOTE_LIFETIME)}
    finally:
        d.stop()
        await ours.stop()


async def fragment_flood(port: int, stop: asyncio.Event, sources: int = 8) -> int:
    """1-byte fragments with fresh tids from 127.0.0.2.. (as a spoofer would send them),
    ~2,000 a second, until stopped; returns how many were sent."""
    socks = []
    for n in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.0.{n + 2}", 0))
        s.setblocking(False)
        socks.append(s)
    sent = 0
    try:
        while not stop.is_set() and sent < 200_000:
            for _ in range(20):
                sent += 1
                with contextlib.suppress(BlockingIOError):
                    socks[sent % sources].sendto(encode_fragment(sent, 0, 0, b"x"),
                                                 ("127.0.0.1", port))
            await asyncio.sleep(0.01)
    finally:
        for s in socks:
            s.close()
    return sent


async def test_fragment_flood_does_not_stop_dhtnode_putting_its_certificate(dhtnode_bin):
    """Spoofed 1-byte fragments used to fill every partial-message slot, so a fragmented
    put (here dhtnode's ~2 KB certificate) never completed."""
    node = await our_node()
    stop = asyncio.Event()
    flood = asyncio.create_task(fragment_flood(node.port, stop))
    await asyncio.sleep(1.0)
    d = Dhtnode(identity=True, bootstrap=f"127.0.0.1:{node.port}").start()
    try:
        key = InfoHash(bytes.fromhex(d.key_id))
        [cert] = await wait_stored(node, key, timeout=20)
        assert cert.type == CERTIFICATE_TYPE
    finally:
        stop.set()
        sent = await flood
        d.stop()
        await node.stop()
    assert sent > 1000 and node.engine.stats["dropped_fragments"] > 0
