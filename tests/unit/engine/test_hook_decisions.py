"""The routing, telemetry and tracing hooks' decisions on a typed request context, without sockets: what
test_hooks.py leaves to real local servers (or does not reach) is decided here on fakes.

Routing: fault aborts (HTTP and gRPC), cookies and query parameters as matches read them, consistent-hash keys
(and the cookie Envoy mints), pods that have gone, streamed requests, cluster reuse across snapshots, compiled
rule policies, the retry loop (retries, their budget, per-try and overall timeouts, overflow, no instance) on a
fake exchange, and mirroring on a fake fetch. Telemetry and tracing: sampling, tags, and failures that never
reach the request.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sidecar.engine import route as route_module
from sidecar.engine import trace as trace_module
from sidecar.engine.call import Call, Headers
from sidecar.engine.client import Answer, UpstreamError
from sidecar.engine.h2proxy import H2Routed
from sidecar.engine.http1 import ResponseHead
from sidecar.engine.observe import Observer, outcome_flags
from sidecar.engine.plan import INBOUND_PORT, L7H2, L7Http
from sidecar.engine.pool import Key
from sidecar.engine.proxy import Response, Route, Routed
from sidecar.engine.route import (
    DEFAULT_RETRY,
    Cluster,
    Router,
    _then_edit,
    abort_response,
    cookie,
    query,
)
from sidecar.engine.trace import Tracer
from sidecar.meters import Meters
from sidecar.policy import ClusterPolicy, RetryPolicy
from sidecar.spans import SpanStore
from tests.unit.engine.helpers import run
from tests.unit.fakes import REVIEWS, WEB, Live, call_to, endpoints_of, request_head, vs

V1, V2 = "10.0.0.21", "10.0.0.22"  # the reviews pods (never dialled: the exchange is a fake)
SUBSETS = [{"name": "reviews-dr", "host": "reviews", "subsets": [
    {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}]


def router_for(live: Live, pods: dict[str, str] | None = None) -> Router:
    table = {ip: ("reviews", host) for ip, host in (pods or {V1: "reviews-v1", V2: "reviews-v2"}).items()}
    return Router(live, endpoints_of(live, table), lambda: None)  # type: ignore[arg-type]


def policy(spec: dict[str, Any]) -> ClusterPolicy:
    return ClusterPolicy.from_spec(spec)


# --- pure pieces -------------------------------------------------------------------------------------------------


def test_a_fault_abort_answers_an_http_status_or_a_grpc_one_on_http_200() -> None:
    http = abort_response({"httpStatus": 418})
    assert (http.status, http.body) == (418, b"fault filter abort")
    grpc = abort_response({"grpcStatus": "UNAVAILABLE"})
    assert grpc.status == 200 and (b"grpc-status", b"14") in grpc.headers
    assert (b"content-type", b"application/grpc") in grpc.headers
    assert (b"grpc-status", b"4") in abort_response({"grpcStatus": 4}).headers  # by number too
    assert (b"grpc-status", b"2") in abort_response({"grpcStatus": "NO_SUCH"}).headers  # UNKNOWN, never a crash


def test_cookies_and_query_parameters_are_read_as_matches_read_them() -> None:
    headers = Headers([(b"Cookie", b"a=1; user=jason"), (b"cookie", b"b=2;user=other")])
    assert (cookie(headers, "user"), cookie(headers, "b"), cookie(headers, "nope")) == ("jason", "2", None)
    assert cookie(Headers([]), "user") is None
    assert query("/p?a=1&a=2&b=&c=%20x") == {"a": "1", "b": "", "c": " x"}  # the first of a repeated name
    assert query("/p") == {} and query("/p?") == {}


def test_response_header_edits_chain_in_the_order_they_were_decided() -> None:
    call = call_to(9080)
    _then_edit(call, lambda h: h.add("x-first", "1"))
    _then_edit(call, lambda h: h.add("x-second", "2"))
    head = ResponseHead(200, b"OK", b"1.1", [(b"x-first", b"0")], True, "length", 0)
    assert call.edit_response is not None
    call.edit_response(head)
    assert head.headers == [(b"x-first", b"0"), (b"x-first", b"1"), (b"x-second", b"2")]


# --- consistent hashing ------------------------------------------------------------------------------------------


def hash_policy(consistent: dict[str, Any]) -> ClusterPolicy:
    return policy({"loadBalancer": {"consistentHash": consistent}})


def test_the_hash_key_is_the_header_the_cookie_or_the_source_address() -> None:
    call = call_to(9080, request_head(headers=[(b"host", b"reviews"), (b"x-user", b"jason"),
                                               (b"cookie", b"session=abc")]))
    assert Router._hash_key(call, hash_policy({"httpHeaderName": "X-User"})) == "jason"
    assert Router._hash_key(call, hash_policy({"httpCookie": {"name": "session", "ttl": "60s"}})) == "abc"
    assert call.edit_response is None  # the client has its cookie: nothing to set
    assert Router._hash_key(call, hash_policy({"useSourceIp": True})) == "127.0.0.9"
    assert Router._hash_key(call, policy({})) is None
    assert Router._hash_key(call_to(9080), hash_policy({"httpCookie": {"name": "session"}})) is None  # no ttl: no mint


def test_a_missing_hash_cookie_with_a_ttl_is_minted_and_set_on_the_response() -> None:
    call = call_to(9080)
    minted = Router._hash_key(call, hash_policy({"httpCookie": {"name": "session", "ttl": "90s", "path": "/shop"}}))
    assert minted is not None and len(minted) == 32
    head = ResponseHead(200, b"OK", b"1.1", [], True, "length", 0)
    assert call.edit_response is not None
    call.edit_response(head)
    assert head.headers == [(b"set-cookie", f"session={minted}; Max-Age=90; Path=/shop".encode())]


# --- which requests are routed -----------------------------------------------------------------------------------


def test_a_pod_that_has_gone_is_routed_to_its_services_other_pods_even_without_a_policy() -> None:
    router = router_for(Live(), {V2: "reviews-v2"})
    gone = "10.0.0.99"
    call = call_to(9080)
    assert router.decide(call, L7Http((gone, 9080), REVIEWS)) == Route((gone, 9080), REVIEWS)  # unknown: as it was
    v1 = next(e for e in endpoints_of(router.live, {V1: ("reviews", "reviews-v1")}).by_ip.values())  # type: ignore[arg-type]
    router.endpoints.departed[gone] = (v1, time.monotonic())
    assert isinstance(router.decide(call, L7Http((gone, 9080), REVIEWS)), Routed)
    assert isinstance(router.decide_h2(call, L7H2((gone, 9080), REVIEWS)), H2Routed)
    router.endpoints.departed[gone] = (v1, time.monotonic() - 3600)  # long gone: an outside address now
    assert router.decide(call, L7Http((gone, 9080), REVIEWS)) == Route((gone, 9080), REVIEWS)


def test_http2_without_a_policy_or_an_identity_keeps_its_destination() -> None:
    router = router_for(Live())
    assert router.decide_h2(call_to(9080), L7H2((V1, 9080), REVIEWS)) == Route((V1, 9080), REVIEWS)
    assert router.decide_h2(call_to(9080), L7H2(("10.9.9.9", 80), "")) == Route(("10.9.9.9", 80), "")
    routed = router_for(Live(routes=vs([{"route": [{"destination": {"host": "reviews"}}]}])))
    assert isinstance(routed.decide_h2(call_to(9080), L7H2((V1, 9080), REVIEWS)), H2Routed)


def streamed(method: bytes = b"GET", target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None) -> Call:
    return call_to(9080, request_head(method, target, headers, upgrade=True))


def test_a_streamed_request_is_sent_to_one_chosen_endpoint_or_answered_nr_or_uh() -> None:
    rules = vs([{"match": [{"uri": {"prefix": "/ws"}}],
                 "route": [{"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9443}}}]},
                {"match": [{"uri": {"prefix": "/none"}}],
                 "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 0}]}])
    router = router_for(Live(routes=rules, destinations=SUBSETS), {V1: "reviews-v1", V2: "reviews-v2"})
    call = streamed(target=b"/ws/chat")
    decision = router.decide(call, L7Http((V1, 9080), REVIEWS))
    assert isinstance(decision, Route) and decision.address == (V2, 9443) and decision.pool is not None
    assert decision.identity == "" and call.route == {"host": "reviews", "subset": "v2", "attempts": 1}
    unmatched = streamed(target=b"/elsewhere")
    answer = router.decide(unmatched, L7Http((V1, 9080), REVIEWS))
    assert isinstance(answer, Response) and (answer.status, unmatched.flags) == (404, "NR")
    unpicked = streamed(target=b"/none")
    answer = router.decide(unpicked, L7Http((V1, 9080), REVIEWS))
    assert isinstance(answer, Response) and (answer.status, unpicked.flags) == (503, "NR")
    no_pod = router_for(Live(routes=rules, destinations=SUBSETS), {V1: "reviews-v1"})
    call = streamed(target=b"/ws")
    answer = no_pod.decide(call, L7Http((V1, 9080), REVIEWS))
    assert isinstance(answer, Response) and (answer.status, call.flags) == (503, "UH")
    assert b"reviews subset v2" in answer.body
    implied = router_for(Live(destinations=SUBSETS), {V2: "reviews-v2"})  # a DestinationRule, no VirtualService
    call = streamed(target=b"/anything")
    decision = implied.decide(call, L7Http((V2, 9080), REVIEWS))
    assert isinstance(decision, Route) and decision.address == (V2, 9080) and call.route == {
        "host": "reviews", "subset": None, "attempts": 1}


def test_a_delay_fault_holds_the_request_then_routes_it_and_an_unpicked_route_is_nr() -> None:
    rules = vs([{"match": [{"uri": {"prefix": "/slow"}}],
                 "fault": {"delay": {"fixedDelay": "0.05s", "percentage": {"value": 100}},
                           "abort": {"httpStatus": 500, "percentage": {"value": 0}}},
                 "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
                {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 0}]}])
    router = router_for(Live(routes=rules, destinations=SUBSETS))
    snap = router.live.current
    slow = call_to(9080, request_head(target=b"/slow"))
    started = time.monotonic()
    prepared = run(router._prepare(slow, snap, "reviews", 9080))
    assert time.monotonic() - started >= 0.05 and slow.flags == "DI"  # delayed, never aborted (0 %)
    assert isinstance(prepared, tuple) and prepared[1] == {"host": "reviews", "subset": "v2"}
    other = call_to(9080)
    prepared = run(router._prepare(other, snap, "reviews", 9080))
    assert isinstance(prepared, Response) and (prepared.status, other.flags) == (503, "NR")


# --- clusters and compiled policies ------------------------------------------------------------------------------


def dr(max_connections: int) -> list[dict[str, Any]]:
    return [{"name": "reviews-dr", "host": "reviews",
             "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": max_connections}}}}]


def test_a_cluster_is_kept_across_snapshots_until_its_own_policy_changes() -> None:
    first = Live(destinations=dr(5)).current
    router = router_for(Live())
    cluster = router._cluster(first, "reviews", None)
    assert router._cluster(first, "reviews", None) is cluster and cluster.policy.max_connections == 5
    same_policy = Live(hash="h2", destinations=dr(5), routes=vs([])).current
    assert router._cluster(same_policy, "reviews", None) is cluster  # another change: connections kept
    closed: list[bool] = []
    cluster.pool.close = lambda: closed.append(True)  # type: ignore[method-assign]
    changed = Live(hash="h3", destinations=dr(7)).current
    fresh = router._cluster(changed, "reviews", None)
    assert fresh is not cluster and fresh.policy.max_connections == 7 and closed == [True]
    assert router._cluster(changed, "reviews", "v1") is not fresh  # one cluster per subset


def test_connection_slots_queue_overflow_and_pass_on_a_slot_handed_to_a_cancelled_waiter() -> None:
    async def go() -> None:
        cluster = Cluster(policy({"connectionPool": {"tcp": {"maxConnections": 1},
                                                      "http": {"http1MaxPendingRequests": 2}}}), lambda: None)
        await cluster.slot()
        first, second = asyncio.ensure_future(cluster.slot()), asyncio.ensure_future(cluster.slot())
        await asyncio.sleep(0)
        assert len(cluster.waiters) == 2
        with pytest.raises(UpstreamError) as overflow:
            await cluster.slot()
        assert overflow.value.kind == "overflow"
        first.cancel()  # cancelled while waiting: it leaves the queue
        await asyncio.gather(first, return_exceptions=True)
        assert len(cluster.waiters) == 1
        cluster.free()  # handed to the second waiter...
        second.cancel()  # ...which is cancelled before it runs: the slot is passed on, not lost
        await asyncio.gather(second, return_exceptions=True)
        assert (cluster.active, len(cluster.waiters)) == (0, 0)
        await asyncio.wait_for(cluster.slot(), 1)

    run(go())


def test_a_rules_retries_and_timeout_are_compiled_once_per_snapshot() -> None:
    rule = {"retries": {"attempts": 5, "perTryTimeout": "0.5s", "retryOn": "5xx"}, "timeout": "2s"}
    router = router_for(Live())
    snap = Live().current
    assert router._rule_policy(snap, {"route": []}) == (DEFAULT_RETRY, None)  # Istio's defaults
    retry, timeout = router._rule_policy(snap, rule)
    assert (retry.attempts, retry.per_try_timeout, retry.conditions, timeout) == (5, 0.5, frozenset({"5xx"}), 2.0)
    assert router._rule_policy(snap, rule)[0] is retry  # read once, not per request
    assert router._rule_policy(Live(hash="h2").current, rule)[0] is not retry  # a new snapshot: read again


# --- the retry loop, on a fake exchange --------------------------------------------------------------------------


class Reply:
    """An upstream's answer as the retry loop judges it."""

    def __init__(self, status: int, grpc_status: int | None = None) -> None:
        self.status, self.grpc_status, self.discarded = status, grpc_status, False

    def discard(self) -> None:
        self.discarded = True


