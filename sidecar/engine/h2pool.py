"""Multiplexed HTTP/2 connections to upstreams, by (endpoint address, expected SPIFFE identity).

Many streams share one connection: a request takes the first connection of its key with a free stream (the
peer's MAX_CONCURRENT_STREAMS) that is not going away; only when none has one is another opened. Concurrent
first requests wait for the one connection being opened rather than each opening their own. To a peer sidecar
it is mutual TLS with ALPN "h2", the identity checked before a stream is opened; to the local app (identity "")
it is h2c with prior knowledge. A connection with no streams for `idle_timeout` is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from sidecar.engine.h2conn import MAX_CONCURRENT_STREAMS, Fields, H2Side, Stream
from sidecar.engine.pool import Key, PoolError, dial
from sidecar.engine.tls import identity_problem

log = logging.getLogger("meshctl.engine.h2pool")
H2_ALPN = "h2"


class H2Upstream(H2Side):
    """One connection to an upstream, carrying many streams."""

    def __init__(self, pool: H2Pool, key: Key) -> None:
        super().__init__(client_side=True)
        self.pool = pool
        self.key = key

    def has_room(self) -> bool:
        # Our own count: h2's open_outbound_streams walks every stream on each call. At most our own limit, for
        # which the connection's window has room (h2conn.CONNECTION_WINDOW) whatever the peer would take.
        return (not self.closed and not self.going_away
                and len(self.streams) < min(self.h2.remote_settings.max_concurrent_streams, MAX_CONCURRENT_STREAMS))

    def open(self, fields: Fields, end_stream: bool) -> Stream:
        stream_id = self.h2.get_next_available_stream_id()
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.send_headers(stream_id, fields, end_stream)
        return stream

    def forget(self, stream_id: int) -> None:
        super().forget(stream_id)
        if not self.streams and self.transport is not None:
            self.last_active = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.pool.lost(self)


class H2Pool:
    def __init__(self, context: Callable[[], ssl.SSLContext | None], *, connect_timeout: float = 5.0,
                 idle_timeout: float = 300.0) -> None:
        self.context = context
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.conns: dict[Key, list[H2Upstream]] = {}
        self.connecting: dict[Key, asyncio.Future[H2Upstream]] = {}
        self.connects = 0
        self._swept = 0.0

    async def get(self, key: Key) -> H2Upstream:
        """A connection to `key` with room for one more stream. PoolError when none can be had."""
        self._sweep()
        for conn in self.conns.get(key, ()):
            if conn.has_room():
                return conn
        pending = self.connecting.get(key)
        if pending is not None:
            conn = await asyncio.shield(pending)
            if conn.has_room():
                return conn
        future: asyncio.Future[H2Upstream] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody else waiting is fine
        self.connecting[key] = future
        try:
            conn = await self._connect(key)
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, PoolError) else PoolError("connect-failure", str(exc)))
            raise
        else:
            future.set_result(conn)
        finally:
            if self.connecting.get(key) is future:
                del self.connecting[key]
        self.conns.setdefault(key, []).append(conn)
        return conn

    async def _connect(self, key: Key) -> H2Upstream:
        address, identity = key
        context = self.context() if identity else None
        if identity and context is None:
            raise PoolError("connect-failure", "no workload certificate loaded")
        conn = H2Upstream(self, key)
        try:
            await dial(conn, address, context, self.connect_timeout)
        except BaseException:
            conn.close()
            raise
        self.connects += 1
        assert conn.transport is not None
        if identity:
            ssl_object = conn.transport.get_extra_info("ssl_object")
            problem = identity_problem(ssl_object, identity)
            if problem is None and ssl_object.selected_alpn_protocol() != H2_ALPN:
                problem = "the peer did not agree to HTTP/2 (ALPN h2): is its sidecar older than this one?"
            if problem is not None:
                log.warning("refusing upstream %s:%d: %s", address[0], address[1], problem)
                conn.transport.abort()
                raise PoolError("identity", f"{address[0]}:{address[1]}: {problem}")
        return conn

    def lost(self, conn: H2Upstream) -> None:
        conns = self.conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.conns[conn.key]

    def _sweep(self) -> None:
        """Close connections idle past `idle_timeout` (looked at most once a second)."""
        now = asyncio.get_running_loop().time()
        if now - self._swept < 1.0:
            return
        self._swept = now
        for conns in list(self.conns.values()):
            for conn in list(conns):
                if not conn.streams and now - conn.last_active > self.idle_timeout:
                    conn.close()
                    self.lost(conn)

    def close(self) -> None:
        for conns in list(self.conns.values()):
            for conn in conns:
                conn.close()
        self.conns.clear()
