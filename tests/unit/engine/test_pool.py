"""The upstream pool against real loopback servers over TLS 1.3 with SPIFFE identities: identity, reuse,
health on reuse, idle eviction, caps."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from sidecar.engine.pool import Pool, PoolError, Upstream
from tests.unit.engine.helpers import TD, Origin, Pki, make_pki, run, wait_for

REVIEWS = f"{TD}/reviews"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Recorder:
    """A pool user that keeps what the upstream sends."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = False

    def upstream_data(self, data: bytes) -> None:
        self.data += data

    def upstream_eof(self) -> None:
        pass

    def upstream_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def upstream_pause_writing(self) -> None:
        pass

    def upstream_resume_writing(self) -> None:
        pass


async def get(conn: Upstream, target: bytes = b"/") -> bytes:
    user = Recorder()
    conn.user = user
    conn.write(b"GET " + target + b" HTTP/1.1\r\nhost: reviews\r\n\r\n")
    await wait_for(lambda: user.data.endswith(b"ok") or user.lost)
    return bytes(user.data)


def test_tls13_with_the_expected_identity_and_reuse(pki: Pki) -> None:
    async def go() -> None:
        origin = await Origin().start(pki.reviews[1])
        pool = Pool(pki.client[0])
        key = (("127.0.0.1", origin.port), REVIEWS)
        conn, reused = await pool.acquire(key)
        assert not reused
        assert conn.transport is not None
        assert conn.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
        assert (await get(conn)).startswith(b"HTTP/1.1 200")
        pool.release(conn, True)
        for _ in range(5):
            again, reused = await pool.acquire(key)
            assert reused and again is conn
            await get(again)
            pool.release(again, True)
        assert pool.connects == 1 and origin.connections == 1 and len(origin.requests) == 6
        pool.close()
        await origin.stop()

    run(go())


@pytest.mark.parametrize("server, expected", [
    ("ratings", REVIEWS),  # a valid mesh certificate, but another workload's identity
    ("reviews", f"{TD}/reviews/"),  # near misses of the expected ID
    ("reviews", f"{TD}/Reviews"),
    ("reviews", "spiffe://cluster.local/ns/shop/sa/reviews2"),
    ("stranger", REVIEWS),  # the right ID, signed by another root: the handshake itself fails
])
def test_identity_mismatch_is_refused_before_a_byte_is_sent(pki: Pki, server: str, expected: str) -> None:
    async def go() -> None:
        origin = await Origin().start(getattr(pki, server)[1])
        pool = Pool(pki.client[0])
        with pytest.raises(PoolError) as info:
            await pool.acquire((("127.0.0.1", origin.port), expected))
        assert info.value.kind in ("identity", "connect-failure")
        assert pool.total == 0 and not pool.idle
        await asyncio.sleep(0.05)
        assert all(not raw for raw in origin.raw)  # not one HTTP byte reached it
        await origin.stop()

    run(go())


def test_plaintext_server_is_refused_when_an_identity_is_expected(pki: Pki) -> None:
    async def go() -> None:
        origin = await Origin().start(None)
        pool = Pool(pki.client[0], connect_timeout=2)
        with pytest.raises(PoolError):
            await pool.acquire((("127.0.0.1", origin.port), REVIEWS))
        assert pool.total == 0
        await origin.stop()

    run(go())


def test_a_connection_closed_by_the_peer_while_idle_is_not_reused(pki: Pki) -> None:
    async def go() -> None:
        origin = await Origin().start(pki.reviews[1])
        pool = Pool(pki.client[0])
        key = (("127.0.0.1", origin.port), REVIEWS)
        conn, _ = await pool.acquire(key)
        await get(conn)
        pool.release(conn, True)
        port = origin.port
        await origin.stop()  # the upstream dies between requests
        origin = await Origin().start(pki.reviews[1], port=port)
        await wait_for(lambda: not conn.healthy())
        fresh, reused = await pool.acquire(key)
        assert not reused and fresh is not conn
        assert (await get(fresh)).startswith(b"HTTP/1.1 200")
        assert pool.connects == 2 and pool.total == 1
        pool.close()
        await origin.stop()

    run(go())


