"""HTTP/1.1 message readers on httptools (llhttp in its strict mode) and the writers for what they read.

A reader is fed bytes as they arrive and calls its sink: one typed head, the body in pieces as they come
(never the whole body held), then the end. What it refuses raises ProtocolError (status + reason), and
from then on the reader is dead. It refuses, while reading and before buffering past a limit:
- a request line longer than MAX_REQUEST_LINE (414) and a head longer than MAX_HEAD or with more than
  MAX_FIELDS fields (431), counted on the bytes fed to llhttp, which holds a
  field being read (httptools concatenates it), so feeding no further is what bounds memory;
- what a parser behind us could read differently (400): control characters in fields, two Host headers
  or a Host that contradicts an absolute-form target (sidecar.normalize), Transfer-Encoding together with
  Content-Length, a transfer coding other than `chunked`, an invalid chunk size, bare CR or LF, obs-fold;
- a version other than HTTP/1.0 and 1.1 (505), an HTTP/1.1 request with no Host (400).
The request target is normalised once (sidecar.normalize.normalize_target): what the decision reads is what
the upstream gets. Keep-alive is read from llhttp inside its callbacks, the only place it is right.

How the head is bounded exactly: llhttp is strict, so a head ends at the first CRLF CRLF; the reader feeds
a head up to there, so it knows where each message starts, except after a chunked body (llhttp does not
say where it ended): there, the next head is charged the whole slice it started in (at most CHUNK_SLICE),
which can only make a limit bite early, never late.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

import httptools

from sidecar.normalize import DEFAULT_MODE, Refused, check_fields, normalize_target, request_host

MAX_REQUEST_LINE = 8 * 1024  # nginx's large_client_header_buffers: longer gets 414
MAX_HEAD = MAX_REQUEST_LINE + 60 * 1024  # Envoy's 60 KiB of headers, plus the request line: longer gets 431
MAX_FIELDS = 100  # Envoy's headers_count
CHUNK_SLICE = 16 * 1024  # a chunked body is fed in slices this size, so trailers and chunk lines stay bounded
Framing = Literal["none", "length", "chunked", "close"]

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                        b"trailer", b"upgrade", b"content-length"})
REASONS = {100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content", 400: b"Bad Request",
           403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
           413: b"Content Too Large", 414: b"URI Too Long", 431: b"Request Header Fields Too Large",
           500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
           504: b"Gateway Timeout", 505: b"HTTP Version Not Supported"}


class ProtocolError(Refused):
    """The message cannot be read or passed on: answer `status` (a request) or fail the exchange (a response)."""


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes  # normalised, origin-form (or `*`, or CONNECT's authority)
    version: bytes  # b"1.0" or b"1.1"
    headers: list[tuple[bytes, bytes]]  # as received, checked; an absolute-form authority became the Host
    keep_alive: bool  # llhttp's verdict for this message (Connection header and version)
    framing: Framing  # "none", "length" or "chunked"
    length: int | None  # the Content-Length when framing is "length"
    host: str | None  # the one host the request is for
    upgrade: bool = False  # Connection: upgrade (WebSocket) or CONNECT: bytes after the head are not HTTP
    raw_target: bytes = b""  # as the client sent it, for logs

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case), or None."""
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    framing: Framing  # "close": the body runs until the connection closes
    length: int | None
    upgrade: bool = False  # a 101 to an upgrade request: the connection becomes a byte relay


class Sink(Protocol):
    """What a reader calls. `head` is a RequestHead or a ResponseHead; 1xx responses come as their own message."""

    def on_head(self, head: RequestHead | ResponseHead) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_end(self) -> None: ...


def describe(exc: Exception) -> str:
    """llhttp's refusal in the words of the checks it stands in for (sidecar.normalize's), its own after."""
    text = str(exc)
    if any(word in text for word in ("LF", "CR", "char", "whitespace")):
        return f"a control character, bare CR or LF in the message head (llhttp: {text})"
    return f"bad message: {text}"


