"""The byte relay between two real loopback connections: everything passes, a slow receiver pauses the
sender (bounded buffers), an EOF is passed on as a half-close on TCP, a reset as a reset."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from typing import cast

import pytest

from sidecar.engine.relay import Relay
from tests.unit.engine.helpers import Pki, connect, make_pki, run, wait_for

MB = 1024 * 1024
HIGH, LOW = 64 * 1024, 16 * 1024
READ_MAX = 256 * 1024  # the most one read hands over (uvloop's and asyncio's read size)


class Holder(asyncio.Protocol):
    """A protocol that only keeps its transport, for the relay to take over."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.early = bytearray()  # what arrived before the relay took over

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # uvloop starts reading after connection_made returns, undoing a pause made in it: pause just after
        asyncio.get_running_loop().call_soon(self.transport.pause_reading)

    def data_received(self, data: bytes) -> None:
        self.early += data


async def relay_between(target_port: int, back_ssl: ssl.SSLContext | None = None
                        ) -> tuple[asyncio.Server, list[Relay]]:
    """A relay server: each accepted connection is joined to a new connection to `target_port`."""
    loop = asyncio.get_running_loop()
    relays: list[Relay] = []
    tasks: set[asyncio.Task[None]] = set()

    def accepted() -> Holder:
        holder = Holder()

        async def join() -> None:
            await wait_for(lambda: holder.transport is not None)
            back, _ = await loop.create_connection(Holder, "127.0.0.1", target_port, ssl=back_ssl,
                                                   server_hostname="" if back_ssl else None)
            assert holder.transport is not None
            relays.append(Relay(holder.transport, back, to_b=bytes(holder.early), high_water=HIGH, low_water=LOW))

        task = loop.create_task(join())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return holder

    server = await loop.create_server(accepted, "127.0.0.1", 0)
    return server, relays


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_ten_megabytes_to_a_slow_reader_stay_bounded_and_intact() -> None:
    size = 10 * MB
    payload = bytes(range(256)) * (size // 256)

    async def go() -> None:
        got = hashlib.sha256()
        received = 0
        done = asyncio.Event()

        async def slow_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal received
            while data := await reader.read(32 * 1024):
                got.update(data)
                received += len(data)
                await asyncio.sleep(0.0005)
            writer.write(b"bye")
            await writer.drain()
            writer.close()
            done.set()

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # the kernel must not absorb it all
        sock.bind(("127.0.0.1", 0))
        sink = await asyncio.start_server(slow_sink, sock=sock)
        server, relays = await relay_between(sink.sockets[0].getsockname()[1])
        reader, writer = await connect(server.sockets[0].getsockname()[1])
        for i in range(0, size, MB):
            writer.write(payload[i:i + MB])
            await writer.drain()
        writer.write_eof()  # half-close: the sink sees EOF, and its answer still comes back
        assert await reader.read() == b"bye"
        await done.wait()
        assert received == size and got.digest() == hashlib.sha256(payload).digest()
        relay = relays[0]
        assert relay.pauses > 0  # the sender was paused...
        assert relay.peak_buffered <= HIGH + READ_MAX  # ...so what waited in memory stayed bounded
        await wait_for(lambda: relay.done)
        writer.close()
        server.close()
        sink.close()

    run(go())


def test_both_directions_at_once_and_first_bytes() -> None:
    async def go() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        target = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = target.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        a_proto, b_proto = Holder(), Holder()
        server = await loop.create_server(lambda: a_proto, "127.0.0.1", 0)
        reader, writer = await connect(server.sockets[0].getsockname()[1])
        await wait_for(lambda: a_proto.transport is not None)
        back, _ = await loop.create_connection(lambda: b_proto, "127.0.0.1", port)
        assert a_proto.transport is not None
        relay = Relay(a_proto.transport, back, to_a=b"greeting:", to_b=b"early:")
        assert await reader.readexactly(15) == b"greeting:early:"  # to_b went to the echo and came back
        blob = b"x" * (3 * MB)
        writer.write(blob)
        got = await reader.readexactly(len(blob))
        assert got == blob and relay.bytes >= 2 * len(blob)
        writer.transport.abort()  # a reset on one side reaches the other
        await wait_for(lambda: relay.done)
        server.close()
        target.close()

    run(go())


def test_over_tls_a_slow_reader_still_pauses_the_sender(pki: Pki) -> None:
    async def go() -> None:
        received = 0

        async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal received
            while data := await reader.read(16 * 1024):
                received += len(data)
                await asyncio.sleep(0.001)
            writer.close()

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.bind(("127.0.0.1", 0))
        sink = await asyncio.start_server(slow, sock=sock, ssl=pki.reviews[1])
        server, relays = await relay_between(sink.sockets[0].getsockname()[1], back_ssl=pki.client[0])
        _, writer = await connect(server.sockets[0].getsockname()[1])
        for _ in range(4):
            writer.write(b"t" * MB)
            await writer.drain()
        writer.write_eof()  # TLS cannot half-close: the relay closes the TLS side once flushed
        await wait_for(lambda: received == 4 * MB, timeout=20)
        relay = relays[0]
        assert relay.pauses > 0 and relay.peak_buffered <= HIGH + READ_MAX
        await wait_for(lambda: relay.done)
        writer.close()
        server.close()
        sink.close()

    run(go())
