"""HTTP/2 and gRPC at L7: each stream of a client's connection is one request, with its own Call and the
same hooks as HTTP/1.1 (tracing, authorization, routing, telemetry), forwarded as a stream of a multiplexed
upstream connection (sidecar.engine.h2pool).

- The request is forwarded as it arrives (client streaming and bidirectional calls work); up to REPLAY_MAX
  of its body is kept so that a retry can send it again. A larger body can no longer be retried, as in Envoy.
- The response is committed when its headers arrive: a retry policy judges the status, and the grpc-status
  of a trailers-only answer; after that, data and trailers are passed through as they come.
- Flow control is end to end: a stream's data is acknowledged to its sender once it was passed on.
- A client that resets its stream (a cancelled call, a deadline it enforced) resets the upstream stream.
- When the proxy answers itself (a denial, a fault, no route, a timeout), a gRPC request gets a trailers-only
  answer with the gRPC status Envoy would give (sidecar.grpc.from_http), anything else an HTTP response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import h2.errors
import h2.exceptions
from hyperframe.frame import GoAwayFrame

from sidecar import grpc
from sidecar.engine.call import Call
from sidecar.engine.client import UpstreamError
from sidecar.engine.h2conn import MAX_CONCURRENT_STREAMS, Fields, H2Side, Stream, StreamGone
from sidecar.engine.h2pool import H2Pool
from sidecar.engine.http1 import ProtocolError, RequestHead, ResponseHead, normal_target
from sidecar.engine.plan import ConnectionInfo
from sidecar.engine.pool import Key, PoolError
from sidecar.engine.proxy import Response, Route
from sidecar.normalize import TOKEN_RE, check_fields, request_host

log = logging.getLogger("meshctl.engine.h2proxy")

REPLAY_MAX = 64 * 1024  # request body kept for retries and mirroring
MAX_CONNECTIONS = 4096  # client connections on the HTTP/2 path; past it, closed at once
IDLE_TIMEOUT_S = 300.0  # a client connection with no stream in flight this long is told GOAWAY (then closed)
REFUSED_STREAM = int(h2.errors.ErrorCodes.REFUSED_STREAM)
CANCEL = int(h2.errors.ErrorCodes.CANCEL)
NO_ERROR = int(h2.errors.ErrorCodes.NO_ERROR)
INTERNAL_ERROR = int(h2.errors.ErrorCodes.INTERNAL_ERROR)
_BAD_PATH = re.compile(rb"[\x00-\x20\x7f]")  # a control character or space: an HTTP/1.1 hop would split there


class Body:
    """The downstream request's body and trailers, read as they come; replayable while under REPLAY_MAX."""

    def __init__(self, stream: Stream, ended: bool) -> None:
        self.stream = stream
        self.chunks: list[tuple[bytes, int]] = []  # (data, flow-controlled length), from absolute index `base`
        self.base = 0
        self.size = 0
        self.trailers: Fields | None = None
        self.ended = ended
        self.reset: int | None = None
        self.replayable = True
        self.acked = 0  # chunks (absolute index) whose flow was acknowledged to the client
        self.changed = asyncio.Event()
        self.capture: bytearray | None = None  # a copy for tap, when one asks
        self.capture_limit = 0

    @property
    def empty(self) -> bool:
        """Ended with the headers: nothing to send after them."""
        return self.ended and not self.chunks and self.base == 0 and self.trailers is None

    def take_queued(self) -> bool:
        """Take what already arrived, without waiting: True when the request is over (ended or reset). A unary
        call's body and end usually arrive with its headers, and then no reader task is needed."""
        events = self.stream.events
        while events and not self.ended and self.reset is None:
            self._take(*events.popleft())
        return self.ended or self.reset is not None

    async def read(self) -> None:
        """Take the stream's events until it ends or is reset (a task beside the exchange)."""
        while not self.ended and self.reset is None:
            self._take(*await self.stream.next())

    def _take(self, kind: str, value: Any, flow: int) -> None:
        if kind == "data":
            self.chunks.append((value, flow))
            self.size += len(value)
            if self.capture is not None and len(self.capture) < self.capture_limit:
                self.capture += value[:self.capture_limit - len(self.capture)]
            if self.size > REPLAY_MAX:
                self.replayable = False
        elif kind == "trailers":
            self.trailers = value
        elif kind == "end":
            self.ended = True
        elif kind == "reset":
            self.reset = value
        self.changed.set()

    def send_now(self, conn: H2Side, stream_id: int) -> bool:
        """Send the whole request now if it is all here and the windows allow (no task, no wait): True if done."""
        if not self.ended or self.base or conn.paused or conn.closed:
            return False
        try:
            window = min(conn.h2.local_flow_control_window(stream_id), conn.h2.max_outbound_frame_size)
        except h2.exceptions.ProtocolError:
            return False
        if self.size > window:
            return False
        last = len(self.chunks) - 1
        for i, (data, flow) in enumerate(self.chunks):
            conn.h2.send_data(stream_id, data, end_stream=i == last and self.trailers is None)
            if i >= self.acked:
                self.stream.ack(flow)
        self.acked = len(self.chunks)
        if self.trailers is not None:
            conn.h2.send_headers(stream_id, self.trailers, end_stream=True)
        elif not self.chunks:
            conn.h2.end_stream(stream_id)
        conn.flush()
        return True

    async def send_to(self, conn: H2Side, stream_id: int) -> None:
        """Send the whole body (from its start) and trailers on `stream_id` of `conn`, as it arrives."""
        pos = 0
        while True:
            if self.reset is not None:
                raise StreamGone(self.reset, "the client reset its stream")
            if pos < self.base:
                raise StreamGone(None, "the request body is no longer held (too large to send again)")
            if pos < self.base + len(self.chunks):
                data, flow = self.chunks[pos - self.base]
                pos += 1
                last = self.ended and self.trailers is None and pos == self.base + len(self.chunks)
                await conn.send_data(stream_id, data, end_stream=last)
                if pos > self.acked:
                    self.acked = pos
                    self.stream.ack(flow)
                if not self.replayable and pos > self.base:  # what was sent cannot be needed again: let it go
                    drop = pos - self.base
                    del self.chunks[:drop]
                    self.base = pos
                if last:
                    return
                continue
            if self.ended:
                if self.trailers is not None:
                    conn.send_headers(stream_id, self.trailers, end_stream=True)
                else:
                    conn.end_stream(stream_id)
                return
            self.changed.clear()
            await self.changed.wait()

    def whole(self) -> bytes | None:
        """The whole body, if it ended and is still held (for a mirror)."""
        if not self.ended or not self.replayable or self.base:
            return None
        return b"".join(data for data, _ in self.chunks)


