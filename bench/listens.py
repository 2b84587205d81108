#!/usr/bin/env python3
"""Many listens (issue 11): sipdht against OpenDHT, on 127.0.0.1 only.

Part 1, listens of one's own: a gateway process issues N listens (keys "contact-0".."contact-N")
on a loopback network of S storers. Ours: a Python process running sipdht's DhtNode, on
`sipdht node -U` storers (their per-IP listener cap raised in their config, as they all see
the gateway at 127.0.0.1). Peer: OpenDHT's own library (python3-opendht's DhtRunner, run by
Debian's /usr/bin/python3) on `dhtnode -U` storers. Reported per gateway, from its
/proc/PID/stat: time until every listen is acknowledged by LISTEN_NODES storers (ours only:
OpenDHT's API does not tell) and CPU per listen over that time or 10 s if longer (OpenDHT:
over the same time); idle CPU with the listens held (refreshes only); then one value is
put on each of M sample keys (by a sipdht node in this process, the same for both) and the
gateway's CPU per delivered value (its idle CPU over that time subtracted) and
values delivered/expected.

Part 2, listeners from others: one storer (`sipdht node -U` with its default caps, 256
listeners per IP and 128 per key, or `dhtnode -U`) gets R listen subscriptions from R/250
sockets bound to 127.1.x.y addresses (250 per IP, 100 per key), a token fetched per socket
first. Reported: the storer's CPU per accepted listen, its idle CPU with them held, and its
CPU per update sent when values are put on K keys (K x 100 updates expected), counted as
they arrive at the listeners' sockets.

    .venv/bin/python bench/listens.py [--listens 10000] [--storers 8] [--sample 400]
                                      [--remote 100000] [--idle 30] [--summary FILE]
"""

from __future__ import annotations

import sys
import time

LISTEN_NODES = 4


def _child_stat(acked: int, got: int) -> None:
    print(f"STAT {acked} {got}", flush=True)


def child_opendht(port: int, n: int, lifetime: float) -> None:
    """Run by /usr/bin/python3: OpenDHT's library as the gateway."""
    import opendht
    node = opendht.DhtRunner()
    node.run(port=0)
    node.bootstrap("127.0.0.1", str(port))
    time.sleep(2.0)
    print("READY", flush=True)
    got = [0]

    def on_value(value, expired) -> bool:
        if not expired:
            got[0] += 1
        return True
    for i in range(n):
        node.listen(opendht.InfoHash.get(f"contact-{i}"), on_value)
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        _child_stat(-1, got[0])
        time.sleep(0.5)
    node.shutdown()


def child_sipdht(port: int, n: int, lifetime: float, storers: int) -> None:
    """Our DhtNode as the gateway (events counted as they come, no per-listen consumer)."""
    import asyncio
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    from sipdht.dht import events as ev
    from sipdht.dht.infohash import InfoHash
    from sipdht.dht.node import DhtNode, NodeConfig
    from sipdht.dht.storage import EditPolicy

    async def run() -> None:
        node = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=[("127.0.0.1", port)],
                                  rate_limit=False, policy=EditPolicy()))
        await node.start()
        got = [0]
        plain = node._dispatch

        def dispatch(event: ev.Event) -> None:
            if isinstance(event, ev.ListenValues):
                got[0] += len(event.values) if event.kind == "add" else 0
            else:
                plain(event)
        node._dispatch = dispatch       # type: ignore[method-assign]
        end = time.monotonic() + 30
        while len(node.engine.good_nodes(node.engine.now)) < storers and time.monotonic() < end:
            await asyncio.sleep(0.2)
        print("READY", flush=True)
        ops = [node.listen(InfoHash.from_key(f"contact-{i}")).op for i in range(n)]
        acked = 0
        end = time.monotonic() + lifetime
        while time.monotonic() < end:
            if acked < n:       # stops looking once all are in (not part of the idle CPU)
                acked = sum(1 for op in ops if node.engine.listening_nodes(op) >= LISTEN_NODES)
            _child_stat(acked, got[0])
            await asyncio.sleep(0.5)
        await node.stop()
    asyncio.run(run())


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--child":
    kind, port, count, life, nstore = sys.argv[2], *map(float, sys.argv[3:7])
    if kind == "opendht":
        child_opendht(int(port), int(count), life)
    else:
        child_sipdht(int(port), int(count), life, int(nstore))
    sys.exit(0)

