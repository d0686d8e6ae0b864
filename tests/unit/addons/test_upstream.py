"""The router's upstream client against a real local mTLS server: identity check, keep-alive, pool limits."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from pathlib import Path

import pytest

from addons.mtls import build_contexts
from addons.policy import ClusterPolicy
from addons.upstream import Pool, UpstreamError
from meshctl.pki import ca
from tests.unit.addons.test_mtls import NOW, proxy_dir

TD = "spiffe://cluster.local/ns/shop/sa"


async def serve(directory: Path, delay: float, host: str = "127.0.0.1") -> tuple[asyncio.Server, list[int]]:
    """An HTTP/1.1 keep-alive server behind mutual TLS; records which connection served each request."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    context.load_verify_locations(directory / "bundle.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            seen.append(id(writer))
            await asyncio.sleep(delay)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(lambda r, w: handle(r, w), host, 0, ssl=context)
    return server, seen


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    root = ca.create_root("cluster.local", NOW)
    return (proxy_dir(tmp_path, "client", root, f"{TD}/productpage", [root]),
            proxy_dir(tmp_path, "server", root, f"{TD}/reviews", [root]))


def request(pool: Pool, port: int, identity: str = f"{TD}/reviews", host: str = "127.0.0.1") -> object:
    return pool.request((host, port), identity, b"GET", b"/", [(b"host", b"reviews")], b"")


def test_keepalive_reuse_and_identity_check(dirs: tuple[Path, Path]) -> None:
    client = build_contexts(dirs[0]).upstream

    async def go() -> None:
        server, seen = await serve(dirs[1], 0)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(ClusterPolicy(), lambda: client)
        answers = [await request(pool, port) for _ in range(5)]  # type: ignore[misc]
        assert [a.status for a in answers] == [200] * 5 and len(set(seen)) == 1  # one connection, reused
        with pytest.raises(UpstreamError, match="did not present"):
            await request(pool, port, identity=f"{TD}/ratings")  # the wrong service answered: refused
        server.close()

    run(go())


def test_connection_limit_queues_then_overflows(dirs: tuple[Path, Path]) -> None:
    client = build_contexts(dirs[0]).upstream

    async def go() -> None:
        server, _ = await serve(dirs[1], 0.3)
        port = server.sockets[0].getsockname()[1]
        pool = Pool(ClusterPolicy(max_connections=1, max_pending=1), lambda: client)
        # an idle connection to another endpoint must give way, not block the queue (the limit is per cluster)
        other, _ = await serve(dirs[1], 0, host="127.0.0.2")
        await request(pool, other.sockets[0].getsockname()[1], host="127.0.0.2")
        results = await asyncio.gather(*(request(pool, port) for _ in range(4)),  # type: ignore[call-overload]
                                       return_exceptions=True)
        kinds = Counter(r.kind if isinstance(r, UpstreamError) else r.status for r in results)
        assert kinds == Counter({200: 2, "overflow": 2}), kinds
        server.close()
        other.close()

    run(go())
