"""The tap's sidecar side: what a session asks for, the redaction (as an attacker would probe it), the hub's
bounds, the bodies the forward path keeps, and the stream on the admin port (host only)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from sidecar import admin
from sidecar.engine import tap
from sidecar.engine.call import Call
from sidecar.engine.plan import INBOUND_PORT, OUTBOUND_PORT, ConnectionInfo
from sidecar.engine.pool import Pool
from sidecar.engine.proxy import Listener, Response, Route, Routed
from sidecar.engine.tap import MASK, TapError, TapHub, TapSpec
from tests.unit.engine.helpers import TD, Origin, Pki, connect, make_pki, read_response, request, run, wait_for
from tests.unit.fakes import request_head

SECRET = "s3cr3t-T0ken-value"
CALLER = f"{TD}/productpage"


def call(target: str = "/api/x", method: str = "GET", headers: list[tuple[str, str]] | None = None,
         listener: int = INBOUND_PORT, status: int = 200, response: list[tuple[str, str]] | None = None,
         tls_peer: str | None = CALLER) -> Call:
    fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or [("host", "web")]]
    info = ConnectionInfo(listener, ("10.0.0.2", 9080), ("10.0.0.9", 4000), None, None,  # type: ignore[arg-type]
                          tls_peer=tls_peer)
    c = Call(info, request_head(method=method.encode(), target=target.encode("latin-1"), headers=fields))
    if response is not None:
        c.response_fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response]
    c.upstream = ("10.0.0.3", 9080)
    c.upstream_identity = f"{TD}/reviews"
    c.finish(status)
    return c


def records(session: tap.TapSession) -> list[dict[str, Any]]:
    return [json.loads(x) for x in session.take().splitlines()]


def offered(c: Call, **spec: Any) -> dict[str, Any]:
    hub = TapHub()
    session = hub.open(TapSpec.parse(**spec), "test")
    hub.offer(c)
    [rec] = records(session)
    return rec


# --- what a session asks for ----------------------------------------------------------------------------------


def test_spec_round_trips_through_the_query() -> None:
    spec = TapSpec.parse("/api", "get,Post", "5xx,404", 1024, False, 10, 2.5)
    assert spec.methods == ("GET", "POST") and spec.statuses == ("5xx", "404")
    assert TapSpec.from_query(spec.query()) == spec
    assert TapSpec.from_query("") == TapSpec()
    assert TapSpec.from_query(TapSpec().query()) == TapSpec()


@pytest.mark.parametrize("query", [
    "status=6xx", "status=abc", "method=G%20T", "path=api", "path=/a%0d%0ab", "bodies=65537", "bodies=-1",
    "max=-1", "duration=nan", "duration=inf", "duration=99999", "redact=no", "colour=red", "max=1&max=2",
    "max=x", "nonsense", "a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8",
])
def test_bad_queries_are_refused_with_a_reason(query: str) -> None:
    with pytest.raises(TapError) as refused:
        TapSpec.from_query(query)
    assert refused.value.status == 400 and str(refused.value)


def test_filters_on_method_path_and_status() -> None:
    spec = TapSpec.parse("/api", "POST", "5xx,404")
    assert spec.matches(call("/api/x", "POST", status=503))
    assert spec.matches(call("/api?q=1", "POST", status=404))
    assert not spec.matches(call("/api/x", "GET", status=503))
    assert not spec.matches(call("/other", "POST", status=503))
    assert not spec.matches(call("/api/x", "POST", status=200))
    assert not spec.matches(call("/api/x", "POST", status=0))  # no response: no status class
    assert not spec.matches(call("/x/api", "POST", status=500))  # a prefix, not a substring
    assert TapSpec().matches(call(status=0))


# --- redaction ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["authorization", "AUTHORIZATION", "Authorization", "aUtHoRiZaTiOn",
                                  "proxy-authorization", "Proxy-Authorization", "cookie", "COOKIE", "Cookie"])
def test_request_credentials_are_redacted_in_any_case(name: str) -> None:
    rec = offered(call(headers=[("host", "web"), (name, f"Bearer {SECRET}")]))
    assert [name, MASK] in rec["request_headers"]
    assert SECRET not in json.dumps(rec)


def test_every_repetition_and_both_directions_are_redacted() -> None:
    c = call(headers=[("host", "web"), ("Cookie", f"a=1; session={SECRET}"), ("cookie", "theme=dark-mode-x"),
                      ("Authorization", f"Basic {SECRET}A"), ("authorization", f"Bearer {SECRET}B")],
             response=[("Set-Cookie", f"sid={SECRET}C; Path=/; HttpOnly"), ("SET-COOKIE", f"other={SECRET}D"),
                       ("content-type", "text/plain")])
    rec = offered(c)
    text = json.dumps(rec)
    assert SECRET not in text and "dark-mode-x" not in text
    assert [v for k, v in rec["request_headers"] if k.lower() in ("cookie", "authorization")] == [MASK] * 4
    assert [v for k, v in rec["response_headers"] if k.lower() == "set-cookie"] == [MASK] * 2
    assert ["content-type", "text/plain"] in rec["response_headers"]


def test_no_redact_shows_the_values() -> None:
    c = call(headers=[("host", "web"), ("Authorization", f"Bearer {SECRET}")], response=[("set-cookie", SECRET)])
    rec = offered(c, redact=False)
    assert ["Authorization", f"Bearer {SECRET}"] in rec["request_headers"]
    assert ["set-cookie", SECRET] in rec["response_headers"]


def test_secrets_echoed_elsewhere_are_masked_too() -> None:
    """An echo server reflects the caller's token in a header and its body; the request body carries the
    response's cookie back: none of it leaves the sidecar."""
    c = call(headers=[("host", "web"), ("authorization", f"Bearer {SECRET}"), ("x-note", f"was {SECRET}C")],
             response=[("x-echo-auth", f"Bearer {SECRET}"), ("set-cookie", f"sid={SECRET}C; Path=/")])
    c.request_body = bytearray(f"cookie was {SECRET}C".encode())
    c.response_body = bytearray(json.dumps({"headers": {"Authorization": f"Bearer {SECRET}"}}).encode())
    c.request_bytes, c.response_bytes = len(c.request_body), len(c.response_body)
    rec = offered(c, bodies=4096)
    assert SECRET not in json.dumps(rec)
    assert rec["request_body"]["data"] == f"cookie was {MASK}"
    assert ["x-echo-auth", MASK] in rec["response_headers"] and ["x-note", f"was {MASK}"] in rec["request_headers"]


