"""Helpers for SIP tests: a gateway on a free loopback port, two gateways joined by an
in-memory link pool, a raw SIP UDP client and predicates on what it receives, a registered
phone, SIPp calls and other bounded subprocesses (sipsak, sipp) stopped by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile

from sipmessage import Request, Response

from sipdht.config import SipConfig
from sipdht.sip import message
from sipdht.sip.gateway import Gateway
from tests.harness.memlink import MemPool

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


async def two_gateways(loss: float = 0.0, failures=None, contacts_b=None):
    network: dict = {}
    pool_a = MemPool(ALICE, network, loss=loss, failures=failures)
    pool_b = MemPool(BOB, network, loss=loss)
    gw_a = await start_gateway(pool_a, ALICE, {"bob": BOB})
    gw_b = await start_gateway(pool_b, BOB, contacts_b if contacts_b is not None else {"alice": ALICE})
    return gw_a, gw_b


async def register(gw, user: str, contact_port: int, client: SipClient | None = None,
                   expires: int = 300) -> None:
    own = client is None
    client = client or await SipClient.open()
    client.send(request("REGISTER", f"sip:{user}@127.0.0.1:{gw.port}", client.port,
                        call_id=f"reg-{user}-{contact_port}", cseq=2 if expires == 0 else 1,
                        branch=f"z9hG4bKreg{contact_port}x{expires}",
                        from_user=user, extra=f"Expires: {expires}\r\n").replace(
        f"<sip:{user}@127.0.0.1:{client.port}>", f"<sip:{user}@127.0.0.1:{contact_port}>"), gw.port)
    assert (await client.expect(is_response("REGISTER"))).code == 200
    if own:
        client.close()


@contextlib.asynccontextmanager
async def spawn(argv: list[str], cwd: str):
    proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL,
                                                stdin=asyncio.subprocess.DEVNULL,
                                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@contextlib.asynccontextmanager
async def registered(gw, user: str, port: int):
    """A binding for the test's softphone, removed afterwards (a stale binding would be one
    more fork that never answers)."""
    await register(gw, user, port)
    try:
        yield
    finally:
        await register(gw, user, port, expires=0)


def _screen(cwd: str) -> str:
    out = []
    for name in sorted(os.listdir(cwd)):
        if name.endswith(("_screen.log", "_errors.log")):
            with open(os.path.join(cwd, name), errors="replace") as fh:
                out.append(name + ":\n" + fh.read()[-3000:])
    return "\n".join(out)


async def sipp_call(gw_a, gw_b, calls: int, rate: int = 10, limit: int = 20,
                    uac_scenario: str = "uac", uas_scenario: str = "uas",
                    timeout: float = 60, callee: str = BOB) -> tuple[int, str]:
    uas_port = free_port()
    with tempfile.TemporaryDirectory() as cwd:
        uas = ["sipp", "-i", "127.0.0.1", "-p", str(uas_port), "-m", str(calls), "-nostdin",
               "-trace_screen", "-trace_err"] + _scenario(uas_scenario, cwd)
        async with spawn(uas, cwd), registered(gw_b, "bob", uas_port):
            await asyncio.sleep(0.3)
            uac = ["sipp", f"127.0.0.1:{gw_a.port}", "-s", callee, "-i", "127.0.0.1",
                   "-p", str(free_port()), "-m", str(calls), "-r", str(rate), "-l", str(limit),
                   "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
                   "-trace_screen", "-trace_err"] + _scenario(uac_scenario, cwd)
            rc, out = await run(uac, timeout + 10, cwd=cwd)
            return rc, out + _screen(cwd)


def _scenario(name: str, cwd: str) -> list[str]:
    if name in ("uac", "uas"):
        return ["-sn", name]
    from tests.harness import sipp_scenarios as scenarios
    path = os.path.join(cwd, name + ".xml")
    with open(path, "w") as fh:
        fh.write(getattr(scenarios, name))
    return ["-sf", path]


# --- what a test waits for (SipClient.expect) --------------------------------------------------


def is_request(method: str):
    """A request of `method`."""
    return lambda m: isinstance(m, Request) and m.method == method


def is_response(method: str | None = None, code: int | None = None, at_least: int = 0):
    """A response to `method` (any when None), with `code`, or with a code >= `at_least`."""
    def match(m) -> bool:
        return (isinstance(m, Response) and (method is None or m.cseq.method == method)
                and (code is None or m.code == code) and m.code >= at_least)
    return match