class _Reader:
    """What requests and responses share: the feeding discipline that bounds the head, and the body callbacks."""

    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def __init__(self, sink: Sink, max_head: int, max_fields: int) -> None:
        self.sink = sink
        self.max_head = max_head
        self.max_fields = max_fields
        self.upgraded: bytes | None = None  # after an upgrade: the bytes that followed the head
        self._dead: BaseException | None = None
        self._in_body = False  # between headers complete and message complete
        self._framing: Framing = "none"
        self._body_left = 0  # length framing: body bytes still to come
        self._head_fed = 0  # bytes of the current head fed to llhttp (an upper bound after a chunked body)
        self._tail = b""  # last bytes of the head fed so far: a CRLF CRLF may span two reads
        self._since_progress = 0  # chunked: bytes fed since llhttp last reported a chunk or body piece
        self._progress = False
        self._completed = False  # a message completed during the current slice
        self._inexact = False  # ... and it was chunked: where it ended in the slice is unknown
        self._fields: list[tuple[bytes, bytes]] = []
        self._field_bytes = 0
        self._trailers = 0
        self.peak_held = 0  # the most head bytes this reader (and llhttp's field buffer) ever held

    @property
    def held(self) -> int:
        """Bytes of the current head held now, by us or by llhttp: at most what was fed of it."""
        return max(self._head_fed, self._own())

    def _own(self) -> int:
        return self._field_bytes

    # --- feeding -------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._dead is not None:
            raise self._dead
        if self.upgraded is not None:
            self.upgraded += data
            return
        try:
            self._feed(data)
        except BaseException as exc:
            self._dead = exc
            raise

    def _feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if not self._in_body:
                piece = self._head_piece(data, pos)
            elif self._framing == "length":
                piece = data[pos:pos + self._body_left]
            elif self._framing == "chunked":
                piece = data[pos:pos + min(CHUNK_SLICE, self.max_head + 1 - self._since_progress)]
            else:
                piece = data[pos:]
            self._completed = self._inexact = self._progress = False
            try:
                self._parser.feed_data(piece)
            except httptools.HttpParserUpgrade as exc:
                self.upgraded = piece[int(exc.args[0]):] + data[pos + len(piece):]
                return
            except httptools.HttpParserCallbackError as exc:
                if isinstance(exc.__context__, Exception):
                    raise exc.__context__ from None
                raise ProtocolError(400, f"bad message: {exc}") from None
            except httptools.HttpParserError as exc:
                raise ProtocolError(400, describe(exc)) from None
            pos += len(piece)
            self._account(piece)

    def _head_piece(self, data: bytes, pos: int) -> bytes:
        """The next bytes to feed while reading a head: up to its CRLF CRLF, and never past the limit."""
        room = self.max_head - self._head_fed
        chunk = data[pos:pos + room]
        end = (self._tail + chunk).find(b"\r\n\r\n")
        if end >= 0:  # the terminator needs at least one byte of `chunk`: the slice is never empty
            return chunk[:end + 4 - len(self._tail)]
        if not chunk:  # the head has all the room it may have, and it goes on
            raise ProtocolError(431, f"message head larger than {self.max_head // 1024} KiB")
        return chunk  # fed first, so that a request line too long is told as such (414)

    def _account(self, piece: bytes) -> None:
        if self._in_body:
            if self._framing == "chunked":  # chunk lines and trailers: bytes with no progress are bounded too
                self._since_progress = len(piece) if self._progress else self._since_progress + len(piece)
                if self._since_progress > self.max_head:
                    raise ProtocolError(400, "chunk line or trailers too large")
            return
        if self._completed:
            # Ended exactly at the slice's end unless a chunked body ended in it: then charge the whole slice.
            self._head_fed = len(piece) if self._inexact else 0
            self._tail = b""
        else:
            self._head_fed += len(piece)
            self._tail = (self._tail + piece)[-3:]
        self.peak_held = max(self.peak_held, self.held)

    # --- llhttp callbacks ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._fields = []
        self._field_bytes = 0
        self._trailers = 0
        self._framing = "none"

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:  # a trailer: counted and dropped (not forwarded)
            self._trailers += 1
            if self._trailers > self.max_fields:
                raise ProtocolError(400, f"more than {self.max_fields} trailer fields")
            return
        if len(self._fields) >= self.max_fields:
            raise ProtocolError(431, f"more than {self.max_fields} header fields")
        self._fields.append((name, value))
        self._field_bytes += len(name) + len(value)  # within what was fed: the head limit bounds it

    def on_body(self, data: bytes) -> None:
        self._progress = True
        if self._framing == "length":
            self._body_left -= len(data)
        self.sink.on_body(data)

    def on_chunk_header(self) -> None:
        self._progress = True

    def on_chunk_complete(self) -> None:
        self._progress = True

    def on_message_complete(self) -> None:
        self._inexact = self._inexact or self._framing == "chunked"
        self._in_body = False
        self._completed = True
        self._tail = b""
        self._end()

    def _end(self) -> None:
        self.sink.on_end()

    def _start_body(self, framing: Framing, length: int | None) -> None:
        self._framing = framing
        self._body_left = length or 0
        self._in_body = framing != "none"
        self._since_progress = 0
        self._head_fed = 0
        self._tail = b""
        self._fields = []  # the head owns them now
        self._field_bytes = 0

    def _framing_of(self, fields: list[tuple[bytes, bytes]]) -> tuple[Framing, int | None]:
        """From the checked fields: refuses what llhttp might let through and a peer might read otherwise."""
        te = [v for k, v in fields if k.lower() == b"transfer-encoding"]
        cl = [v for k, v in fields if k.lower() == b"content-length"]
        if te and cl:
            raise ProtocolError(400, "both Transfer-Encoding and Content-Length")
        if te:
            if len(te) > 1 or te[0].strip().lower() != b"chunked":
                raise ProtocolError(400, "a transfer coding other than chunked")
            return "chunked", None
        if cl:
            if len(cl) > 1 or not cl[0].isdigit() or len(cl[0]) > 18:
                raise ProtocolError(400, "invalid Content-Length")
            length = int(cl[0])
            return ("length", length) if length else ("none", 0)
        return "none", None

    def _version(self) -> bytes:
        version = self._parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise ProtocolError(505, f"HTTP/{version} is not supported")
        return version.encode()


