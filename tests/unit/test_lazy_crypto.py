"""A plain DHT node loads no crypto: its composition root picks the store policy, whose
checks import `cryptography` only when a signed value or a certificate arrives.

Each check runs in a fresh interpreter, since this test process has long imported it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

CRYPTO_LOADED = "sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography')"


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_importing_the_dht_commands_loads_no_crypto() -> None:
    assert run(f"""
        import sys
        import sipdht.commands.dht
        print({CRYPTO_LOADED})
    """) == "[]"


def test_plain_node_serving_puts_and_gets_loads_no_crypto() -> None:
    """`sipdht node`'s composition on loopback; a client puts and gets an unsigned value."""
    out = run(f"""
        import argparse, asyncio, sys
        from sipdht.commands.dht import node_config, serve_node
        from sipdht.config import Config
        from sipdht.dht.infohash import InfoHash
        from sipdht.dht.node import DhtNode, NodeConfig
        from sipdht.dht.values import FIELD_OWNER, Query, new_value

        async def main():
            config = Config()
            config.dht.bind4, config.dht.ipv6, config.dht.state_file = "127.0.0.1", False, None
            args = argparse.Namespace(port=0, network=None, bootstrap=None, no_rate_limit=False)
            server = await serve_node(node_config(args, config, client=False))
            client = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False,
                                        bootstrap=[("127.0.0.1", server.port)]))
            await client.start()
            try:
                assert await client.wait_connected(5)
                key = InfoHash.get("plain")
                stored = await asyncio.wait_for(client.put(key, new_value(b"hello")), 10)
                got = await asyncio.wait_for(client.get(key), 10)
                by_owner = Query(where=((FIELD_OWNER, bytes(20)),))
                assert await asyncio.wait_for(client.get(key, by_owner), 10) == []
            finally:
                await client.stop()
                await server.stop()
            print(stored, [v.data for v in got], server.stats()["values"])
            print({CRYPTO_LOADED})

        asyncio.run(main())
    """)
    assert out.splitlines() == ["1 [b'hello'] 1", "[]"]


def test_default_policy_still_checks_signatures() -> None:
    """The node's default policy is the secure one: a forged signed value is refused."""
    out = run(f"""
        import sys
        from sipdht.dht.node import NodeConfig
        from sipdht.dht.storage import Storage
        from sipdht.dht.infohash import InfoHash
        from sipdht.dht.values import Value
        st = Storage(policy=NodeConfig().policy)
        forged = Value(id=1, data=b"x", owner=b"not a key", seq=1, signature=b"sig")
        print(st.store(InfoHash.get("k"), forged, 0.0, source="10.0.0.1").reason)
        print(bool({CRYPTO_LOADED}))
    """)
    assert out.splitlines() == ["signature verification failed", "True"]


def test_sipdht_node_command_loads_no_crypto(tmp_path) -> None:
    """`sipdht node` itself: -X importtime lists every module the process imports."""
    cfg = tmp_path / "sipdht.ini"
    cfg.write_text("[dht]\nport = 0\nbind4 = 127.0.0.1\nipv6 = false\n")
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "sipdht",
                             "--config", str(cfg), "node"],
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:            # bounded: the node logs its port at start
            lines.append(line)
            if "listening on UDP port" in line or len(lines) > 5000:
                break
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert any("listening on UDP port" in line for line in lines), "".join(lines[-20:])
    imported = [line.split("|")[-1].strip() for line in lines if line.startswith("import time:")]
    assert "sipdht.dht.node" in imported
    assert [m for m in imported if m.split(".")[0] == "cryptography"] == []