# --- the benchmark (the venv's Python) ----------------------------------------------------

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import selectors  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    DHTNODE,
    Proc,
    Tids,
    add_summary_option,
    fmt_ratio,
    request,
    start_dhtnode,
    start_sipdht_node,
    stop_all,
    summary_row,
    table,
    workdir,
    write_sipdht_config,
    write_summary,
)

from sipdht.dht.infohash import InfoHash  # noqa: E402
from sipdht.dht.messages import decode, encode_query, encode_reply  # noqa: E402
from sipdht.dht.node import DhtNode, NodeConfig  # noqa: E402
from sipdht.dht.storage import EditPolicy  # noqa: E402
from sipdht.dht.values import Value, pack  # noqa: E402

OPENDHT_PY = "/usr/bin/python3"
IMPLS = ("sipdht", "opendht")


def storer_config(tmp: Path, listens: int) -> Path:
    path = write_sipdht_config(tmp)
    text = path.read_text().replace("[log]", f"max_listeners_per_ip = {listens * 8}\n[log]")
    path.write_text(text)
    return path


def start_storers(impl: str, tmp: Path, count: int, config: Path) -> list[Proc]:
    procs: list[Proc] = []
    try:
        for i in range(count):
            boot = procs[0].port if procs else None
            if impl == "sipdht":
                p = start_sipdht_node(tmp, config, f"storer{i}", boot, no_rate_limit=True)
            else:
                p = start_dhtnode(tmp, f"storer{i}", boot, no_rate_limit=True)
            procs.append(p)
            p.wait_ready()
    except BaseException:
        stop_all(procs)
        raise
    return procs


def last_stat(child: Proc) -> tuple[int, int]:
    found = re.findall(r"STAT (-?\d+) (\d+)", child.text())
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)


def wait_until(pred, limit: float, step: float = 0.25) -> bool:
    end = time.monotonic() + limit
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(step)
    return True


async def put_sample(port: int, keys: list[int], storers: int) -> int:
    """One value on each key, by a sipdht node in this process; how many were stored."""
    node = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=[("127.0.0.1", port)],
                              rate_limit=False, client_only=True, policy=EditPolicy()))
    await node.start()
    try:
        end = time.monotonic() + 20
        while len(node.engine.good_nodes(node.engine.now)) < storers and time.monotonic() < end:
            await asyncio.sleep(0.2)
        gate = asyncio.Semaphore(32)

        async def one(i: int) -> int:
            async with gate:
                return await node.put(InfoHash.from_key(f"contact-{i}"),
                                      Value(id=i + 1, data=b"online %d" % i))
        return sum(1 for n in await asyncio.gather(*(one(i) for i in keys)) if n)
    finally:
        await node.stop()


def delivery(child: Proc, got0: int, expected: int, limit: float) -> tuple[int, float, float]:
    """Wait for the values (at most `limit` s, or 5 s without a new one): how many came,
    and the time and the child's CPU when the last one came."""
    got, t_last, c_last = 0, time.monotonic(), child.cpu_seconds()
    end = time.monotonic() + limit
    while time.monotonic() < min(end, t_last + 5) and got < expected:
        time.sleep(0.25)
        now_got = last_stat(child)[1] - got0
        if now_got != got:
            got, t_last, c_last = now_got, time.monotonic(), child.cpu_seconds()
    return got, t_last, c_last


MIN_WINDOW = 10.0       # seconds over which the CPU per listen is measured, at least