class RequestReader(_Reader):
    """Reads requests off one client connection (pipelined ones in turn)."""

    _parser: httptools.HttpRequestParser

    def __init__(self, sink: Sink, path_mode: str = DEFAULT_MODE, max_line: int = MAX_REQUEST_LINE,
                 max_head: int = MAX_HEAD, max_fields: int = MAX_FIELDS) -> None:
        super().__init__(sink, max_head, max_fields)
        self.path_mode = path_mode
        self.max_line = max_line
        self._url = b""
        self._parser = httptools.HttpRequestParser(self)

    def _own(self) -> int:
        return self._field_bytes + len(self._url)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url = b""

    def on_url(self, piece: bytes) -> None:
        # method SP target SP HTTP/1.1: the method is known (llhttp checked it), the version is 8 bytes
        if len(self._parser.get_method()) + len(self._url) + len(piece) + 10 > self.max_line:
            raise ProtocolError(414, f"request line longer than {self.max_line // 1024} KiB")
        self._url += piece

    def on_headers_complete(self) -> None:
        version = self._version()
        method = self._parser.get_method()
        fields = self._fields
        try:
            check_fields(fields)
            raw = self._url
            target, authority = _split_target(method, raw)
            host = request_host(fields, authority)
            if method != b"CONNECT" and target != b"*":
                target = normal_target(target, self.path_mode)
        except ProtocolError:
            raise
        except Refused as exc:
            raise ProtocolError(exc.status, exc.reason) from None
        if host is None and version == b"1.1":
            raise ProtocolError(400, "an HTTP/1.1 request without a Host header")
        if authority and method != b"CONNECT":  # absolute-form: the app gets origin-form, its authority as Host
            fields = [(k, v) for k, v in fields if k.lower() != b"host"]
            fields.insert(0, (b"host", authority.encode("latin-1")))
        framing, length = self._framing_of(fields)
        self._url = b""
        head = RequestHead(method, target, version, fields, self._parser.should_keep_alive(), framing, length,
                           host, self._parser.should_upgrade(), raw)
        self._start_body(framing, length)
        self.sink.on_head(head)