Step = Reply | Exception | float  # an answer, a failure to raise, or seconds to hang


def exchange(steps: list[Step], seen: list[str]) -> Callable[[Cluster, Key], Awaitable[Reply]]:
    """Each attempt takes the next step; `seen` gets the endpoint each attempt went to."""
    async def attempt(cluster: Cluster, key: Key) -> Reply:
        seen.append(key[0][0])
        step = steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, float):
            await asyncio.sleep(step)
            raise AssertionError("a hung attempt must have been timed out")
        return step

    return attempt


def attempts(router: Router, steps: list[Step], retry: RetryPolicy, timeout: float | None = None,
             subset: str | None = None) -> tuple[Reply | Response, Call, list[str]]:
    call, seen = call_to(9080), []  # type: ignore[var-annotated]
    snap = router.live.current
    result = run(router._attempts(call, snap, "reviews", subset, 9080, retry, timeout, exchange(steps, seen)))
    return result, call, seen


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_module, "backoff", lambda attempt: 0.0)


def test_a_retriable_answer_is_retried_on_another_endpoint_and_discarded() -> None:
    first, second = Reply(503), Reply(200)
    result, call, seen = attempts(router_for(Live()), [first, second], RetryPolicy.from_spec({"retryOn": "5xx"}))
    assert result is second and first.discarded and not second.discarded
    assert len(set(seen)) == 2 and call.upstream == (seen[1], 9080)
    assert call.route == {"host": "reviews", "subset": None, "attempts": 2} and call.flags == "-"


