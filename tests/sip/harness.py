"""Helpers for gateway tests: a gateway on a free loopback port, a raw SIP UDP client,
bounded subprocesses (sipsak, sipp) stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

from sipdht.config import SipConfig
from sipdht.sip import message
from sipdht.sip.gateway import Gateway

ALICE = "a" * 40
BOB = "b" * 40


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(family) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


async def start_gateway(pool, account: str, contacts: dict[str, str] | None = None,
                        host: str = "127.0.0.1", **options) -> Gateway:
    for _ in range(5):
        port = free_port(host) if host in ("127.0.0.1", "::1") else 0
        config = SipConfig(listen=(host, port), **options)
        try:
            gw = Gateway(config, contacts or {}, pool, account, "dht")
            await gw.start()
            return gw
        except OSError:
            continue
    raise RuntimeError("gateway did not start")


class SipClient(asyncio.DatagramProtocol):
    """A raw SIP 'softphone' socket: send text, await parsed messages."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.host = "127.0.0.1"

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> SipClient:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(cls, local_addr=(host, 0))
        proto.transport = transport
        proto.port = transport.get_extra_info("sockname")[1]
        proto.host = host
        return proto

    def datagram_received(self, data: bytes, addr) -> None:
        self.queue.put_nowait(data)

    def send(self, data: bytes | str, port: int, host: str | None = None) -> None:
        host = host or self.host
        if isinstance(data, str):
            data = data.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        assert self.transport is not None
        self.transport.sendto(data, (host, port))

    async def recv(self, timeout: float = 2.0):
        return message.parse(await asyncio.wait_for(self.queue.get(), timeout))

    async def recv_raw(self, timeout: float = 2.0) -> bytes:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def expect(self, predicate, timeout: float = 3.0):
        """The first message matching `predicate` (others are skipped)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            msg = await self.recv(max(0.01, end - loop.time()))
            if predicate(msg):
                return msg

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def request(method: str, uri: str, port: int, *, call_id: str = "c1", cseq: int = 1,
            branch: str = "z9hG4bKt1", from_user: str = "alice", to: str = "",
            extra: str = "", body: str = "", to_tag: str = "") -> str:
    to = to or uri
    headers = (f"{method} {uri} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{from_user}@dht>;tag=f{call_id}\r\n"
               f"To: <{to}>{';tag=' + to_tag if to_tag else ''}\r\nCall-ID: {call_id}\r\n"
               f"CSeq: {cseq} {method}\r\nContact: <sip:{from_user}@127.0.0.1:{port}>\r\n{extra}")
    if body:
        headers += "Content-Type: application/sdp\r\n"
    return headers + f"Content-Length: {len(body.encode())}\r\n\r\n" + body


async def run(argv: list[str], timeout: float, cwd: str | None = None,
              stdin: bytes | None = None) -> tuple[int, str]:
    """Run a peer tool, killed by its PID if it outlives `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")