@dataclass(slots=True)
class Attempt:
    """An upstream stream whose response headers arrived."""

    conn: H2Side
    stream: Stream
    status: int
    headers: Fields
    trailers_only: bool
    grpc_status: int | None
    sender: asyncio.Task[None] | None

    def discard(self) -> None:
        """Not the answer given (a retry follows): stop sending, reset the stream."""
        if self.sender is not None:
            self.sender.cancel()
        self.conn.reset(self.stream.id, CANCEL)


@dataclass(frozen=True, slots=True)
class Request:
    """What a stream's upstream request is made of besides the Call's head: its scheme and its body."""

    scheme: bytes
    body: Body


Exchange = Callable[[Key], Awaitable[Attempt]]
# The routed path (the router): given a way to make one exchange with an upstream, the answer to give.
Serve = Callable[[Call, "Forwarder"], Awaitable["Attempt | Response"]]


@dataclass(frozen=True, slots=True)
class H2Routed:
    serve: Serve


H2Decide = Callable[[Call], Route | Response | H2Routed]


def upstream_fields(call: Call, scheme: bytes, authority: str | None = None) -> Fields:
    head = call.head
    out: Fields = [(b":method", head.method), (b":scheme", scheme),
                   (b":authority", (authority or head.host or "").encode("latin-1")), (b":path", head.target)]
    out.extend((k, v) for k, v in head.headers if k != b"host")
    return out