def test_when_every_attempt_fails_the_last_answer_is_given_with_urx() -> None:
    replies = [Reply(503), Reply(503), Reply(503)]
    result, call, seen = attempts(router_for(Live()), list(replies), RetryPolicy.from_spec({"attempts": 2,
                                                                                          "retryOn": "5xx"}))
    assert result is replies[2] and len(seen) == 3 and call.flags == "URX"
    assert [r.discarded for r in replies] == [True, True, False]


def test_failures_without_an_answer_become_envoys_responses() -> None:
    connect = RetryPolicy.from_spec({"attempts": 1, "retryOn": "connect-failure"})
    result, call, _ = attempts(router_for(Live()), [UpstreamError("connect-failure", "refused")] * 2, connect)
    assert isinstance(result, Response) and (result.status, call.flags) == (503, "URX")
    assert call.error == "refused"
    result, call, _ = attempts(router_for(Live()), [UpstreamError("reset", "reset by peer")],
                               RetryPolicy.from_spec({"attempts": 0}))
    assert isinstance(result, Response) and (result.status, call.flags) == (503, "UC")
    result, call, seen = attempts(router_for(Live()), [UpstreamError("overflow", "pool full"), Reply(200)], connect)
    assert isinstance(result, Response) and (result.status, call.flags, len(seen)) == (503, "UO", 1)  # never retried


