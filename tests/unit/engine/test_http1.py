"""The engine's HTTP/1.1 readers and writers, driven without sockets: limits while reading, smuggling, framing."""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field

import pytest

from sidecar.engine.http1 import (
    CHUNK_SLICE,
    LAST_CHUNK,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_REQUEST_LINE,
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


@dataclass
class Sink:
    heads: list[RequestHead | ResponseHead] = field(default_factory=list)
    bodies: list[bytearray] = field(default_factory=list)
    pieces: int = 0
    ends: int = 0

    def on_head(self, head: RequestHead | ResponseHead) -> None:
        self.heads.append(head)
        self.bodies.append(bytearray())

    def on_body(self, data: bytes) -> None:
        self.pieces += 1
        self.bodies[-1] += data

    def on_end(self) -> None:
        self.ends += 1


def read(data: bytes, step: int = 0) -> tuple[Sink, RequestReader]:
    sink = Sink()
    reader = RequestReader(sink)
    for i in range(0, len(data), step or len(data) or 1):
        reader.feed(data[i:i + (step or len(data))])
    return sink, reader


def refused(data: bytes, step: int = 0) -> tuple[int, Sink]:
    sink = Sink()
    reader = RequestReader(sink)
    with pytest.raises(ProtocolError) as info:
        for i in range(0, len(data), step or len(data)):
            reader.feed(data[i:i + (step or len(data))])
    with pytest.raises(ProtocolError):  # a refused reader stays refused
        reader.feed(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    return info.value.status, sink


GET = b"GET /a HTTP/1.1\r\nhost: reviews\r\n\r\n"

# --- limits while reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 7, 4096])
def test_request_line_over_8k_is_414(step: int) -> None:
    line = b"GET /" + b"a" * MAX_REQUEST_LINE + b" HTTP/1.1\r\nhost: a\r\n\r\n"
    assert refused(line, step)[0] == 414
    ok = b"GET /" + b"a" * (MAX_REQUEST_LINE - 20) + b" HTTP/1.1\r\nhost: a\r\n\r\n"
    assert len(read(ok, step)[0].heads) == 1


@pytest.mark.parametrize("step", [0, 1000, 65536])
def test_unterminated_request_line_is_414_before_the_head_limit(step: int) -> None:
    assert refused(b"GET /" + b"a" * (4 * MAX_HEAD), step)[0] == 414


@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"v" * MAX_HEAD + b"\r\n\r\n",  # one huge value
    b"GET / HTTP/1.1\r\nhost: a\r\n" + b"x-" + b"n" * MAX_HEAD + b": v\r\n\r\n",  # one huge name
    b"GET / HTTP/1.1\r\nhost: a\r\n" + b"".join(b"x%d: %s\r\n" % (i, b"v" * 1000) for i in range(70)) + b"\r\n",
    b"GET / HTTP/1.1\r\nhost: a\r\nx: " + b"v" * (4 * MAX_HEAD),  # never terminated
])
@pytest.mark.parametrize("step", [0, 1, 1500, 65536])
def test_head_over_68k_is_431(head: bytes, step: int) -> None:
    if step == 1 and len(head) > 100_000:
        head = head[:MAX_HEAD + 2000]  # byte-at-a-time is slow in Python; past the limit is what matters
    assert refused(head, step)[0] == 431


def test_more_than_100_fields_is_431_and_100_pass() -> None:
    fields = b"".join(b"x%d: v\r\n" % i for i in range(MAX_FIELDS - 1))
    assert len(read(b"GET / HTTP/1.1\r\nhost: a\r\n" + fields + b"\r\n")[0].heads) == 1
    assert refused(b"GET / HTTP/1.1\r\nhost: a\r\n" + fields + b"y: v\r\n\r\n")[0] == 431