def test_a_cut_body_never_ends_in_the_start_of_a_secret() -> None:
    body = b"x" * 20 + f"Bearer {SECRET}".encode()
    for limit in range(20, len(body)):
        c = call(headers=[("host", "web"), ("authorization", f"Bearer {SECRET}")])
        c.request_body, c.request_bytes = bytearray(body), len(body)
        rec = offered(c, bodies=limit)
        data = rec["request_body"]["data"]
        assert rec["request_body"]["truncated"]
        assert not any(SECRET[:n] in data for n in range(2, len(SECRET) + 1)), (limit, data)


def test_binary_bodies_travel_as_base64_and_are_bounded() -> None:
    c = call()
    blob = bytes(range(255, -1, -1)) * 4
    c.request_body, c.request_bytes = bytearray(blob), len(blob)
    rec = offered(c, bodies=100)
    assert rec["request_body"]["encoding"] == "base64" and rec["request_body"]["truncated"]
    assert base64.b64decode(rec["request_body"]["data"]) == blob[:100]
    assert rec["response_body"] == {"encoding": "utf-8", "data": "", "truncated": False}
    assert "request_body" not in offered(call())  # no bodies unless asked


def test_keep_appends_only_what_fits() -> None:
    body = tap.keep(None, b"abc", 5)
    body = tap.keep(body, b"defgh", 5)
    assert body == b"abcde"
    assert tap.keep(body, b"more", 5) == b"abcde"


# --- the record -----------------------------------------------------------------------------------------------


def test_record_fields_both_directions() -> None:
    inbound = offered(call(response=[]))
    assert inbound["direction"] == "inbound" and inbound["peer"] == CALLER
    assert inbound["peer_address"] == "10.0.0.9:4000" and inbound["protocol"] == "HTTP/1.1"
    assert inbound["method"] == "GET" and inbound["path"] == "/api/x" and inbound["status"] == 200
    assert inbound["response_headers"] == [] and "grpc_status" not in inbound
    outbound = offered(call(listener=OUTBOUND_PORT, tls_peer=None))
    assert outbound["direction"] == "outbound" and outbound["peer"] == f"{TD}/reviews"
    assert outbound["peer_address"] == "10.0.0.3:9080" and outbound["response_headers"] is None
    plaintext = offered(call(tls_peer=None))
    assert plaintext["peer"] == ""