def grpc_status_of(fields: Fields | None) -> int | None:
    for k, v in fields or ():
        if k == b"grpc-status":
            try:
                return int(v)
            except ValueError:
                return grpc.from_http(500)
    return None


class Forwarder:
    """One stream's upstream side: attempts through the pool, the body sent with each."""

    def __init__(self, pool: H2Pool, call: Call, request: Request) -> None:
        self.pool = pool
        self.call = call
        self.request = request

    @property
    def can_retry(self) -> bool:
        return self.request.body.replayable and self.request.body.reset is None

    def copy(self, authority: str) -> Mirror:
        """The request as it stands now (its header operations applied), for `authority`."""
        return Mirror(self.pool, upstream_fields(self.call, self.request.scheme, authority), self.request.body)

    async def attempt(self, key: Key, authority: str | None = None) -> Attempt:
        """Open a stream to `key`, send the request, wait for the response headers. UpstreamError if none."""
        try:
            conn = await self.pool.get(key)
        except PoolError as exc:
            raise UpstreamError("connect-failure" if exc.kind != "overflow" else "overflow", str(exc)) from None
        body = self.request.body
        try:
            stream = conn.open(upstream_fields(self.call, self.request.scheme, authority), end_stream=body.empty)
        except StreamGone as exc:
            raise UpstreamError("reset", f"upstream stream: {exc}") from None
        sender = None
        if not body.empty and not body.send_now(conn, stream.id):
            sender = asyncio.get_running_loop().create_task(body.send_to(conn, stream.id))
        try:
            while True:
                kind, value, _ = await stream.next()
                if kind == "headers":
                    status = int(dict(value).get(b":status", b"0"))
                    if 100 <= status < 200:
                        continue  # informational: the final answer follows
                    trailers_only = bool(stream.events) and stream.events[0][0] == "end"
                    return Attempt(conn, stream, status, value, trailers_only,
                                   grpc_status_of(value) if trailers_only else None, sender)
                if kind == "reset":
                    refused = value == REFUSED_STREAM
                    raise UpstreamError("refused-stream" if refused else "reset",
                                        "the upstream refused the stream" if refused else
                                        f"the upstream reset the stream (error {value})")
                raise UpstreamError("reset", f"the upstream sent {kind} before its response headers")
        except BaseException:
            if sender is not None:
                sender.cancel()
            conn.reset(stream.id, CANCEL)
            raise


class Mirror:
    """A copy of a stream's request for shadow traffic: sent once the request is whole, the answer dropped."""

    def __init__(self, pool: H2Pool, fields: Fields, body: Body) -> None:
        self.pool = pool
        self.fields = fields
        self.body = body

    async def mirror(self, key: Key) -> None:
        body = self.body
        while not body.ended and body.reset is None:
            body.changed.clear()
            await body.changed.wait()
        data = body.whole()
        if data is None:
            return  # reset, or too large to have been kept
        conn = await self.pool.get(key)
        stream = conn.open(self.fields, end_stream=not data and body.trailers is None)
        try:
            if data:
                await conn.send_data(stream.id, data, end_stream=body.trailers is None)
            if body.trailers is not None:
                conn.send_headers(stream.id, body.trailers, end_stream=True)
            while True:
                kind, _, flow = await stream.next()
                stream.ack(flow)
                if kind in ("end", "reset"):
                    return
        finally:
            if not stream.ended and stream.reset is None:
                conn.reset(stream.id, CANCEL)
            conn.forget(stream.id)