def test_a_grpc_status_on_http_200_is_retried_when_retry_on_names_it() -> None:
    result, call, seen = attempts(router_for(Live()), [Reply(200, 14), Reply(200, 0)],
                                  RetryPolicy.from_spec({"retryOn": "unavailable"}))
    assert isinstance(result, Reply) and result.grpc_status == 0 and len(seen) == 2 and call.flags == "-"
    result, call, seen = attempts(router_for(Live()), [Reply(200, 14)], RetryPolicy.from_spec({"retryOn": "5xx"}))
    assert isinstance(result, Reply) and result.grpc_status == 14 and len(seen) == 1


def test_the_clusters_retry_budget_stops_retries() -> None:
    live = Live(destinations=[{"name": "dr", "host": "reviews",
                               "trafficPolicy": {"connectionPool": {"http": {"maxRetries": 0}}}}])
    first = Reply(503)
    result, call, seen = attempts(router_for(live), [first, Reply(200)], RetryPolicy.from_spec({"retryOn": "5xx"}))
    assert result is first and len(seen) == 1 and call.flags == "-"  # the budget is spent: the answer as it was


def test_a_per_try_timeout_is_retried_and_the_routes_timeout_ends_the_request() -> None:
    per_try = RetryPolicy.from_spec({"attempts": 1, "perTryTimeout": "0.05s", "retryOn": "5xx"})
    result, call, seen = attempts(router_for(Live()), [5.0, Reply(200)], per_try)
    assert isinstance(result, Reply) and result.status == 200 and len(seen) == 2
    started = time.monotonic()
    result, call, seen = attempts(router_for(Live()), [5.0, Reply(200)], RetryPolicy.from_spec({"retryOn": "5xx"}),
                                  timeout=0.05)
    assert isinstance(result, Response) and (result.status, call.flags, len(seen)) == (504, "UT", 1)
    assert time.monotonic() - started < 2


