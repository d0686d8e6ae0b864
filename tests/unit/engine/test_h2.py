"""The HTTP/2 path against a real gRPC server and client (grpcio): streams, trailers, flow control, resets, the
proxy's own gRPC answers, and the router's decisions per stream (retries on gRPC statuses, timeouts, grpc-timeout,
header matches, faults). The proxy runs on its own event loop in a thread; grpcio's blocking client calls it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from sidecar.engine import h2proxy
from sidecar.engine.call import Call
from sidecar.engine.h2pool import H2Pool
from sidecar.engine.h2proxy import H2Decide, H2Proxy
from sidecar.engine.observe import Observer
from sidecar.engine.plan import L7H2
from sidecar.engine.proxy import Response, Route
from sidecar.engine.route import Router
from sidecar.engine.trace import Tracer
from sidecar.meters import Meters
from sidecar.spans import SpanStore
from tests.unit.fakes import REVIEWS, Live, endpoints_of, vs

Handler = Callable[[bytes, grpc.ServicerContext], bytes]


class Upstream:
    """A grpcio server on 127.0.0.x: demo.Echo/{Hello,Slow,Fail,Big}; records what it was sent."""

    def __init__(self, host: str, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, str]] = []
        self.failures: dict[str, int] = {}  # x-key -> UNAVAILABLE answers still to give
        self.cancelled = threading.Event()
        self.server = grpc.server(concurrent.futures.ThreadPoolExecutor(16),
                                  options=[("grpc.max_receive_message_length", 8 << 20)])
        methods = {"Hello": self.hello, "Slow": self.slow, "Fail": self.fail, "Big": self.big, "Nap": self.nap}
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "demo.Echo", {k: grpc.unary_unary_rpc_method_handler(v) for k, v in methods.items()})])
        self.port = self.server.add_insecure_port(f"{host}:0")
        self.server.start()

    def _meta(self, context: grpc.ServicerContext) -> dict[str, str]:
        meta = {k: str(v) for k, v in context.invocation_metadata()}
        self.seen.append(meta)
        return meta

    def hello(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._meta(context)
        context.set_trailing_metadata((("x-served-by", self.name),))
        return self.name.encode() + b":" + request

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._meta(context)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if not context.is_active():
                self.cancelled.set()
                return b""
            time.sleep(0.01)
        return b"slow"

    def nap(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(0.5)
        return b"rested"

    def fail(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        meta = self._meta(context)
        key = meta.get("x-key", "")
        left = self.failures.get(key, 0)
        if left:
            self.failures[key] = left - 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return b"ok"

    def big(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._meta(context)
        return request[::-1]

    def stop(self) -> None:
        self.server.stop(0)


class Harness:
    """The proxy on a loop in a thread, listening on 127.0.0.1; `decide` is set per test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.calls: list[Call] = []
        self.decide: H2Decide = lambda call: Response(500, b"no decision")
        self.pool = H2Pool(lambda: None)
        self.proxy = H2Proxy(self.pool, path_mode=lambda: "merge_slashes", on_done=self.calls.append)
        self.server = self.run(self.loop.create_server(lambda: self.proxy.connection(self._decide, None),
                                                       "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}",
                                             options=[("grpc.max_receive_message_length", 8 << 20)])

    def _decide(self, call: Call) -> Any:
        return self.decide(call)

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def unary(self, method: str, request: bytes = b"hi", **kwargs: Any) -> tuple[bytes, Any]:
        stub = self.channel.unary_unary(method)
        return stub.with_call(request, **kwargs)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.channel.close()
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.pool.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    v1, v2 = Upstream("127.0.0.2", "v1"), Upstream("127.0.0.3", "v2")
    yield v1, v2
    v1.stop()
    v2.stop()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def wait_calls(h: Harness, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(h.calls) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(h.calls) >= n


def to(upstream: Upstream) -> H2Decide:
    route = Route(("127.0.0.2" if upstream.name == "v1" else "127.0.0.3", upstream.port))
    return lambda call: route


# --- passing through --------------------------------------------------------------------------------------------

def test_a_unary_call_passes_through_with_its_trailers_and_is_recorded_as_grpc(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    reply, call = h.unary("/demo.Echo/Hello", b"ping", metadata=(("x-a", "1"),))
    assert reply == b"v1:ping"
    assert ("x-served-by", "v1") in call.trailing_metadata()
    assert v1.seen[-1]["x-a"] == "1"
    wait_calls(h, 1)
    recorded = h.calls[-1]
    assert (recorded.protocol, recorded.grpc_status, recorded.status, recorded.flags) == ("grpc", 0, 200, "-")
    assert recorded.path == "/demo.Echo/Hello" and recorded.head.version == b"2"
    assert recorded.request_bytes > 0 and recorded.response_bytes > 0


def test_many_concurrent_calls_share_one_upstream_connection(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    stub = h.channel.unary_unary("/demo.Echo/Hello")
    futures = [stub.future(b"%d" % i) for i in range(200)]
    assert [f.result(10) for f in futures] == [b"v1:%d" % i for i in range(200)]
    assert h.pool.connects == 1


def test_large_messages_pass_both_ways_under_flow_control(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    payload = bytes(range(256)) * (12 * 1024)  # 3 MiB: many windows' worth
    stub = h.channel.unary_unary("/demo.Echo/Big")
    futures = [stub.future(payload) for _ in range(3)]
    assert all(f.result(20) == payload[::-1] for f in futures)


def test_an_upstream_status_passes_through(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    v1.failures["k1"] = 1
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Fail", metadata=(("x-key", "k1"),))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_calls(h, 1)
    assert h.calls[-1].grpc_status == 14


def test_a_client_deadline_resets_the_upstream_stream(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    v1.cancelled.clear()
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Slow", timeout=0.3)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    assert v1.cancelled.wait(3)  # the upstream saw its stream cancelled, not left running
    wait_calls(h, 1)
    # the client's reset (DC), or, when it loses the race, the upstream's own DEADLINE_EXCEEDED (grpc-timeout is
    # passed on, and the server enforces it too) forwarded first
    call = h.calls[-1]
    assert call.flags == "DC" or (call.flags == "-" and call.grpc_status == 4), (call.flags, call.grpc_status)


@pytest.mark.parametrize(("response", "code"), [
    (Response(403, b"meshctl: RBAC: access denied\n"), grpc.StatusCode.PERMISSION_DENIED),
    (Response(401, b"meshctl: JWT rejected\n"), grpc.StatusCode.UNAUTHENTICATED),
    (Response(404, b"meshctl: no route\n"), grpc.StatusCode.UNIMPLEMENTED),
    (Response(503, b"meshctl: no upstream\n"), grpc.StatusCode.UNAVAILABLE),
    (Response(504, b"meshctl: upstream request timeout\n"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (Response(200, b"fault filter abort", ((b"grpc-status", b"8"),)), grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_the_proxys_own_answers_are_grpc_statuses(h: Harness, response: Response, code: grpc.StatusCode) -> None:
    h.decide = lambda call: response
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Hello")
    assert raised.value.code() == code
    wait_calls(h, 1)
    assert h.calls[-1].grpc_status == code.value[0]


def test_an_unreachable_upstream_is_unavailable_with_uf(h: Harness) -> None:
    h.decide = lambda call: Route(("127.0.0.1", 1))
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Hello")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_calls(h, 1)
    assert h.calls[-1].flags == "UF"


def test_drain_lets_streams_in_flight_finish_then_closes_the_connection(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    assert h.unary("/demo.Echo/Hello")[0] == b"v1:hi"
    pending = h.channel.unary_unary("/demo.Echo/Nap").future(b"")
    time.sleep(0.2)
    h.loop.call_soon_threadsafe(h.proxy.drain)
    assert pending.result(5) == b"rested"
    deadline = time.monotonic() + 5
    while h.proxy.open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.proxy.open == 0


def test_bodies_are_kept_for_tap_only_when_asked_and_bounded(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    h.unary("/demo.Echo/Hello", b"abcdefghij")
    wait_calls(h, 1)
    assert h.calls[-1].request_body is None and h.calls[-1].response_body is None
    h.proxy.on_start = lambda call: setattr(call, "capture", 8)  # what a --bodies tap session does
    h.unary("/demo.Echo/Hello", b"abcdefghij")
    wait_calls(h, 2)
    call = h.calls[-1]
    assert bytes(call.request_body or b"") == b"\x00\x00\x00\x00\x0aabc"  # 5-byte prefix, message, cut at 8
    assert bytes(call.response_body or b"") == b"\x00\x00\x00\x00\x0dv1:"
    assert call.response_fields is not None and call.response_fields[0] == (b":status", b"200")


def test_connections_past_the_cap_are_closed_at_once(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    h.proxy.max_connections = 0
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Hello", timeout=2)
    assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert h.proxy.refused >= 1 and h.proxy.open == 0


def test_an_idle_connection_is_told_goaway_and_closed(h: Harness, upstreams: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    v1, _ = upstreams
    h.decide = to(v1)
    monkeypatch.setattr(h2proxy, "IDLE_TIMEOUT_S", 0.3)
    assert h.unary("/demo.Echo/Hello")[0] == b"v1:hi"
    assert h.proxy.open == 1
    deadline = time.monotonic() + 5
    while h.proxy.open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.proxy.open == 0
    assert h.unary("/demo.Echo/Hello")[0] == b"v1:hi"  # the client reconnects as it would after any GOAWAY


def test_each_call_is_a_span_and_the_trace_reaches_the_upstream(h: Harness, upstreams: Any) -> None:
    v1, _ = upstreams
    live = Live()
    observer = Observer(live, endpoints_of(live, {}), Meters(io.StringIO()))  # type: ignore[arg-type]
    store = SpanStore(live)  # type: ignore[arg-type]
    tracer = Tracer(live, observer, store)  # type: ignore[arg-type]
    route = to(v1)

    def traced(call: Call) -> Any:
        tracer.request(call)
        return route(call)

    def done(call: Call) -> None:
        tracer.done(call)
        h.calls.append(call)

    h.decide = traced
    h.proxy.on_done = done
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    h.unary("/demo.Echo/Hello", metadata=(("traceparent", f"00-{trace}-00f067aa0ba902b7-01"),))
    v1.failures["t"] = 1
    with pytest.raises(grpc.RpcError):
        h.unary("/demo.Echo/Fail", metadata=(("x-key", "t"),))
    wait_calls(h, 2)
    spans = store.recent()
    assert [s["name"] for s in spans] == ["POST /demo.Echo/Hello", "POST /demo.Echo/Fail"]
    assert spans[0]["traceId"] == trace and spans[0]["tags"]["grpc.status_code"] == "0"
    assert "error" not in spans[0]["tags"]
    assert spans[1]["tags"]["grpc.status_code"] == "14" and spans[1]["tags"]["error"] == "grpc-status 14"
    assert v1.seen[-2]["traceparent"].startswith(f"00-{trace}-")  # the upstream continues the trace


# --- the router per stream ---------------------------------------------------------------------------------------

def router_for(h: Harness, upstreams: tuple[Upstream, Upstream], http: list[dict[str, Any]],
               destinations: list[dict[str, Any]] | None = None) -> None:
    live = Live(routes=vs(http), destinations=destinations or [
        {"name": "reviews-dr", "host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                             {"name": "v2", "labels": {"version": "v2"}}]}])
    endpoints = endpoints_of(live, {"127.0.0.2": ("reviews", "reviews-v1"), "127.0.0.3": ("reviews", "reviews-v2")})
    router = Router(live, endpoints, lambda: None)  # type: ignore[arg-type]
    plan = L7H2(("127.0.0.2", upstreams[0].port), REVIEWS)
    h.decide = lambda call: router.decide_h2(call, plan)


def port_of(upstreams: tuple[Upstream, Upstream], subset: str) -> dict[str, int]:
    return {"number": upstreams[0 if subset == "v1" else 1].port}


def test_routes_by_method_header_and_weight(h: Harness, upstreams: Any) -> None:
    dest = {s: {"host": "reviews", "subset": s, "port": port_of(upstreams, s)} for s in ("v1", "v2")}
    router_for(h, upstreams, [
        {"match": [{"headers": {"x-canary": {"exact": "yes"}}}], "route": [{"destination": dest["v2"]}]},
        {"match": [{"uri": {"regex": "/demo\\.Echo/Big"}}], "route": [{"destination": dest["v2"]}]},
        {"match": [{"uri": {"exact": "/demo.Echo/Hello"}}],
         "route": [{"destination": dest["v1"], "weight": 90}, {"destination": dest["v2"], "weight": 10}]},
    ])
    assert h.unary("/demo.Echo/Hello", metadata=(("x-canary", "yes"),))[0] == b"v2:hi"
    assert h.unary("/demo.Echo/Big", b"ab")[0] == b"ba" and upstreams[1].seen[-1]
    answers = [h.unary("/demo.Echo/Hello")[0] for _ in range(200)]
    share = answers.count(b"v2:hi") / len(answers)
    assert 0.02 <= share <= 0.22, share  # 10% by weight
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Fail")  # no rule matches: 404 NR, told as UNIMPLEMENTED
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_retries_on_unavailable_only_when_retry_on_says_so(h: Harness, upstreams: Any) -> None:
    v1 = upstreams[0]
    dest = {"host": "reviews", "subset": "v1", "port": port_of(upstreams, "v1")}
    router_for(h, upstreams, [
        {"match": [{"headers": {"x-policy": {"exact": "retry"}}}], "route": [{"destination": dest}],
         "retries": {"attempts": 3, "retryOn": "unavailable"}},
        {"route": [{"destination": dest}], "retries": {"attempts": 3, "retryOn": "internal"}},
    ])
    v1.failures["r"] = 2
    assert h.unary("/demo.Echo/Fail", metadata=(("x-key", "r"), ("x-policy", "retry")))[0] == b"ok"
    wait_calls(h, 1)
    assert h.calls[-1].route is not None and h.calls[-1].route["attempts"] == 3
    assert h.calls[-1].flags == "-"
    v1.failures["n"] = 1
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Fail", metadata=(("x-key", "n"),))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_route_timeout_and_grpc_timeout_end_a_slow_call_with_ut(h: Harness, upstreams: Any) -> None:
    dest = {"host": "reviews", "subset": "v1", "port": port_of(upstreams, "v1")}
    router_for(h, upstreams, [
        {"match": [{"headers": {"x-timeout": {"exact": "route"}}}], "route": [{"destination": dest}],
         "timeout": "0.3s"},
        {"route": [{"destination": dest}]},
    ])
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Slow", metadata=(("x-timeout", "route"),))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    wait_calls(h, 1)
    assert h.calls[-1].flags == "UT"
    # grpc-timeout alone (no route timeout): the proxy gives up when the caller would
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Slow", timeout=0.4)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2


def test_faults_and_header_operations(h: Harness, upstreams: Any) -> None:
    dest = {"host": "reviews", "subset": "v1", "port": port_of(upstreams, "v1")}
    router_for(h, upstreams, [
        {"match": [{"uri": {"prefix": "/demo.Echo/Fail"}}], "route": [{"destination": dest}],
         "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}},
        {"route": [{"destination": dest, "headers": {"request": {"set": {"x-route": "v1"}},
                                                     "response": {"add": {"x-seen": "1"}}}}]},
    ])
    with pytest.raises(grpc.RpcError) as raised:
        h.unary("/demo.Echo/Fail")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_calls(h, 1)
    assert (h.calls[-1].flags, h.calls[-1].grpc_status) == ("FI", 14)
    reply, call = h.unary("/demo.Echo/Hello")
    assert reply == b"v1:hi" and upstreams[0].seen[-1]["x-route"] == "v1"
    assert ("x-seen", "1") in call.initial_metadata()
