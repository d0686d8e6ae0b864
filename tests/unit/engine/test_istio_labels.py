"""Istio's standard metric labels, every one, with the values Istio's dashboards and Kiali select on (HTTP, gRPC,
TCP; both reporters; traffic leaving the mesh)."""

from __future__ import annotations

import io

import pytest

from meshctl.telemetry import golden
from sidecar.engine.egress import Egress
from sidecar.engine.observe import Observer
from sidecar.engine.plan import INBOUND_PORT, L7Http
from sidecar.meters import LABELS, TCP_LABELS, Meters
from tests.unit.fakes import REVIEWS, WEB, Live, call_to, endpoints_of, request_head

# What the web pod's sidecar (project p) says about its calls to reviews-v1, seen from either end
WEB_SIDE = {"source_workload": "web", "source_workload_namespace": "p", "source_app": "web", "source_version": "v1",
            "source_principal": WEB, "source_canonical_service": "web", "source_canonical_revision": "v1",
            "source_cluster": "compose"}
REVIEWS_SIDE = {"destination_service": "reviews.p.svc.cluster.local", "destination_service_name": "reviews",
                "destination_service_namespace": "p", "destination_app": "reviews",
                "destination_workload": "reviews-v1", "destination_workload_namespace": "p",
                "destination_version": "v1", "destination_principal": REVIEWS,
                "destination_canonical_service": "reviews", "destination_canonical_revision": "v1",
                "destination_cluster": "compose", "connection_security_policy": "mutual_tls"}


def series(meters: Meters, name: str) -> list[dict[str, str]]:
    return [s.labels for m in meters.registry.collect() for s in m.samples if s.name == name]


def observer() -> tuple[Observer, Meters]:
    live = Live()
    meters = Meters(io.StringIO())
    return Observer(live, endpoints_of(live, {"127.0.0.2": ("reviews", "reviews-v1")}), meters), meters  # type: ignore[arg-type]


def test_an_http_call_carries_every_istio_label_from_the_callers_side() -> None:
    obs, meters = observer()
    call = call_to(9080)
    call.upstream, call.upstream_identity = ("127.0.0.2", 9080), REVIEWS
    call.finish(503)
    obs.request_done(call)
    [labels] = series(meters, "istio_requests_total")
    assert set(labels) == set(LABELS)
    assert labels == {"reporter": "source", **WEB_SIDE, **REVIEWS_SIDE, "request_protocol": "http",
                      "response_code": "503", "response_flags": "-", "grpc_response_status": ""}
    for histogram in ("istio_request_duration_milliseconds_bucket", "istio_request_bytes_bucket",
                      "istio_response_bytes_bucket"):
        assert {k: v for k, v in series(meters, histogram)[0].items() if k != "le"} == labels


def test_a_grpc_call_seen_by_the_servers_sidecar_names_its_caller_and_its_status() -> None:
    live = Live(proxy={"name": "p.reviews-v1", "project": "p", "service": "reviews-v1", "app": "reviews",
                       "version": "v1", "identity": REVIEWS})
    meters = Meters(io.StringIO())
    obs = Observer(live, endpoints_of(live, {"127.0.0.9": ("web", "web")}), meters)  # type: ignore[arg-type]
    call = call_to(9080, listener=INBOUND_PORT, tls_peer=WEB, live=live)
    call.protocol, call.grpc_status = "grpc", 14
    call.finish(200)
    obs.request_done(call)
    [labels] = series(meters, "istio_requests_total")
    assert labels == {"reporter": "destination", **WEB_SIDE, **REVIEWS_SIDE, "request_protocol": "grpc",
                      "response_code": "200", "response_flags": "-", "grpc_response_status": "14"}


def test_a_plaintext_caller_from_outside_is_unknown_but_the_server_side_is_complete() -> None:
    live = Live(proxy={"name": "p.reviews-v1", "project": "p", "service": "reviews-v1", "app": "reviews",
                       "version": "v1", "identity": REVIEWS})
    meters = Meters(io.StringIO())
    obs = Observer(live, endpoints_of(live, {}), meters)  # type: ignore[arg-type]
    call = call_to(9080, listener=INBOUND_PORT, live=live)
    call.finish(200)
    obs.request_done(call)
    [labels] = series(meters, "istio_requests_total")
    assert {k: v for k, v in labels.items() if k.startswith("source_")} == {
        "source_workload": "unknown", "source_workload_namespace": "unknown", "source_app": "unknown",
        "source_version": "unknown", "source_principal": "unknown", "source_canonical_service": "unknown",
        "source_canonical_revision": "unknown", "source_cluster": "unknown"}
    assert labels["connection_security_policy"] == "none"
    assert {k: v for k, v in labels.items() if k.startswith("destination_")} == {
        k: v for k, v in REVIEWS_SIDE.items() if k.startswith("destination_")}