def test_head_of_exactly_the_limit_passes() -> None:
    head = b"GET / HTTP/1.1\r\nhost: a\r\nx: "
    head += b"v" * (MAX_HEAD - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == MAX_HEAD
    for step in (0, 1000):
        assert len(read(head, step)[0].heads) == 1
    assert refused(head[:-4] + b"v\r\n\r\n")[0] == 431


def test_reader_holds_no_more_than_the_limit_while_a_header_grows() -> None:
    """The reader's own count, and the memory really allocated while 4 MiB of one header arrive."""
    piece = b"v" * 65536
    reader = RequestReader(Sink())
    reader.feed(b"GET / HTTP/1.1\r\nhost: a\r\nx: ")
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            for _ in range(64):
                reader.feed(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.status == 431
    assert reader.peak_held <= MAX_HEAD
    assert peak < 4 * MAX_HEAD  # httptools concatenates the field it reads: fed no further, it cannot grow


def test_slow_header_flood_is_bounded_by_count() -> None:
    sink, reader = Sink(), RequestReader(Sink())
    reader.feed(b"GET / HTTP/1.1\r\nhost: a\r\n")
    with pytest.raises(ProtocolError) as info:
        for i in range(10_000):
            reader.feed(b"x%d: v\r\n" % i)
    assert info.value.status == 431 and not sink.heads


# --- request smuggling ----------------------------------------------------------------------------------------

SMUGGLING = {
    "CL.TE": b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nX",
    "TE.CL": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 6\r\n\r\n0\r\n\r\nX",
    "two CL": b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 6\r\ncontent-length: 5\r\n\r\nhello!",
    "two equal CL": b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
    "CL with sign": b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +5\r\n\r\nhello",
    "CL list": b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5, 5\r\n\r\nhello",
    "TE gzip": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\nxx",
    "TE gzip, chunked": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "TE chunked twice": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked"
                        b"\r\n\r\n0\r\n\r\n",
    "TE xchunked": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE with space before colon": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
    "TE obs-fold": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "TE vertical tab": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "chunk size not hex": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk size negative": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk size overflow": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
                           b"10000000000000005\r\nhello\r\n0\r\n\r\n",
    "chunk size 0x": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size space": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk too long": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
    "chunk bare LF": b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "bare CR in a header": b"GET / HTTP/1.1\r\nhost: a\rx-smuggle: 1\r\n\r\n",
    "bare LF line ends": b"GET / HTTP/1.1\nhost: a\n\n",
    "bare CR in the request line": b"GET /a\rb HTTP/1.1\r\nhost: a\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x00b\r\n\r\n",
    "DEL in a value": b"GET / HTTP/1.1\r\nhost: a\r\nx: a\x7fb\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
    "Host vs absolute-form": b"GET http://a/ HTTP/1.1\r\nhost: b\r\n\r\n",
    "no Host in 1.1": b"GET / HTTP/1.1\r\nx: y\r\n\r\n",
    "space in the target": b"GET /a b HTTP/1.1\r\nhost: a\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "HTTP/2.0 over 1.1 framing": b"GET / HTTP/2.0\r\nhost: a\r\n\r\n",
    "escaped slash": b"GET /a%2Fb HTTP/1.1\r\nhost: a\r\n\r\n",
    "bad escape": b"GET /a%zz HTTP/1.1\r\nhost: a\r\n\r\n",
    "userinfo in absolute-form": b"GET http://u@a/ HTTP/1.1\r\nhost: a\r\n\r\n",
    "not http": b"GET ftp://a/ HTTP/1.1\r\nhost: a\r\n\r\n",
    "star with GET": b"GET * HTTP/1.1\r\nhost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
@pytest.mark.parametrize("step", [0, 1])
def test_smuggling_is_refused_and_never_yields_a_second_request(name: str, step: int) -> None:
    status, sink = refused(SMUGGLING[name] + GET, step)
    assert status in (400, 505), status
    # what was smuggled after it never became a request
    assert all(getattr(h, "target", None) != b"/a" for h in sink.heads)


def test_a_bad_chunk_fails_after_the_head_and_yields_no_end() -> None:
    status, sink = refused(SMUGGLING["chunk size not hex"])
    assert status == 400
    assert len(sink.heads) == 1 and sink.ends == 0  # the engine will abort what it began forwarding


# --- framing, keep-alive, normalisation -----------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 3, 1000])
def test_pipelined_messages_of_every_framing_in_any_pieces(step: int) -> None:
    stream = (b"GET /a/../b HTTP/1.1\r\nhost: x\r\n\r\n"
              b"POST http://y/z?q HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"
              b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n"
              b"0\r\ntrailer: t\r\n\r\n"
              b"GET /n HTTP/1.0\r\n\r\n")
    sink, _ = read(stream, step)
    assert [(h.method, h.target, h.framing) for h in sink.heads] == [  # type: ignore[union-attr]
        (b"GET", b"/b", "none"), (b"POST", b"/z?q", "length"), (b"POST", b"/", "chunked"), (b"GET", b"/n", "none")]
    assert [bytes(b) for b in sink.bodies] == [b"", b"abc", b"abcde", b""]
    assert sink.ends == 4
    second = sink.heads[1]
    assert isinstance(second, RequestHead) and second.host == "y" and second.header(b"host") == b"y"
    assert [h.keep_alive for h in sink.heads] == [True, True, True, False]  # HTTP/1.0 without keep-alive


def test_keep_alive_comes_from_inside_the_callback() -> None:
    """Read after parsing, httptools' verdict is about no message (NOTES.md); the head carries the real one."""
    sink, reader = read(GET + b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
                        + b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
    assert [h.keep_alive for h in sink.heads] == [True, True, False]
    assert reader._parser.should_keep_alive()  # what asking afterwards says of that `Connection: close` request
    with pytest.raises(ProtocolError):  # and nothing may follow a `Connection: close` request
        reader.feed(GET)


def test_body_is_streamed_in_pieces_not_held() -> None:
    size = 3 * 1024 * 1024
    sink = Sink()
    reader = RequestReader(sink)
    reader.feed(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % size)
    for _ in range(size // 65536):
        reader.feed(b"b" * 65536)
    assert sink.ends == 1 and len(sink.bodies[0]) == size and sink.pieces == size // 65536
    chunked = Sink()
    reader = RequestReader(chunked)
    reader.feed(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n")
    for _ in range(48):
        reader.feed(encode_chunk(b"c" * 65536))
    reader.feed(LAST_CHUNK)
    assert chunked.ends == 1 and len(chunked.bodies[0]) == 48 * 65536
    assert chunked.pieces >= 48 * 65536 // CHUNK_SLICE  # fed in slices: never one piece per whole body


def test_huge_trailers_are_bounded() -> None:
    reader = RequestReader(Sink())
    reader.feed(b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx: ")
    with pytest.raises(ProtocolError) as info:
        for _ in range(40):
            reader.feed(b"t" * 65536)
    assert info.value.status == 400


def test_upgrade_keeps_the_bytes_after_the_head() -> None:
    sink, reader = read(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nFRAME")
    head = sink.heads[0]
    assert isinstance(head, RequestHead) and head.upgrade and reader.upgraded == b"FRAME"
    reader.feed(b"MORE")
    assert reader.upgraded == b"FRAMEMORE"


# --- responses -----------------------------------------------------------------------------------------------


def response(data: bytes, step: int = 0, head_request: bool = False) -> tuple[Sink, ResponseReader]:
    sink = Sink()
    reader = ResponseReader(sink)
    reader.expect(head_request)
    for i in range(0, len(data), step or len(data)):
        reader.feed(data[i:i + (step or len(data))])
    return sink, reader


@pytest.mark.parametrize("step", [0, 1, 5])
def test_responses_interim_length_chunked(step: int) -> None:
    sink, reader = response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", step)
    assert [h.status for h in sink.heads] == [100, 200]  # type: ignore[union-attr]
    assert bytes(sink.bodies[1]) == b"ok" and reader.reusable
    sink, reader = response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", step)
    assert bytes(sink.bodies[0]) == b"ok" and sink.ends == 1 and reader.reusable


def test_close_delimited_response_ends_at_eof_and_is_not_reusable() -> None:
    sink, reader = response(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    assert sink.ends == 0
    reader.feed_eof()
    assert sink.ends == 1 and bytes(sink.bodies[0]) == b"until the end" and not reader.reusable


def test_truncated_response_is_an_error_at_eof() -> None:
    _, reader = response(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort")
    with pytest.raises(ProtocolError):
        reader.feed_eof()


def test_response_to_head_has_no_body_and_closes_the_connection() -> None:
    sink, reader = response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", head_request=True)
    assert sink.ends == 1 and not reader.reusable
    assert encode_response(sink.heads[0], framing="none").endswith(  # type: ignore[arg-type]
        b"content-length: 5\r\n\r\n")  # the length it names is passed on


def test_connection_close_response_is_not_reusable() -> None:
    _, reader = response(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
    assert not reader.reusable


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nxx",
    b"HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"x: y\r\n" * (MAX_FIELDS + 1) + b"\r\n",
    b"HTTP/1.1 200 OK\r\nx: " + b"y" * (MAX_HEAD + 10),
])
def test_bad_responses_are_refused(bad: bytes) -> None:
    with pytest.raises(ProtocolError):
        response(bad)


# --- writing -------------------------------------------------------------------------------------------------


def test_request_is_one_bytes_object_with_hop_by_hop_fields_dropped() -> None:
    sink, _ = read(b"POST /p HTTP/1.1\r\nhost: a\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\n"
                   b"keep-alive: 5\r\nte: trailers\r\nx-app: 2\r\ncontent-length: 3\r\n\r\nabc")
    head = sink.heads[0]
    assert isinstance(head, RequestHead)
    out = encode_request(head, b"abc")
    assert isinstance(out, bytes)
    assert out == b"POST /p HTTP/1.1\r\nhost: a\r\nx-app: 2\r\ncontent-length: 3\r\n\r\nabc"


def test_response_framing_is_rewritten_for_the_client() -> None:
    sink, _ = response(b"HTTP/1.1 200 OK\r\nx: 1\r\n\r\nbody")
    head = sink.heads[0]
    assert isinstance(head, ResponseHead) and head.framing == "close"
    assert encode_response(head, framing="chunked") == b"HTTP/1.1 200 OK\r\nx: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    assert encode_response(head, version=b"1.0") == b"HTTP/1.0 200 OK\r\nx: 1\r\nconnection: close\r\n\r\n"
    assert simple_response(503, b"no\n", close=True) == (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n"
        b"connection: close\r\n\r\nno\n")


def test_the_engine_imports_neither_meshctl_nor_mitmproxy() -> None:
    import subprocess
    import sys

    code = ("import sys, sidecar.engine.proxy, sidecar.engine.relay, sidecar.engine.pool, sidecar.engine.tls; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'meshctl', 'mitmproxy', 'OpenSSL', 'h11'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
