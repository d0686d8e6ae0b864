"""Keep-alive connections to upstreams, pooled by (endpoint address, expected SPIFFE identity).

A connection verified for one identity never serves another: the identity is half the key. An empty
identity means plaintext (a DISABLE workload, or the local app behind an inbound sidecar).
- `take` hands out an idle connection only if it is healthy: its transport is open, nothing arrived while
  it was idle (data or EOF there means the peer closed it or is broken), and it has not been idle longer
  than `idle_timeout`; anything else is closed and the next is tried.
- Idle connections are closed at their idle timeout by one timer for the pool, not one per connection.
- Caps: `max_per_key` open connections per key and `max_total` in all; at the total cap an idle connection
  to another key gives way; at a key's cap the caller gets PoolError("overflow") at once (Envoy's UO).
While lent, a connection passes its events to its `user` (the exchange using it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Protocol, cast

from sidecar.engine.relay import HIGH_WATER, LOW_WATER
from sidecar.engine.tls import identity_problem

log = logging.getLogger("meshctl.engine.pool")

Address = tuple[str, int]
Key = tuple[Address, str]  # (endpoint, expected SPIFFE ID or "" for plaintext)


class PoolError(Exception):
    """No connection: `kind` is "connect-failure", "identity" or "overflow"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class User(Protocol):
    """What a lent connection calls (the exchange using it)."""

    def upstream_data(self, data: bytes) -> None: ...

    def upstream_eof(self) -> None: ...

    def upstream_lost(self, exc: Exception | None) -> None: ...

    def upstream_pause_writing(self) -> None: ...

    def upstream_resume_writing(self) -> None: ...


