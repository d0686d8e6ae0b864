"""What the engine tests share: a bounded runner on uvloop, workload certificates, an origin server and a client.

The origin parses HTTP/1.1 by hand (no httptools), so the engine is checked against an independent reader,
and it records every byte it receives: "never reached the upstream" is asserted on those bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from meshctl.pki import ca
from sidecar.engine.tls import directory_contexts
from tests.unit.sidecar.test_mtls import NOW, proxy_dir

T = TypeVar("T")
TD = "spiffe://cluster.local/ns/shop/sa"
TIMEOUT_S = 30.0


def run(coro: Awaitable[T], timeout: float = TIMEOUT_S) -> T:
    """Run on uvloop (the sidecar's loop) when installed, never longer than `timeout`."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    try:
        import uvloop
    except ImportError:
        return asyncio.run(bounded())
    return uvloop.run(bounded())


@dataclass
class Pki:
    """Contexts (client, server) per workload, all under one root; `stranger` is under another root."""

    client: tuple[ssl.SSLContext, ssl.SSLContext]
    reviews: tuple[ssl.SSLContext, ssl.SSLContext]
    ratings: tuple[ssl.SSLContext, ssl.SSLContext]
    stranger: tuple[ssl.SSLContext, ssl.SSLContext]
    dirs: dict[str, Path]


def make_pki(tmp: Path) -> Pki:
    root, other = ca.create_root("cluster.local", NOW), ca.create_root("cluster.local", NOW)
    dirs = {name: proxy_dir(tmp, name, r, f"{TD}/{sa}", [r]) for name, r, sa in (
        ("client", root, "productpage"), ("reviews", root, "reviews"), ("ratings", root, "ratings"),
        ("stranger", other, "reviews"))}
    contexts = {name: directory_contexts(d) for name, d in dirs.items()}
    return Pki(contexts["client"], contexts["reviews"], contexts["ratings"], contexts["stranger"], dirs)


# --- the origin ---------------------------------------------------------------------------------------------------


@dataclass
class Seen:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    conn: int  # which connection carried it


@dataclass
class Origin:
    """An HTTP/1.1 server with scripted answers by path:
    /big/N     N bytes, Content-Length, written in 64 KiB pieces with drain
    /chunked/N N bytes, chunked, 64 KiB chunks
    /echo      the request body back (Content-Length)
    /count     the request body's length as the body (the body is read in pieces and not kept)
    /close     answers then closes, with `Connection: close`
    /drop      closes without answering
    /ws        101, then echoes bytes
    /head      (HEAD) Content-Length: 5 and no body
    anything else: 200 with `ok`."""

    server: asyncio.Server | None = None
    requests: list[Seen] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)  # every byte received, per connection
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    read_delay: float = 0.0  # seconds between reads of a request body: a slow consumer
    rcvbuf: int = 0  # a small receive buffer makes backpressure show at once
    drop_after: int | None = None  # the first connection closes, unanswered, on the request after this many

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self.raw)

    async def start(self, ssl_context: ssl.SSLContext | None = None, port: int = 0, host: str = "127.0.0.1") -> Origin:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind((host, port))
        self.server = await asyncio.start_server(self._serve, sock=sock, ssl=ssl_context)
        return self

    async def stop(self) -> None:
        """Like a killed process: every connection goes, idle ones included."""
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        with contextlib.suppress(Exception):
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(self.raw)
        raw = bytearray()
        self.raw.append(raw)
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                raw += head
                if conn == 0 and self.drop_after is not None and self.drop_after == sum(
                        r.conn == 0 for r in self.requests):
                    break  # as a server closing an idle connection just as a request arrives
                line, *lines = head[:-4].split(b"\r\n")
                method, target, _ = line.split(b" ", 2)
                headers = [(k.strip(), v.strip()) for k, v in (h.split(b":", 1) for h in lines)]
                names = {k.lower(): v for k, v in headers}
                count = target == b"/count"
                body, size = await self._body(reader, names, raw, keep=not count)
                self.requests.append(Seen(method, target, headers, body, conn))
                if not await self._answer(reader, writer, method, target, body, size):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    async def _body(self, reader: asyncio.StreamReader, names: dict[bytes, bytes], raw: bytearray,
                    keep: bool) -> tuple[bytes, int]:
        parts: list[bytes] = []
        size = 0

        async def take(n: int) -> None:
            nonlocal size
            while n:
                if self.read_delay:
                    await asyncio.sleep(self.read_delay)
                data = await reader.read(min(n, 65536))
                if not data:
                    raise asyncio.IncompleteReadError(b"", n)
                raw.extend(data[:64] if not keep else data)
                size += len(data)
                n -= len(data)
                if keep:
                    parts.append(data)

        if names.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                line = await reader.readuntil(b"\r\n")
                raw += line
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    raw += await reader.readuntil(b"\r\n")
                    break
                await take(n)
                raw += await reader.readexactly(2)
        elif b"content-length" in names:
            await take(int(names[b"content-length"]))
        return b"".join(parts), size

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: bytes,
                      target: bytes, body: bytes, size: int) -> bool:
        parts = target.split(b"/")
        if target == b"/drop":
            return False
        if target.startswith(b"/big/"):
            n = int(parts[2])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
            await _stream(writer, n, chunked=False)
        elif target.startswith(b"/chunked/"):
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            await _stream(writer, int(parts[2]), chunked=True)
            writer.write(b"0\r\n\r\n")
        elif target == b"/echo":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        elif target == b"/count":
            text = b"%d" % size
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(text) + text)
        elif target == b"/close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            return False
        elif target == b"/ws":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            return False
        elif method == b"HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        return True


