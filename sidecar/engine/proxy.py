"""The HTTP/1.1 forward path: a listener whose client connections are read with http1, decided by a pure
`decide(head) -> Route | Response`, and forwarded over pooled upstream connections, responses streamed back.

Per client connection (`Downstream`), one exchange at a time; pipelined requests wait their turn (reading
pauses while one is queued). Writes are coalesced per read: a request or response whose head and body
arrive in one read goes out in one write. Backpressure both ways: a full upstream buffer pauses reading
from the client, a full client buffer pauses reading from the upstream. A 101 to an upgrade request turns
both connections into a byte relay (sidecar.engine.relay).
Refusals: a request the reader refuses gets its status and the connection closes; a connection beyond the
listener's cap gets 503 and is closed; no upstream connection gives 503 (502 if it broke before answering);
a pooled connection that turns out closed before any response byte is retried once on a new one when the
request had no body. `decide` raising is a 500: policy fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from sidecar.engine.call import Call
from sidecar.engine.http1 import (
    LAST_CHUNK,
    Framing,
    ProtocolError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    encode_chunk,
    encode_request,
    encode_response,
    simple_response,
)
from sidecar.engine.plan import ConnectionInfo
from sidecar.engine.pool import Pool, PoolError, Upstream
from sidecar.engine.relay import HIGH_WATER, LOW_WATER, Relay
from sidecar.engine.tap import keep
from sidecar.normalize import DEFAULT_MODE

log = logging.getLogger("meshctl.engine.proxy")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


@dataclass(frozen=True, slots=True)
class Route:
    """Forward to `address`, streaming; `identity` is the SPIFFE ID the upstream must present ("" = plaintext).
    `pool`: a cluster's own connections (DestinationRule connectionPool); by default the listener's."""

    address: tuple[str, int]
    identity: str = ""
    pool: Pool | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """Answer locally (a denial, a fault, a direct response)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    close: bool = False
    reason: bytes = b""  # the status line's; Istio's default phrase when empty
    length_from_headers: bool = False  # a HEAD's answer: the Content-Length among `headers` is the body's


@dataclass(frozen=True, slots=True)
class Routed:
    """Read the (small) request body whole, then let `serve` make the exchange: it may repeat it (retries),
    bound it in time, copy it (mirroring), or answer itself; what it returns is the response."""

    serve: Callable[[Call, bytes], Awaitable[Response]]


Decide = Callable[[Call], Route | Response | Routed]


def tune_malloc(threshold: int = 1 << 20) -> bool:
    """mallopt(M_MMAP_THRESHOLD, 1 MiB): uvloop's TLS reads ask for 256 KiB, above glibc's default mmap
    threshold, so each record cost an mmap/munmap pair (+20-30% throughput measured, NOTES.md). Only glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


class Listener:
    """One listening port: its decision, its upstream pool, its connection cap."""

    def __init__(self, decide: Decide, pool: Pool, *, max_connections: int = 1024, head_timeout: float = 60.0,
                 path_mode: str | Callable[[], str] = DEFAULT_MODE, high_water: int = HIGH_WATER,
                 low_water: int = LOW_WATER, on_done: Callable[[Call], None] | None = None) -> None:
        self.decide = decide
        self.pool = pool
        self.on_done = on_done  # every request once it is over: telemetry, the span
        self.max_connections = max_connections
        self.head_timeout = head_timeout  # a request head must be whole this long after the previous response
        self._path_mode = path_mode  # a callable: the live snapshot's mode, read per connection
        self.high_water = high_water
        self.low_water = low_water
        self.open = 0
        self.refused = 0  # connections refused at the cap
        self.relays: set[Relay] = set()
        self.pauses = 0  # times a full write buffer paused reading from the other side
        self.peak_buffered = 0  # the largest write buffer seen right after a write, either side

    @property
    def path_mode(self) -> str:
        return self._path_mode() if callable(self._path_mode) else self._path_mode

    def done(self, call: Call) -> None:
        if self.on_done is not None:
            try:
                self.on_done(call)
            except Exception:  # telemetry is never a reason to fail a connection
                log.exception("recording a finished request failed")

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    **kwargs: Any) -> asyncio.Server:
        tune_malloc()
        loop = asyncio.get_running_loop()
        return await loop.create_server(lambda: Downstream(self), host, port, ssl=ssl_context, **kwargs)


def h2c_upgrade(head: RequestHead) -> bool:
    """An HTTP/1.1 request asking to switch to h2c (RFC 7540 3.2), as curl --http2 does over http://."""
    value = head.header(b"upgrade")
    return value is not None and value.strip().lower() == b"h2c"


