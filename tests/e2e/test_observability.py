"""Observability on bookinfo under real traffic: traces, `stat`, `logs`, `edges`, `top`, exporters and SLOs."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient

from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import bookinfo
from tests.e2e.test_traffic import fault

# A tiny trace collector: records every POST body by path (Zipkin on 9411, OTLP/HTTP on 4318).
SINK = r"""
import http.server, json, threading
got = {}
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        got.setdefault(self.path, []).append(json.loads(body))
        self.send_response(202); self.end_headers()
    def do_GET(self):
        body = json.dumps(got).encode()
        self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
for port in (9411, 4318):
    threading.Thread(target=http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever).start()
"""


@pytest.fixture
def bi(demo: dict, engine: DockerClient, mesh_home: Path) -> Iterator[App]:
    app = bookinfo(engine, mesh_home)
    yield app
    for service in ("productpage", "details"):
        fault(app, service, rate=0, delay=0)
    for what in (("telemetry", "delete", "mesh-default"), ("slo", "delete", "details")):
        meshctl(*what, home=mesh_home)


def load(n: int = 0, seconds: float = 0, path: str = "/productpage") -> Counter[int]:
    """Requests from the host to productpage's published port on one keep-alive connection: statuses."""
    statuses: Counter[int] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", 9080, timeout=30)
    end, sent = time.monotonic() + seconds, 0
    while (sent < n) if n else (time.monotonic() < end):
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            statuses[response.status] += 1
        except (OSError, http.client.HTTPException):
            statuses[0] += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", 9080, timeout=30)
        sent += 1
    conn.close()
    return statuses


def cli_json(home: Path, *args: str) -> Any:
    done = meshctl(*args, "-o", "json", home=home)
    assert done.code == 0, done.out + done.err
    return json.loads(done.out)


def synced(home: Path) -> None:
    done = meshctl("proxy-status", "-p", "bookinfo", "--wait", "--timeout", "15", home=home)
    assert done.code == 0, done.out + done.err


def trace_of(app: App, tag: str) -> str:
    """The trace id productpage's sidecar logged for the request whose path carries `tag`."""
    found: list[str] = []
    app.wait_for(lambda: bool(found.extend(e["trace_id"] for e in app.logs("productpage-proxy")
                                           if tag in e.get("path", "") and e.get("direction") == "inbound")
                              or found), f"productpage logged the request {tag}", timeout=10)
    return found[0]


def test_one_request_yields_one_trace_with_a_span_per_hop(bi: App, mesh_home: Path) -> None:
    tag = uuid.uuid4().hex
    assert load(1, path=f"/productpage?probe={tag}") == Counter({200: 1})
    trace_id = trace_of(bi, tag)
    # Every hop's access log carries the same trace id: one per sidecar request, inbound and outbound.
    hops = sum(1 for s in ("productpage", "details", "reviews-v1", "reviews-v2", "reviews-v3", "ratings",
                           "ratings-2", "ratings-3") for e in bi.logs(f"{s}-proxy") if e.get("trace_id") == trace_id)
    spans: list[dict[str, Any]] = []

    def complete() -> bool:
        spans[:] = cli_json(mesh_home, "trace", trace_id)
        return len(spans) >= hops

    bi.wait_for(complete, f"all {hops} spans of trace {trace_id}", timeout=10)
    assert len(spans) == hops >= 5  # productpage, details, reviews and their client spans (and ratings)
    by_id = {s["id"]: s for s in spans}
    roots = [s for s in spans if s.get("parentId") not in by_id]
    assert len(roots) == 1 and roots[0]["kind"] == "SERVER" and roots[0]["name"] == "GET /productpage"
    assert roots[0]["localEndpoint"]["serviceName"] == "productpage.bookinfo"
    for s in spans:
        assert s["traceId"] == trace_id
        if s is roots[0]:
            continue
        parent = by_id[s["parentId"]]
        service = s["localEndpoint"]["serviceName"].split(".")[0]
        if s["kind"] == "CLIENT":  # an app's call: child of the server span of the same app
            assert parent["kind"] == "SERVER" and parent["localEndpoint"] == s["localEndpoint"], (s, parent)
        else:  # the callee's side: child of the caller's client span, and called by that identity
            assert parent["kind"] == "CLIENT" and parent["remoteEndpoint"]["serviceName"] == service, (s, parent)
            caller = parent["localEndpoint"]["serviceName"].split(".")[0]
            assert s["tags"]["peer.identity"].endswith(f"/sa/bookinfo-{caller}") and s["tags"]["mtls"] == "true"
        # a child starts after its parent and ends before it (one host clock; 1 ms of slack)
        assert s["timestamp"] >= parent["timestamp"] - 1000
        assert s["timestamp"] + s["duration"] <= parent["timestamp"] + parent["duration"] + 1000
    called = {s["remoteEndpoint"]["serviceName"] for s in spans if s["kind"] == "CLIENT"}
    assert {"details", "reviews"} <= called
    listed = cli_json(mesh_home, "trace", "-n", "200")
    assert any(t["trace_id"] == trace_id and t["spans"] == hops for t in listed)
    tree = meshctl("trace", trace_id[:12], home=mesh_home)
    assert tree.code == 0 and "productpage.bookinfo" in tree.out and "→ details" in tree.out, tree.out + tree.err


