"""`sipdht node / get / put / listen`: the DHT from the command line, modelled on dhtnode."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from typing import TYPE_CHECKING

from ..config import Config, parse_hostport
from ..dht.infohash import InfoHash
from ..dht.node import DhtNode, NodeConfig
from ..dht.values import Value, new_value
from .base import (
    EXIT_FAILED,
    EXIT_OK,
    OperationFailed,
    UsageError,
    command,
    load_identity,
    run_async,
    stop_on_signals,
)

if TYPE_CHECKING:      # get/put/listen import these when run: a plain node needs no crypto
    from ..dht.secure import SecureDht, SecureValue
    from ..identity import Identity

log = logging.getLogger("sipdht.dht")


def _hostport(raw: str) -> tuple[str, int]:
    try:
        return parse_hostport(raw, 4222)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST[:PORT], got {raw!r} ({exc})") from None


def _network_args(p: argparse.ArgumentParser, default_port: str) -> None:
    p.add_argument("--port", "-p", type=int, metavar="PORT",
                   help=f"UDP port ({default_port}; 0 = ephemeral)")
    p.add_argument("--bootstrap", "-b", action="append", type=_hostport, metavar="HOST:PORT",
                   help="bootstrap node (repeatable; default: [dht] bootstrap)")
    p.add_argument("--network", "-n", type=int, metavar="N", help="network id (default: [dht] network)")


def client_options(p: argparse.ArgumentParser, timeout: float | None = 30.0) -> None:
    _network_args(p, "default 0")
    p.add_argument("--timeout", type=float, default=timeout, metavar="SECONDS",
                   help=f"give up after this long (default {timeout or '[ice] timeout'})")


def _client_args(p: argparse.ArgumentParser) -> None:
    client_options(p)
    p.add_argument("key", metavar="KEY", help="40 hex characters, or any text (hashed with SHA-1)")


def node_config(args: argparse.Namespace, config: Config, client: bool) -> NodeConfig:
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port: expected 0-65535, got {args.port}")
    # the composition root picks the store policy: NodeConfig's default is OpenDHT
    # SecureDht's, whose checks load cryptography only when a signed value or a certificate
    # arrives
    return NodeConfig.from_config(
        config.dht, port=args.port, bootstrap=args.bootstrap, network=args.network,
        client=client, rate_limit=False if getattr(args, "no_rate_limit", False) else None)


def client_node_config(args: argparse.Namespace, config: Config) -> NodeConfig:
    """A short-lived client node; it must have somewhere to join."""
    cfg = node_config(args, config, client=True)
    if not cfg.bootstrap and not (cfg.state_file and cfg.state_file.exists()):
        raise UsageError("no bootstrap node: pass --bootstrap HOST:PORT or set [dht] bootstrap")
    return cfg


def format_value(value: Value, signer: str | None = None, encrypted: bool = False) -> str:
    """`<value id as 16 hex> <type> <data>`: data as text when it is UTF-8, else hex;
    then `signed-by=<account id>` and `encrypted` when they apply."""
    try:
        data = value.data.decode("utf-8")
        if not data.isprintable():
            data = value.data.hex()
    except UnicodeDecodeError:
        data = value.data.hex()
    line = f"{value.id:016x} {value.type} {data}"
    if signer:
        line += f" signed-by={signer}"
    if encrypted:
        line += " encrypted"
    return line


def format_secure(sv: SecureValue) -> str:
    return format_value(sv.value, sv.signer, sv.encrypted)


def _identity_or_ephemeral(config: Config) -> Identity:
    """Our identity decrypts values sent to us; without one, only signatures are checked."""
    from .. import identity as identity_mod

    key_path, _ = identity_mod.identity_files(config.identity_path)
    if key_path.exists():
        return load_identity(config)
    return identity_mod.generate(identity_mod.MIN_KEY_BITS)


def _report_ignored(secure: SecureDht) -> None:
    if secure.stats:
        detail = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in sorted(secure.stats.items()))
        print(f"ignored values: {detail}", file=sys.stderr)


async def _joined(args: argparse.Namespace, config: Config) -> tuple[DhtNode, float]:
    """Start a client node and wait until it reached the network; returns it and the deadline."""
    deadline = time.monotonic() + args.timeout
    cfg = client_node_config(args, config)
    node = DhtNode(cfg)
    await node.start()
    if not await node.wait_connected(max(0.0, deadline - time.monotonic())):
        await node.stop()
        raise OperationFailed(f"no DHT node answered within {args.timeout:g} s")
    return node, deadline


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


@command("get", "print the values stored at KEY on the DHT (signatures checked)", _client_args)
def cmd_get(args: argparse.Namespace, config: Config) -> int:
    from ..dht.secure import SecureDht

    ident = _identity_or_ephemeral(config)

    async def main() -> int:
        node, deadline = await _joined(args, config)
        secure = SecureDht(node, ident)
        try:
            values = await asyncio.wait_for(secure.get(InfoHash.from_key(args.key)),
                                            _remaining(deadline))
        except TimeoutError:
            values = []
        finally:
            await node.stop()
        for sv in values:
            print(format_secure(sv), flush=True)
        _report_ignored(secure)
        return EXIT_OK if values else EXIT_FAILED

    return run_async(main())


def _put_args(p: argparse.ArgumentParser) -> None:
    _client_args(p)
    p.add_argument("text", metavar="TEXT", help="the value's data (UTF-8 text)")
    p.add_argument("--type", type=int, default=0, help="value type id (default 0, user data)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--signed", action="store_true",
                      help="sign with the configured identity (re-putting edits the same value)")
    mode.add_argument("--encrypt-to", metavar="ACCOUNT_ID",
                      help="sign, and encrypt so only this account can read it")


async def _put_value(args: argparse.Namespace, node: DhtNode, config: Config) -> tuple[Value, int]:
    from ..dht.crypto import CryptoError
    from ..dht.secure import SecureDht

    key, data = InfoHash.from_key(args.key), args.text.encode()
    if not (args.signed or args.encrypt_to):
        value = new_value(data, type=args.type, utype="text/plain")
        return value, await node.put(key, value)
    secure = SecureDht(node, load_identity(config))
    if args.signed:
        return await secure.put_signed(key, data, args.type, "text/plain")
    try:
        value, stored = await secure.put_encrypted(key, data, config.resolve_account(args.encrypt_to),
                                                   args.type, "text/plain")
    except CryptoError as exc:
        raise OperationFailed(str(exc)) from None
    return value, stored


@command("put", "store TEXT at KEY on the DHT (plain, signed or encrypted) and report how many "
         "nodes took it", _put_args)
def cmd_put(args: argparse.Namespace, config: Config) -> int:
    if args.signed or args.encrypt_to:
        load_identity(config)   # fail early, before joining, when there is no identity

    async def main() -> int:
        node, deadline = await _joined(args, config)
        try:
            value, stored = await asyncio.wait_for(_put_value(args, node, config),
                                                   _remaining(deadline))
        except TimeoutError:
            raise OperationFailed(f"put did not complete within {args.timeout:g} s") from None
        finally:
            await node.stop()
        print(format_value(value) if value.cypher is None else f"{value.id:016x} encrypted",
              flush=True)
        print(f"stored on {stored} node(s)", file=sys.stderr)
        return EXIT_OK if stored else EXIT_FAILED

    return run_async(main())


def _listen_args(p: argparse.ArgumentParser) -> None:
    _client_args(p)
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="exit after N values (default: until the timeout)")


@command("listen", "print values as they are put at KEY (refreshed/expired ones marked)",
         _listen_args)
def cmd_listen(args: argparse.Namespace, config: Config) -> int:
    from ..dht.secure import SecureDht

    ident = _identity_or_ephemeral(config)

    async def main() -> int:
        node, deadline = await _joined(args, config)
        secure = SecureDht(node, ident)
        listen = secure.listen(InfoHash.from_key(args.key))
        received = 0

        async def consume() -> None:
            nonlocal received
            async for kind, sv in listen:
                suffix = "" if kind == "add" else f" [{kind}]"
                print(format_secure(sv) + suffix, flush=True)
                received += 1
                if args.count and received >= args.count:
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consume(), _remaining(deadline))
        listen.cancel()
        await node.stop()
        _report_ignored(secure)
        return EXIT_OK if received else EXIT_FAILED

    return run_async(main())


def _node_args(p: argparse.ArgumentParser) -> None:
    _network_args(p, "default: [dht] port")
    p.add_argument("--no-rate-limit", "-U", action="store_true",
                   help="disable the per-IP and global query limits (as dhtnode -U)")


async def log_stats(node: DhtNode, interval: float) -> None:
    while interval > 0:
        await asyncio.sleep(interval)
        s = node.stats()
        log.info("stats: ipv4 %d good / %d known, ipv6 %d / %d, %d values (%d bytes), "
                 "rx %d tx %d, dropped malformed %d network %d rate %d",
                 s["good4"], s["nodes4"], s["good6"], s["nodes6"], s["values"],
                 s["storage_bytes"], s.get("received", 0), s.get("sent", 0),
                 s.get("dropped_malformed", 0), s.get("dropped_network", 0),
                 s.get("dropped_rate_limit", 0))


async def serve_node(cfg: NodeConfig) -> DhtNode:
    node = DhtNode(cfg)
    await node.start()
    log.info("DHT node %s listening on UDP port %d (network %d)", node.id.hex(), node.port,
             cfg.network)
    return node


@command("node", "run a DHT node until Ctrl-C / SIGTERM (like dhtnode), logging periodic stats",
         _node_args)
def cmd_node(args: argparse.Namespace, config: Config) -> int:
    async def main() -> int:
        with stop_on_signals() as stop:
            node = await serve_node(node_config(args, config, client=False))
            stats = asyncio.create_task(log_stats(node, config.log.stats_interval))
            try:
                await stop.wait()
            finally:
                stats.cancel()
                await node.stop()
                log.info("stopped")
        return EXIT_OK

    return run_async(main())