# A target that every normalisation mode leaves as it is: no escape, backslash, fragment, dot segment or
# repeated slash, nothing outside printable ASCII. The common case skips sidecar.normalize's work.
_PLAIN_TARGET = re.compile(rb"/[A-Za-z0-9\-_~!$&'()*+,;=:@/?.]*")


def normal_target(target: bytes, mode: str = DEFAULT_MODE) -> bytes:
    """sidecar.normalize.normalize_target on bytes, with a fast path for targets it would not change."""
    if _PLAIN_TARGET.fullmatch(target) and b"/." not in target and b"//" not in target:
        return target
    return normalize_target(target.decode("latin-1"), mode).encode("latin-1")


def _split_target(method: bytes, raw: bytes) -> tuple[bytes, str]:
    """(target, authority) of a request target in any of the four forms; authority "" unless absolute-form."""
    if raw.startswith(b"/"):
        return raw, ""
    if raw == b"*":
        if method != b"OPTIONS":
            raise ProtocolError(400, "`*` is a target for OPTIONS only")
        return raw, ""
    if method == b"CONNECT":
        return raw, raw.decode("latin-1")
    try:
        url = httptools.parse_url(raw)
    except httptools.HttpParserInvalidURLError:
        raise ProtocolError(400, "the request target is not a URL") from None
    if url.schema not in (b"http", b"https") or not url.host or url.userinfo:
        raise ProtocolError(400, "the request target is not an http(s) URL")
    authority = url.host.decode("latin-1") + (f":{url.port}" if url.port is not None else "")
    if b":" in url.host:
        authority = f"[{url.host.decode('latin-1')}]" + (f":{url.port}" if url.port is not None else "")
    target = (url.path or b"/") + (b"?" + url.query if url.query is not None else b"")
    return target, authority


class ResponseReader(_Reader):
    """Reads the responses to requests sent on one upstream connection, one exchange at a time.

    `expect(head_request)` before each request: a response to HEAD has no body whatever its
    Content-Length says, and llhttp cannot be told so through httptools; the reader ends that message
    itself, and the connection cannot be reused (`reusable` is False)."""

    _parser: httptools.HttpResponseParser

    def __init__(self, sink: Sink, max_head: int = MAX_HEAD, max_fields: int = MAX_FIELDS) -> None:
        super().__init__(sink, max_head, max_fields)
        self._reason = b""
        self._head_request = False
        self.reusable = True  # False once llhttp says the connection closes, or after a HEAD exchange
        self._parser = httptools.HttpResponseParser(self)

    def expect(self, head_request: bool) -> None:
        self._head_request = head_request

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_status(self, piece: bytes) -> None:
        if len(self._reason) + len(piece) > MAX_REQUEST_LINE:
            raise ProtocolError(502, "response status line too long")
        self._reason += piece

    def on_headers_complete(self) -> None:
        version = self._version()
        status = self._parser.get_status_code()
        try:
            check_fields(self._fields)
        except Refused as exc:
            raise ProtocolError(502, f"upstream response: {exc.reason}") from None
        framing: Framing
        if 100 <= status < 200 or status in (204, 304) or self._head_request:
            framing, length = "none", None
        else:
            framing, length = self._framing_of(self._fields)
            if framing == "none" and length is None:
                framing = "close"
        keep_alive = self._parser.should_keep_alive()
        head = ResponseHead(status, self._reason or REASONS.get(status, b""), version, self._fields, keep_alive,
                            framing, length,
                            status == 101 and self._parser.should_upgrade())
        if framing == "close" or not keep_alive:
            self.reusable = False
        self._start_body(framing, length)
        self.sink.on_head(head)
        if self._head_request and status >= 200:
            self.reusable = False  # llhttp would wait for a body: stop it here, and never reuse this connection
            self.on_message_complete()
            raise _Stop

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        super().on_message_complete()

    def _feed(self, data: bytes) -> None:
        try:
            super()._feed(data)
        except _Stop:
            self._dead = ProtocolError(502, "the connection is done after a response to HEAD")

    def feed_eof(self) -> None:
        """The upstream closed: the end of a close-delimited body, or a truncated message (ProtocolError)."""
        if self._in_body and self._framing == "close":
            self._in_body = False
            self.reusable = False
            self._end()
            return
        if self._in_body or self._head_fed or self._fields:
            raise ProtocolError(502, "upstream closed the connection mid-response")