def test_sampling_and_export_to_zipkin_and_otlp(bi: App, mesh_home: Path, engine: DockerClient) -> None:
    sink = engine.containers.run("meshctl/base:bookworm", ["python3", "-c", SINK], name="e2e-trace-sink",
                                 network="meshctl", detach=True, remove=True, labels={"io.meshctl.managed": "true"})
    try:
        time.sleep(1)
        assert meshctl("telemetry", "set", "--zipkin", "http://e2e-trace-sink:9411/api/v2/spans", "--otlp",
                       "http://e2e-trace-sink:4318/v1/traces", home=mesh_home).code == 0
        synced(mesh_home)
        tag = uuid.uuid4().hex
        assert load(1, path=f"/productpage?probe={tag}") == Counter({200: 1})
        trace_id = trace_of(bi, tag)
        got: dict[str, Any] = {}

        def exported() -> bool:
            code, out = sink.exec_run(["python3", "-c", "import urllib.request;print(urllib.request.urlopen("
                                       "'http://127.0.0.1:9411/').read().decode())"])
            got.update(json.loads(out) if code == 0 else {})
            zipkin = [s for batch in got.get("/api/v2/spans", []) for s in batch if s["traceId"] == trace_id]
            otlp = [s for body in got.get("/v1/traces", []) for rs in body["resourceSpans"]
                    for ss in rs["scopeSpans"] for s in ss["spans"] if s["traceId"] == trace_id]
            return len(zipkin) >= 5 and len(otlp) == len(zipkin)

        bi.wait_for(exported, "the trace reached both exporters", timeout=15)
        zipkin = [s for batch in got["/api/v2/spans"] for s in batch if s["traceId"] == trace_id]
        for s in zipkin:  # Zipkin v2 JSON
            assert len(s["id"]) == 16 and s["kind"] in ("SERVER", "CLIENT") and isinstance(s["timestamp"], int)
            assert isinstance(s["duration"], int) and s["localEndpoint"]["serviceName"].endswith(".bookinfo")
        # Sampling 0: new traces are neither kept nor exported, and requests still work.
        assert meshctl("telemetry", "set", "--sampling", "0", home=mesh_home).code == 0
        synced(mesh_home)
        tag = uuid.uuid4().hex
        assert load(20, path=f"/productpage?probe={tag}") == Counter({200: 20})
        unsampled = trace_of(bi, tag)
        time.sleep(2)
        missing = meshctl("trace", unsampled, home=mesh_home)
        assert missing.code == 2 and "no trace" in missing.err
    finally:
        sink.remove(force=True)


