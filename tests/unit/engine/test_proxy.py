"""The forward path end to end on loopback: a client, the engine's listener, pooled mutual TLS (TLS 1.3,
SPIFFE identities) to an origin that parses by hand and records every byte it gets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from sidecar.engine.call import Call
from sidecar.engine.pool import Pool
from sidecar.engine.proxy import Decide, Listener, Response, Route
from tests.unit.engine.helpers import (
    TD,
    Origin,
    Pki,
    closed,
    connect,
    make_pki,
    read_response,
    request,
    run,
    wait_for,
)

MB = 1024 * 1024
REVIEWS = f"{TD}/reviews"
HIGH = 64 * 1024
READ_MAX = 256 * 1024


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Mesh:
    origin: Origin
    listener: Listener
    pool: Pool
    port: int  # the listener's


def to_origin(port: int, identity: str = REVIEWS) -> Decide:
    def decide(call: Call) -> Route | Response:
        head = call.head
        if head.target == b"/deny":
            return Response(403, b"denied\n")
        if head.target == b"/boom":
            raise RuntimeError("a bug in a hook")
        return Route(("127.0.0.1", port), identity)

    return decide


@contextlib.asynccontextmanager
async def mesh(pki: Pki, origin: Origin | None = None, identity: str = REVIEWS, server: str = "reviews",
               **listener_options: float) -> AsyncIterator[Mesh]:
    origin = origin or Origin()
    await origin.start(getattr(pki, server)[1])
    pool = Pool(pki.client[0], idle_timeout=30)
    listener = Listener(to_origin(origin.port, identity), pool, high_water=HIGH, low_water=HIGH // 4,
                        **listener_options)  # type: ignore[arg-type]
    srv = await listener.start("127.0.0.1", 0)
    try:
        yield Mesh(origin, listener, pool, srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        pool.close()
        await origin.stop()


def seen_anywhere(origin: Origin, needle: bytes) -> bool:
    return any(needle in bytes(raw) for raw in origin.raw)


# --- keep-alive and pooling ---------------------------------------------------------------------------------------


def test_one_upstream_connection_serves_many_requests_and_clients(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            for _ in range(3):  # three clients one after another, each with several requests
                reader, writer = await connect(m.port)
                for i in range(10):
                    writer.write(request(target=b"/r%d" % i))
                    answer = await read_response(reader)
                    assert answer.status == 200 and answer.body == b"ok"
                writer.close()
            assert len(m.origin.requests) == 30
            assert m.origin.connections == 1 and m.pool.connects == 1

    run(go())


def test_client_connection_close_is_honoured_and_the_upstream_stays_pooled(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request(headers=((b"connection", b"close"),)))
            answer = await read_response(reader)
            assert answer.status == 200 and answer.headers[b"connection"] == b"close"
            assert await closed(reader)
            reader, writer = await connect(m.port)
            writer.write(request())
            assert (await read_response(reader)).status == 200
            assert m.origin.connections == 1  # the hop to the peer is the pool's business, not the client's
            seen = m.origin.requests[0].headers
            assert all(k.lower() != b"connection" for k, _ in seen)  # hop-by-hop: not forwarded

    run(go())


def test_upstream_connection_close_is_not_pooled(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request(target=b"/close"))
            answer = await read_response(reader)
            assert answer.status == 200 and b"connection" not in answer.headers  # the client's stays open
            writer.write(request())
            assert (await read_response(reader)).status == 200
            assert m.origin.connections == 2 and m.pool.connects == 2

    run(go())


def test_upstream_killed_between_requests_a_new_connection_is_made(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request())
            assert (await read_response(reader)).status == 200
            port = m.origin.port
            await m.origin.stop()
            m.origin = await Origin().start(pki.reviews[1], port=port)
            writer.write(request(target=b"/after"))
            answer = await read_response(reader)
            assert answer.status == 200 and [r.target for r in m.origin.requests] == [b"/after"]
            assert m.pool.connects == 2
            await m.origin.stop()

    run(go())


def test_pooled_connection_closed_as_the_request_arrives_is_retried_once(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki, Origin(drop_after=1)) as m:
            reader, writer = await connect(m.port)
            writer.write(request(target=b"/one"))
            assert (await read_response(reader)).status == 200
            writer.write(request(target=b"/two"))  # the pooled connection dies on it, unanswered
            answer = await read_response(reader)
            assert answer.status == 200
            assert [(r.target, r.conn) for r in m.origin.requests] == [(b"/one", 0), (b"/two", 1)]

    run(go())


def test_a_body_request_is_not_retried_on_a_dead_pooled_connection(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki, Origin(drop_after=1)) as m:
            reader, writer = await connect(m.port)
            writer.write(request(target=b"/one"))
            assert (await read_response(reader)).status == 200
            writer.write(request(method=b"POST", target=b"/pay", body=b"once"))
            assert (await read_response(reader)).status == 502  # never sent twice
            assert not any(r.target == b"/pay" for r in m.origin.requests)

    run(go())


def test_pipelined_requests_are_answered_in_order(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request(target=b"/big/70000") + request(method=b"POST", target=b"/echo", body=b"hi")
                         + request(target=b"/deny") + request(target=b"/x"))
            sizes = [len((await read_response(reader)).body) for _ in range(4)]
            assert sizes == [70000, 2, 7, 2]

    run(go())


# --- identity, caps, decisions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("server, identity", [("ratings", REVIEWS), ("stranger", REVIEWS), ("reviews", f"{TD}/x")])
def test_upstream_with_the_wrong_identity_gets_nothing(pki: Pki, server: str, identity: str) -> None:
    async def go() -> None:
        async with mesh(pki, server=server, identity=identity) as m:
            reader, writer = await connect(m.port)
            writer.write(request(target=b"/secret", headers=((b"authorization", b"Bearer t"),)))
            answer = await read_response(reader)
            assert answer.status == 503
            await asyncio.sleep(0.05)
            assert not seen_anywhere(m.origin, b"secret") and not m.origin.requests

    run(go())


def test_connection_cap_refuses_with_503_and_frees_slots(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki, max_connections=2) as m:
            clients = [await connect(m.port) for _ in range(2)]
            for reader, writer in clients:
                writer.write(request())
                assert (await read_response(reader)).status == 200
            reader, writer = await connect(m.port)
            answer = await read_response(reader)
            assert answer.status == 503 and await closed(reader)
            assert m.listener.refused == 1 and m.listener.open == 2
            clients[0][1].close()
            await wait_for(lambda: m.listener.open == 1)
            reader, writer = await connect(m.port)
            writer.write(request())
            assert (await read_response(reader)).status == 200

    run(go())


def test_local_answers_and_a_failing_decision(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request(target=b"/deny"))
            answer = await read_response(reader)
            assert answer.status == 403 and answer.body == b"denied\n"
            writer.write(request(target=b"/boom"))  # fails closed
            assert (await read_response(reader)).status == 500
            assert await closed(reader)
            assert not m.origin.requests

    run(go())


# --- limits and smuggling through the proxy -----------------------------------------------------------------------

ATTACKS = {
    "CL.TE": (b"POST / HTTP/1.1\r\nhost: r\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
              b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: r\r\n\r\n"),
    "TE.CL": (b"POST / HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\ncontent-length: 40\r\n\r\n"
              b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: r\r\n\r\n"),
    "TE obfuscated": (b"POST / HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\ntransfer-encoding: x\r\n"
                      b"\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: r\r\n\r\n"),
    "bad chunk size": (b"POST / HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n"
                       b"5g\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: r\r\n\r\n"),
    "chunk longer than said": (b"POST / HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n"
                               b"1\r\nGET /smuggled HTTP/1.1\r\nhost: r\r\n\r\n0\r\n\r\n"),
    "bare CR": b"GET / HTTP/1.1\r\nhost: r\rGET /smuggled HTTP/1.1\r\nhost: r\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nhost: r\n\nGET /smuggled HTTP/1.1\r\nhost: r\r\n\r\n",
    "two Hosts": b"GET /smuggled HTTP/1.1\r\nhost: r\r\nhost: admin\r\n\r\n",
    "NUL in a header": b"GET /smuggled HTTP/1.1\r\nhost: r\r\nx: \x00\r\n\r\n",
    "request line 414": b"GET /smuggled" + b"a" * 9000 + b" HTTP/1.1\r\nhost: r\r\n\r\n",
    "head 431": b"GET /smuggled HTTP/1.1\r\nhost: r\r\n" + b"x: " + b"v" * 70_000 + b"\r\n\r\n",
    "fields 431": b"GET /smuggled HTTP/1.1\r\nhost: r\r\n" + b"x: v\r\n" * 101 + b"\r\n",
    "escaped slash": b"GET /smuggled/%2e%2e%2fadmin HTTP/1.1\r\nhost: r\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize("split", [False, True])
def test_smuggling_never_reaches_the_upstream(pki: Pki, name: str, split: bool) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request(target=b"/warm"))  # a pooled connection is there to be abused
            assert (await read_response(reader)).status == 200
            attack = ATTACKS[name]
            if split:  # the head first, as its own segment, then the rest
                cut = attack.index(b"\n") + 1
                writer.write(attack[:cut])
                await writer.drain()
                await asyncio.sleep(0.02)
                attack = attack[cut:]
            writer.write(attack)
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                answer = await read_response(reader)
                assert answer.status in (400, 414, 431), answer.status
            assert await closed(reader)
            await asyncio.sleep(0.05)
            assert not seen_anywhere(m.origin, b"smuggled")
            assert [r.target for r in m.origin.requests] == [b"/warm"]

    run(go())


def test_slowloris_head_times_out_and_idle_keep_alive_closes(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki, head_timeout=0.3) as m:
            reader, writer = await connect(m.port)
            writer.write(b"GET / HTTP/1.1\r\nhost: r\r\nx-slow: ")
            answer = await read_response(reader)
            assert answer.status == 408 and await closed(reader)
            reader, writer = await connect(m.port)
            writer.write(request())
            assert (await read_response(reader)).status == 200
            assert await closed(reader, timeout=3)  # idle afterwards: closed quietly
            await wait_for(lambda: m.listener.open == 0)
            # the deadline moves with each request: requests 0.2 s apart outlive the first deadline
            reader, writer = await connect(m.port)
            for _ in range(3):
                writer.write(request())
                assert (await read_response(reader)).status == 200
                await asyncio.sleep(0.2)
            started = asyncio.get_running_loop().time()
            assert await closed(reader, timeout=3)
            assert asyncio.get_running_loop().time() - started < 0.3  # 0.3 s after the last answer, not later

    run(go())


# --- bodies: both ways, both framings, streamed with backpressure ------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
def test_ten_megabytes_upload_to_a_slow_upstream_is_streamed_and_bounded(pki: Pki, chunked: bool) -> None:
    size = 10 * MB

    async def go() -> None:
        async with mesh(pki, Origin(read_delay=0.0005, rcvbuf=32 * 1024)) as m:
            reader, writer = await connect(m.port)
            if chunked:
                writer.write(b"POST /count HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n")
            else:
                writer.write(b"POST /count HTTP/1.1\r\nhost: r\r\ncontent-length: %d\r\n\r\n" % size)
            piece = b"u" * (256 * 1024)
            for _ in range(size // len(piece)):
                writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece)
                await writer.drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
            answer = await read_response(reader)
            assert answer.status == 200 and answer.body == b"%d" % size
            assert m.listener.pauses > 0  # reading from the client stopped while the upstream was full
            # bounded whatever the body's size: on TLS, ciphertext waiting under the TLS layer counts too
            assert m.listener.peak_buffered <= 2 * (HIGH + READ_MAX)

    run(go())


@pytest.mark.parametrize("target", [b"/big/%d" % (10 * MB), b"/chunked/%d" % (10 * MB)])
def test_ten_megabytes_download_to_a_slow_client_is_streamed_and_bounded(pki: Pki, target: bytes) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port, rcvbuf=32 * 1024)
            writer.write(request(target=target))
            received = 0

            async def slowly(piece: bytes) -> None:
                nonlocal received
                received += len(piece)
                assert set(piece) == {ord("z")}
                await asyncio.sleep(0.0002)

            answer = await read_response(reader, on_piece=slowly)
            assert answer.status == 200 and received == 10 * MB
            assert m.listener.pauses > 0
            assert m.listener.peak_buffered <= HIGH + READ_MAX + 64 * 1024
            writer.write(request())  # and the connection goes on
            assert (await read_response(reader)).status == 200
            assert m.origin.connections == 1

    run(go())


def test_echo_both_ways_keeps_every_byte(pki: Pki) -> None:
    blob = bytes(range(256)) * 4096  # 1 MiB

    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request(method=b"POST", target=b"/echo", body=blob))
            assert (await read_response(reader)).body == blob
            writer.write(b"POST /echo HTTP/1.1\r\nhost: r\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: t\r\n\r\n")
            assert (await read_response(reader)).body == b"abcde"
            assert m.origin.requests[1].body == b"abcde"
            assert b"ext=1" not in bytes(m.origin.raw[0])  # re-chunked: extensions and trailers stay here

    run(go())


def test_head_and_http10_clients(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request(method=b"HEAD", target=b"/h"))
            answer = await read_response(reader, head_request=True)
            assert answer.status == 200 and answer.headers[b"content-length"] == b"5"
            writer.write(request(target=b"/after-head"))  # the client's connection goes on
            assert (await read_response(reader)).body == b"ok"
            reader, writer = await connect(m.port)
            writer.write(b"GET /chunked/1000 HTTP/1.0\r\n\r\n")
            raw = await reader.read()  # close-delimited for HTTP/1.0: no chunk framing
            head, _, body = raw.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") and body == b"z" * 1000

    run(go())


def test_websocket_upgrade_becomes_a_relay(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            writer.write(request(target=b"/ws", headers=((b"connection", b"Upgrade"), (b"upgrade", b"websocket"))))
            answer = await read_response(reader)
            assert answer.status == 101 and answer.headers[b"upgrade"] == b"websocket"
            for size in (5, 300_000):
                writer.write(b"f" * size)
                assert await reader.readexactly(size) == b"f" * size
            assert len(m.listener.relays) == 1 and m.listener.open == 1 and m.pool.total == 0
            writer.close()
            await wait_for(lambda: m.listener.open == 0 and not m.listener.relays)

    run(go())


def test_an_h2c_upgrade_is_served_as_http11_and_the_connection_closes_after(pki: Pki) -> None:
    async def go() -> None:
        async with mesh(pki) as m:
            reader, writer = await connect(m.port)
            upgrade = ((b"connection", b"Upgrade, HTTP2-Settings"), (b"upgrade", b"h2c"),
                       (b"http2-settings", b"AAMAAABkAAQCAAAAAAIAAAAA"), (b"x-keep", b"1"))
            writer.write(request(target=b"/ok", headers=upgrade))
            answer = await read_response(reader)
            assert answer.status == 200 and answer.body == b"ok"
            seen = dict((k.lower(), v) for k, v in m.origin.requests[-1].headers)
            assert b"upgrade" not in seen and b"http2-settings" not in seen and seen[b"x-keep"] == b"1"
            assert await reader.read() == b""  # closed after the answer
            assert not m.listener.relays

    run(go())


def test_a_pair_of_engines_over_mutual_tls(pki: Pki) -> None:
    """client -> outbound engine -> mTLS -> inbound engine -> plaintext app: the sidecar pair, both ways checked."""

    async def go() -> None:
        app = await Origin().start(None)
        inbound_pool = Pool(None)
        inbound = Listener(lambda h: Route(("127.0.0.1", app.port)), inbound_pool)
        inbound_srv = await inbound.start("127.0.0.1", 0, pki.reviews[1])
        inbound_port = inbound_srv.sockets[0].getsockname()[1]
        outbound_pool = Pool(pki.client[0])
        outbound = Listener(lambda h: Route(("127.0.0.1", inbound_port), REVIEWS), outbound_pool)
        outbound_srv = await outbound.start("127.0.0.1", 0)
        reader, writer = await connect(outbound_srv.sockets[0].getsockname()[1])
        for _ in range(5):
            writer.write(request(method=b"POST", target=b"/echo", body=b"x" * 1000))
            assert (await read_response(reader)).body == b"x" * 1000
        assert outbound_pool.connects == 1 and inbound_pool.connects == 1 and app.connections == 1
        # a caller without a mesh certificate never gets through the inbound side
        bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        bare.check_hostname, bare.verify_mode = False, ssl.CERT_NONE
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            r2, w2 = await connect(inbound_port, ssl_context=bare)
            w2.write(request(target=b"/no-cert"))
            with contextlib.suppress(ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
                await read_response(r2)
        assert not any(r.target == b"/no-cert" for r in app.requests)
        for srv in (outbound_srv, inbound_srv):
            srv.close()
        outbound_pool.close()
        inbound_pool.close()
        await app.stop()

    run(go())
