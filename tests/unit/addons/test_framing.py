"""Request-head limits while reading (addons.framing), driven through mitmproxy's real HTTP/1 server layer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import connection, options
from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.mode_specs import ProxyMode

from addons import framing
from tests.unit.fuzzing import examples

REFUSED: list[tuple[int, str]] = []


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    before = _http1.Http1Server.read_headers, _http1.Http1Server._handle_event
    framing.install(lambda client, status, reason: REFUSED.append((status, reason)))
    REFUSED.clear()
    yield
    _http1.Http1Server.read_headers, _http1.Http1Server._handle_event = before  # type: ignore[method-assign]


def server() -> tuple[_http1.Http1Server, connection.Client]:
    client = connection.Client(peername=("10.0.0.9", 1234), sockname=("10.0.0.1", 15006), timestamp_start=0,
                               proxy_mode=ProxyMode.parse("transparent@15006"))
    srv = _http1.Http1Server(context.Context(client, options.Options()))
    assert list(srv.handle_event(events.Start())) == []
    return srv, client


def feed(chunks: list[bytes]) -> tuple[_http1.Http1Server, list[commands.Command], int]:
    """Feed chunks until the server answers; returns the server, its commands and the largest buffer seen."""
    srv, client = server()
    out: list[commands.Command] = []
    peak = 0
    for chunk in chunks:
        out += list(srv.handle_event(events.DataReceived(client, chunk)))
        peak = max(peak, len(srv.buf))
        if any(isinstance(c, commands.CloseConnection) for c in out):
            break
    return srv, out, peak


def answer(out: list[commands.Command]) -> bytes:
    return b"".join(c.data for c in out if isinstance(c, commands.SendData))


def test_an_endless_request_line_is_refused_with_414_holding_at_most_the_limit() -> None:
    srv, out, peak = feed([b"GET /"] + [b"a" * 4096] * 40_000)  # a 160 MB request line, in 4 KiB reads
    assert answer(out).startswith(b"HTTP/1.1 414") and isinstance(out[-1], commands.CloseConnection)
    assert peak <= framing.MAX_REQUEST_LINE + 4096 and len(srv.buf) == 0
    assert REFUSED == [(414, "request line longer than 8 KiB")]


@pytest.mark.parametrize("chunk", [b"x-big: " + b"a" * 4089, b"x-h: v\r\n" * 512, b"a" * 65536])
def test_an_endless_head_is_refused_with_431(chunk: bytes) -> None:
    _, out, peak = feed([b"GET / HTTP/1.1\r\nHost: x\r\n"] + [chunk] * 20_000)
    assert answer(out).startswith(b"HTTP/1.1 431"), answer(out)[:80]
    assert peak <= framing.MAX_HEAD + len(chunk) and REFUSED and REFUSED[0][0] == 431


def test_one_huge_read_is_refused_before_it_is_parsed() -> None:
    _, out, _ = feed([b"GET / HTTP/1.1\r\nx-big: " + b"a" * 1_000_000 + b"\r\n\r\n"])
    assert answer(out).startswith(b"HTTP/1.1 431") and not any(
        type(c).__name__ == "ReceiveHttp" for c in out)  # no request ever reached the addons


def test_heads_within_the_limits_go_on_to_mitmproxy() -> None:
    head = b"GET /" + b"p" * 8000 + b" HTTP/1.1\r\nHost: x\r\n" + b"x-h: " + b"v" * 60_000 + b"\r\n\r\n"
    _, out, _ = feed([head[i:i + 1000] for i in range(0, len(head), 1000)])
    assert not REFUSED and any(type(c).__name__ == "ReceiveHttp" for c in out)


@given(st.lists(st.binary(min_size=1, max_size=9000), min_size=1, max_size=30))
@examples(200)
def test_the_buffer_never_outgrows_the_limit(chunks: list[bytes]) -> None:
    REFUSED.clear()
    _, _, peak = feed(chunks)
    assert peak <= framing.MAX_HEAD + 9000


@pytest.mark.parametrize("head, want", [
    (b"GET /" + b"a" * 9000, 414), (b"GET / HTTP/1.1\r\n" + b"x: y\r\n" * 12_000, 431),
    (b"GET / HTTP/1.1\r\n\r\n", None), (b"GET /" + b"a" * 100, None)])
def test_head_problem(head: bytes, want: int | None) -> None:
    problem = framing.head_problem(head)
    assert (problem[0] if problem else None) == want


# --- bytes held unparsed outside a head: mitmproxy reads without backpressure ---------------------------------

GET = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("first, chunk, status", [
    (b"", b"\r\n" * 32768, 431),  # blank lines ahead of a request line: mitmproxy drops one per read
    (b"", b"\n" * 65535, 431),
    (b"\r\n", b"\r\n\n" * 20000, 431),
    (GET, b"A" * 65535, 400),  # pipelined while the response is pending (mitmproxy's wait state)
    (GET, GET * 1000, 400),
    (CHUNKED + b"5;ext=", b"a" * 65535, 400),  # an endless chunk-size line
    (CHUNKED + b"0\r\n", b"x-t: " + b"a" * 65000 + b"\r\n", 400),  # endless trailers
])
def test_bytes_held_unparsed_in_any_state_are_bounded(first: bytes, chunk: bytes, status: int) -> None:
    srv, out, peak = feed([first] + [chunk] * 2000)  # ~130 MB if nothing stopped it
    assert peak <= framing.MAX_HEAD + len(chunk) and len(srv.buf) == 0
    list(srv.handle_event(events.DataReceived(srv.conn, chunk)))  # what arrives before the close lands
    assert len(srv.buf) == 0
    assert any(isinstance(c, commands.CloseConnection) for c in out)
    assert REFUSED and REFUSED[0][0] == status
    if status == 431:
        assert answer(out).startswith(b"HTTP/1.1 431")
    else:  # the request went on already: no second answer is written into the stream
        assert not answer(out)


def test_a_little_pipelining_and_a_chunked_body_still_pass() -> None:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in [b"a" * 60000] * 20) + b"0\r\n\r\n"
    _, out, _ = feed([CHUNKED] + [body[i:i + 65535] for i in range(0, len(body), 65535)] + [GET * 10])
    assert not REFUSED and not any(isinstance(c, commands.CloseConnection) for c in out)
