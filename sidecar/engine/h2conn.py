"""One HTTP/2 connection on the `h2` library (the sans-I/O state machine under mitmproxy's HTTP/2): frames in,
events out to its streams, flow control both ways.

- Each stream is a `Stream`: the events for it queue there and its owner awaits them (`next`).
- Flow control is end to end: data a stream received is acknowledged (a WINDOW_UPDATE) only when its owner
  says it has passed it on (`ack`), so a slow reader on one side slows the writer on the other; sending waits
  for the peer's window (`send_data`) and for the transport's write buffer to drain (pause_writing). The
  connection's window has room for every stream's, so a stuck stream stalls itself, not the others; what a
  stream held when it is dropped is acknowledged then.
- A peer that sends without reading what it is answered (PINGs, SETTINGS) is cut off past MAX_UNREAD; one that
  does not read what is left when its connection closes, past CLOSE_GRACE_S.
- A protocol error closes the connection (h2 sends GOAWAY first); a GOAWAY from the peer ends the streams it
  never processed with REFUSED_STREAM, which a retry policy may repeat elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import Callable
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

log = logging.getLogger("meshctl.engine.h2")
# hpack logs every header block it decodes at DEBUG; the check alone showed in the profile.
logging.getLogger("hpack").disabled = True
logging.getLogger("hpack.hpack").disabled = True
# h2 formats repr(frame) for a trace log on every frame it receives, even with logging off (8% of the proxy's
# CPU per call, measured); in this process a frame's repr is its type's name.
hyperframe.frame.Frame.__repr__ = lambda self: type(self).__name__  # type: ignore[method-assign]

STREAM_WINDOW = 1 << 20  # bytes a stream may send us before we acknowledge (h2's default 64 KiB halves throughput)
MAX_CONCURRENT_STREAMS = 256  # what we accept per connection (Envoy's default is 2^31-1; this bounds memory)
# Room for every stream's window, as Envoy's 256 MiB: a stream whose reader is stuck (a client that never reads
# its answer) holds its own window, never the connection's, so the calls of others sharing it go on.
CONNECTION_WINDOW = MAX_CONCURRENT_STREAMS * STREAM_WINDOW
MAX_HEADER_LIST = 64 * 1024
MAX_UNREAD = 1 << 20  # bytes we write to a peer that has stopped reading before it is taken as a flood
CLOSE_GRACE_S = 5.0  # a closed connection's unsent bytes wait this long for a peer that does not read them
Fields = list[tuple[bytes, bytes]]
# h2 checks a header block's form, not its bytes: a CR, LF, NUL (or other control character) in a field is
# malformed (RFC 9113 8.2.1), and an HTTP/1.1 hop behind whoever is sent it could split the message there.
BAD_FIELD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
HEADER_EVENTS = (h2.events.RequestReceived, h2.events.ResponseReceived, h2.events.TrailersReceived)
PROTOCOL_ERROR = int(h2.errors.ErrorCodes.PROTOCOL_ERROR)


class StreamGone(Exception):
    """The stream was reset or its connection lost: `code` is the HTTP/2 error code (None: connection lost)."""

    def __init__(self, code: int | None, why: str) -> None:
        super().__init__(why)
        self.code = code


class Stream:
    """The receiving half of one stream, for its owner: headers, then data, trailers and end (or a reset)."""

    __slots__ = ("conn", "ended", "events", "id", "on_reset", "received", "reset", "unacked", "waiter")

    def __init__(self, conn: H2Side, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.events: collections.deque[tuple[str, Any, int]] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False  # the peer's END_STREAM arrived
        self.reset: int | None = None  # the error code of a reset (or connection loss: -1)
        self.received = 0  # body bytes received
        self.unacked = 0  # flow-controlled bytes received and not yet acknowledged
        self.on_reset: Callable[[], object] | None = None  # told at once of a reset, whether or not it reads

    def push(self, kind: str, value: Any, flow: int = 0) -> None:
        self.events.append((kind, value, flow))
        self.unacked += flow
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        if kind == "reset" and self.on_reset is not None:
            self.on_reset()

    async def next(self) -> tuple[str, Any, int]:
        """("headers", fields, 0) | ("data", bytes, flow-controlled length) | ("trailers", fields, 0) |
        ("end", None, 0) | ("reset", code, 0). Nothing after "end" or "reset"."""
        while not self.events:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.events.popleft()

    def ack(self, flow: int) -> None:
        """The owner passed on `flow` bytes of this stream's data: let the peer send as much again."""
        flow = min(flow, self.unacked)  # nothing twice: what a dropped stream held was acknowledged then
        self.unacked -= flow
        self.conn.ack(self.id, flow)