def test_a_subset_without_instances_is_looked_up_again_then_answered_uh(monkeypatch: pytest.MonkeyPatch) -> None:
    router = router_for(Live(destinations=SUBSETS), {V1: "reviews-v1"})
    refreshed: list[bool] = []

    async def refresh() -> None:  # the endpoint table's DNS lookup, answered by a fake
        refreshed.append(True)

    monkeypatch.setattr(router.endpoints, "refresh", refresh)
    result, call, seen = attempts(router, [Reply(200)], DEFAULT_RETRY, subset="v2")
    assert isinstance(result, Response) and (result.status, call.flags) == (503, "UH")
    assert refreshed == [True] and seen == []


# --- mirroring, on a fake fetch ----------------------------------------------------------------------------------


def test_a_mirrored_request_goes_to_the_shadow_host_and_its_failure_never_reaches_the_caller(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, bytes]] = []

    async def fetch(pool: Any, key: Key, request: bytes, is_head: bool = False, max_requests: int = 0) -> Answer:
        sent.append((key[0][0], request))
        if b"-shadow" in request:
            raise UpstreamError("connect-failure", "the shadow is down")
        return Answer(200, b"OK", [(b"content-length", b"2")], b"ok")

    monkeypatch.setattr(route_module, "fetch", fetch)
    rules = vs([{"route": [{"destination": {"host": "reviews", "subset": "v1"}}],
                 "mirror": {"host": "reviews", "subset": "v2"}, "mirrorPercentage": {"value": 100}}])
    router = router_for(Live(routes=rules, destinations=SUBSETS))
    call = call_to(9080, request_head(method=b"POST", target=b"/r", headers=[(b"host", b"reviews:9080")]))

    async def go() -> Response:
        decision = router.decide(call, L7Http((V1, 9080), REVIEWS))
        assert isinstance(decision, Routed)
        reply = await decision.serve(call, b"body")
        await asyncio.gather(*router.mirrors)
        return reply

    reply = run(go())
    assert (reply.status, reply.body, call.upstream) == (200, b"ok", (V1, 9080))
    [(shadow_ip, shadow)] = [(ip, r) for ip, r in sent if b"-shadow" in r]
    assert shadow_ip == V2 and b"host: reviews-shadow:9080\r\n" in shadow and shadow.endswith(b"\r\n\r\nbody")
    assert not router.mirrors


def test_mirrors_beyond_the_limit_are_dropped_and_a_mirror_without_instances_is_not_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_module, "MIRROR_LIMIT", 0)
    router = router_for(Live(destinations=SUBSETS))
    snap = router.live.current
    router._mirror(call_to(9080), b"", snap, {"host": "reviews", "subset": "v2"}, "reviews", 9080)
    assert not router.mirrors  # no loop is even needed: nothing was started
    monkeypatch.setattr(route_module, "MIRROR_LIMIT", 10)
    router._mirror(call_to(9080), b"", snap, {"host": "reviews", "subset": "v3"}, "reviews", 9080)
    assert not router.mirrors


# --- telemetry -----------------------------------------------------------------------------------------------------


