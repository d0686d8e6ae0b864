"""Golden metrics, log filters, trace trees, SLO maths and Telemetry compilation, as pure functions."""

from __future__ import annotations

import math

import pytest

from meshctl.errors import UsageError
from meshctl.mesh import Pod
from meshctl.pilot.observability import tracing
from meshctl.telemetry import golden, slo, traces
from meshctl.telemetry.logs import LogFilter, top_routes
from meshctl.telemetry.scrape import Sample


def requests(n: float, code: str = "200", service: str = "reviews", version: str = "v1") -> Sample:
    return Sample("istio_requests_total", {"reporter": "destination", "destination_service": service,
                                           "destination_version": version, "destination_service_namespace": "p",
                                           "response_code": code}, n)


def buckets(counts: dict[float, float]) -> list[Sample]:
    return [Sample("istio_request_duration_milliseconds_bucket", {"reporter": "destination",
                   "destination_service": "reviews", "destination_version": "v1",
                   "destination_service_namespace": "p", "le": str(b)}, c) for b, c in counts.items()]


def test_window_subtracts_the_earlier_read_and_restarts_count_from_zero() -> None:
    before = {"a": [requests(100), requests(5, "503")], "b": [requests(50)]}
    now = {"a": [requests(160), requests(9, "503")], "b": [requests(7)]}  # b restarted
    [row] = golden.window(now, before, golden.by_service_version).values()
    assert (row.requests, row.errors) == (60 + 4 + 7, 4)


def test_quantiles_interpolate_like_prometheus() -> None:
    g = golden.tally(buckets({10: 50, 20: 90, 50: 100, math.inf: 100}), golden.by_service_version)[("p", "reviews",
                                                                                                   "v1")]
    assert g.quantile(0.5) == 10.0 and g.quantile(0.9) == 20.0 and g.quantile(0.7) == 15.0
    assert g.slower_than(20) == 10 and g.slower_than(15) == 30


def test_log_filters() -> None:
    entry = {"direction": "inbound", "status": 503, "path": "/api/x?y=1", "source_workload": "productpage",
             "source": "spiffe://td/ns/p/sa/productpage"}
    assert LogFilter.parse("5xx", "/api", "productpage", "inbound").matches(entry)
    assert not LogFilter.parse("404,500", None, None, None).matches(entry)
    assert not LogFilter.parse(None, None, "details", None).matches(entry)
    with pytest.raises(UsageError, match="--status"):
        LogFilter.parse("5x", None, None, None)


def test_top_counts_each_call_once_from_the_servers_side() -> None:
    inbound = {"direction": "inbound", "method": "GET", "path": "/r?x", "status": 200, "duration_ms": 3,
               "source_workload": "pp", "destination_service": "reviews"}
    outbound = {**inbound, "direction": "outbound"}
    [row] = top_routes([inbound, inbound, outbound], 2.0)
    assert (row["source"], row["destination"], row["path"], row["count"], row["rps"]) == ("pp", "reviews", "/r", 2,
                                                                                          1.0)



def test_top_shows_calls_leaving_the_mesh_from_the_callers_side_by_host() -> None:
    call = {"direction": "outbound", "method": "GET", "path": "/v1", "status": 200, "duration_ms": 3,
            "source_workload": "pp", "destination_workload": "unknown"}
    rows = top_routes([{**call, "destination_service": "api.example", "authority": "api.example"},
                       {**call, "destination_service": "BlackHoleCluster", "authority": "x.example", "status": 502},
                       {**call, "destination_service": "PassthroughCluster", "authority": "y.example"}], 1.0)
    assert sorted(r["destination"] for r in rows) == ["api.example", "x.example", "y.example"]


def test_trace_tree_and_prefix_lookup() -> None:
    spans = [{"traceId": "ab" * 16, "id": "1", "timestamp": 1, "duration": 10, "localEndpoint": {"serviceName": "a.p"},
              "name": "GET /", "tags": {}},
             {"traceId": "ab" * 16, "id": "2", "parentId": "1", "timestamp": 2, "duration": 5,
              "localEndpoint": {"serviceName": "a.p"}, "name": "GET /b", "tags": {"error": "503"}}]
    roots, children = traces.tree(spans)
    assert [r["id"] for r in roots] == ["1"] and [c["id"] for c in children["1"]] == ["2"]
    [summary] = traces.summaries(spans)
    assert summary["spans"] == 2 and summary["errors"] == 1
    assert traces.find(spans, "abab")[0]["id"] == "1"
    with pytest.raises(UsageError, match="no trace"):
        traces.find(spans, "ffff")


def test_slo_burn_rate_and_budget() -> None:
    resource = slo.resource("reviews", 99.9, "p99<300ms", "1h", None)
    long = golden.Golden(1000, 50, {100: 990, 500: 1000, math.inf: 1000})

    def counts(service: str, project: str | None, seconds: float) -> golden.Golden:
        return long

    availability, latency = slo.evaluate(resource, counts, max_burn=1.0)
    assert availability["state"] == "BURNING" and availability["burn_rate"] == 50.0
    assert availability["budget_left"] == -4900.0
    # 5 of 1000 slower than 300 ms (interpolated in the 100-500 bucket): half the 1% budget
    assert latency["objective"] == "latency p99<300ms" and latency["state"] == "OK" and latency["burn_rate"] == 0.5
    quiet = slo.evaluate(resource, lambda *_: golden.Golden(), 1.0)
    assert {r["state"] for r in quiet} == {"NO DATA"}
    for bad in (("reviews", None, None, "1h"), ("reviews", 100.0, None, "1h"), ("reviews", 99.0, "p99", "1h"),
                ("reviews", 99.0, None, "5s")):
        with pytest.raises(UsageError):
            slo.resource(*bad, None)


def test_telemetry_resources_compile_most_specific_last() -> None:
    pod = Pod(service="reviews-v1", app="reviews", version="v1", sidecar="reviews-v1-proxy", mode="PERMISSIVE",
              exclude_inbound=(), exclude_outbound=(), published=())
    mesh = {"kind": "Telemetry", "metadata": {"name": "mesh-default", "namespace": "istio-system"},
            "spec": {"tracing": [{"randomSamplingPercentage": 10,
                                  "providers": [{"name": "zipkin", "endpoint": "http://z/api/v2/spans"}]}]}}
    mine = {"kind": "Telemetry", "metadata": {"name": "reviews", "namespace": "p"},
            "spec": {"selector": {"matchLabels": {"app": "reviews"}}, "tracing": [{"randomSamplingPercentage": 1}]}}
    assert tracing([], "p", pod) == {"sampling": 100.0, "zipkin": None, "otlp": None}
    assert tracing([mine, mesh], "p", pod) == {"sampling": 1.0, "zipkin": "http://z/api/v2/spans", "otlp": None}
    assert tracing([mine, mesh], "other", pod)["sampling"] == 10.0
