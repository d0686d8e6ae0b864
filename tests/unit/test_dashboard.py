"""The dashboard's state builder and server, fed by fake sidecars (no Docker, no browser)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.errors import Conflict, EngineError, NotInstalled
from meshctl.runtime.proxies import Proxy
from meshctl.telemetry import dashboard as d
from meshctl.telemetry.golden import BUCKETS, REQUESTS
from meshctl.telemetry.scrape import Sample

NS = "bookinfo"
SA = "spiffe://cluster.local/ns/bookinfo/sa/"


def proxy(service: str, app: str, version: str = "v1", project: str = NS) -> Proxy:
    return Proxy(f"{project}.{service}", f"{project}_{service}-proxy_1", project, service, app, version, "running",
                 "healthy", {"mesh": "10.0.0.1"})


PROXIES = [proxy("productpage", "productpage"), proxy("details", "details"), proxy("reviews-v1", "reviews"),
           proxy("reviews-v2", "reviews", "v2"), proxy("reviews-v3", "reviews", "v3"), proxy("ratings", "ratings"),
           proxy("ratings-2", "ratings")]


def inbound(src: str | None, dst: str, count: float, code: str = "200", slow: float = 0.0,
            project: str = NS) -> list[Sample]:
    """What dst's sidecar reports for calls from src (None: from outside the mesh)."""
    p = next(p for p in PROXIES if p.service == dst) if project == NS else proxy(dst, dst.split("-v")[0])
    labels = {"reporter": "destination", "source_workload": src or "unknown",
              "source_workload_namespace": project if src else "unknown",
              "source_principal": f"{SA}{src.split('-')[0]}" if src else "unknown",
              "destination_service": p.app, "destination_service_namespace": project, "destination_app": p.app,
              "destination_workload": dst, "destination_version": p.version, "destination_principal": f"{SA}{p.app}",
              "connection_security_policy": "mutual_tls" if src else "none"}
    buckets = [Sample(BUCKETS, {**labels, "le": le}, count - (slow if float(le) <= 100 else 0))
               for le in ("10", "100", "1000", "+Inf")]
    return [Sample(REQUESTS, {**labels, "response_code": code}, count), *buckets]


def scrape(n: float, errors: float = 0.0) -> dict[str, list[Sample]]:
    """Every sidecar's counters after n page views (errors: how many of reviews-v2's answers were 503)."""
    return {
        f"{NS}.productpage": inbound(None, "productpage", n),
        f"{NS}.details": inbound("productpage", "details", n),
        f"{NS}.reviews-v1": inbound("productpage", "reviews-v1", n / 2),
        f"{NS}.reviews-v2": inbound("productpage", "reviews-v2", n / 2 - errors)
        + (inbound("productpage", "reviews-v2", errors, "503") if errors else []),
        f"{NS}.reviews-v3": [],
        f"{NS}.ratings": inbound("reviews-v2", "ratings", n / 4),
        f"{NS}.ratings-2": inbound("reviews-v2", "ratings-2", n / 4),
    }


class Fake:
    def __init__(self) -> None:
        self.now = 1000.0
        self.scrapes: list[dict[str, list[Sample]]] = []
        self.resources: list[dict[str, Any]] = []
        self.fail: dict[str, Exception] = {}

    def clock(self) -> float:
        return self.now

    def sources(self) -> d.Sources:
        def read(name: str, value: Any) -> Any:
            if name in self.fail:
                raise self.fail[name]
            return value

        return d.Sources(proxies=lambda: read("proxies", PROXIES),
                         metrics=lambda ps: read("metrics", self.scrapes.pop(0)),
                         resources=lambda: read("resources", self.resources),
                         statuses=lambda: read("statuses", [{"name": "bookinfo.details", "status": "SYNCED",
                                                             "synced": True}]),
                         slos=lambda: read("slos", []))

    def board(self, *scrapes: dict[str, list[Sample]], history: int = 150) -> d.Dashboard:
        self.scrapes.extend(scrapes)
        return d.Dashboard(self.sources(), self.clock, NS, 1.0, history)

    def polls(self, board: d.Dashboard, count: int, step: float = 2.0) -> dict[str, Any]:
        for _ in range(count):
            board.poll_fast()
            self.now += step
        return board.state()


@pytest.fixture
def fake() -> Fake:
    return Fake()


def by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in items}


def test_first_poll_shows_the_graph_but_no_rates_yet(fake: Fake) -> None:
    state = fake.polls(fake.board(scrape(100)), 1)
    edges = by_id(state["graph"]["edges"])
    assert set(edges) == {"unknown->productpage:v1", "productpage:v1->details:v1", "productpage:v1->reviews:v1",
                          "productpage:v1->reviews:v2", "reviews:v2->ratings:v1"}
    assert all(e["rps"] is None for e in edges.values())
    assert edges["productpage:v1->details:v1"]["requests_total"] == 100
    assert state["window_s"] is None and state["history"]["t"] == []