class H2Side(asyncio.Protocol):
    """Either end of an HTTP/2 connection (`client_side` for our upstream connections)."""

    def __init__(self, client_side: bool) -> None:
        # What arrives is validated (by h2, and BAD_FIELD); what we send was validated on arrival (or is ours).
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                           validate_inbound_headers=True, normalize_inbound_headers=True,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.paused = False
        self.closed = False
        self.going_away = False
        self.last_active = 0.0
        self.unread = 0  # bytes written since the peer stopped reading (pause_writing)
        self._window_waiters: list[asyncio.Future[None]] = []
        self._flush_pending = False

    # --- the transport -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.local_settings = h2.settings.Settings(client=self.h2.config.client_side, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.last_active = asyncio.get_running_loop().time()
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:  # refused before it was set up
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 protocol error from the peer: %s", exc)
            self.flush_now()  # the GOAWAY h2 prepared
            self.close()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def eof_received(self) -> bool:
        return False  # a half-closed HTTP/2 connection is over

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.reset = -1
            stream.push("reset", -1)
        self.streams.clear()
        self._wake_senders()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.unread = 0
        self._wake_senders()

    def flush(self) -> None:
        """Write what h2 has framed, once per turn of the loop: the frames of every stream that moved in this
        turn leave in one write (one system call, one TLS record run) instead of one each."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            if self.paused:  # no data is sent while paused: this is what the peer's frames made us answer
                self.unread += len(data)
                if self.unread > MAX_UNREAD:  # PINGs, SETTINGS, requests whose answers it never reads
                    log.warning("HTTP/2 peer sends without reading what it is answered: connection closed")
                    self.transport.abort()
                    return
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.flush_now()
            self.transport.close()
            if self.transport.get_write_buffer_size():  # a peer that never reads would hold it open for ever
                asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self.transport.abort)

    # --- events -------------------------------------------------------------------------------------------

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, HEADER_EVENTS) and BAD_FIELD.search(b"".join(k + v for k, v in event.headers)):
            # Request or response, headers or trailers, either way: never passed on (one search per block).
            log.info("HTTP/2 stream %d: a header field holds a control character; stream reset", event.stream_id)
            stream = self._drop(event.stream_id)
            self.reset(event.stream_id, PROTOCOL_ERROR)
            if stream is not None:
                stream.reset = PROTOCOL_ERROR
                stream.push("reset", PROTOCOL_ERROR)
            return
        if isinstance(event, (h2.events.RequestReceived, h2.events.ResponseReceived)):
            stream = self.streams.get(event.stream_id) or self.new_stream(event.stream_id)
            if stream is not None:
                stream.push("headers", list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            # A stream we gave up on (its bytes still count against the connection), or a frame with no data (a
            # flood of them would queue without end, costing the peer no window): acknowledged at once.
            if stream is None or not event.data:
                if event.flow_controlled_length:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream.received += len(event.data)
            stream.push("data", event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            self._push(event.stream_id, "trailers", list(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream.push("end", None)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._drop(event.stream_id)
            if stream is not None:
                stream.reset = event.error_code
                stream.push("reset", int(event.error_code))
            self._wake_senders()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._wake_senders()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.going_away = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid, stream in list(self.streams.items()):
                if sid > last:  # never processed: safe to send again
                    self._drop(sid)
                    stream.push("reset", int(h2.errors.ErrorCodes.REFUSED_STREAM))
            self.goaway_received()

    def _push(self, stream_id: int, kind: str, value: Any) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.push(kind, value)

    def new_stream(self, stream_id: int) -> Stream | None:
        """A stream the peer opened (servers); a client side opens its own."""
        return None

    def goaway_received(self) -> None:
        """The peer will take no new streams."""

    # --- sending ------------------------------------------------------------------------------------------

    def _drop(self, stream_id: int) -> Stream | None:
        """The stream leaves: what it received and nobody will pass on is acknowledged to the connection (left
        unacknowledged, each answer given before its request ended, each cancelled download, would shrink the
        connection's window for good, until every stream sharing it stalls)."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None and stream.unacked and not self.closed:
            self.h2.acknowledge_received_data(stream.unacked, stream_id)
            stream.unacked = 0
            self.flush()
        return stream

    def forget(self, stream_id: int) -> None:
        """The owner is done with the stream (it ended or was reset)."""
        self._drop(stream_id)

    def ack(self, stream_id: int, flow: int) -> None:
        if flow and not self.closed:
            self.h2.acknowledge_received_data(flow, stream_id)
            self.flush()

    def send_headers(self, stream_id: int, fields: Fields, end_stream: bool = False) -> None:
        if self.closed:
            raise StreamGone(None, "the connection is closed")
        try:
            self.h2.send_headers(stream_id, fields, end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:  # closed, or not in a state to send headers
            raise StreamGone(int(h2.errors.ErrorCodes.STREAM_CLOSED), "the stream is closed") from exc
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        if self.closed:
            raise StreamGone(None, "the connection is closed")
        try:
            self.h2.end_stream(stream_id)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(int(h2.errors.ErrorCodes.STREAM_CLOSED), "the stream is closed") from exc
        self.flush()

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self._drop(stream_id)
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush()

    def send_data_now(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Send `data` at once if one frame holds it and the windows allow: the common case, without a coroutine."""
        if self.paused or self.closed or not data:
            return False
        try:
            if len(data) > min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size):
                return False
            self.h2.send_data(stream_id, data, end_stream=end_stream)
        except h2.exceptions.ProtocolError:
            return False  # send_data says why
        self.flush()
        return True

    async def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send `data` as the peer's windows allow, waiting for them to open; StreamGone if it cannot."""
        if self.send_data_now(stream_id, data, end_stream):
            return
        view = memoryview(data)
        while view:
            if self.closed:
                raise StreamGone(None, "the connection is closed")
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError) as exc:
                raise StreamGone(int(h2.errors.ErrorCodes.STREAM_CLOSED), "the stream is closed") from exc
            size = min(window, self.h2.max_outbound_frame_size, len(view))
            if size <= 0 or self.paused:
                await self._wait_window()
                continue
            chunk, view = view[:size], view[size:]
            try:
                self.h2.send_data(stream_id, chunk.tobytes(), end_stream=end_stream and not view)
            except h2.exceptions.ProtocolError as exc:
                raise StreamGone(int(h2.errors.ErrorCodes.STREAM_CLOSED), str(exc) or "stream closed") from exc
            self.flush()
        if end_stream and not data:
            self.end_stream(stream_id)

    async def _wait_window(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._window_waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._window_waiters:
                self._window_waiters.remove(waiter)

    def _wake_senders(self) -> None:
        waiters, self._window_waiters = self._window_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
