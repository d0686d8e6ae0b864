"""The bench's upstream: HTTP/1.1 keep-alive, GET only, each response written in one send (no Nagle stall) on
port 8080, and a raw TCP echo on port 9000 (every byte read is written back) for the TCP load."""

import asyncio
import socket

BODIES = {b"/1k": b"x" * 1024, b"/64k": b"x" * 65536}
HEADS = {path: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n" % len(body)
         for path, body in BODIES.items()}


class Http(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head, self.buffer = self.buffer[:end], self.buffer[end + 4:]
            parts = head.split(b" ", 2)
            path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b"/1k"
            path = path if path in BODIES else b"/1k"
            close = b"\nconnection: close" in head.lower()
            self.transport.write(HEADS[path] + (b"connection: close\r\n\r\n" if close else b"\r\n") + BODIES[path])
            if close:
                self.transport.close()
                return


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    # bounded: a peer that does not read its echo stops being read from
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def main() -> None:
    loop = asyncio.get_running_loop()
    http = await loop.create_server(Http, "0.0.0.0", 8080, backlog=1024, reuse_address=True)
    echo = await loop.create_server(Echo, "0.0.0.0", 9000, backlog=1024, reuse_address=True)
    await asyncio.gather(http.serve_forever(), echo.serve_forever())


asyncio.run(main())