def test_rates_are_the_difference_between_two_scrapes(fake: Fake) -> None:
    state = fake.polls(fake.board(scrape(100), scrape(140, errors=2)), 2)  # 2 s apart
    edges, nodes = by_id(state["graph"]["edges"]), by_id(state["graph"]["nodes"])
    assert state["window_s"] == 2.0
    assert edges["productpage:v1->details:v1"]["rps"] == 20.0
    v2 = edges["productpage:v1->reviews:v2"]
    assert v2["rps"] == 10.0 and v2["error_rate"] == 10.0 and v2["mtls"] is True and v2["p99_ms"] is not None
    assert edges["unknown->productpage:v1"]["mtls"] is False
    assert edges["reviews:v2->ratings:v1"]["rps"] == 10.0  # ratings and ratings-2 are one node: ratings:v1
    assert nodes["ratings:v1"]["pods"] == 2 and nodes["reviews:v2"]["success_rate"] == 90.0
    assert nodes["reviews:v3"]["rps"] == 0.0 and nodes["reviews:v3"]["success_rate"] is None
    assert nodes["unknown"]["kind"] == "external"


def test_edges_stay_when_traffic_stops_with_zero_rps(fake: Fake) -> None:
    state = fake.polls(fake.board(scrape(100), scrape(140), scrape(140)), 3)
    assert {e["id"]: e["rps"] for e in state["graph"]["edges"]}["productpage:v1->reviews:v1"] == 0.0
    assert [s["rps"] for s in state["history"]["series"] if s["id"] == "reviews:v1"] == [[10.0, 0.0]]


def test_columns_follow_call_depth_and_idle_versions_join_their_service(fake: Fake) -> None:
    nodes = by_id(fake.polls(fake.board(scrape(10)), 1)["graph"]["nodes"])
    assert {n: nodes[n]["column"] for n in nodes} == {
        "unknown": 0, "productpage:v1": 1, "details:v1": 2, "reviews:v1": 2, "reviews:v2": 2, "reviews:v3": 2,
        "ratings:v1": 3}
    assert [n for n in sorted(nodes, key=lambda n: nodes[n]["row"]) if nodes[n]["column"] == 2] == [
        "details:v1", "reviews:v1", "reviews:v2", "reviews:v3"]


def test_layout_survives_cycles() -> None:
    nodes = [{"id": i, "project": "p", "app": i, "version": "", "kind": "service"} for i in ("a", "b", "c")]
    d.layout(nodes, [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}, {"source": "c", "target": "c"}])
    assert {n["id"]: n["column"] for n in nodes} == {"a": 0, "b": 1, "c": 0}


def test_a_restarted_sidecar_counts_from_zero(fake: Fake) -> None:
    state = fake.polls(fake.board(scrape(100), scrape(6)), 2)
    assert by_id(state["graph"]["edges"])["productpage:v1->details:v1"]["rps"] == 3.0


def test_a_sidecar_missed_by_one_scrape_does_not_spike_the_next_interval(fake: Fake) -> None:
    missed = {**scrape(140), f"{NS}.details": []}  # its metrics endpoint did not answer this time
    state = fake.polls(fake.board(scrape(100), missed, scrape(160)), 3)
    assert by_id(state["graph"]["edges"])["productpage:v1->details:v1"]["rps"] == 0.0
    assert [s["rps"] for s in state["history"]["series"] if s["id"] == "details:v1"] == [[0.0, 0.0]]


def test_several_projects_put_the_project_in_the_ids() -> None:
    proxies = [proxy("web", "web", project="one"), proxy("web", "web", project="two")]
    graph = d.build_graph(proxies, {}, None, None)
    assert [n["id"] for n in graph["nodes"]] == ["one/web:v1", "two/web:v1"]


def test_history_is_bounded_and_aligned(fake: Fake) -> None:
    state = fake.polls(fake.board(*(scrape(10 * i) for i in range(6)), history=3), 6)
    history = state["history"]
    assert len(history["t"]) == 3
    assert all(len(s[f]) == 3 for s in history["series"] for f in ("rps", "success_rate", "p99_ms"))
    assert {s["id"] for s in history["series"]} >= {"productpage:v1", "reviews:v3", "ratings:v1"}
    assert "unknown" not in {s["id"] for s in history["series"]}


