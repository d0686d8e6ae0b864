"""Client side of the testbed, run inside a container: `python client.py KIND HOST [ARGS]`; prints a result line."""

from __future__ import annotations

import socket
import sys

import wsproto
import wsproto.events


def ws(host: str, port: int) -> str:
    sock = socket.create_connection((host, port), timeout=10)
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    sock.sendall(conn.send(wsproto.events.Request(host=host, target="/ws")))
    replies = []
    sent = False
    while len(replies) < 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed by {host}:{port}")
        conn.receive_data(chunk)
        for event in conn.events():
            if isinstance(event, wsproto.events.AcceptConnection) and not sent:
                sock.sendall(conn.send(wsproto.events.Message(data="one")))
                sock.sendall(conn.send(wsproto.events.Message(data="two")))
                sent = True
            elif isinstance(event, wsproto.events.TextMessage):
                replies.append(event.data)
    sock.sendall(conn.send(wsproto.events.CloseConnection(code=1000)))
    return " | ".join(replies)


def redis(host: str, port: int) -> str:
    sock = socket.create_connection((host, port), timeout=10)
    out = []
    for cmd in ([b"PING"], [b"SET", b"k", b"meshed"], [b"GET", b"k"]):
        sock.sendall(b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in cmd))
        data = b""
        while not data.endswith(b"\r\n") or (data.startswith(b"$") and data.count(b"\r\n") < 2):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed by {host}:{port}")
            data += chunk
        out.append(data.decode().replace("\r\n", " ").strip())
    return " | ".join(out)


def grpc_call(host: str, port: int) -> str:
    import grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        say = channel.unary_unary("/testbed.Echo/Say")
        return say(b"hello", timeout=10).decode()


if __name__ == "__main__":
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print({"ws": ws, "redis": redis, "grpc": grpc_call}[kind](host, port))