def test_http2_calls_are_recorded_alike() -> None:
    c = call(listener=OUTBOUND_PORT)
    c.head.version = b"2"
    assert offered(c)["protocol"] == "HTTP/2"


@pytest.mark.skipif(not hasattr(Call, "grpc_status"), reason="the gRPC path is not in this tree yet")
def test_a_grpc_status_is_recorded() -> None:
    c = call(listener=OUTBOUND_PORT)
    c.grpc_status = 14
    assert offered(c)["grpc_status"] == 14


# --- the hub --------------------------------------------------------------------------------------------------


def test_no_session_costs_nothing_and_keeps_nothing() -> None:
    hub = TapHub()
    assert not hub.sessions
    c = call()
    hub.begin(c)
    assert c.capture == 0
    hub.offer(c)  # nobody listens: nothing is built


def test_bodies_are_kept_only_for_calls_a_bodies_session_may_want() -> None:
    hub = TapHub()
    hub.open(TapSpec.parse("/api", bodies=100), "a")
    hub.open(TapSpec.parse(bodies=0), "b")
    wanted, other = call("/api/x"), call("/static/x")
    hub.begin(wanted)
    hub.begin(other)
    assert wanted.capture == 100 and other.capture == 0 and hub.capturing == 1
    hub.offer(wanted)
    hub.offer(wanted)  # counted once
    assert hub.capturing == 0


def test_at_most_max_capturing_calls_keep_bodies() -> None:
    hub = TapHub()
    hub.open(TapSpec.parse(bodies=10), "a")
    calls = [call() for _ in range(tap.MAX_CAPTURING + 5)]
    for c in calls:
        hub.begin(c)
    assert sum(1 for c in calls if c.capture) == tap.MAX_CAPTURING


def test_sessions_are_bounded_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    hub = TapHub()
    caplog.set_level("INFO", "meshctl.tap")
    sessions = [hub.open(TapSpec(), f"172.18.0.{i}") for i in range(tap.MAX_SESSIONS)]
    with pytest.raises(TapError) as busy:
        hub.open(TapSpec(), "172.18.0.99")
    assert busy.value.status == 503
    hub.close(sessions[0], "client went away")
    hub.open(TapSpec(), "172.18.0.99")
    text = caplog.text
    assert "tap session 1 opened by 172.18.0.0: path=*" in text and "redact=on" in text
    assert "tap session 1 closed (client went away) after" in text and "0 records, 0 dropped" in text
    assert "tap refused to 172.18.0.99" in text


def test_a_slow_reader_loses_records_and_they_are_counted() -> None:
    hub = TapHub()
    session = hub.open(TapSpec(), "slow")
    for _ in range(tap.QUEUE_RECORDS + 10):
        hub.offer(call())
    assert len(session.queue) == tap.QUEUE_RECORDS and session.dropped == 10
    big = call(headers=[("host", "web"), ("x-big", "x" * 60000)])
    session.take()
    for _ in range(100):
        hub.offer(big)
    assert session.queued_bytes <= tap.QUEUE_BYTES and session.dropped > 10


def test_max_records_per_session() -> None:
    hub = TapHub()
    session = hub.open(TapSpec.parse(max_records=3), "a")
    for _ in range(5):
        hub.offer(call())
    assert session.records == 3 and session.full and session.dropped == 0


# --- bodies on the forward path -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_forward_path_keeps_bounded_bodies_and_the_response_head(pki: Pki) -> None:
    hub = TapHub()
    hub.open(TapSpec.parse(bodies=8), "test")
    done: list[Call] = []

    async def routed(c: Call, body: bytes) -> Response:
        return Response(201, b"routed answer", ((b"x-routed", b"1"),))

    async def go() -> None:
        origin = await Origin().start(pki.reviews[1])

        def decide(c: Call) -> Route | Response | Routed:
            hub.begin(c)
            if c.head.target == b"/deny":
                return Response(403, b"denied by policy\n", ((b"x-why", b"rbac"),))
            if c.head.target == b"/routed":
                return Routed(routed)
            return Route(("127.0.0.1", origin.port), f"{TD}/reviews")

        def on_done(c: Call) -> None:
            done.append(c)
            hub.offer(c)

        listener = Listener(decide, Pool(pki.client[0]), on_done=on_done)
        srv = await listener.start("127.0.0.1", 0)
        try:
            reader, writer = await connect(srv.sockets[0].getsockname()[1])
            for target, body in ((b"/echo", b"0123456789abcdef"), (b"/routed", b"request-body"), (b"/deny", None)):
                writer.write(request(method=b"POST" if body else b"GET", target=target, body=body))
                await read_response(reader)
            await wait_for(lambda: len(done) == 3)
        finally:
            srv.close()
            await origin.stop()

    run(go())
    echo, routed_call, denied = done
    assert echo.request_body == b"01234567" and echo.response_body == b"01234567"
    assert echo.request_bytes == echo.response_bytes == 16
    assert echo.response_fields is not None and any(k == b"content-length" for k, _ in echo.response_fields)
    assert routed_call.request_body == b"request-" and routed_call.response_body == b"routed a"
    assert (b"x-routed", b"1") in (routed_call.response_fields or [])
    assert denied.response_body == b"denied b" and denied.response_fields == [(b"x-why", b"rbac")]
    assert hub.capturing == 0