def test_a_request_refused_before_it_was_whole_is_logged_with_its_peer_and_no_request_id() -> None:
    live = Live()
    out = io.StringIO()
    observer = Observer(live, endpoints_of(live, {}), Meters(out))  # type: ignore[arg-type]
    call = call_to(9080, request_head(method=b"", target=b"", headers=[(b"x-request-id", b"abc")]),
                   listener=INBOUND_PORT, tls_peer=WEB)
    call.reason = "header too large"
    call.finish(431)
    observer.request_done(call)
    entry = json.loads(out.getvalue())
    assert (entry["peer_address"], entry["request_id"], entry["reason"]) == ("127.0.0.9", None, "header too large")
    assert (entry["direction"], entry["source"], entry["status"]) == ("inbound", WEB, 431)


def test_outcome_flags_say_uf_only_for_a_call_with_no_response_and_no_flag() -> None:
    call = call_to(9080)
    assert outcome_flags(call) == "UF"
    call.finish(0, "UC")
    assert outcome_flags(call) == "UC"
    answered = call_to(9080)
    answered.finish(200)
    assert outcome_flags(answered) == "-"


# --- tracing -------------------------------------------------------------------------------------------------------


def tracer(**changes: Any) -> tuple[Tracer, SpanStore]:
    live = Live(**changes)
    observer = Observer(live, endpoints_of(live, {V2: ("reviews", "reviews-v2")}), Meters(io.StringIO()))  # type: ignore[arg-type]
    store = SpanStore(live)  # type: ignore[arg-type]
    return Tracer(live, observer, store), store  # type: ignore[arg-type]


def test_a_new_trace_is_sampled_at_the_configured_rate_and_keeps_the_apps_request_id() -> None:
    never, store = tracer(tracing={"sampling": 0})
    call = call_to(9080, request_head(headers=[(b"host", b"reviews"), (b"x-request-id", b"mine")]))
    never.request(call)
    assert (call.headers.get("traceparent") or "").endswith("-00") and call.headers.get("x-b3-sampled") == "0"
    assert call.headers.get_all("x-request-id") == ["mine"]
    call.finish(200)
    never.done(call)
    assert store.recent() == []
    always, store = tracer(tracing={"sampling": 100})
    call = call_to(9080)
    always.request(call)
    assert (call.headers.get("traceparent") or "").endswith("-01") and len(call.headers.get("x-request-id") or "") == 32
    call.finish(200)
    always.done(call)
    [span] = store.recent()
    assert span["kind"] == "CLIENT" and "parentId" not in span  # outbound, a new trace
    assert span["traceId"] == call.span.trace_id and len(span["traceId"]) == 32


def test_a_spans_tags_carry_the_routers_decision_and_every_kind_of_error() -> None:
    tr, store = tracer()
    call = call_to(9080)
    tr.request(call)
    call.upstream, call.upstream_identity = (V2, 9080), REVIEWS
    call.route = {"host": "reviews", "subset": "v2", "attempts": 2}
    call.grpc_status = 14
    call.finish(200)
    tr.done(call)
    failed = call_to(9080, request_head(target=b"/x?secret=1"))
    tr.request(failed)
    failed.error = "upstream connect error"
    failed.finish(503, "UF")
    tr.done(failed)
    not_found = call_to(9080)
    tr.request(not_found)
    not_found.finish(404, "NR")
    tr.done(not_found)
    grpc, error, fine = (s["tags"] for s in sorted(store.recent(), key=lambda s: s["timestamp"]))
    assert (grpc["route"], grpc["attempts"], grpc["grpc.status_code"], grpc["error"]) == ("reviews|v2", "2", "14",
                                                                                          "grpc-status 14")
    assert grpc["upstream_cluster"] == "reviews|v2" and grpc["mtls"] == "true" and grpc["peer.identity"] == REVIEWS
    assert error["error"] == "upstream connect error" and error["response_flags"] == "UF"
    assert error["http.path"] == "/x" and "route" not in error  # the query string stays out of spans
    assert "error" not in fine and fine["http.status_code"] == "404"


def test_tracing_never_fails_a_request(monkeypatch: pytest.MonkeyPatch) -> None:
    tr, store = tracer()

    def broken(headers: Any) -> None:
        raise RuntimeError("a header the parser chokes on")

    monkeypatch.setattr(trace_module, "extract", broken)
    call = call_to(9080)
    tr.request(call)  # logged, not raised
    assert call.span is None and call.headers.get("traceparent") is None
    call.finish(200)
    tr.done(call)  # no span: nothing to record
    monkeypatch.undo()
    call = call_to(9080)
    tr.request(call)

    def full(record: dict[str, Any]) -> None:
        raise OSError("the span store is full")

    monkeypatch.setattr(store, "add", full)
    call.finish(200)
    tr.done(call)  # logged, not raised
    assert store.recent() == []