def test_stat_agrees_with_the_load_generators_counts(bi: App, mesh_home: Path) -> None:
    """`stat -t` looks back through the sidecars' counter history and answers at once."""
    fault(bi, "productpage", rate=0.1, status=503)
    time.sleep(3)  # earlier tests' requests are over: the window below reaches a little before the load
    started = time.monotonic()
    statuses = load(seconds=15)
    time.sleep(1.5)  # the sidecars' next snapshot of their counters
    window = math.ceil(time.monotonic() - started) + 1
    asked = time.monotonic()
    [row] = [r for r in cli_json(mesh_home, "stat", "productpage", "-t", f"{window}s") if r["service"] == "productpage"]
    assert time.monotonic() - asked < 10  # no waiting for the window
    sent, ok = sum(statuses.values()), statuses[200]
    print(f"load generator: {sent} sent, {ok} ok ({statuses}); stat: {row}")
    assert sent > 100 and statuses[503] > 5  # the fault really fired
    # snapshots are a second apart, and the count is scaled from their span to the window: up to 1 s in `window`
    assert abs(row["requests"] - sent) <= 0.02 * sent + sent / window
    assert abs(row["success_rate"] - 100 * ok / sent) <= 2
    assert row["rps"] > 0 and row["p50_ms"] and row["p99_ms"] >= row["p50_ms"]
    every = {(r["service"], r["version"]) for r in cli_json(mesh_home, "stat", "-t", "0")}
    assert {("productpage", "v1"), ("details", "v1"), ("reviews", "v1"), ("ratings", "v1")} <= every


def test_logs_edges_and_top(bi: App, mesh_home: Path) -> None:
    fault(bi, "productpage", rate=0.5, status=503)
    statuses = load(40)
    failed = cli_json(mesh_home, "logs", "productpage", "--status", "5xx", "--since", "1m", "--direction", "inbound")
    assert failed and all(e["status"] == 503 for e in failed) and len(failed) >= statuses[503]
    fault(bi, "productpage", rate=0)
    calls = cli_json(mesh_home, "logs", "productpage", "--peer", "details", "-n", "5")
    assert len(calls) == 5 and all(e["destination_service"] == "details" and e["mtls"] for e in calls)
    assert cli_json(mesh_home, "logs", "productpage", "--path", "/no-such-path") == []
    edges = cli_json(mesh_home, "edges")
    edge = next(e for e in edges if e["source"] == "productpage" and e["destination"] == "details")
    assert edge["secured"] and edge["source_identity"].endswith("/ns/bookinfo/sa/bookinfo-productpage")
    assert edge["destination_identity"].endswith("/ns/bookinfo/sa/bookinfo-details") and edge["requests"] > 0
    loader = threading.Thread(target=load, kwargs={"seconds": 6})
    loader.start()
    busiest = cli_json(mesh_home, "top", "--duration", "4")
    loader.join()
    assert busiest and busiest[0]["count"] > 10, busiest
    assert {("unknown", "productpage", "/productpage"), ("productpage", "details", "/details/0")} <= \
        {(r["source"], r["destination"], r["path"]) for r in busiest}
    bad = meshctl("logs", "productpage", "--status", "abc", home=mesh_home)
    assert bad.code == 2 and bad.err.count("\n") == 1 and "--status" in bad.err
    unknown = meshctl("stat", "nosuch", home=mesh_home)
    assert unknown.code == 2 and "nosuch" in unknown.err


def test_slo_status_reports_the_burn_of_a_5_percent_fault_and_exits_non_zero(bi: App, mesh_home: Path) -> None:
    done = meshctl("install", "--addons", "prometheus", home=mesh_home)
    assert done.code == 0, done.err
    assert meshctl("slo", "set", "details", "--availability", "99.9", "--latency", "p99<300ms", "--window", "2m",
                   home=mesh_home).code == 0
    assert set(load(seconds=10)) == {200}  # clean traffic first
    rows: list[dict[str, Any]] = []

    def status(want: int) -> bool:
        done = meshctl("slo", "status", "details", "-o", "json", home=mesh_home)
        rows[:] = json.loads(done.out) if done.out.strip() else []
        return done.code == want and all(r["requests"] > 0 for r in rows)

    bi.wait_for(lambda: status(0), "Prometheus saw the clean traffic", timeout=40)
    assert {r["state"] for r in rows} == {"OK"} and rows[0]["source"] == "prometheus"
    fault(bi, "details", rate=0.05, status=503)
    load(seconds=20)  # productpage degrades gracefully; details itself answers 503 to about 5% of its calls
    assert cli_json(mesh_home, "logs", "details", "--status", "503", "--since", "1m", "--direction", "inbound")
    bi.wait_for(lambda: status(1), "slo status exits 1", timeout=40)
    availability = next(r for r in rows if r["objective"] == "availability")
    print(f"details under a 5% fault: {availability}")
    assert availability["state"] == "BURNING" and availability["burn_rate_short"] > 10
    assert availability["budget_left"] < 0
    latency = next(r for r in rows if r["objective"].startswith("latency"))
    assert latency["state"] == "OK"