async def _stream(writer: asyncio.StreamWriter, n: int, chunked: bool) -> None:
    piece = b"z" * 65536
    while n:
        part = piece[:min(n, len(piece))]
        writer.write(b"%x\r\n" % len(part) + part + b"\r\n" if chunked else part)
        await writer.drain()
        n -= len(part)


# --- the client ---------------------------------------------------------------------------------------------------


async def connect(port: int, rcvbuf: int = 0, ssl_context: ssl.SSLContext | None = None
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, ssl=ssl_context, server_hostname="" if ssl_context else None)


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


async def read_response(reader: asyncio.StreamReader, head_request: bool = False,
                        on_piece: Callable[[bytes], Awaitable[None]] | None = None) -> Answer:
    """One response, by hand; with `on_piece` the body is handed over in pieces instead of kept."""
    head = await reader.readuntil(b"\r\n\r\n")
    line, *lines = head[:-4].split(b"\r\n")
    status = int(line.split(b" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(b":", 1) for h in lines)}
    parts: list[bytes] = []

    async def take(n: int) -> None:
        while n:
            data = await reader.read(min(n, 65536))
            if not data:
                raise asyncio.IncompleteReadError(b"", n)
            n -= len(data)
            if on_piece is not None:
                await on_piece(data)
            else:
                parts.append(data)

    if head_request or status in (101, 204, 304):
        pass
    elif headers.get(b"transfer-encoding") == b"chunked":
        while n := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await take(n)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
    elif b"content-length" in headers:
        await take(int(headers[b"content-length"]))
    else:
        while data := await reader.read(65536):
            if on_piece is not None:
                await on_piece(data)
            else:
                parts.append(data)
    return Answer(status, headers, b"".join(parts))


async def closed(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the peer closed the connection (EOF or reset) within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(65536) == b""
    except ConnectionError:
        return True


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def request(method: bytes = b"GET", target: bytes = b"/", host: bytes = b"reviews", body: bytes | None = None,
            headers: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    extra = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    length = b"content-length: %d\r\n" % len(body) if body is not None else b""
    return method + b" " + target + b" HTTP/1.1\r\nhost: " + host + b"\r\n" + extra + length + b"\r\n" + (body or b"")


def ignore(*_: Any) -> None:
    """A sink for callbacks a test does not look at."""
