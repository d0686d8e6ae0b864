"""Request-head limits enforced while the head is being read, before anything is parsed or buffered whole.

mitmproxy 11 buffers a request head until its blank line, however long: one unterminated 128 MiB header
line took a sidecar to 409 MB. This wraps mitmproxy's HTTP/1 server reader (the proxy process only; the
version is pinned) so that, while the head is incomplete, the buffer may never grow past the limits:
- a request line longer than MAX_REQUEST_LINE gets 414 (nginx's 8 KiB large_client_header_buffers);
- a head longer than MAX_HEAD (Envoy's 60 KiB of headers, plus the request line) gets 431.
The connection is closed with the answer, and the refusal is reported to `on_refusal` (the access log).
Heads within the limits go on to mitmproxy's own parser and the per-field checks of addons.guard and
addons.listeners (at most 100 header fields).

mitmproxy reads without backpressure and keeps unparsed bytes in the same buffer in other states too: blank
lines ahead of a request line (it drops one per read), bytes pipelined while a response is pending, an
endless chunk-size line or trailer. So after every read, whatever the state, the bytes held unparsed may not
exceed MAX_HEAD: past it the connection is closed (431 while reading a head, 400 inside a body).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD = MAX_REQUEST_LINE + 60 * 1024

Refusal = Callable[[Any, int, str], None]  # (client connection, status, reason)


def head_problem(buffered: bytes) -> tuple[int, str] | None:
    """Why an incomplete (or just completed) request head must be refused now, or None. Pure."""
    line_end = buffered.find(b"\n", 0, MAX_REQUEST_LINE + 1)
    if line_end < 0 and len(buffered) > MAX_REQUEST_LINE:
        return 414, f"request line longer than {MAX_REQUEST_LINE // 1024} KiB"
    head_end = buffered.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if head_end < 0:
        head_end = buffered.find(b"\n\n", 0, MAX_HEAD + 2)
    if head_end < 0 and len(buffered) > MAX_HEAD:
        return 431, f"request head larger than {MAX_HEAD // 1024} KiB"
    return None


def install(on_refusal: Refusal) -> None:
    """Wrap mitmproxy's Http1Server.read_headers and its event handler (idempotent)."""
    from h11._receivebuffer import ReceiveBuffer  # what mitmproxy's HTTP/1 layer buffers in
    from mitmproxy.proxy import commands, events
    from mitmproxy.proxy.layers.http import _http1
    from mitmproxy.proxy.layers.http._base import ReceiveHttp
    from mitmproxy.proxy.layers.http._events import RequestProtocolError

    server = _http1.Http1Server
    original = getattr(server.read_headers, "__wrapped__", server.read_headers)
    original_event = getattr(server._handle_event, "__wrapped__", server._handle_event)

    def read_headers(self: Any, event: Any) -> Generator[Any, Any, None]:
        # Nothing can be over a limit while the buffer is within the shortest one: the common case costs a len().
        if isinstance(event, events.DataReceived) and len(self.buf) > MAX_REQUEST_LINE:
            problem = head_problem(bytes(self.buf))
            if problem is not None:
                status, reason = problem
                self.buf = ReceiveBuffer()  # drop what was held: memory stays bounded
                self.state = self.done
                on_refusal(self.context.client, status, reason)
                yield commands.SendData(self.conn, _http1.make_error_response(status, reason))
                yield commands.CloseConnection(self.conn)
                return
        yield from original(self, event)

    def handle_event(self: Any, event: Any) -> Generator[Any, Any, None]:
        yield from original_event(self, event)
        if self.state == self.done:  # closing: what still arrives is never read, so never kept
            self.buf = ReceiveBuffer()
        if not isinstance(event, events.DataReceived) or len(self.buf) <= MAX_HEAD or self.state == self.passthrough:
            return
        in_head = self.state == self.read_headers
        in_body = self.state == self.read_body
        status = 431 if in_head else 400
        reason = (f"more than {MAX_HEAD // 1024} KiB held unparsed "
                  f"({'before a request head' if in_head else 'in a body' if in_body else 'pipelined'})")
        self.buf = ReceiveBuffer()
        self.state = self.done
        on_refusal(self.context.client, status, reason)
        if in_head:
            yield commands.SendData(self.conn, _http1.make_error_response(status, reason))
        yield commands.CloseConnection(self.conn)
        if in_body:  # the request was passed on: its stream answers 400 if no response has started
            yield ReceiveHttp(RequestProtocolError(self.stream_id, reason, status))

    read_headers.__wrapped__ = original  # type: ignore[attr-defined]
    server.read_headers = read_headers  # type: ignore[method-assign]
    handle_event.__wrapped__ = original_event  # type: ignore[attr-defined]
    server._handle_event = handle_event  # type: ignore[method-assign]
