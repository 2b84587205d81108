"""`sipdht run`, `lookup` and `ping`: the agent and its link to other agents."""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from typing import TextIO

from ..account import Breakdown, CallFailure, Diagnosable, Link, LinkClosed, Lookup
from ..agent import Agent
from ..config import Config
from ..sip.gateway import GatewayError
from .base import (
    EXIT_FAILED,
    EXIT_OK,
    OperationFailed,
    command,
    load_identity,
    load_or_create_identity,
    run_async,
    stop_on_signals,
    until_stopped,
)
from .dht import client_node_config, client_options, log_stats, node_config

log = logging.getLogger("sipdht.agent")


def _run_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(port=None, bootstrap=None, network=None)


@command("run", "run the agent until Ctrl-C / SIGTERM: DHT node, contact record, SIP gateway "
         "for softphones, incoming calls (creates the identity on first start)", _run_args)
def cmd_run(args: argparse.Namespace, config: Config) -> int:
    ident = load_or_create_identity(config)
    log.info("account %s (config %s)", ident.account_id, config.source or "built-in defaults")

    async def main() -> int:
        cfg = node_config(args, config, client=False)    # a random node id each run (privacy)
        agent = Agent(config, ident, cfg, serve=True, sip=True)
        if not cfg.bootstrap:
            log.warning("no [dht] bootstrap configured: this node waits for others to contact it")
        with stop_on_signals() as stop:
            stats = None
            try:
                join = agent.start(join_timeout=0.1 if not cfg.bootstrap else 10.0)
                if await until_stopped(stop, join):
                    log.info("DHT node %s on UDP port %d (%s)", agent.node.id.hex(),
                             agent.node.port, "joined" if agent.node.connected else "not joined yet")
                    assert agent.gateway is not None
                    print(agent.gateway.softphone_settings(), flush=True)
                    stats = asyncio.create_task(log_stats(agent.node, config.log.stats_interval))
                    await stop.wait()
            except GatewayError as exc:
                raise OperationFailed(str(exc)) from None
            finally:
                if stats:
                    stats.cancel()
                await agent.stop()
                log.info("stopped")
        return EXIT_OK

    return run_async(main())


async def _client_agent(args: argparse.Namespace, config: Config) -> Agent:
    """An agent that places calls but publishes nothing and answers nobody."""
    agent = Agent(config, load_identity(config), client_node_config(args, config), serve=False)
    if not await agent.start(join_timeout=args.timeout):
        await agent.stop()
        raise OperationFailed(f"no DHT node answered within {args.timeout:g} s")
    return agent


def _lookup_args(p: argparse.ArgumentParser, timeout: float | None = 30.0) -> None:
    client_options(p, timeout)
    p.add_argument("account", metavar="ACCOUNT_ID", help="account id or [contacts] alias")


@command("lookup", "is ACCOUNT_ID online? its devices and contact record age", _lookup_args)
def cmd_lookup(args: argparse.Namespace, config: Config) -> int:
    account = config.resolve_account(args.account)

    async def main() -> int:
        agent = await _client_agent(args, config)
        try:
            found = await asyncio.wait_for(agent.lookup(account), args.timeout)
        except TimeoutError:
            raise OperationFailed(f"lookup did not complete within {args.timeout:g} s") from None
        finally:
            await agent.stop()
        return print_lookup(found)

    return run_async(main())


def print_lookup(found: Lookup, out: TextIO = sys.stdout) -> int:
    """The account's state, then one line per device; exit 0 only when it is online."""
    age = found.record_age
    print(f"{found.account} {'online' if found.online else 'offline'}"
          + (f" record-age={age:.0f}s" if age is not None else " no-record"), file=out)
    for dev in found.devices:
        print(f"  device {dev.id} {'online' if dev.online else 'offline'} "
              f"age={dev.age:.0f}s {' '.join(dev.protocols)}", file=out)
    return EXIT_OK if found.online else EXIT_FAILED


def _ping_args(p: argparse.ArgumentParser) -> None:
    _lookup_args(p, timeout=None)
    p.add_argument("--count", "-c", type=int, default=3, metavar="N", help="link pings (default 3)")
    p.add_argument("--data", type=int, default=0, metavar="BYTES",
                   help="also send BYTES through the peer's echo channel and check them")


def print_breakdown(account: str, bd: Breakdown, out: TextIO = sys.stdout) -> None:
    rtt = statistics.median(bd.rtt_ms) if bd.rtt_ms else float("nan")
    first = bd.rtt_ms[0] if bd.rtt_ms else float("nan")
    # The first ping also waits for the callee's side of ICE to finish, so it is shown apart.
    print(f"link to {account}: lookup {bd.lookup_ms:.0f} ms, gather {bd.gather_ms:.0f} ms, "
          f"signalling {bd.signalling_ms:.0f} ms, ICE {bd.ice_ms:.0f} ms, "
          f"first RTT {first:.2f} ms, RTT {rtt:.2f} ms (median of {len(bd.rtt_ms)}), "
          f"path {bd.path}", file=out, flush=True)


async def exchange_data(link: Link, echo_channel: int, size: int) -> None:
    """Send `size` bytes in chunks to the peer's echo channel and check what comes back."""
    sent = bytes(i % 251 for i in range(size))
    for i in range(0, size, 1000):
        await link.send(echo_channel, sent[i:i + 1000])
    got = b""
    while len(got) < size:
        got += await link.recv(echo_channel, timeout=5)
    if got != sent:
        raise OperationFailed("link data integrity check failed")


@command("ping", "open a link to ACCOUNT_ID's running agent and print the setup breakdown "
         "(lookup, signalling, ICE, RTT, path type)", _ping_args)
def cmd_ping(args: argparse.Namespace, config: Config) -> int:
    account = config.resolve_account(args.account)
    args.timeout = args.timeout or config.ice.timeout

    async def main() -> int:
        start = time.monotonic()
        agent = await _client_agent(args, config)
        try:
            link = await agent.connect(account, max(1.0, args.timeout - (time.monotonic() - start)))
            if not isinstance(link, Diagnosable):
                raise OperationFailed(f"ping needs link diagnostics; {account} was reached by "
                                      "an account type without them")
            bd = link.setup
            try:
                for i in range(max(1, args.count)):
                    # the first one also waits for the callee's side of ICE to finish
                    bd.rtt_ms.append(await link.ping(timeout=10.0 if i == 0 else 3.0) * 1000)
                if args.data:
                    await exchange_data(link, link.echo_channel, args.data)
            finally:
                await link.close("ping done")
        except CallFailure as exc:
            raise OperationFailed(str(exc)) from None
        except LinkClosed as exc:
            raise OperationFailed(f"link failed: {exc}") from None
        finally:
            await agent.stop()
        print_breakdown(account, bd)
        return EXIT_OK

    return run_async(main())