def decline_h2c(head: RequestHead) -> None:
    """Serve it as HTTP/1.1, as Envoy does: a server may ignore the upgrade, and the client goes on in HTTP/1.1
    (every request then gets the HTTP/1.1 path's per-request routing, policy and telemetry). The connection
    closes after the response: the parser stopped at the upgrade, so nothing after it is read on this one."""
    tokens = {b"upgrade", b"http2-settings"}
    fields = []
    for name, value in head.headers:
        key = name.lower()
        if key in tokens:
            continue
        if key == b"connection":
            value = b", ".join(t.strip() for t in value.split(b",") if t.strip().lower() not in tokens)
            if not value:
                continue
        fields.append((name, value))
    head.headers[:] = fields
    head.upgrade = False
    head.keep_alive = False


class Downstream(asyncio.Protocol):
    """One client connection."""

    def __init__(self, listener: Listener, decide: Decide | None = None, info: ConnectionInfo | None = None) -> None:
        self.listener = listener
        self.decide = decide or listener.decide  # a capture listener passes one bound to this connection
        self.info = info  # the capture listener's view of the connection (None when listening directly)
        self.transport: asyncio.Transport | None = None
        self.reader = RequestReader(self, listener.path_mode)
        self.exchange: Exchange | Buffered | None = None
        self.queue: deque[tuple[str, Any]] = deque()  # events of pipelined requests, waiting their turn
        self.out: list[bytes] = []  # to the client, written at the end of the current read
        self.admitted = False
        self.closing = False
        self.writing_paused = False
        self._pauses: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None

    # --- connection ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        listener = self.listener
        if listener.open >= listener.max_connections:
            listener.refused += 1
            self.closing = True
            transport.write(simple_response(503, b"connection limit reached\n", close=True))
            transport.close()
            return
        listener.open += 1
        self.admitted = True
        transport.set_write_buffer_limits(listener.high_water, listener.low_water)
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._stop_timer()
        if self.admitted:
            self.admitted = False
            self.listener.open -= 1
        if self.exchange is not None:
            self.exchange.client_gone()
            self.exchange = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.reader.feed(data)
        except ProtocolError as exc:
            if self.queue or (self.exchange is not None and self.exchange.request_done):
                self.queue.append(("refuse", exc))  # a later request went bad: answer it in its turn
                self.pause("pipelined")
            else:
                self.refuse(exc.status, exc.reason)
        if self.reader.upgraded is not None and self.exchange is not None:
            self.pause("upgrade")  # bytes past an upgrade request wait for the 101 (or the connection closes)
        if self.exchange is not None:
            self.exchange.flush_up()
        self.flush()

    def eof_received(self) -> bool:
        if self.exchange is None and not self.queue:
            return False  # nothing in flight: close
        self.exchange_close_after()
        return True  # finish the response in flight, then close

    def pause_writing(self) -> None:
        self.writing_paused = True
        self.listener.pauses += 1
        if self.exchange is not None and self.exchange.up is not None:
            self.exchange.up.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.exchange is not None and self.exchange.up is not None:
            self.exchange.up.resume_reading()

    # --- reader callbacks ----------------------------------------------------------------------------------

    def on_head(self, head: RequestHead | ResponseHead) -> None:
        assert isinstance(head, RequestHead)
        if self.exchange is not None or self.queue:
            self.queue.append(("head", head))
            self.pause("pipelined")
            return
        self._start(head)

    def on_body(self, data: bytes) -> None:
        if self.queue:
            self.queue.append(("body", data))
        elif self.exchange is not None:
            self.exchange.request_body(data)
        # else: the body of a request answered locally, which closes the connection: dropped

    def on_end(self) -> None:
        if self.queue:
            self.queue.append(("end", None))
        elif self.exchange is not None:
            self.exchange.request_end()

    # --- exchanges -----------------------------------------------------------------------------------------

    def _start(self, head: RequestHead) -> None:
        self._disarm_timer()
        if head.upgrade and h2c_upgrade(head):
            decline_h2c(head)
        call = Call(self.info, head)
        if head.method == b"CONNECT":
            call.reason = "CONNECT is not proxied"
            self.refuse(405, call.reason, call)
            return
        try:
            decision = self.decide(call)
        except Exception:
            log.exception("decide failed for %s %s", head.method, head.target)
            call.flags = "RBAC" if call.inbound else "NR"  # fail closed, and say where
            self.refuse(500, "internal error while deciding", call)
            return
        if isinstance(decision, Response):
            # A body still on its way, or an upgrade, cannot be skipped reliably: answer and close.
            close = decision.close or not head.keep_alive or head.framing != "none" or head.upgrade
            self.send(simple_response(decision.status, decision.body, list(decision.headers), close=close,
                                      version=head.version))
            call.response_fields = list(decision.headers)
            if call.capture:
                call.response_body = keep(None, decision.body, call.capture)
            call.finish(decision.status)
            self.listener.done(call)
            if close:
                self.close_after_flush()
            else:
                self._arm_timer()
            return
        if isinstance(decision, Routed):
            self.exchange = Buffered(self, call, decision)
            return
        self.exchange = Exchange(self, head, decision, call)

    def finished(self, exchange: Exchange | Buffered, close: bool) -> None:
        """The exchange is over: the next request, or the end of the connection."""
        if self.exchange is exchange:
            self.exchange = None
        if close or self.closing:
            self.close_after_flush()
            return
        self._arm_timer()
        while self.queue:  # replay pipelined events up to the next request's head that must wait
            kind, payload = self.queue[0]
            if kind == "head" and self.exchange is not None:
                break
            self.queue.popleft()
            if kind == "refuse":
                self.refuse(payload.status, payload.reason)
                return
            if kind == "head":
                self._start(payload)
            elif kind == "body" and self.exchange is not None:
                self.exchange.request_body(payload)
            elif kind == "end" and self.exchange is not None:
                self.exchange.request_end()
        if not self.queue:
            self.resume("pipelined")
        if self.exchange is not None:
            self.exchange.flush_up()

    def exchange_close_after(self) -> None:
        if self.exchange is not None:
            self.exchange.client_close = True
        else:
            self.close_after_flush()

    # --- output and flow -----------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        if self.out and self.transport is not None:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            if not self.transport.is_closing():
                self.transport.write(data)
                size = self.transport.get_write_buffer_size()
                if size > self.listener.peak_buffered:
                    self.listener.peak_buffered = size

    def refuse(self, status: int, reason: str, call: Call | None = None) -> None:
        """Answer `status` and close: what follows on this connection cannot be trusted."""
        log.info("refused %d: %s", status, reason)
        if call is None:  # refused while reading: no request was whole, log what we know
            call = Call(self.info, RequestHead(b"", b"", b"1.1", [], False, "none", None, None))
            call.flags, call.reason = "DPE", reason
        call.finish(status)
        self.listener.done(call)
        self.queue.clear()
        exchange, self.exchange = self.exchange, None
        if exchange is not None:  # its request body went bad: nothing more of it may reach the upstream
            exchange.client_gone()
            if exchange.response is not None:  # a response is under way: it cannot be followed by ours
                self.out.clear()
                if self.transport is not None:
                    self.transport.abort()
                return
        self.send(simple_response(status, f"{reason}\n".encode(), close=True))
        self.close_after_flush()

    def close_after_flush(self) -> None:
        self.closing = True
        self._stop_timer()
        self.flush()
        if self.transport is not None:
            self.transport.close()  # what is buffered is written first

    def pause(self, why: str) -> None:
        if not self._pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._pauses.add(why)

    def resume(self, why: str) -> None:
        if why not in self._pauses:
            return
        self._pauses.discard(why)
        if not self._pauses and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _arm_timer(self) -> None:
        """The next head must be whole within head_timeout. One timer per connection, moved forward lazily:
        re-arming per request only sets the deadline (a TimerHandle per request was ~2% of the CPU)."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.listener.head_timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._timed_out)

    def _disarm_timer(self) -> None:
        self._deadline = None  # a pending timer finds nothing to do when it fires

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:  # the connection is gone: do not keep it alive until the timer fires
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._deadline is None:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # re-armed since it was set: wait for the rest
            self._timer = loop.call_at(self._deadline, self._timed_out)
            return
        self._deadline = None
        if self.exchange is not None or self.closing:
            return
        if self.reader.held:  # a head begun and not finished in time (slowloris)
            self.refuse(408, "request head not received in time")
        else:
            self.close_after_flush()  # an idle keep-alive connection

    def upgrade(self, exchange: Exchange, upstream: Upstream, to_client: bytes) -> None:
        """After a 101: the client and the upstream connections become a byte relay."""
        exchange.call.finish(101)
        self.listener.done(exchange.call)
        assert self.transport is not None and upstream.transport is not None
        self.exchange = None
        self._stop_timer()
        self.flush()
        listener = self.listener
        listener.pool.detach(upstream)
        self.admitted = False  # the relay holds the connection's slot now, until it is done
        relay_box: list[Relay] = []

        def done() -> None:
            listener.open -= 1
            listener.relays.discard(relay_box[0])

        relay = Relay(self.transport, upstream.transport, to_a=to_client, to_b=self.reader.upgraded or b"",
                      high_water=listener.high_water, low_water=listener.low_water, on_done=done)
        relay_box.append(relay)
        listener.relays.add(relay)


class Exchange:
    """One request forwarded upstream and its response streamed back; the user of one pooled connection."""

    def __init__(self, down: Downstream, head: RequestHead, route: Route, call: Call | None = None) -> None:
        self.down = down
        self.head = head
        self.call = call or Call(down.info, head)
        self.call.upstream, self.call.upstream_identity = route.address, route.identity
        self.key = (route.address, route.identity)
        self.pool = route.pool or down.listener.pool
        self.up: Upstream | None = None
        self.reused = False
        self.reader = ResponseReader(self)
        self.reader.expect(head.method == b"HEAD")
        self.request_head = encode_request(head)
        self.to_up: list[bytes] = [self.request_head]
        self.request_done = False
        self.response: ResponseHead | None = None  # the final (non-1xx) response head, once sent
        self.response_done = False
        self.out_framing: Framing = "none"
        self.client_close = not head.keep_alive
        self.retried = False
        self.over = False
        self._connecting: asyncio.Task[None] | None = None
        conn = self.pool.take(self.key)
        if conn is not None:
            self._bind(conn, reused=True)
        else:
            self._connect()

    # --- upstream connection -------------------------------------------------------------------------------

    def _connect(self) -> None:
        self.down.pause("connecting")
        self._connecting = asyncio.get_running_loop().create_task(self._connect_task())

    async def _connect_task(self) -> None:
        try:
            conn = await self.pool.connect(self.key)
        except PoolError as exc:
            self._connecting = None
            log.info("no upstream for %s: %s", self.key[0], exc)
            self.call.error = str(exc)
            self._fail(503, f"no healthy upstream: {exc}", "UO" if exc.kind == "overflow" else "UF")
            return
        self._connecting = None
        if self.over:  # the client went away while we connected: the connection is fresh, keep it
            self.pool.release(conn, True)
            return
        self._bind(conn, reused=False)
        self.down.resume("connecting")
        self.flush_up()

    def _bind(self, conn: Upstream, reused: bool) -> None:
        self.up = conn
        self.reused = reused
        conn.user = self
        if self.down.writing_paused:
            conn.pause_reading()

    def flush_up(self) -> None:
        if self.up is not None and self.to_up:
            data = self.to_up[0] if len(self.to_up) == 1 else b"".join(self.to_up)
            self.to_up.clear()
            self.up.write(data)
            size = self.up.buffered()
            if size > self.down.listener.peak_buffered:
                self.down.listener.peak_buffered = size

    # --- the request, from the client ----------------------------------------------------------------------

    def request_body(self, data: bytes) -> None:
        call = self.call
        call.request_bytes += len(data)
        if call.capture:
            call.request_body = keep(call.request_body, data, call.capture)
        self.to_up.append(encode_chunk(data) if self.head.framing == "chunked" else data)

    def request_end(self) -> None:
        if self.head.framing == "chunked":
            self.to_up.append(LAST_CHUNK)
        self.request_done = True
        if self.response_done:
            self._finish()

    # --- the response, from the upstream (pool.User) -------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
        except ProtocolError as exc:
            self._broken(f"bad response from upstream: {exc.reason}")
            return
        if self.reader.upgraded is not None and self.response is not None and self.response.upgrade:
            assert self.up is not None
            self.over = True
            self.down.upgrade(self, self.up, self.reader.upgraded)
            return
        self.down.flush()

    def upstream_eof(self) -> None:
        with contextlib.suppress(ProtocolError):  # a truncated response: connection_lost follows and decides
            self.reader.feed_eof()
        self.down.flush()

    def upstream_lost(self, exc: Exception | None) -> None:
        if self.over:
            return
        self.up = None
        if self.response is None and not self.down.out:
            if self.reused and not self.retried and self.head.framing == "none":
                # A pooled connection the peer had closed: the request (a head alone) can go again.
                self.retried = True
                self.reader = ResponseReader(self)
                self.reader.expect(self.head.method == b"HEAD")
                self.to_up = [self.request_head]
                self._connect()
                return
            self._fail(502, "upstream connection closed before a response", "UC")
            return
        if not self.response_done:
            self._broken("upstream connection closed mid-response")

    def upstream_pause_writing(self) -> None:
        self.down.listener.pauses += 1
        self.down.pause("upstream-full")

    def upstream_resume_writing(self) -> None:
        self.down.resume("upstream-full")

    # reader sink
    def on_head(self, head: RequestHead | ResponseHead) -> None:
        assert isinstance(head, ResponseHead)
        if self.over:  # bytes after a finished response: the connection is not reused (see on_end)
            return
        version = self.head.version
        if head.status < 200 and not head.upgrade:
            if version == b"1.1":  # interim responses (100 Continue) pass; an HTTP/1.0 client never asked
                self.down.send(encode_response(head, framing="none"))
            return
        self.response = head
        self.call.status = head.status
        if self.call.edit_response is not None:
            self.call.edit_response(head)
        self.call.response_fields = head.headers
        if head.upgrade and not self.head.upgrade:
            self._broken("upstream switched protocols unasked")
            return
        if self.head.upgrade and not head.upgrade:
            self.client_close = True  # the client may already be sending the new protocol
        if not self.request_done:
            self.client_close = True  # an early response: the rest of the request body is not read
        framing = head.framing
        if version == b"1.0" and framing == "chunked":
            framing = "close"
        elif version == b"1.1" and framing == "close":
            framing = "chunked"
        if framing == "close":
            self.client_close = True
        self.out_framing = framing
        self.down.send(encode_response(head, close=self.client_close, framing=framing, version=version))

    def on_body(self, data: bytes) -> None:
        if not self.over:
            call = self.call
            call.response_bytes += len(data)
            if call.capture:
                call.response_body = keep(call.response_body, data, call.capture)
            self.down.send(encode_chunk(data) if self.out_framing == "chunked" else data)

    def on_end(self) -> None:
        if self.response is None or self.over:  # the end of an interim response
            return
        if self.out_framing == "chunked":
            self.down.send(LAST_CHUNK)
        self.response_done = True
        if self.response.upgrade:
            return  # upstream_data hands both connections to a relay
        if self.request_done or self.client_close:
            self._finish()

    # --- ends ----------------------------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.over:
            return
        self.over = True
        self.flush_up()
        if self.up is not None:
            self.pool.release(self.up, self.reader.reusable and self.request_done)
            self.up = None
        self.call.finish(self.call.status)  # before the last bytes leave: a caller's span may end right after
        self.down.flush()
        self.down.listener.done(self.call)
        self.down.finished(self, self.client_close)

    def _fail(self, status: int, reason: str, flags: str = "UC") -> None:
        """No response came: answer the client ourselves."""
        if self.over:
            return
        self.over = True
        self.call.finish(status, flags)
        self.down.listener.done(self.call)
        self.down.resume("connecting")
        close = self.client_close or not self.request_done
        self.down.send(simple_response(status, f"{reason}\n".encode(), close=close, version=self.head.version))
        self.down.flush()
        self.down.finished(self, close)

    def _broken(self, reason: str) -> None:
        """The response cannot be completed: if none was sent, 502; else the client connection is cut."""
        if self.over:
            return
        log.info("exchange broken: %s", reason)
        self.call.error = reason
        if self.response is None:
            if self.up is not None:
                self.up.abort()
                self.up = None
            self._fail(502, reason)
            return
        self.over = True
        self.call.finish(self.call.status, "UC")
        self.down.listener.done(self.call)
        if self.up is not None:
            self.up.abort()
            self.up = None
        self.down.flush()
        if self.down.transport is not None:
            self.down.transport.abort()  # a truncated body must not look whole

    def client_gone(self) -> None:
        """The client connection closed or went bad: nothing can be delivered, the upstream is not reusable."""
        if self.over:
            return
        self.over = True
        self.call.error = "the client closed the connection"
        self.call.finish(self.call.status, "DC")
        self.down.listener.done(self.call)
        if self._connecting is not None:
            self._connecting.cancel()
        if self.up is not None:
            if self.response_done and self.request_done:
                self.pool.release(self.up, self.reader.reusable)
            else:
                self.up.abort()
            self.up = None


class Buffered:
    """A request the router repeats, bounds or copies: its body read whole (the router chose this only for
    small ones), then `Routed.serve` makes the exchange(s), and its answer goes out in one write."""

    up: Upstream | None = None  # never a connection of the client's own: nothing to pause
    response: ResponseHead | None = None

    def __init__(self, down: Downstream, call: Call, routed: Routed) -> None:
        self.down = down
        self.call = call
        self.routed = routed
        self.parts: list[bytes] = []
        self.request_done = False
        self.client_close = not call.head.keep_alive
        self.over = False
        self.task: asyncio.Task[None] | None = None

    def flush_up(self) -> None:
        pass

    def request_body(self, data: bytes) -> None:
        call = self.call
        call.request_bytes += len(data)
        if call.capture:
            call.request_body = keep(call.request_body, data, call.capture)
        self.parts.append(data)

    def request_end(self) -> None:
        self.request_done = True
        self.task = asyncio.get_running_loop().create_task(self._serve(b"".join(self.parts)))
        self.parts = []

    async def _serve(self, body: bytes) -> None:
        call = self.call
        try:
            reply = await self.routed.serve(call, body)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("routing failed for %s %s", call.method, call.target)
            reply, call.flags = Response(503, b"meshctl: routing failed; see the sidecar's log\n"), "NR"
        if self.over:
            return
        self.over = True
        head = call.head
        close = self.client_close or reply.close
        if reply.length_from_headers or head.method == b"HEAD" or reply.status in (204, 304):
            framing: Framing = "none"
            body_out = b""
        else:
            framing, body_out = "length", reply.body
        response = ResponseHead(reply.status, reply.reason, b"1.1", list(reply.headers), not close, framing,
                                len(body_out))
        call.status = reply.status
        if call.edit_response is not None:
            call.edit_response(response)
        call.response_fields = response.headers
        if call.capture:
            call.response_body = keep(None, body_out, call.capture)
        call.response_bytes = len(body_out)
        call.finish(reply.status)  # before the bytes leave: the caller's span may end right after them
        self.down.send(encode_response(response, body_out, close=close, version=head.version))
        self.down.flush()
        self.down.listener.done(call)
        self.down.finished(self, close)

    def client_gone(self) -> None:
        if self.over:
            return
        self.over = True
        if self.task is not None:
            self.task.cancel()
        self.call.error = "the client closed the connection"
        self.call.finish(self.call.status, "DC")
        self.down.listener.done(self.call)


def run(coro: Any) -> Any:
    """asyncio.run on uvloop when it is installed (the sidecar's loop)."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)
