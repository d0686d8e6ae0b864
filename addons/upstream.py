"""The sidecar's own HTTP/1.1 client to peer sidecars, over mutual TLS, with per-cluster connection pools.

Routed requests go through here instead of mitmproxy's upstream connection, because timeouts, retries,
connection limits and outlier detection need to see and repeat each exchange. h11 (a mitmproxy
dependency) does the HTTP/1.1 framing. The server must present the destination service's SPIFFE ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import h11

from addons.policy import ClusterPolicy

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
                        b"upgrade"})
READ_CHUNK = 65536
MAX_BODY = 64 * 1024 * 1024  # a routed response is held whole; beyond this it is refused, not buffered


class UpstreamError(Exception):
    """No response: `kind` is 'connect-failure', 'reset' or 'overflow' (Envoy's UF, UC and UO)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    used: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def peer_uris(writer: asyncio.StreamWriter) -> list[str]:
    ssl_object = writer.get_extra_info("ssl_object")
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    return [v for k, v in (cert or {}).get("subjectAltName", ()) if k == "URI"]


async def _exchange(conn: Conn, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                    body: bytes) -> Answer:
    events: list[h11.Event] = [h11.Request(method=method, target=target, headers=headers)]
    if body:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    conn.writer.write(b"".join(conn.h11.send(e) or b"" for e in events))
    await conn.writer.drain()
    response: h11.Response | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.h11.next_event()
        if event is h11.NEED_DATA:
            data = await conn.reader.read(READ_CHUNK)
            if not data and response is None:
                raise UpstreamError("reset", "upstream closed the connection before answering")
            conn.h11.receive_data(data)
        elif isinstance(event, h11.InformationalResponse):
            continue
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BODY:
                raise UpstreamError("reset", f"routed response larger than {MAX_BODY} bytes")
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return Answer(response.status_code, bytes(response.reason),
                          [(bytes(k), bytes(v)) for k, v in response.headers.raw_items()
                           if bytes(k).lower() not in HOP_BY_HOP], b"".join(chunks))
        elif isinstance(event, h11.ConnectionClosed):
            raise UpstreamError("reset", "upstream closed the connection mid-response")


class Pool:
    """Connections of one cluster (service + subset) to its endpoints, limited like Envoy's circuit breakers.

    With HTTP/1.1 one connection carries one request at a time, so maxConnections bounds the concurrent
    requests; beyond it up to http1MaxPendingRequests wait, and any more are refused at once (overflow).
    """

    def __init__(self, policy: ClusterPolicy, tls: Callable[[], ssl.SSLContext | None]) -> None:
        self.policy = policy
        self.tls = tls
        # keyed by address AND identity: a connection verified for one identity never serves another
        self.idle: dict[tuple[tuple[str, int], str], list[Conn]] = {}
        self.open = 0
        self.pending = 0
        self._released = asyncio.Condition()

    def _take_idle(self, address: tuple[str, int], identity: str) -> Conn | None:
        idle = self.idle.get((address, identity), [])
        while idle:
            conn = idle.pop()
            if time.monotonic() - conn.idle_since < self.policy.idle_timeout and not conn.reader.at_eof():
                return conn
            self._drop(conn)
        return None

    def _drop_idle_elsewhere(self) -> bool:
        """Close one idle connection to any endpoint, to free a slot for another (the limit is per cluster)."""
        for conns in self.idle.values():
            if conns:
                self._drop(conns.pop(0))
                return True
        return False

    def _has_slot(self) -> bool:
        return self.open < self.policy.max_connections or any(self.idle.values())

    async def _acquire(self, address: tuple[str, int], identity: str) -> tuple[Conn, bool]:
        """A connection to `address` and whether it was reused (a stale reused one may be retried)."""
        conn = self._take_idle(address, identity)
        if conn is not None:
            return conn, True
        if not self._has_slot():
            if self.pending >= self.policy.max_pending:
                raise UpstreamError("overflow", "upstream connection limit reached (DestinationRule connectionPool)")
            self.pending += 1
            try:
                async with self._released:
                    await self._released.wait_for(self._has_slot)
            finally:
                self.pending -= 1
            conn = self._take_idle(address, identity)
            if conn is not None:
                return conn, True
        if self.open >= self.policy.max_connections:
            self._drop_idle_elsewhere()  # the limit is per cluster: an idle one to another endpoint gives way
        return await self._connect(address, identity), False

    async def _connect(self, address: tuple[str, int], identity: str) -> Conn:
        """Mutual TLS to a peer presenting `identity`; an empty identity is a DISABLE workload: plaintext."""
        context = self.tls() if identity else None
        if identity and context is None:
            raise UpstreamError("connect-failure", "no workload certificate loaded")
        self.open += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(address[0], address[1], ssl=context, server_hostname=None)
                if context else asyncio.open_connection(address[0], address[1]), self.policy.connect_timeout)
        except (TimeoutError, OSError, ssl.SSLError) as exc:
            self.open -= 1
            await self._notify()
            raise UpstreamError("connect-failure", f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc
        if identity and identity not in peer_uris(writer):
            writer.close()
            self.open -= 1
            await self._notify()
            raise UpstreamError("connect-failure", f"{address[0]} did not present {identity}; refused")
        return Conn(reader, writer)

    def _drop(self, conn: Conn) -> None:
        conn.close()
        self.open -= 1

    async def _notify(self) -> None:
        async with self._released:
            self._released.notify_all()

    async def _release(self, key: tuple[tuple[str, int], str], conn: Conn, reusable: bool) -> None:
        limit = self.policy.max_requests_per_connection
        if reusable and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE and not (
                limit and conn.used >= limit):
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            self.idle.setdefault(key, []).append(conn)
        else:
            self._drop(conn)
        await self._notify()

    async def request(self, address: tuple[str, int], identity: str, method: bytes, target: bytes,
                      headers: list[tuple[bytes, bytes]], body: bytes) -> Answer:
        """One exchange. Cancelling it (a timeout) closes the connection: a late answer must not be reused."""
        for _ in range(2):
            conn, reused = await self._acquire(address, identity)
            conn.used += 1
            ok = False
            try:
                answer = await _exchange(conn, method, target, headers, body)
                ok = True
                return answer
            except UpstreamError as exc:
                if reused and exc.kind == "reset":
                    continue  # the peer had closed that idle connection; one more go on a fresh one
                raise
            except (OSError, h11.ProtocolError, ssl.SSLError) as exc:
                if reused:
                    continue
                raise UpstreamError("reset", f"upstream connection failed: {exc}") from exc
            finally:
                await asyncio.shield(self._release((address, identity), conn, ok))
        raise UpstreamError("reset", "upstream reset the connection twice")

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                self._drop(conn)
        self.idle.clear()