def test_tcp_metrics_carry_the_same_labels_and_request_protocol_tcp() -> None:
    obs, meters = observer()
    conn = obs.tcp_opened(call_to(3306).conn, ("127.0.0.2", 3306), REVIEWS)  # type: ignore[arg-type]
    obs.tcp_closed(conn, 10, 20)
    expected = {"reporter": "source", **WEB_SIDE, **REVIEWS_SIDE, "request_protocol": "tcp"}
    for name, value in (("istio_tcp_connections_opened_total", 1), ("istio_tcp_connections_closed_total", 1),
                        ("istio_tcp_received_bytes_total", 10), ("istio_tcp_sent_bytes_total", 20)):
        assert series(meters, name) == [expected], name
        assert meters.registry.get_sample_value(name, expected) == value
    assert set(expected) == set(TCP_LABELS)


def test_traffic_leaving_the_mesh_is_passthrough_with_bounded_labels() -> None:
    obs, meters = observer()
    conn = obs.tcp_opened(call_to(443).conn, ("203.0.113.7", 443), "")  # type: ignore[arg-type]
    obs.tcp_closed(conn, 1, 2)
    [labels] = series(meters, "istio_tcp_sent_bytes_total")
    assert labels["destination_service"] == labels["destination_service_name"] == "PassthroughCluster"
    assert {labels[k] for k in labels if k.startswith("destination_") and "service" not in k} == {"unknown"}
    assert labels["destination_service_namespace"] == "unknown"
    assert labels["connection_security_policy"] == "none"


API = {"name": "shop/api", "hosts": ["api.example"], "endpoints": [],
       "ports": [{"number": 80, "protocol": "HTTP", "target": 80}]}


@pytest.mark.parametrize("policy", ["ALLOW_ANY", "REGISTRY_ONLY"])
def test_calls_leaving_the_mesh_are_named_as_istio_names_them(policy: str) -> None:
    """A ServiceEntry host by its name and namespace (config-bounded), a request REGISTRY_ONLY refuses as
    BlackHoleCluster, any other host as PassthroughCluster: never the address or Host the app chose."""
    live = Live(egress=[API], mesh={"outbound_traffic_policy": policy})
    meters = Meters(io.StringIO())
    obs, egress = Observer(live, endpoints_of(live, {}), meters), Egress(lambda: live.current)  # type: ignore[arg-type]
    for host, code in (("API.example:80", 200), ("elsewhere.example", 502 if policy == "REGISTRY_ONLY" else 200)):
        call = call_to(80, request_head(host=host), live=live)
        egress.decide(call, L7Http(("198.51.100.7", 80)))
        call.upstream = None if code == 502 else ("198.51.100.7", 80)
        call.finish(code)
        obs.request_done(call)
    named = {(s["destination_service"], s["destination_service_name"], s["destination_service_namespace"],
              s["response_code"], s["destination_workload"]) for s in series(meters, "istio_requests_total")}
    other = ("BlackHoleCluster", "502") if policy == "REGISTRY_ONLY" else ("PassthroughCluster", "200")
    assert named == {("api.example", "api.example", "shop", "200", "unknown"),
                     (other[0], other[0], "unknown", other[1], "unknown")}
    # who calls them: an edge each, from the caller, as `meshctl edges` and the dashboard show it
    edges = {golden.by_edge(s)[3] for s in series(meters, "istio_requests_total")}  # type: ignore[index]
    assert edges == {"api.example", other[0]}


def test_a_caller_known_only_by_its_identity_is_named_by_its_app_not_its_account() -> None:
    """A caller whose address is not (yet) in the endpoint table: the service that identity belongs to names it,
    even when its account differs from its app (`mesh.service-account`); an identity of no known service keeps
    its account."""
    account = "spiffe://cluster.local/ns/p/sa/bookinfo-web"
    live = Live(proxy={"name": "p.reviews-v1", "project": "p", "service": "reviews-v1", "app": "reviews",
                       "version": "v1", "identity": REVIEWS},
                services=[{"name": "web", "identity": account, "workloads": [{"host": "web", "version": "v1"}]},
                          {"name": "reviews", "identity": REVIEWS, "workloads": [{"host": "reviews-v1",
                                                                                    "version": "v1"}]}])
    meters = Meters(io.StringIO())
    obs = Observer(live, endpoints_of(live, {}), meters)  # type: ignore[arg-type]
    for peer in (account, "spiffe://cluster.local/ns/p/sa/stranger"):
        call = call_to(9080, listener=INBOUND_PORT, tls_peer=peer, live=live)
        call.finish(200)
        obs.request_done(call)
    named = {(s["source_app"], s["source_workload"], s["source_canonical_service"], s["source_principal"])
             for s in series(meters, "istio_requests_total")}
    assert named == {("web", "web", "web", account),
                     ("stranger", "stranger", "stranger", "spiffe://cluster.local/ns/p/sa/stranger")}