async def dial(protocol: asyncio.Protocol, address: Address, context: ssl.SSLContext | None,
               timeout: float, server_hostname: str = "") -> asyncio.Transport:
    """Connect `protocol` to `address`: mutual TLS with `context` (the identity is the caller's to check), else
    plaintext; within `timeout`. `server_hostname`: the SNI (and the name a checking context verifies), for TLS
    to a host outside the mesh. PoolError("connect-failure") if it cannot."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            if context is not None:
                transport, _ = await loop.create_connection(lambda: protocol, address[0], address[1], ssl=context,
                                                            server_hostname=server_hostname,
                                                            ssl_handshake_timeout=timeout)
            else:
                transport, _ = await loop.create_connection(lambda: protocol, address[0], address[1])
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise PoolError("connect-failure", f"cannot connect to {address[0]}:{address[1]}: {exc}") from exc
    return transport


class Upstream(asyncio.Protocol):
    """One connection to an upstream: idle in its pool, or lent to one user."""

    def __init__(self, pool: Pool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.user: User | None = None
        self.stale = False  # something arrived while idle, or the connection was lost
        self.idle_since = 0.0
        self.uses = 0
        self.reading_paused = False
        self._counted = True  # holds a slot in the pool's counts until lost or detached

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(self.pool.high_water, self.pool.low_water)

    def data_received(self, data: bytes) -> None:
        if self.user is not None:
            self.user.upstream_data(data)
        else:  # an idle connection has nothing to say: the peer is broken or out of step
            self.stale = True
            self.close()

    def eof_received(self) -> bool:
        if self.user is not None:
            self.user.upstream_eof()
        else:
            self.stale = True
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.stale = True
        self.pool._lost(self)
        if self.user is not None:
            user, self.user = self.user, None
            user.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.user is not None:
            self.user.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.user is not None:
            self.user.upstream_resume_writing()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused and not self.transport.is_closing():
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused and not self.transport.is_closing():
            self.reading_paused = False
            self.transport.resume_reading()

    def healthy(self) -> bool:
        return self.transport is not None and not self.stale and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Pool:
    def __init__(self, context: ssl.SSLContext | Callable[[], ssl.SSLContext | None] | None, *,
                 max_per_key: int = 64, max_total: int = 1024, idle_timeout: float = 60.0,
                 connect_timeout: float = 5.0, high_water: int = HIGH_WATER, low_water: int = LOW_WATER,
                 server_name: str | None = None) -> None:
        # A callable is asked at each connect, so a certificate reload reaches new connections only.
        self._context = context
        # TLS the sidecar originates to a host outside the mesh (DestinationRule tls SIMPLE): every connection
        # of this pool is TLS with this SNI, the server checked by the context (no SPIFFE identity).
        self.server_name = server_name
        self.max_per_key = max_per_key
        self.max_total = max_total
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.high_water = high_water
        self.low_water = low_water
        self.idle: dict[Key, list[Upstream]] = {}
        self.open: dict[Key, int] = {}
        self.total = 0
        self.connects = 0  # connections made since start (a test and telemetry counter)
        self._sweeper: asyncio.TimerHandle | None = None

    def context(self) -> ssl.SSLContext | None:
        return self._context() if callable(self._context) else self._context

    # --- lending -------------------------------------------------------------------------------------------

    def take(self, key: Key) -> Upstream | None:
        """A healthy idle connection for `key`, most recently used first; unhealthy ones are closed."""
        idle = self.idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.healthy() and now - conn.idle_since < self.idle_timeout:
                conn.uses += 1
                return conn
            conn.close()
        return None

    async def acquire(self, key: Key) -> tuple[Upstream, bool]:
        """A connection for `key` and whether it was reused (a reused one may turn out closed: retry once)."""
        conn = self.take(key)
        if conn is not None:
            return conn, True
        return await self.connect(key), False

    async def connect(self, key: Key) -> Upstream:
        """A new connection, mutual TLS to a peer that must present `key`'s identity (plaintext if "")."""
        address, identity = key
        if self.open.get(key, 0) >= self.max_per_key:
            raise PoolError("overflow", f"{self.max_per_key} connections to {address[0]}:{address[1]} already open")
        if self.total >= self.max_total and not self._evict_one():
            raise PoolError("overflow", f"{self.max_total} upstream connections already open")
        tls = bool(identity) or self.server_name is not None
        context = self.context() if tls else None
        if tls and context is None:
            raise PoolError("connect-failure", "no workload certificate loaded" if identity else
                            "no TLS context for the external host")
        self._count(key, +1)
        conn = Upstream(self, key)
        try:
            await dial(conn, address, context, self.connect_timeout, self.server_name or "")
        except BaseException:  # failed or cancelled: give the slot back
            self._uncount(conn)
            conn.abort()
            raise
        self.connects += 1
        assert conn.transport is not None
        if identity:
            problem = identity_problem(conn.transport.get_extra_info("ssl_object"), identity)
            if problem is not None:
                log.warning("refusing upstream %s:%d: %s", address[0], address[1], problem)
                conn.abort()  # before a single request byte is written
                self._uncount(conn)
                raise PoolError("identity", f"{address[0]}:{address[1]}: {problem}")
        conn.uses = 1
        return conn

    def release(self, conn: Upstream, reusable: bool) -> None:
        """Back to the pool when the exchange left it clean, else closed."""
        conn.user = None
        conn.resume_reading()  # an idle connection must read, or its EOF would go unseen
        if not reusable or not conn.healthy():
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.setdefault(conn.key, []).append(conn)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_timeout, self._sweep)

    def detach(self, conn: Upstream) -> None:
        """The connection leaves the pool for good (it became a byte relay): its slot is given back."""
        conn.user = None
        self._uncount(conn)

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # --- bookkeeping ---------------------------------------------------------------------------------------

    def _count(self, key: Key, delta: int) -> None:
        self.open[key] = self.open.get(key, 0) + delta
        if self.open[key] <= 0:
            del self.open[key]
        self.total += delta

    def _uncount(self, conn: Upstream) -> None:
        if conn._counted:
            conn._counted = False
            self._count(conn.key, -1)

    def _lost(self, conn: Upstream) -> None:
        self._uncount(conn)
        idle = self.idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self.idle[conn.key]

    def _evict_one(self) -> bool:
        """Close the longest-idle connection of any key, to make room under the total cap."""
        oldest = min((c for conns in self.idle.values() for c in conns), key=lambda c: c.idle_since, default=None)
        if oldest is None:
            return False
        self.idle[oldest.key].remove(oldest)
        oldest.close()
        self._uncount(oldest)  # its slot is free now, though the close completes later
        return True

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        soonest = None
        for key in list(self.idle):
            keep = []
            for conn in self.idle[key]:
                if now - conn.idle_since >= self.idle_timeout or not conn.healthy():
                    conn.close()
                else:
                    keep.append(conn)
                    soonest = conn.idle_since if soonest is None else min(soonest, conn.idle_since)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        if soonest is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                delay = max(soonest + self.idle_timeout - now, 0.01)
                self._sweeper = asyncio.get_running_loop().call_later(delay, self._sweep)
