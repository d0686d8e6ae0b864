"""Loopback micro-benchmark of the engine (a script, not a test): direct vs through sidecar.engine.proxy.

    .venv/bin/python -m tests.unit.engine.bench_loopback [--seconds 3] [--loads c1,c16]

Modes, each a separate process per hop as in a pod (uvloop everywhere, keep-alive, 1 KB responses):
- direct:    client -> origin
- plaintext: client -> engine -> origin
- mtls:      client -> engine (outbound) -> mutual TLS 1.3, SPIFFE-checked -> engine (inbound) -> origin
The client is asyncio Protocols on uvloop; each load runs a bounded time. On a 2-core machine every hop
competes for the same two cores, as in a real pod pair; ratios to direct in the same run are what count.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

BODY = b"x" * 1024
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n\r\n" % len(BODY) + BODY
REQUEST = b"GET /bench HTTP/1.1\r\nhost: reviews\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"
IDENTITY = "spiffe://cluster.local/ns/bench/sa/server"


class OriginProtocol(asyncio.Protocol):
    """Answers each request head with a canned 1 KB response (GETs only: enough for a benchmark)."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(RESPONSE * n)


def serve(role: str, port: int, target: int, certs: str, ready: Any) -> None:
    import uvloop

    from sidecar.engine.pool import Pool
    from sidecar.engine.proxy import Listener, Route, tune_malloc
    from sidecar.engine.tls import directory_contexts

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if role == "origin":
            tune_malloc()
            await loop.create_server(OriginProtocol, "127.0.0.1", port, backlog=1024)
        elif role == "plain":
            route = Route(("127.0.0.1", target))
            await Listener(lambda h: route, Pool(None)).start("127.0.0.1", port, backlog=1024)
        elif role == "outbound":
            client, _ = directory_contexts(Path(certs) / "client")
            route = Route(("127.0.0.1", target), IDENTITY)
            await Listener(lambda h: route, Pool(client)).start("127.0.0.1", port, backlog=1024)
        elif role == "inbound":
            _, server = directory_contexts(Path(certs) / "server")
            route = Route(("127.0.0.1", target))
            await Listener(lambda h: route, Pool(None)).start("127.0.0.1", port, server, backlog=1024)
        ready.set()
        await asyncio.Event().wait()

    uvloop.run(main())


class Client(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None], deadline: float, latencies: list[float]) -> None:
        self.done, self.deadline, self.latencies = done, deadline, latencies
        self.buf = b""
        self.need = -1
        self.count = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.send()

    def send(self) -> None:
        self.start = time.perf_counter()
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
                self.need = end + 4 + length
            if len(self.buf) < self.need:
                return
            self.buf, self.need = self.buf[self.need:], -1
            now = time.perf_counter()
            self.latencies.append(now - self.start)
            self.count += 1
            if now >= self.deadline:
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(None)
                return
            self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def load(port: int, concurrency: int, seconds: float) -> tuple[float, float]:
    """(requests per second, p50 latency in ms) with `concurrency` keep-alive connections."""
    loop = asyncio.get_running_loop()
    warm = time.perf_counter() + 0.3
    await _run(loop, port, concurrency, warm, [])
    latencies: list[float] = []
    t0 = time.perf_counter()
    clients = await _run(loop, port, concurrency, t0 + seconds, latencies)
    elapsed = time.perf_counter() - t0
    latencies.sort()
    return sum(c.count for c in clients) / elapsed, latencies[len(latencies) // 2] * 1000


async def _run(loop: asyncio.AbstractEventLoop, port: int, concurrency: int, deadline: float,
               latencies: list[float]) -> list[Client]:
    clients: list[Client] = []
    futures: list[asyncio.Future[None]] = []
    for _ in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()

        def factory(done: asyncio.Future[None] = done) -> Client:
            return Client(done, deadline, latencies)

        _, proto = await loop.create_connection(factory, "127.0.0.1", port)
        clients.append(proto)
        futures.append(done)
    async with asyncio.timeout(deadline - time.perf_counter() + 10):
        await asyncio.gather(*futures)
    return clients


def make_certs(directory: Path) -> None:
    import datetime as dt

    from meshctl.pki import ca, workload

    now = dt.datetime.now(dt.UTC)
    root = ca.create_root("cluster.local", now)
    for name, identity in (("client", "spiffe://cluster.local/ns/bench/sa/client"), ("server", IDENTITY)):
        d = directory / name
        d.mkdir()
        cert = workload.issue(root, identity, now)
        (d / "cert.pem").write_bytes(cert.cert_pem())
        (d / "key.pem").write_bytes(cert.key_pem())
        (d / "bundle.pem").write_bytes(root.cert_pem())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per mode and load (bounded)")
    parser.add_argument("--loads", default="c1,c16", help="comma-separated cN: N keep-alive connections")
    args = parser.parse_args()
    seconds = min(args.seconds, 30.0)
    loads = [int(x.lstrip("c")) for x in args.loads.split(",")]
    base = 47100
    ports = {"origin": base, "plain": base + 1, "inbound": base + 2, "outbound": base + 3}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        make_certs(Path(tmp))
        procs = []
        for role, target in (("origin", 0), ("plain", ports["origin"]), ("inbound", ports["origin"]),
                             ("outbound", ports["inbound"])):
            ready = ctx.Event()
            proc = ctx.Process(target=serve, args=(role, ports[role], target, tmp, ready), daemon=True)
            proc.start()
            if not ready.wait(20):
                raise SystemExit(f"{role} did not start")
            procs.append(proc)
        try:
            import uvloop

            results: dict[tuple[str, int], tuple[float, float]] = {}

            async def bench() -> None:
                for concurrency in loads:
                    for mode, port in (("direct", ports["origin"]), ("plaintext", ports["plain"]),
                                       ("mtls", ports["outbound"])):
                        results[(mode, concurrency)] = await load(port, concurrency, seconds)

            uvloop.run(bench())
        finally:
            for proc in procs:
                proc.terminate()
    print(f"{'mode':<10} {'load':<5} {'req/s':>9} {'ratio':>6} {'p50 ms':>7} {'added p50':>9}")
    for concurrency in loads:
        direct_rps, direct_p50 = results[("direct", concurrency)]
        for mode in ("direct", "plaintext", "mtls"):
            rps, p50 = results[(mode, concurrency)]
            print(f"{mode:<10} c{concurrency:<4} {rps:>9.0f} {rps / direct_rps:>5.2f}x {p50:>7.3f} "
                  f"{p50 - direct_p50:>+9.3f}")


if __name__ == "__main__":
    main()