def test_route_weights(fake: Fake) -> None:
    vs = {"kind": "VirtualService", "metadata": {"name": "reviews"}, "spec": {"hosts": ["reviews"], "http": [
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
        {"route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
                   {"destination": {"host": "reviews", "subset": "v3"}, "weight": 10}]}]}}
    other = {**vs, "metadata": {"name": "x", "namespace": "elsewhere"}}
    fake.resources = [vs, other, {"kind": "DestinationRule", "metadata": {"name": "reviews"}, "spec": {}}]
    rows = fake.polls(fake.board(scrape(1)), 1)["routes"]["rows"]
    assert [(r["virtual_service"], r["match"], [(x["subset"], x["weight"]) for x in r["destinations"]])
            for r in rows] == [("reviews", "header:end-user=jason", [("v2", 100)]),
                               ("reviews", "*", [("v1", 90), ("v3", 10)])]


def test_a_failing_section_shows_its_error_and_the_others_still_render(fake: Fake) -> None:
    fake.fail = {"resources": NotInstalled(), "slos": ValueError("bad window")}
    board = fake.board(scrape(1))
    board.poll_fast()
    board.poll_slow()
    state = board.state()
    assert state["routes"] == {"rows": [], "error": "meshctl is not installed in this mesh home; run `meshctl "
                               "install` first", "updated_at": fake.now}
    assert state["slos"]["error"] == "ValueError: bad window"
    assert state["graph"]["error"] is None and state["graph"]["nodes"]
    assert state["proxies"]["rows"][0]["status"] == "SYNCED" and state["proxies"]["error"] is None
    fake.fail = {"proxies": EngineError("no Docker engine answers")}
    board.poll_fast()
    assert board.state()["graph"]["error"] == "no Docker engine answers"


def test_seq_grows_with_every_update_and_the_json_matches(fake: Fake) -> None:
    board = fake.board(scrape(1), scrape(2))
    assert board.state()["seq"] == 0
    board.poll_fast()
    board.poll_slow()
    board.poll_fast()
    state = json.loads(board.state_json())
    assert state["seq"] == 3 and state == json.loads(json.dumps(board.state()))
    assert set(state) == {"seq", "generated_at", "project", "interval_s", "window_s", "graph", "history", "routes",
                          "proxies", "slos"}


# --- the server ---------------------------------------------------------------------------------------------

@pytest.fixture
def server(fake: Fake) -> Iterator[d.Server]:
    board = fake.board(scrape(1), *(scrape(1) for _ in range(100)))
    srv = d.Server(board, 0, 60.0)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    yield srv
    srv.stop()
    thread.join(5)


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def test_server_serves_the_page_and_the_state_on_loopback(server: d.Server) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    code, kind, body = get(server.url)
    assert code == 200 and kind.startswith("text/html") and b"api/state" in body and b"<script" in body
    assert b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"")  # nothing from the network
    code, kind, body = get(server.url + "api/state")
    assert code == 200 and kind == "application/json" and "graph" in json.loads(body)
    assert get(server.url + "nope")[0] == 404


def test_a_port_in_use_is_one_clear_error(server: d.Server, fake: Fake) -> None:
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(Conflict) as caught:
        d.Server(fake.board(), port, 1.0)
    assert caught.value.one_line() == f"cannot listen on 127.0.0.1:{port} (Address already in use); choose another " \
        "port with --port"


def test_the_page_ships_with_the_package() -> None:
    assert b"data-edge" in d.page()


def test_calls_leaving_the_mesh_are_nodes_named_as_istio_names_them(fake: Fake) -> None:
    """What details' sidecar reports (reporter=source) for its calls out: a ServiceEntry host by its name, the
    hosts REGISTRY_ONLY refused as BlackHoleCluster, the others as PassthroughCluster."""
    def outbound(service: str, count: float, code: str = "200") -> Sample:
        return Sample(REQUESTS, {"reporter": "source", "source_workload": "details", "source_workload_namespace": NS,
                                 "source_principal": f"{SA}details", "destination_service": service,
                                 "destination_service_name": service, "destination_service_namespace": "unknown",
                                 "destination_workload": "unknown", "connection_security_policy": "none",
                                 "response_code": code}, count)
    out = [outbound("api.example", 5), outbound("BlackHoleCluster", 2, "502"), outbound("PassthroughCluster", 1)]
    first = scrape(100)
    first[f"{NS}.details"] = first[f"{NS}.details"] + out
    state = fake.polls(fake.board(first), 1)
    edges, nodes = by_id(state["graph"]["edges"]), by_id(state["graph"]["nodes"])
    assert {e: edges[e]["requests_total"] for e in edges if e.startswith("details:v1->")} == {
        "details:v1->api.example": 5, "details:v1->BlackHoleCluster": 2, "details:v1->PassthroughCluster": 1}
    assert {n: (nodes[n]["kind"], nodes[n]["label"]) for n in ("api.example", "BlackHoleCluster")} == {
        "api.example": ("external", "outside the mesh: api.example"),
        "BlackHoleCluster": ("external", "outside the mesh (refused: REGISTRY_ONLY)")}