def own_listens(impl: str, tmp: Path, args, window_s: float | None) -> dict:
    work = tmp / impl
    work.mkdir()
    storers = start_storers("sipdht" if impl == "sipdht" else "dhtnode", work, args.storers,
                            storer_config(work, args.listens))
    child = None
    try:
        python = sys.executable if impl == "sipdht" else OPENDHT_PY
        life = 300.0
        child = Proc([python, str(Path(__file__).resolve()), "--child", impl, str(storers[0].port),
                      str(args.listens), str(life), str(args.storers)], work / "gateway.log")
        child.wait_for("READY", 60)
        t0, c0 = time.monotonic(), child.cpu_seconds()
        out: dict = {"listens": args.listens}
        if impl == "sipdht":
            ok = wait_until(lambda: last_stat(child)[0] >= args.listens, args.ack_limit)
            out["acked"] = last_stat(child)[0]
            out["ack_s"] = time.monotonic() - t0 if ok else float("nan")
            window = max(time.monotonic() - t0, MIN_WINDOW)
        else:
            window = window_s or MIN_WINDOW
            out["acked"], out["ack_s"] = float("nan"), float("nan")
        time.sleep(max(0.0, t0 + window - time.monotonic()))   # the same window for both
        out["cpu_per_listen"] = (child.cpu_seconds() - c0) / args.listens
        t1, c1 = time.monotonic(), child.cpu_seconds()
        time.sleep(args.idle)
        idle_rate = (child.cpu_seconds() - c1) / (time.monotonic() - t1)
        out["idle_pct"] = idle_rate * 100
        sample = list(range(0, args.listens, max(1, args.listens // args.sample)))[:args.sample]
        got0 = last_stat(child)[1]
        t2, c2 = time.monotonic(), child.cpu_seconds()
        stored = asyncio.run(put_sample(storers[0].port, sample, args.storers))
        got, t_last, c_last = delivery(child, got0, len(sample), 30)
        out.update(expected=len(sample), delivered=got, stored=stored)
        # the gateway's CPU until the last value came, less its idle rate over that time
        work_cpu = max(0.0, c_last - c2 - idle_rate * (t_last - t2))
        out["cpu_per_value"] = work_cpu / got if got else float("nan")
        out["rss_mb"] = child.rss_mb()
        out["window_s"] = window
        return out
    finally:
        stop_all(([child] if child else []) + storers)


# --- part 2: listeners from others ----------------------------------------------------------

PER_IP, PER_KEY = 250, 100


def listener_sockets(count: int) -> list[socket.socket]:
    socks = []
    for j in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((f"127.1.{j // 250}.{j % 250 + 1}", 0))
        socks.append(s)
    return socks


def subscribe(sock: socket.socket, port: int, first: int, n: int, nkeys: int) -> int:
    """n listens from one socket (its own token); how many were acknowledged."""
    tids = Tids()
    sock.connect(("127.0.0.1", port))
    reply = request(sock, tids, "find", {"id": os.urandom(20), "target": os.urandom(20)})
    token = reply.token
    sent: set[int] = set()
    for i in range(first, first + n):
        tid = tids.next()
        sent.add(tid)
        sock.send(encode_query("listen", tid, {
            "id": InfoHash((i + 1).to_bytes(20, "big")), "h": InfoHash.from_key(f"w{i % nkeys}"),
            "token": token, "sid": i + 1, "ve": 1}))
    acked = 0
    sock.settimeout(2.0)
    try:
        while sent:
            msg = decode(sock.recv(65536))
            if msg.tid in sent and msg.kind == "r":
                sent.discard(msg.tid)
                acked += 1
    except TimeoutError:
        pass
    return acked


def count_updates(socks: list[socket.socket], expected: int, limit: float) -> int:
    """Distinct (listener, values) notifications received; an `update` query is answered, as
    a listener does (an unanswered one is sent again, and then the listener dropped)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    seen: set[tuple] = set()
    me = os.urandom(20)
    end = time.monotonic() + limit
    try:
        while len(seen) < expected and time.monotonic() < end:
            for key, _ in sel.select(0.2):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                while True:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    try:
                        msg = decode(data)
                    except Exception:
                        continue
                    if msg.kind == "q":
                        sock.send(encode_reply(msg.tid, {"id": me}))
                    if msg.values:
                        sid = msg.sid if msg.kind == "q" else msg.tid
                        seen.add((sock.fileno(), sid, tuple(v.id for v in msg.values)))
    finally:
        sel.close()
    return len(seen)


def remote_listeners(impl: str, tmp: Path, args) -> dict:
    work = tmp / f"{impl}-remote"
    work.mkdir()
    if impl == "sipdht":
        storer = start_sipdht_node(work, write_sipdht_config(work), "storer", no_rate_limit=True)
    else:
        storer = start_dhtnode(work, "storer", no_rate_limit=True)
    socks: list[socket.socket] = []
    try:
        storer.wait_ready()
        nips = (args.remote + PER_IP - 1) // PER_IP
        nkeys = max(1, args.remote // PER_KEY)
        socks = listener_sockets(nips)
        c0 = storer.cpu_seconds()
        acked = sum(subscribe(s, storer.port, j * PER_IP, min(PER_IP, args.remote - j * PER_IP),
                              nkeys) for j, s in enumerate(socks))
        out = {"remote": args.remote, "accepted": acked,
               "cpu_per_listen": (storer.cpu_seconds() - c0) / max(1, acked)}
        t1, c1 = time.monotonic(), storer.cpu_seconds()
        time.sleep(args.idle)
        idle_rate = (storer.cpu_seconds() - c1) / (time.monotonic() - t1)
        out["idle_pct"] = idle_rate * 100
        putter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        putter.bind(("127.0.0.1", 0))
        putter.connect(("127.0.0.1", storer.port))
        tids = Tids()
        token = request(putter, tids, "find", {"id": os.urandom(20),
                                               "target": os.urandom(20)}).token
        nput = min(args.put_keys, nkeys)
        t2, c2 = time.monotonic(), storer.cpu_seconds()
        for k in range(nput):
            request(putter, tids, "put", {"id": os.urandom(20), "h": InfoHash.from_key(f"w{k}"),
                                          "token": token,
                                          "values": [pack(Value(id=k + 1, data=b"v%d" % k))]})
        expected = sum(1 for i in range(args.remote) if i % nkeys < nput)
        got = count_updates(socks, expected, 20)
        dt = time.monotonic() - t2
        putter.close()
        out.update(expected=expected, delivered=got, rss_mb=storer.rss_mb())
        out["cpu_per_value"] = (storer.cpu_seconds() - c2 - idle_rate * dt) / got if got \
            else float("nan")
        return out
    finally:
        for s in socks:
            s.close()
        stop_all([storer])


# --- report -----------------------------------------------------------------------------------


def fmt(x: float, spec: str) -> str:
    return "-" if x != x else spec.format(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listens", type=int, default=10_000, help="own listens (default 10000)")
    ap.add_argument("--storers", type=int, default=8, help="storer processes (default 8)")
    ap.add_argument("--sample", type=int, default=400, help="keys that get a value (default 400)")
    ap.add_argument("--remote", type=int, default=100_000,
                    help="listeners from others on one storer (default 100000)")
    ap.add_argument("--put-keys", type=int, default=100,
                    help="keys put in part 2, 100 listeners each (default 100)")
    ap.add_argument("--idle", type=float, default=30.0,
                    help="idle seconds measured, at least one 20 s listen refresh (default 30)")
    ap.add_argument("--ack-limit", type=float, default=120.0, help="seconds to wait for acks")
    ap.add_argument("--only", choices=("own", "remote"), help="run one part only")
    add_summary_option(ap)
    args = ap.parse_args()
    if not (1 <= args.listens <= 50_000 and 4 <= args.storers <= 32 and 1 <= args.sample
            and 1 <= args.remote <= 200_000 and 1 <= args.put_keys and 1 <= args.idle <= 120):
        ap.error("out of range")
    if not Path(DHTNODE).exists() or not Path(OPENDHT_PY).exists():
        print("needs dhtnode and python3-opendht (apt-get install dhtnode python3-opendht)")
        return 2
    print(f"many listens: {args.listens} own listens on {args.storers} storers, "
          f"{args.remote} listeners from others on one storer, {os.cpu_count()} CPUs")
    own: dict[str, dict] = {}
    remote: dict[str, dict] = {}
    with workdir("bench-listens-") as d:
        tmp = Path(d)
        if args.only in (None, "own"):
            own["sipdht"] = own_listens("sipdht", tmp, args, None)
            print("own, sipdht :", own["sipdht"], flush=True)
            own["opendht"] = own_listens("opendht", tmp, args, own["sipdht"]["window_s"])
            print("own, opendht:", own["opendht"], flush=True)
        if args.only in (None, "remote"):
            for impl in ("sipdht", "dhtnode"):
                remote[impl] = remote_listeners(impl, tmp, args)
                print(f"remote, {impl}:", remote[impl], flush=True)
    rows = [["figure", "OpenDHT", "sipdht", "sipdht/OpenDHT"]]
    summary = []

    def row(label: str, unit: str, a: float, b: float, spec: str, k: float = 1.0,
            peer: str = "OpenDHT") -> None:
        rows.append([label, fmt(a * k, spec), fmt(b * k, spec), fmt_ratio(b, a)])
        summary.append(summary_row("listens", label, unit, b * k, a * k if a == a else None, peer))
    if own:
        o, s = own["opendht"], own["sipdht"]
        n = args.listens
        row(f"{n} own listens: time until all acknowledged", "s", o["ack_s"], s["ack_s"], "{:.1f}")
        row(f"{n} own listens: acknowledged", "", o["acked"], s["acked"], "{:.0f}")
        row(f"{n} own listens: gateway CPU per listen", "ms", o["cpu_per_listen"],
            s["cpu_per_listen"], "{:.3f}", 1e3, "OpenDHT python3-opendht")
        row(f"{n} own listens: gateway idle CPU, listens held", "%", o["idle_pct"], s["idle_pct"],
            "{:.1f}", 1, "OpenDHT python3-opendht")
        row(f"{n} own listens: gateway CPU per delivered value", "ms", o["cpu_per_value"],
            s["cpu_per_value"], "{:.2f}", 1e3, "OpenDHT python3-opendht")
        row(f"{n} own listens: values delivered / expected", "%",
            o["delivered"] / o["expected"], s["delivered"] / s["expected"], "{:.1f}", 100,
            "OpenDHT python3-opendht")
        row(f"{n} own listens: gateway RSS", "MB", o["rss_mb"], s["rss_mb"], "{:.1f}", 1,
            "OpenDHT python3-opendht")
    if remote:
        o, s = remote["dhtnode"], remote["sipdht"]
        n = args.remote
        row(f"{n} listeners from others: accepted", "", o["accepted"], s["accepted"], "{:.0f}",
            1, "dhtnode")
        row(f"{n} listeners from others: storer CPU per listen", "us", o["cpu_per_listen"],
            s["cpu_per_listen"], "{:.1f}", 1e6, "dhtnode")
        row(f"{n} listeners from others: storer idle CPU, held", "%", o["idle_pct"],
            s["idle_pct"], "{:.1f}", 1, "dhtnode")
        row(f"{n} listeners from others: storer CPU per update sent", "us", o["cpu_per_value"],
            s["cpu_per_value"], "{:.1f}", 1e6, "dhtnode")
        row(f"{n} listeners from others: updates delivered / expected", "%",
            o["delivered"] / o["expected"], s["delivered"] / s["expected"], "{:.1f}", 100,
            "dhtnode")
        row(f"{n} listeners from others: storer RSS", "MB", o["rss_mb"], s["rss_mb"], "{:.1f}",
            1, "dhtnode")
    print()
    print(table(rows))
    write_summary(args.summary, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