class H2Downstream(H2Side):
    """A client's HTTP/2 connection (h2c, or inside our mutual TLS): each new stream is served by a task."""

    def __init__(self, proxy: H2Proxy, decide: H2Decide, info: ConnectionInfo | None) -> None:
        super().__init__(client_side=False)
        self.proxy = proxy
        self.decide = decide
        self.info = info
        self.tasks: set[asyncio.Task[None]] = set()
        self.admitted = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.proxy.open >= self.proxy.max_connections:
            self.proxy.refused += 1
            transport.close()
            return
        super().connection_made(transport)
        self.admitted = True
        self.proxy.open += 1
        self.proxy.connections.add(self)
        self._idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self._idle_check)
        if self.proxy.draining:
            self.goaway()

    def _idle_check(self) -> None:
        """One timer per connection, moved lazily: idle since the last stream ended (or since it opened)."""
        loop = asyncio.get_running_loop()
        left = self.last_active + IDLE_TIMEOUT_S - loop.time()
        if self.tasks or left > 0:
            self._idle = loop.call_later(max(left, 1.0), self._idle_check)
            return
        self._idle = None
        self.goaway()

    def goaway(self) -> None:
        """No new streams (GOAWAY); the connection closes once the streams in flight are done."""
        if not self.going_away and not self.closed and self.transport is not None:
            self.going_away = True
            # Written beside h2, not through close_connection(): that would end h2's connection state, and
            # frames of the streams still in flight would then be protocol errors.
            frame = GoAwayFrame(0)
            frame.last_stream_id = self.h2.highest_inbound_stream_id
            self.flush_now()
            self.transport.write(frame.serialize())
        if not self.tasks:
            self.close()

    def new_stream(self, stream_id: int) -> Stream | None:
        # h2 counts a stream until it is closed; its task may still be at work (a request reset at once after
        # it was sent: "rapid reset"), so tasks are counted too. REFUSED_STREAM: a client may send it again.
        if self.going_away or len(self.tasks) >= MAX_CONCURRENT_STREAMS:
            self.reset(stream_id, REFUSED_STREAM)
            return None
        self.last_active = asyncio.get_running_loop().time()
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        task = asyncio.get_running_loop().create_task(self.proxy.serve(self, stream))
        self.tasks.add(task)
        task.add_done_callback(self._stream_done)
        return stream

    def _stream_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.last_active = asyncio.get_running_loop().time()
        if self.going_away and not self.tasks:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        super().connection_lost(exc)
        self.proxy.open -= 1
        self.proxy.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()


