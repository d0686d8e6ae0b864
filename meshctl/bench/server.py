"""The bench's upstream: HTTP/1.1 keep-alive, GET only, each response written in one send (no Nagle stall)."""

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


async def main() -> None:
    server = await asyncio.get_running_loop().create_server(Http, "0.0.0.0", 8080, backlog=1024, reuse_address=True)
    await server.serve_forever()


asyncio.run(main())