class _Stop(Exception):
    """Raised from a callback to stop llhttp after a response to HEAD."""


# --- writing ------------------------------------------------------------------------------------------------


def forwardable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The end-to-end fields: hop-by-hop ones (and those the Connection header names) dropped."""
    named = {t.strip().lower() for k, v in headers if k.lower() == b"connection" for t in v.split(b",")}
    return [(k, v) for k, v in headers if (lk := k.lower()) not in HOP_BY_HOP and lk not in named]


def _framing_lines(headers: list[tuple[bytes, bytes]], framing: Framing, length: int | None, close: bool,
                   upgrade: bytes | None) -> bytes:
    out = b""
    if framing == "length":
        out += b"content-length: %d\r\n" % (length or 0)
    elif framing == "chunked":
        out += b"transfer-encoding: chunked\r\n"
    elif framing == "none":  # a declared `Content-Length: 0`, or the length a response to HEAD or a 304 names
        out += b"".join(b"content-length: " + v + b"\r\n" for k, v in headers if k.lower() == b"content-length")
    if upgrade is not None:
        out += b"connection: upgrade\r\nupgrade: " + upgrade + b"\r\n"
    elif close:
        out += b"connection: close\r\n"
    return out


def _fields(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(k + b": " + v + b"\r\n" for k, v in headers)


def encode_request(head: RequestHead, body: bytes = b"", close: bool = False) -> bytes:
    """The request as forwarded upstream (HTTP/1.1, end-to-end fields, its own framing), head and body at once."""
    upgrade = head.header(b"upgrade") if head.upgrade else None
    return (head.method + b" " + head.target + b" HTTP/1.1\r\n" + _fields(forwardable(head.headers))
            + _framing_lines(head.headers, head.framing, head.length, close, upgrade) + b"\r\n" + body)


def encode_response(head: ResponseHead, body: bytes = b"", close: bool = False, framing: Framing | None = None,
                    version: bytes = b"1.1") -> bytes:
    """The response as sent to the client; `framing` overrides the upstream's (e.g. chunked to close)."""
    framing = head.framing if framing is None else framing
    upgrade = next((v for k, v in head.headers if k.lower() == b"upgrade"), b"") if head.upgrade else None
    if framing == "close":
        framing, close = "none", True
        headers = [(k, v) for k, v in head.headers if k.lower() != b"content-length"]
    else:
        headers = head.headers
    if version == b"1.0" and not close and upgrade is None:
        body_lines = _framing_lines(headers, framing, head.length, False, None) + b"connection: keep-alive\r\n"
    else:
        body_lines = _framing_lines(headers, framing, head.length, close, upgrade)
    return (b"HTTP/" + version + b" %d " % head.status + (head.reason or REASONS.get(head.status, b"")) + b"\r\n"
            + _fields(forwardable(head.headers)) + body_lines + b"\r\n" + body)


def simple_response(status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
                    close: bool = False, version: bytes = b"1.1") -> bytes:
    """A whole response the proxy makes itself (a refusal, a decision's answer), in one bytes object."""
    fields = list(headers or [])
    if not any(k.lower() == b"content-type" for k, _ in fields) and body:
        fields.append((b"content-type", b"text/plain"))
    head = ResponseHead(status, REASONS.get(status, b""), b"1.1", fields, not close, "length", len(body))
    return encode_response(head, body, close=close, version=version)


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n" if data else b""


LAST_CHUNK = b"0\r\n\r\n"
