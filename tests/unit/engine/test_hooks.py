"""The engine's hook modules on the typed request context, driven without the capture listeners: the header
view, the buffered client, routing (rules, faults, retries, timeouts, pool limits, streaming), authorization
and JWT, telemetry and tracing. Upstreams are real local servers; no mitmproxy."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json

import pytest

from sidecar.endpoints import Endpoints
from sidecar.engine.authorize import Authorizer
from sidecar.engine.call import Call, Headers
from sidecar.engine.client import UpstreamError, fetch
from sidecar.engine.http1 import ResponseHead
from sidecar.engine.observe import Observer
from sidecar.engine.plan import INBOUND_PORT, L7Http
from sidecar.engine.pool import Pool
from sidecar.engine.proxy import Response, Route, Routed
from sidecar.engine.route import Router, upstream_request
from sidecar.engine.trace import Tracer
from sidecar.meters import Meters
from sidecar.spans import SpanStore
from tests.unit.engine.helpers import Origin, run
from tests.unit.fakes import REVIEWS, WEB, Live, call_to, endpoints_of, vs
from tests.unit.fakes import request_head as head
from tests.unit.jwtkit import P256, RULE, claims, sign

# --- the header view ---------------------------------------------------------------------------------------------


def test_headers_view_edits_the_heads_fields_like_mitmproxys_headers() -> None:
    fields = [(b"Host", b"a"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Cookie", b"k=v")]
    h = Headers(fields)
    assert h.get("x-a") == "1" and h.get_all("X-A") == ["1", "2"] and "HOST" in h and "nope" not in h
    h["x-a"] = "3"  # replaces the first, drops the rest, keeps the position and the name's spelling
    assert fields == [(b"Host", b"a"), (b"X-A", b"3"), (b"Cookie", b"k=v")]
    h.add("x-b", "4")
    h["x-c"] = "5"
    assert h.pop("cookie") == "k=v" and h.pop("cookie") is None
    del h["host"]
    with pytest.raises(KeyError):
        del h["host"]
    assert fields == [(b"X-A", b"3"), (b"x-b", b"4"), (b"x-c", b"5")]
    assert h.lower_dict() == {"x-a": "3", "x-b": "4", "x-c": "5"}


# --- the buffered client ------------------------------------------------------------------------------------------


def test_fetch_reads_whole_answers_reuses_the_connection_and_retries_a_dead_pooled_one() -> None:
    async def go() -> None:
        origin = await Origin(drop_after=2).start()
        pool = Pool(None, idle_timeout=30)
        key = (("127.0.0.1", origin.port), "")
        try:
            for target in (b"/a", b"/big/100000"):
                answer = await fetch(pool, key, upstream_request(head(target=target), b""))
                assert answer.status == 200
            assert len(answer.body) == 100000 and origin.connections == 1  # kept alive and reused
            # the origin closes its first connection on the third request: one more go on a new one
            answer = await fetch(pool, key, upstream_request(head(method=b"POST", target=b"/echo"), b"hello"))
            assert (answer.status, answer.body, origin.connections) == (200, b"hello", 2)
            head_answer = await fetch(pool, key, upstream_request(head(method=b"HEAD", target=b"/head"), b""),
                                      is_head=True)
            assert head_answer.body == b"" and (b"content-length", b"5") in head_answer.headers
        finally:
            pool.close()
            await origin.stop()
        with pytest.raises(UpstreamError) as failed:
            await fetch(Pool(None), key, upstream_request(head(), b""))
        assert failed.value.kind == "connect-failure"

    run(go())


# --- routing ------------------------------------------------------------------------------------------------------


def routed(live: Live, ports: dict[str, int]) -> tuple[Router, Endpoints]:
    """A router whose reviews pods are local origins: 127.0.0.x -> port."""
    endpoints = endpoints_of(live, {ip: ("reviews", host) for ip, host in (("127.0.0.2", "reviews-v1"),
                                                                           ("127.0.0.3", "reviews-v2"))
                                    if host in ports})
    return Router(live, endpoints, lambda: None), endpoints  # type: ignore[arg-type]


async def serve(router: Router, call: Call, port: int, body: bytes = b"") -> Response:
    decision = router.decide(call, L7Http(("127.0.0.2", port), REVIEWS))
    assert isinstance(decision, Routed)
    return await decision.serve(call, body)


def test_without_a_policy_the_connection_keeps_its_destination_and_with_one_requests_are_routed() -> None:
    plain, _ = routed(Live(), {"reviews-v1": 1})
    call = call_to(9080)
    assert plain.decide(call, L7Http(("127.0.0.2", 9080), REVIEWS)) == Route(("127.0.0.2", 9080), REVIEWS)
    assert plain.decide(call, L7Http(("10.9.9.9", 80), "")) == Route(("10.9.9.9", 80), "")  # outside the mesh
    router, _ = routed(Live(routes=vs([{"route": [{"destination": {"host": "reviews"}}]}])), {"reviews-v1": 1})
    assert isinstance(router.decide(call_to(9080), L7Http(("127.0.0.2", 9080), REVIEWS)), Routed)
    big = call_to(9080, head(method=b"POST", framing="chunked"))
    streamed = router.decide(big, L7Http(("127.0.0.2", 9080), REVIEWS))
    assert isinstance(streamed, Route) and streamed.pool is not None and big.route == {
        "host": "reviews", "subset": None, "attempts": 1}
    assert streamed.identity == ""  # the reviews pods are DISABLE here: plaintext


def test_rules_faults_header_operations_and_subsets() -> None:
    async def go() -> None:
        v1, v2 = await Origin().start(host="127.0.0.2"), await Origin().start(host="127.0.0.3")
        rules = vs([
            {"match": [{"uri": {"prefix": "/fault"}}], "fault": {"abort": {"httpStatus": 418}},
             "route": [{"destination": {"host": "reviews"}}]},
            {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": v2.port}},
                        "headers": {"request": {"set": {"x-route": "v2"}}, "response": {"add": {"x-seen": "1"}}}}]},
            {"match": [{"uri": {"exact": "/only"}}], "route": [{"destination": {"host": "reviews", "subset": "v1",
                                                                                 "port": {"number": v1.port}}}]},
        ])
        router, _ = routed(Live(routes=rules), {"reviews-v1": v1.port, "reviews-v2": v2.port})
        try:
            call = call_to(v1.port, head(target=b"/fault"))
            reply = await serve(router, call, v1.port)
            assert (reply.status, call.flags) == (418, "FI") and not v1.requests
            call = call_to(v1.port, head(target=b"/nowhere"))
            reply = await serve(router, call, v1.port)
            assert (reply.status, call.flags) == (404, "NR")
            call = call_to(v1.port, head(headers=[(b"host", b"reviews"), (b"end-user", b"jason")]))
            reply = await serve(router, call, v1.port)
            assert reply.status == 200 and call.upstream == ("127.0.0.3", v2.port) and not v1.requests
            assert (b"x-route", b"v2") in v2.requests[-1].headers
            answer = ResponseHead(200, b"OK", b"1.1", [], True, "length", 2)
            assert call.edit_response is not None
            call.edit_response(answer)
            assert answer.headers == [(b"x-seen", b"1")]
            call = call_to(v1.port, head(target=b"/only"))
            assert (await serve(router, call, v1.port)).status == 200 and call.route == {
                "host": "reviews", "subset": "v1", "attempts": 1}
        finally:
            await v1.stop()
            await v2.stop()

    run(go())


def test_retries_move_to_another_endpoint_and_timeouts_answer_504() -> None:
    async def go() -> None:
        origin = await Origin().start(host="127.0.0.2")
        hung = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.2", 0)
        hung_port = hung.sockets[0].getsockname()[1]
        rules = vs([{"match": [{"uri": {"exact": "/slow"}}], "timeout": "0.2s",
                     "route": [{"destination": {"host": "reviews", "port": {"number": hung_port}}}]},
                    {"retries": {"attempts": 3, "retryOn": "connect-failure"},
                     "route": [{"destination": {"host": "reviews", "port": {"number": origin.port}}}]}])
        # 127.0.0.3 has no server on the origin's port: a connect failure, then the retry goes to 127.0.0.2
        live = Live(routes=rules, destinations=[{"name": "reviews-dr", "host": "reviews",
                                                 "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}])
        router, _ = routed(live, {"reviews-v1": 1, "reviews-v2": 1})
        try:
            attempts = set()
            for _ in range(4):
                call = call_to(origin.port)
                reply = await serve(router, call, origin.port)
                assert reply.status == 200 and call.upstream == ("127.0.0.2", origin.port)
                assert call.route is not None
                attempts.add(call.route["attempts"])
            assert 2 in attempts  # round robin sent some first to the dead one
            call = call_to(origin.port, head(target=b"/slow"))
            started = asyncio.get_running_loop().time()
            reply = await serve(router, call, origin.port)
            assert (reply.status, call.flags) == (504, "UT")
            assert asyncio.get_running_loop().time() - started < 2
        finally:
            hung.close()
            await origin.stop()

    run(go())


def test_connection_pool_limits_refuse_the_overflow_with_uo() -> None:
    async def go() -> None:
        hung = await asyncio.start_server(lambda r, w: asyncio.sleep(30), "127.0.0.2", 0)
        port = hung.sockets[0].getsockname()[1]
        live = Live(routes=vs([{"timeout": "1s", "route": [{"destination": {"host": "reviews"}}]}]),
                    destinations=[{"name": "dr", "host": "reviews", "trafficPolicy": {"connectionPool": {
                        "tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1}}}}])
        router, _ = routed(live, {"reviews-v1": 1})
        calls = [call_to(port) for _ in range(3)]
        try:
            replies = await asyncio.gather(*(serve(router, c, port) for c in calls))
        finally:
            hung.close()
        assert sorted((r.status, c.flags) for r, c in zip(replies, calls, strict=True)) == [
            (503, "UO"), (504, "UT"), (504, "UT")]

    run(go())


# --- authorization and JWT ----------------------------------------------------------------------------------------


DENY_ADMIN = [{"name": "deny-admin", "action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}]


def test_authorization_denies_with_rbac_allows_the_rest_and_judges_tcp_once() -> None:
    live = Live(authorization=[*DENY_ADMIN, {"name": "only-web", "action": "ALLOW", "rules": [
        {"from": [{"source": {"principals": ["cluster.local/ns/p/sa/web"]}}]}]}])
    authz = Authorizer(live)  # type: ignore[arg-type]
    denied = call_to(9080, head(target=b"/admin/x"), INBOUND_PORT, WEB)
    refusal = authz.request(denied)
    assert refusal is not None and refusal.status == 403 and denied.flags == "RBAC"
    assert b"deny-admin" in refusal.body
    assert authz.request(call_to(9080, head(), INBOUND_PORT, WEB)) is None
    stranger = call_to(9080, head(), INBOUND_PORT, "spiffe://cluster.local/ns/p/sa/other")
    assert authz.request(stranger) is not None and stranger.flags == "RBAC"
    plaintext = call_to(9080, head(), INBOUND_PORT, None)
    assert authz.request(plaintext) is not None
    info = call_to(5432, listener=INBOUND_PORT, tls_peer=WEB, live=live).conn
    assert info is not None and "deny-admin" in (authz.tcp_gate(info) or "")  # an HTTP-only DENY denies all TCP
    # judged on the connection's snapshot (the new one, when a config change judges open connections again)
    changed = Live(authorization=list(live.current.authorization[1:])).current
    assert authz.tcp_gate(dataclasses.replace(info, snapshot=changed)) is None
    assert "deny-admin" in (authz.tcp_gate(info) or "")  # whatever live.current is
    other = call_to(5432, listener=INBOUND_PORT, tls_peer=None, live=live).conn
    assert other is not None and "no rule" in (authz.tcp_gate(dataclasses.replace(other, snapshot=changed)) or "")


def test_jwt_rejects_bad_tokens_with_401_and_strips_a_verified_one() -> None:
    live = Live(jwt=[RULE], authorization=[{"name": "need-jwt", "action": "ALLOW", "rules": [
        {"from": [{"source": {"requestPrincipals": ["*"]}}]}]}])
    authz = Authorizer(live)  # type: ignore[arg-type]
    token = sign(P256, "ES256", claims(), kid="p256")
    good = call_to(9080, head(target=b"/a?keep=1", headers=[(b"host", b"web"), (b"authorization",
                                                                                  b"Bearer " + token.encode())]),
                   INBOUND_PORT, WEB)
    assert authz.request(good) is None
    assert good.headers.get("authorization") is None and good.target == "/a?keep=1"
    bad = call_to(9080, head(headers=[(b"host", b"web"), (b"authorization", b"Bearer " + token.encode() + b"x")]),
                  INBOUND_PORT, WEB)
    refusal = authz.request(bad)
    assert refusal is not None and refusal.status == 401 and bad.flags == "UAEX"
    assert (b"www-authenticate", b'Bearer error="invalid_token"') in refusal.headers
    missing = call_to(9080, head(), INBOUND_PORT, WEB)
    refusal = authz.request(missing)
    assert refusal is not None and refusal.status == 403


# --- telemetry and tracing ----------------------------------------------------------------------------------------


def test_telemetry_logs_istios_fields_and_counts_requests_and_tcp() -> None:
    live = Live()
    endpoints = endpoints_of(live, {"127.0.0.2": ("reviews", "reviews-v1")})
    out = io.StringIO()
    meters = Meters(out)
    observer = Observer(live, endpoints, meters)  # type: ignore[arg-type]
    call = call_to(9080, head(target=b"/r?q=1"))
    call.upstream, call.upstream_identity, call.route = ("127.0.0.2", 9080), REVIEWS, {"host": "reviews"}
    call.request_bytes, call.response_bytes = 3, 5
    call.finish(200)
    observer.request_done(call)
    entry = json.loads(out.getvalue())
    assert entry | {"time": 0, "duration_ms": 0} == entry | {
        "time": 0, "duration_ms": 0, "direction": "outbound", "method": "GET", "path": "/r?q=1", "status": 200,
        "protocol": "HTTP/1.1", "bytes_received": 3, "bytes_sent": 5, "source": WEB, "destination": REVIEWS,
        "destination_service": "reviews", "destination_workload": "reviews-v1", "destination_version": "v1",
        "upstream": "127.0.0.2:9080", "mtls": True, "flags": "-", "route": {"host": "reviews"}}
    sample = meters.registry.get_sample_value("istio_requests_total", {
        "reporter": "source", "destination_service": "reviews.p.svc.cluster.local", "response_code": "200",
        "response_flags": "-", "connection_security_policy": "mutual_tls", "request_protocol": "http",
        "source_workload": "web", "source_workload_namespace": "p", "source_app": "web", "source_version": "v1",
        "source_principal": WEB, "source_canonical_service": "web", "source_canonical_revision": "v1",
        "source_cluster": "compose", "destination_service_name": "reviews", "destination_service_namespace": "p",
        "destination_app": "reviews", "destination_workload": "reviews-v1", "destination_workload_namespace": "p",
        "destination_version": "v1", "destination_principal": REVIEWS, "destination_canonical_service": "reviews",
        "destination_canonical_revision": "v1", "destination_cluster": "compose", "grpc_response_status": ""})
    assert sample == 1.0
    unanswered = call_to(9080)
    unanswered.finish(0)
    observer.request_done(unanswered)
    assert json.loads(out.getvalue().splitlines()[-1])["flags"] == "UF"
    info = call_to(5432, listener=INBOUND_PORT, tls_peer=REVIEWS).conn
    assert info is not None
    conn = observer.tcp_opened(info, ("127.0.0.1", 5432), "")
    observer.tcp_closed(conn, 10, 20)
    labels = {"reporter": "destination", "source_principal": REVIEWS, "connection_security_policy": "mutual_tls"}
    found = {s.name: s.value for m in meters.registry.collect() for s in m.samples
             if s.name.startswith("istio_tcp") and all(s.labels.get(k) == v for k, v in labels.items())}
    assert found == {"istio_tcp_connections_opened_total": 1.0, "istio_tcp_connections_closed_total": 1.0,
                     "istio_tcp_sent_bytes_total": 20.0, "istio_tcp_received_bytes_total": 10.0}


def test_tracing_continues_the_callers_trace_and_records_a_span() -> None:
    live = Live()
    endpoints = endpoints_of(live, {})
    observer = Observer(live, endpoints, Meters(io.StringIO()))  # type: ignore[arg-type]
    store = SpanStore(live)  # type: ignore[arg-type]
    tracer = Tracer(live, observer, store)  # type: ignore[arg-type]
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    call = call_to(9080, head(headers=[(b"host", b"web"), (b"traceparent", f"00-{trace}-{parent}-01".encode())]),
                   INBOUND_PORT, WEB)
    tracer.request(call)
    sent = call.headers.get("traceparent") or ""
    assert sent.startswith(f"00-{trace}-") and parent not in sent and call.headers.get("x-b3-traceid") == trace
    assert call.headers.get("x-request-id")
    call.finish(503, "UC")
    tracer.done(call)
    (span,) = store.recent()
    assert (span["traceId"], span["parentId"], span["kind"]) == (trace, parent, "SERVER")
    assert span["tags"]["response_flags"] == "UC" and span["tags"]["error"] == "503"
    unsampled = call_to(9080, head(headers=[(b"host", b"web"), (b"traceparent", f"00-{trace}-{parent}-00".encode())]))
    tracer.request(unsampled)
    unsampled.finish(200)
    tracer.done(unsampled)
    assert len(store.recent()) == 1
