"""One buffered HTTP/1.1 exchange over a pooled upstream connection: what the router repeats (retries),
bounds in time (timeouts) and copies (mirroring).

The request is small (the router only buffers requests up to its limit) and goes out in one write; the
response is read whole, up to MAX_BODY. A pooled connection that turns out closed before any response
byte is retried once on a new one. Cancelling the exchange (a timeout) aborts the connection: a late
answer must never be read as the next request's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.engine.http1 import ProtocolError, RequestHead, ResponseHead, ResponseReader
from sidecar.engine.pool import Key, Pool, PoolError

MAX_BODY = 64 * 1024 * 1024  # a routed response is held whole; beyond this it is refused, not buffered


class UpstreamError(Exception):
    """No response: `kind` is "connect-failure", "reset" or "overflow" (Envoy's UF, UC and UO)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # as received (the writer drops hop-by-hop fields)
    body: bytes
    grpc_status: int | None = None  # gRPC needs HTTP/2: an HTTP/1.1 answer never has one

    def discard(self) -> None:
        """Buffered whole: nothing to stop when a retry replaces it."""


class _Fetch:
    """The user of one pooled connection for one exchange (sidecar.engine.pool.User)."""

    def __init__(self, is_head: bool) -> None:
        self.reader = ResponseReader(self)
        self.reader.expect(is_head)
        self.future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.response: ResponseHead | None = None
        self.parts: list[bytes] = []
        self.size = 0
        self.started = False  # a response byte arrived: it is too late to retry on another connection

    def _fail(self, kind: str, message: str) -> None:
        if not self.future.done():
            self.future.set_exception(UpstreamError(kind, message))

    def upstream_data(self, data: bytes) -> None:
        self.started = True
        try:
            self.reader.feed(data)
        except ProtocolError as exc:
            self._fail("reset", f"bad response from upstream: {exc.reason}")

    def upstream_eof(self) -> None:
        try:
            self.reader.feed_eof()
        except ProtocolError:
            self._fail("reset", "upstream closed the connection mid-response")

    def upstream_lost(self, exc: Exception | None) -> None:
        self._fail("reset", "upstream closed the connection before answering" if self.response is None
                   else "upstream closed the connection mid-response")

    def upstream_pause_writing(self) -> None:
        pass  # the request is small and written at once

    def upstream_resume_writing(self) -> None:
        pass

    def on_head(self, head: RequestHead | ResponseHead) -> None:
        assert isinstance(head, ResponseHead)
        if head.status >= 200 or head.upgrade:
            self.response = head

    def on_body(self, data: bytes) -> None:
        if self.response is None:
            return
        self.size += len(data)
        if self.size > MAX_BODY:
            self._fail("reset", f"routed response larger than {MAX_BODY} bytes")
            return
        self.parts.append(data)

    def on_end(self) -> None:
        if self.response is None or self.future.done():
            return
        head = self.response
        self.future.set_result(Answer(head.status, head.reason, head.headers, b"".join(self.parts)))


async def fetch(pool: Pool, key: Key, request: bytes, is_head: bool = False,
                max_requests_per_connection: int = 0) -> Answer:
    """Send `request` (a whole encoded request) to `key` and read the whole response."""
    for _ in range(2):
        try:
            conn, reused = await pool.acquire(key)
        except PoolError as exc:
            kind = "overflow" if exc.kind == "overflow" else "connect-failure"
            raise UpstreamError(kind, str(exc)) from exc
        exchange = _Fetch(is_head)
        conn.user = exchange
        conn.write(request)
        try:
            answer = await exchange.future
        except UpstreamError:
            conn.user = None
            conn.abort()
            if reused and not exchange.started:
                continue  # the peer had closed that idle connection: once more on a fresh one
            raise
        except BaseException:  # cancelled (a timeout): the connection is out of step now
            conn.user = None
            conn.abort()
            raise
        pool.release(conn, exchange.reader.reusable and not (
            max_requests_per_connection and conn.uses >= max_requests_per_connection))
        return answer
    raise UpstreamError("reset", "upstream reset the connection twice")
