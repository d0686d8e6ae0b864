"""Test upstreams for the pass-through cases, one process, several ports (stdlib + h2, wsproto, grpcio).

  :8080  HTTP/1.1  /echo (keep-alive), /chunked, /slow?ms=N, /bytes?n=N (streamed), POST /upload (counted),
                   /ws (WebSocket echo), /status/<code>
  :8081  HTTP/2 cleartext (prior knowledge), any path -> "h2 ok <path>"
  :8082  gRPC, method /testbed.Echo/Say (raw bytes, no protobuf): echoes the request
  :6379  Redis protocol subset: PING, ECHO, SET, GET
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from concurrent import futures
from urllib.parse import parse_qs, unquote, urlsplit

import h2.config
import h2.connection
import h2.events
import wsproto
import wsproto.events

CHUNK = 64 * 1024
NAME = os.environ.get("TESTBED_NAME", "testbed")


def nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    """A deliberately lenient parser, like many apps': a bare CR also ends a header line (so a smuggled
    `X-A: a\\rTransfer-Encoding: chunked` becomes two headers here) and the last Host header wins."""
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        for part in raw.rstrip(b"\r\n").split(b"\r"):
            key, _, value = part.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
    return method, target, headers


def resolve(path: str) -> str:
    """How a lenient app finds a resource: decode every escape, `\\` as `/`, merge slashes, resolve dots."""
    path = unquote(path).replace("\\", "/")
    out: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            out = out[:-1]
        elif seg not in ("", "."):
            out.append(seg)
    return "/" + "/".join(out)


SECRET = b"TOP-SECRET-ADMIN-CONTENT"


async def drain_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> int:
    total = 0
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                return total
            while size:
                got = await reader.read(min(size, CHUNK))
                size -= len(got)
                total += len(got)
            await reader.readline()
    left = int(headers.get("content-length", "0"))
    while left:
        got = await reader.read(min(left, CHUNK))
        if not got:
            break
        left -= len(got)
        total += len(got)
    return total


def response(status: int, body: bytes, ctype: str = "application/json", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\nx-testbed: {NAME}\r\n"
            f"{extra}\r\n").encode() + body


async def websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw_head: bytes) -> None:
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    ws.receive_data(raw_head)
    while True:
        for event in ws.events():
            if isinstance(event, wsproto.events.Request):
                writer.write(ws.send(wsproto.events.AcceptConnection()))
            elif isinstance(event, wsproto.events.TextMessage):
                writer.write(ws.send(wsproto.events.Message(data=f"echo: {event.data}")))
            elif isinstance(event, wsproto.events.CloseConnection):
                writer.write(ws.send(event.response()))
                await writer.drain()
                writer.close()
                return
        await writer.drain()
        data = await reader.read(CHUNK)
        if not data:
            return
        ws.receive_data(data)


async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    nodelay(writer)
    try:
        while True:
            head = await read_head(reader)
            if head is None:
                return
            method, target, headers = head
            url = urlsplit(target)
            query = parse_qs(url.query)
            if url.path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                raw = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
                await websocket(reader, writer, raw.encode())
                return
            received = await drain_body(reader, headers)
            resolved = resolve(url.path)
            if resolved == "/admin" or resolved.startswith("/admin/") or headers.get("host", "").lower() == "admin.x":
                # the protected resource of the attack tests: it must never reach a caller the policy denied
                writer.write(response(200, SECRET + f" {method} {target}".encode(), "text/plain"))
            elif url.path == "/echo":
                body = json.dumps({"name": NAME, "method": method, "path": url.path, "headers": headers,
                                   "received": received, "peer": writer.get_extra_info("peername")[0]}).encode()
                writer.write(response(200, body))
            elif url.path == "/upload":
                writer.write(response(200, json.dumps({"received": received}).encode()))
            elif url.path == "/chunked":
                parts = int(query.get("parts", ["5"])[0])
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
)
                for i in range(parts):
                    chunk = f"part {i}\n".encode()
                    writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.01)
                writer.write(b"0\r\n\r\n")
            elif url.path == "/bytes":
                n = int(query.get("n", ["1024"])[0])
                writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\n\r\n"
                             .encode())
                block = b"x" * CHUNK
                while n:
                    piece = block[:min(n, CHUNK)]
                    writer.write(piece)
                    n -= len(piece)
                    await writer.drain()
            elif url.path == "/slow":
                await asyncio.sleep(int(query.get("ms", ["1000"])[0]) / 1000)
                writer.write(response(200, b'{"slow": "done"}'))
            elif resolved.startswith("/public/"):
                writer.write(response(200, json.dumps({"public": resolved}).encode()))
            elif url.path.startswith("/status/"):
                code = int(url.path.rsplit("/", 1)[-1])
                writer.write(response(code, json.dumps({"status": code}).encode()))
            else:
                writer.write(response(404, b'{"error": "not found"}'))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def http2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    try:
        while data := await reader.read(CHUNK):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    path = dict(event.headers).get(b":path", b"/").decode()
                    body = f"h2 ok {path}\n".encode()
                    conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(body))),
                                                        ("x-testbed", NAME)])
                    conn.send_data(event.stream_id, body, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def redis(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    store: dict[bytes, bytes] = {}
    try:
        while line := await reader.readline():
            if not line.startswith(b"*"):
                writer.write(b"-ERR protocol\r\n")
                break
            args = []
            for _ in range(int(line[1:])):
                size = int((await reader.readline())[1:])
                args.append((await reader.readexactly(size + 2))[:-2])
            cmd = args[0].upper()
            if cmd == b"PING":
                writer.write(b"+PONG\r\n")
            elif cmd == b"ECHO":
                writer.write(b"$%d\r\n%s\r\n" % (len(args[1]), args[1]))
            elif cmd == b"SET":
                store[args[1]] = args[2]
                writer.write(b"+OK\r\n")
            elif cmd == b"GET":
                value = store.get(args[1])
                writer.write(b"$-1\r\n" if value is None else b"$%d\r\n%s\r\n" % (len(value), value))
            else:
                writer.write(b"-ERR unknown command\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ValueError):
        pass
    finally:
        writer.close()


def start_grpc() -> object:
    import grpc

    def say(request: bytes, context: object) -> bytes:
        return b"grpc echo: " + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler("testbed.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("0.0.0.0:8082")
    server.start()
    return server


async def main() -> None:
    grpc_server = start_grpc()
    servers = [await asyncio.start_server(http1, "0.0.0.0", 8080), await asyncio.start_server(http2, "0.0.0.0", 8081),
               await asyncio.start_server(redis, "0.0.0.0", 6379)]
    print(f"testbed {NAME} listening on 8080 8081 8082 6379", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))
    del grpc_server


if __name__ == "__main__":
    asyncio.run(main())