# --- the stream on the admin port ------------------------------------------------------------------------------


@asynccontextmanager
async def admin_port(hub: TapHub, host_peers: frozenset[str] = frozenset({"127.0.0.1"})) -> AsyncIterator[int]:
    async def stream(query: str, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await tap.serve(hub, query, peer, reader, writer)

    server = await admin.serve("127.0.0.1", 0, {}, host_peers, {"/tap": stream})
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def get(port: int, target: str, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {target} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
    return reader, writer


async def lines(reader: asyncio.StreamReader) -> list[dict[str, Any]]:
    """Every JSON line of a chunked NDJSON body, until its last chunk."""
    await reader.readuntil(b"\r\n\r\n")
    out = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            return out
        data = await reader.readexactly(size + 2)
        out += [json.loads(x) for x in data[:-2].splitlines()]


def test_tap_streams_until_max_and_logs_the_session(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "meshctl.tap")
    hub = TapHub(lambda: ("shop.web", f"{TD}/web"))

    async def go() -> list[dict[str, Any]]:
        async with admin_port(hub) as port:
            reader, _ = await get(port, "/tap?max=2&status=2xx")
            await wait_for(lambda: bool(hub.sessions))
            for status in (500, 200, 404, 201, 200):
                hub.offer(call(status=status))
            got = await lines(reader)
            await wait_for(lambda: not hub.sessions)
            return got

    got = run(go())
    assert [x["type"] for x in got] == ["start", "call", "call", "end"]
    assert got[0]["proxy"] == "shop.web" and [x["status"] for x in got[1:3]] == [200, 201]
    assert got[-1]["reason"] == "max reached" and got[-1]["records"] == 2
    assert "opened by 127.0.0.1: path=* method=* status=2xx" in caplog.text
    assert "closed (max reached)" in caplog.text and "2 records, 0 dropped" in caplog.text


def test_tap_ends_at_its_duration_and_when_the_client_goes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", "meshctl.tap")
    hub = TapHub()

    async def go() -> list[dict[str, Any]]:
        async with admin_port(hub) as port:
            reader, _ = await get(port, "/tap?duration=0.3")
            got = await lines(reader)
            _, writer = await get(port, "/tap")
            await wait_for(lambda: bool(hub.sessions))
            writer.close()
            await wait_for(lambda: not hub.sessions)
            return got

    got = run(go())
    assert got[-1]["type"] == "end" and got[-1]["reason"] == "duration reached"
    assert "closed (client went away)" in caplog.text


def test_tap_refuses_bad_queries_a_fifth_session_and_other_containers() -> None:
    hub = TapHub()

    async def status_of(port: int, target: str, source: str = "127.0.0.1") -> tuple[int, str]:
        reader, _ = await get(port, target, source)
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.read()
        return int(head.split()[1]), body.decode()

    async def go() -> None:
        async with admin_port(hub, frozenset({"127.0.0.3"})) as port:  # .3 plays the host's gateway
            assert (await status_of(port, "/tap?status=6xx", source="127.0.0.3"))[0] == 400
            # another container is refused, and so is the pod's own app (loopback), unlike for /spans
            for source in ("127.0.0.2", "127.0.0.1"):
                code, text = await status_of(port, "/tap", source=source)
                assert code == 403 and "only the host" in text and not hub.sessions
            opened = [await get(port, "/tap", source="127.0.0.3") for _ in range(tap.MAX_SESSIONS)]
            await wait_for(lambda: len(hub.sessions) == tap.MAX_SESSIONS)
            code, text = await status_of(port, "/tap", source="127.0.0.3")
            assert code == 503 and "4 tap sessions" in text
            for _, writer in opened:
                writer.close()
            await wait_for(lambda: not hub.sessions)

    run(go())
