"""`stat`, `edges` and the dashboard read Istio's labels as the sidecars now write them: destination_service is an
FQDN (the short name shows), and TCP relayed at L4 counts as connections and bytes."""

from __future__ import annotations

from meshctl.cli.observe import _bytes, _tcp
from meshctl.runtime.proxies import Proxy
from meshctl.telemetry import dashboard, golden
from meshctl.telemetry.golden import REQUESTS
from meshctl.telemetry.scrape import Sample

SA = "spiffe://cluster.local/ns/shop/sa/"
PARTIES = {"reporter": "destination", "source_workload": "web", "source_workload_namespace": "shop",
           "source_principal": SA + "web", "destination_service": "db.shop.svc.cluster.local",
           "destination_service_name": "db", "destination_service_namespace": "shop", "destination_workload": "db",
           "destination_version": "v1", "destination_principal": SA + "db", "connection_security_policy": "mutual_tls"}


def tcp(opened: float, closed: float, received: float, sent: float, **labels: str) -> list[Sample]:
    base = {**PARTIES, "request_protocol": "tcp", **labels}
    return [Sample("istio_tcp_connections_opened_total", base, opened),
            Sample("istio_tcp_connections_closed_total", base, closed),
            Sample("istio_tcp_received_bytes_total", base, received),
            Sample("istio_tcp_sent_bytes_total", base, sent)]


def test_the_fqdn_is_shown_as_the_short_service_name_and_old_bare_names_still_read() -> None:
    new = Sample(REQUESTS, {**PARTIES, "response_code": "200"}, 3)
    old = Sample(REQUESTS, {"reporter": "destination", "destination_service": "db",
                            "destination_service_namespace": "shop", "destination_version": "v1",
                            "response_code": "200"}, 2)
    assert golden.tally([new, old], golden.by_service_version)[("shop", "db", "v1")].requests == 5
    fqdn_only = {"destination_service": "reviews.default.svc.cluster.local"}
    assert golden.service_name(fqdn_only) == "reviews"


def test_tcp_connections_and_bytes_are_tallied_per_service_and_edge_over_a_window() -> None:
    before, now = {"db": tcp(2, 1, 100, 1000)}, {"db": tcp(5, 4, 400, 9000)}
    [(key, row)] = golden.window(now, before, golden.by_service_version).items()
    assert key == ("shop", "db", "v1") and row.requests == 0 and row.busy
    assert (row.tcp_opened, row.tcp_closed, row.tcp_received, row.tcp_sent) == (3, 3, 300, 8000)
    summary = golden.summary(row, 10)
    assert (summary["tcp_connections"], summary["tcp_received_bytes"], summary["tcp_sent_bytes"]) == (3, 300, 8000)
    assert _tcp(summary) == ["3", "300B / 7.8KiB"]
    [(edge, _)] = golden.window(now, before, golden.by_edge).items()
    assert edge[1] == "web" and edge[3] == "db" and edge[6] == "mutual_tls"
    assert _tcp(golden.summary(golden.Golden(), 10)) == ["-", "-"]
    assert [_bytes(n) for n in (0, 1023, 1024, 5 * 2**20, 3 * 2**30)] == ["0B", "1023B", "1.0KiB", "5.0MiB",
                                                                       "3.0GiB"]


def test_a_sidecar_restart_is_seen_on_tcp_alone() -> None:
    before, now = {"db": tcp(50, 50, 10, 10)}, {"db": tcp(1, 0, 0, 0)}
    [row] = golden.window(now, before, golden.by_service_version).values()
    assert row.tcp_opened == 1  # counted from zero, not 1 - 50


def test_tcp_leaving_the_mesh_is_a_passthrough_edge() -> None:
    out = tcp(1, 1, 5, 7, reporter="source", destination_service="PassthroughCluster",
              destination_service_name="PassthroughCluster")
    [edge] = golden.tally(out, golden.by_edge)
    assert edge[3] == "PassthroughCluster"


def test_the_dashboard_draws_tcp_only_edges_with_bytes_per_second() -> None:
    proxies = [Proxy(f"shop.{s}", f"shop-{s}-proxy-1", "shop", s, s, "v1", "running", "healthy", {"mesh": "10.0.0.1"})
               for s in ("web", "db")]
    graph = dashboard.build_graph(proxies, {"shop.db": tcp(5, 4, 400, 9000)}, {"shop.db": tcp(2, 1, 100, 1000)},
                                  10.0)
    [edge] = graph["edges"]
    assert (edge["source"], edge["target"], edge["mtls"]) == ("web:v1", "db:v1", True)
    assert edge["requests_total"] == 0 and edge["tcp_connections_total"] == 5
    assert edge["tcp_connections"] == 3 and edge["tcp_bytes_per_s"] == 830.0