class H2Proxy:
    """The HTTP/2 path of a sidecar: the connections it serves and where their requests' outcomes go."""

    def __init__(self, pool: H2Pool, *, path_mode: Callable[[], str], on_done: Callable[[Call], None],
                 on_start: Callable[[Call], None] | None = None) -> None:
        self.pool = pool
        self.path_mode = path_mode
        self.on_done = on_done
        self.on_start = on_start  # e.g. tap asks for a copy of the bodies
        self.open = 0
        self.refused = 0
        self.max_connections = MAX_CONNECTIONS
        self.connections: set[H2Downstream] = set()
        self.draining = False

    def drain(self) -> None:
        """Shutting down: every client is told to open no more streams here (it reconnects elsewhere)."""
        self.draining = True
        for conn in list(self.connections):
            conn.goaway()

    def connection(self, decide: H2Decide, info: ConnectionInfo | None) -> H2Downstream:
        return H2Downstream(self, decide, info)

    async def serve(self, down: H2Downstream, stream: Stream) -> None:
        _, fields, _ = await stream.next()
        ended = bool(stream.events) and stream.events[0][0] == "end"
        if ended:
            stream.events.popleft()
        call, scheme, problem = self._call(down.info, fields)
        body = Body(stream, ended)
        if self.on_start is not None:
            self.on_start(call)
        if call.capture:
            body.capture, body.capture_limit = bytearray(), call.capture
        task = asyncio.current_task()
        if task is not None:  # a reset (or the connection lost) ends the work, whether the body is read or not
            stream.on_reset = task.cancel
        reader = None if body.take_queued() else asyncio.get_running_loop().create_task(body.read())
        try:
            if stream.reset is not None:  # reset as soon as sent ("rapid reset"): nothing goes upstream
                raise asyncio.CancelledError
            if problem is not None:
                call.reason = problem
                await self._local(down, stream.id, call, Response(400, f"meshctl: {problem}\n".encode()))
            else:
                await self._exchange(down, stream.id, call, Request(scheme, body))
        except asyncio.CancelledError:
            call.flags = "DC" if call.flags == "-" else call.flags
            call.error = call.error or "the client reset its stream"
        except StreamGone as exc:
            call.flags = "DC" if call.flags == "-" else call.flags
            call.error = call.error or str(exc)
        except Exception as exc:  # a bug must not take the connection with it
            log.exception("HTTP/2 stream %d failed", stream.id)
            call.error = f"internal error: {exc}"
            down.reset(stream.id, INTERNAL_ERROR)
        finally:
            if reader is not None:
                reader.cancel()
            if not body.ended and body.reset is None:
                down.reset(stream.id, NO_ERROR)  # answered before the request ended: stop sending it
            down.forget(stream.id)
            call.request_bytes = stream.received
            if body.capture is not None:
                call.request_body = body.capture
            if not call.end:
                call.finish(call.status)
            try:
                self.on_done(call)
            except Exception:
                log.exception("recording an HTTP/2 request failed")

    def _call(self, info: ConnectionInfo | None, fields: Fields) -> tuple[Call, bytes, str | None]:
        pseudo = {k: v for k, v in fields if k.startswith(b":")}
        headers = [(k, v) for k, v in fields if not k.startswith(b":")]
        method, scheme, raw = pseudo.get(b":method", b""), pseudo.get(b":scheme", b""), pseudo.get(b":path", b"")
        host = None
        problem = None
        target = raw
        # What the HTTP/1.1 reader refuses (sidecar.normalize), refused here too: h2 checks the block's form, not
        # what an app may read two ways (a name that is no token, a method, scheme or authority it parses otherwise).
        try:
            check_fields(headers)
            if not TOKEN_RE.fullmatch(method) or method != method.upper() or method == b"CONNECT":
                raise ProtocolError(400, "the request's :method is not an upper-case token other than CONNECT")
            if scheme not in (b"http", b"https"):
                raise ProtocolError(400, "the request's :scheme is not http or https")
            lengths = [v for k, v in headers if k == b"content-length"]  # h2 reads `+5` as 5; other parsers do not
            if len(lengths) > 1 or (lengths and not (lengths[0].isdigit() and len(lengths[0]) <= 18)):
                raise ProtocolError(400, "invalid content-length")
            host = request_host(headers, pseudo.get(b":authority", b"").decode("latin-1"))
            if host is None:
                raise ProtocolError(400, "a request without :authority or Host")
            if not raw.startswith(b"/") or _BAD_PATH.search(raw):
                raise ProtocolError(400, "the request's :path is not an absolute path of visible characters")
            target = normal_target(raw, self.path_mode())
        except ValueError as exc:  # Refused (ProtocolError among them)
            problem = str(exc) or "the request's :path cannot be normalised"
        head = RequestHead(method, target, b"2", headers, True, "none", None, host, raw_target=raw)
        call = Call(info, head)
        if grpc.is_grpc(head.header(b"content-type")):
            call.protocol = "grpc"
        return call, scheme or b"http", problem

    async def _exchange(self, down: H2Downstream, sid: int, call: Call, request: Request) -> None:
        decision = down.decide(call)
        forwarder = Forwarder(self.pool, call, request)
        if isinstance(decision, Response):
            await self._local(down, sid, call, decision)
            if decision.close:  # nothing more on this connection (plaintext now STRICT): GOAWAY, as HTTP/1.1 closes
                down.goaway()
            return
        if isinstance(decision, Route):
            call.upstream, call.upstream_identity = decision.address, decision.identity
            try:
                answer: Attempt | Response = await forwarder.attempt((decision.address, decision.identity))
            except UpstreamError as exc:
                call.error = str(exc)
                flag = {"overflow": "UO", "connect-failure": "UF"}.get(exc.kind, "UC")
                await self._local(down, sid, call, Response(503, f"meshctl: {exc}\n".encode()), flag)
                return
        else:
            answer = await decision.serve(call, forwarder)
        if isinstance(answer, Response):
            await self._local(down, sid, call, answer)
            return
        await self._respond(down, sid, call, answer, call.deadline)

    async def _respond(self, down: H2Downstream, sid: int, call: Call, answer: Attempt,
                       deadline: float | None) -> None:
        """Pass the chosen upstream answer through: headers (edited), data, trailers."""
        up = answer.stream
        headers = answer.headers
        call.status = answer.status
        if call.edit_response is not None:
            regular = [(k, v) for k, v in headers if not k.startswith(b":")]
            head = ResponseHead(answer.status, b"", b"2", regular, True, "none", None)
            call.edit_response(head)
            headers = [(b":status", b"%d" % head.status), *head.headers]
        call.response_fields = headers
        capture = bytearray() if call.capture else None
        try:
            down.send_headers(sid, headers, end_stream=answer.trailers_only)
            if answer.trailers_only:
                call.grpc_status = answer.grpc_status
                return
            trailered = False
            async with asyncio.timeout_at(deadline):
                while True:
                    kind, value, flow = await up.next()
                    if kind == "data":
                        if not down.send_data_now(sid, value):
                            await down.send_data(sid, value)
                        up.ack(flow)
                        call.response_bytes += len(value)
                        if capture is not None and len(capture) < call.capture:
                            capture += value[:call.capture - len(capture)]
                    elif kind == "trailers":
                        call.grpc_status = grpc_status_of(value)
                        down.send_headers(sid, value, end_stream=True)
                        trailered = True
                    elif kind == "end":
                        if not trailered:
                            down.end_stream(sid)
                        return
                    else:  # reset by the upstream
                        call.flags = "UR" if call.flags == "-" else call.flags
                        call.error = f"the upstream reset the stream (error {value})"
                        down.reset(sid, INTERNAL_ERROR)
                        return
        except TimeoutError:
            call.flags = "UT"
            call.grpc_status = grpc.DEADLINE_EXCEEDED if call.protocol == "grpc" else None
            if call.protocol == "grpc":
                with contextlib.suppress(StreamGone):
                    down.send_headers(sid, [(b"grpc-status", b"%d" % grpc.DEADLINE_EXCEEDED),
                                            (b"grpc-message", b"upstream request timeout")], end_stream=True)
            else:
                down.reset(sid, CANCEL)
        finally:
            if answer.sender is not None and not answer.sender.done():
                answer.sender.cancel()  # answered before the request ended: the rest is not wanted
                up.conn.reset(up.id, NO_ERROR if up.ended else CANCEL)
            elif not up.ended and up.reset is None:
                up.conn.reset(up.id, CANCEL)  # the client left, or time ran out: the upstream can stop
            up.conn.forget(up.id)
            if capture is not None:
                call.response_body = capture
            call.finish(call.status)

    async def _local(self, down: H2Downstream, sid: int, call: Call, response: Response,
                     flags: str | None = None) -> None:
        """The proxy's own answer; for gRPC, trailers-only with the gRPC status (Envoy's mapping)."""
        if flags is not None and call.flags == "-":
            call.flags = flags
        if call.protocol == "grpc":
            code = grpc_code_of(response)
            message = response.body.decode("utf-8", "replace").strip().removeprefix("meshctl: ")
            fields = grpc.trailers_only(code, message)
            call.grpc_status = code
            call.status = 200
            extra = [(k.lower(), v) for k, v in response.headers if k.lower() not in (b"content-type",
                                                                                        b"content-length")]
            down.send_headers(sid, fields + extra, end_stream=True)
            call.response_fields = fields + extra
            call.finish(200)
            return
        fields = [(b":status", b"%d" % response.status), *((k.lower(), v) for k, v in response.headers
                                                           if k.lower() != b"content-length"),
                  (b"content-length", b"%d" % len(response.body))]
        call.response_fields = fields
        down.send_headers(sid, fields, end_stream=not response.body)
        if response.body:
            await down.send_data(sid, response.body, end_stream=True)
        call.response_bytes = len(response.body)
        call.finish(response.status)


def grpc_code_of(response: Response) -> int:
    """The gRPC status a local answer carries: its own (a gRPC fault), else mapped from its HTTP status."""
    for k, v in response.headers:
        if k.lower() == b"grpc-status":
            return int(v)
    return grpc.DEADLINE_EXCEEDED if response.status == 504 else grpc.from_http(response.status)