def test_data_arriving_on_an_idle_connection_makes_it_unusable(pki: Pki) -> None:
    async def go() -> None:
        origin = await Origin().start(pki.reviews[1])
        pool = Pool(pki.client[0])
        key = (("127.0.0.1", origin.port), REVIEWS)
        conn, _ = await pool.acquire(key)
        conn.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")  # its answer arrives while the connection is idle
        pool.release(conn, True)
        await wait_for(lambda: conn.stale)
        assert pool.take(key) is None
        await origin.stop()

    run(go())


def test_idle_connections_are_closed_at_the_idle_timeout(pki: Pki) -> None:
    async def go() -> None:
        origin = await Origin().start(pki.reviews[1])
        pool = Pool(pki.client[0], idle_timeout=0.2)
        key = (("127.0.0.1", origin.port), REVIEWS)
        conns = [(await pool.acquire(key))[0] for _ in range(3)]
        for conn in conns:
            pool.release(conn, True)
        assert pool.total == 3
        await wait_for(lambda: pool.total == 0, timeout=3)
        assert not pool.idle and all(not c.healthy() for c in conns)
        assert pool._sweeper is None  # nothing idle: no timer left behind
        await origin.stop()

    run(go())


def test_caps_per_key_and_total(pki: Pki) -> None:
    async def go() -> None:
        a = await Origin().start(pki.reviews[1])
        b = await Origin().start(pki.reviews[1])
        pool = Pool(pki.client[0], max_per_key=2, max_total=2)
        key_a, key_b = (("127.0.0.1", a.port), REVIEWS), (("127.0.0.1", b.port), REVIEWS)
        first, _ = await pool.acquire(key_a)
        second, _ = await pool.acquire(key_a)
        with pytest.raises(PoolError) as info:
            await pool.acquire(key_a)
        assert info.value.kind == "overflow"
        with pytest.raises(PoolError):  # the total is reached and nothing is idle
            await pool.acquire(key_b)
        pool.release(first, True)
        other, _ = await pool.acquire(key_b)  # an idle connection to another endpoint gives way
        assert not first.healthy() and pool.total == 2
        pool.release(second, False)  # not reusable: closed, its slot freed when it is gone
        await wait_for(lambda: pool.total == 1)
        pool.release(other, True)
        pool.close()
        await a.stop()
        await b.stop()

    run(go())


def test_connect_failure_and_timeout(pki: Pki, tmp_path: Path) -> None:
    async def go() -> None:
        pool = Pool(pki.client[0], connect_timeout=0.5)
        closed_port = (await Origin().start(None))
        port = closed_port.port
        await closed_port.stop()
        with pytest.raises(PoolError) as info:
            await pool.acquire((("127.0.0.1", port), REVIEWS))
        assert info.value.kind == "connect-failure" and pool.total == 0

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)  # accepts, never answers the TLS handshake

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        with pytest.raises(PoolError):
            await pool.acquire((("127.0.0.1", server.sockets[0].getsockname()[1]), REVIEWS))
        assert pool.total == 0
        server.close()

    run(go())


def test_context_is_asked_per_connect_so_a_reload_reaches_new_connections(pki: Pki) -> None:
    contexts: list[ssl.SSLContext | None] = [None]

    async def go() -> None:
        origin = await Origin().start(pki.reviews[1])
        pool = Pool(lambda: contexts[0])
        key = (("127.0.0.1", origin.port), REVIEWS)
        with pytest.raises(PoolError):  # no certificate yet: fails closed
            await pool.acquire(key)
        contexts[0] = pki.client[0]
        conn, _ = await pool.acquire(key)
        assert (await get(conn)).startswith(b"HTTP/1.1 200")
        await origin.stop()

    run(go())
