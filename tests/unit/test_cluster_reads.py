"""Reads of the data plane in a mesh that spans hosts, on fake engines: every node's sidecars listed (one that does
not answer named, not fatal), each sidecar's HTTP endpoints read by curl through its own node's engine
(runtime.reach behind runtime.direct.OPENER), its logs from its node, and proxy-status's NODE and NODE DOWN."""

from __future__ import annotations

import dataclasses
import io
import json
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from rich.console import Console

from meshctl import const
from meshctl.context import NODE_RETRY_S, Context
from meshctl.errors import EngineError
from meshctl.home import MeshHome
from meshctl.mesh import PROXY_JSON, SNAPSHOT_JSON, Pod, describe, proxy_dir
from meshctl.pilot import dataplane, inventory, proxyconfig
from meshctl.pilot import status as pilot_status
from meshctl.pilot.status import fetch_status
from meshctl.runtime import reach
from meshctl.runtime.direct import OPENER
from meshctl.runtime.proxies import list_everywhere, list_proxies
from meshctl.status import ExitCode
from meshctl.telemetry import lookback, mesh
from meshctl.telemetry.scrape import scrape
from tests.unit.cli import meshctl
from tests.unit.fakes import FakeContainer, FakeEngine, node_engines

L = const.LABEL_PREFIX
METRICS = (b'# TYPE istio_requests_total counter\n'
           b'istio_requests_total{reporter="destination",destination_service="reviews",response_code="200"} 7\n')
ACK = {"revision": 4, "hash": "h4", "applied_at": 1_796_109_686.0, "proxy_version": "1.2"}
LOG = {"direction": "inbound", "time": 1_796_109_686.1, "method": "GET", "path": "/", "status": 200,
       "duration_ms": 1.0, "source_workload": "web", "mtls": True, "flags": "-"}


def http(status: int, body: bytes, reason: str = "OK", headers: str = "Content-Type: application/json") -> bytes:
    """What `curl -i` prints: the status line, headers, a blank line, the body as sent."""
    return f"HTTP/1.1 {status} {reason}\r\n{headers}\r\n\r\n".encode() + body


def pages(answers: dict[str, bytes]) -> Callable[[list[str]], tuple[int, bytes]]:
    """A sidecar's curl: path (without the query) -> curl's output; others 404; anything but curl fails."""

    def run(cmd: list[str]) -> tuple[int, bytes]:
        if cmd[0] != "curl" or not cmd[-1].startswith("http://127.0.0.1:"):
            return 127, b"not curl to the pod's loopback"
        path = "/" + cmd[-1].removeprefix("http://127.0.0.1:").partition("/")[2].partition("?")[0]
        return 0, answers.get(path, http(404, b"no such page", "Not Found", "Content-Type: text/plain"))

    return run


def sidecar(service: str, node: str | None, ip: str, answers: dict[str, bytes] | None = None,
            cid: str | None = None) -> FakeContainer:
    labels = {f"{L}.component": "sidecar", f"{L}.project": "shop", f"{L}.service": service, f"{L}.app": service,
              f"{L}.subset": "v1"} | ({f"{L}.node": node} if node is not None else {})
    attrs = {"State": {"Status": "running"}, "NetworkSettings": {"Networks": {"meshctl": {"IPAddress": ip}}}}
    return FakeContainer(f"shop-{service}-proxy-1", labels, attrs=attrs, cid=cid or f"{service}{'0' * 60}",
                         logs=json.dumps(LOG).encode() + b"\n",
                         on_exec=pages(answers if answers is not None else {
                             "/status": http(200, json.dumps(ACK).encode()),
                             "/stats/prometheus": http(200, METRICS, headers="Content-Type: text/plain")}))


def clustered(home: Path, nodes: list[str]) -> MeshHome:
    mesh_home = MeshHome(home)
    mesh_home.save_settings(dataclasses.replace(mesh_home.settings(), cluster=True, nodes=nodes))
    return mesh_home


def meshed(home: Path, service: str, node: str, revision: int = 4) -> None:
    """proxy.json and the snapshot pilot wrote for shop's `service`, placed on `node`."""
    pod = Pod(service=service, sidecar=f"{service}-proxy", app=service, version="v1", mode="PERMISSIVE",
              exclude_inbound=(), exclude_outbound=(), published=(), node=node)
    directory = proxy_dir(MeshHome(home).proxies_dir, "shop", service)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PROXY_JSON).write_text(json.dumps(describe(pod, [pod], "shop", "cluster.local")))
    (directory / SNAPSHOT_JSON).write_text(json.dumps({"revision": revision, "hash": f"h{revision}"}))


@pytest.fixture
def web() -> FakeContainer:
    return sidecar("web", "", "10.0.1.2")


@pytest.fixture
def reviews() -> FakeContainer:
    return sidecar("reviews", "node2", "10.0.1.3")


@pytest.fixture
def cluster(installed_home: Path, web: FakeContainer, reviews: FakeContainer) -> Context:
    """Three nodes: the manager runs web, node2 runs reviews, node3 does not answer."""
    home = clustered(installed_home, ["node2", "node3"])
    manager, node2 = FakeEngine(containers=[web]), FakeEngine(containers=[reviews])
    return Context(home=home, docker_factory=lambda: manager, err=Console(file=io.StringIO(), width=400),
                   node_factory=node_engines({"node2": node2, "node3": "cannot reach the Docker engine of node3"}))


# --- the engine route: HTTP through curl in the container ---------------------------------------------------------

def routed(on_exec: Callable[[list[str]], tuple[int, bytes]], cid: str = "f" * 64) -> tuple[str, FakeContainer]:
    container = FakeContainer("x-proxy", cid=cid, on_exec=on_exec)
    return reach.route(container), container


def test_a_routed_url_is_curl_in_the_container_answered_as_urllib_answers() -> None:
    body = bytes(range(256)) + b"\r\n\r\nHTTP/1.1 200 OK\r\n"  # binary, with what looks like a second head
    host, container = routed(lambda cmd: (0, http(200, body, headers="Content-Type: application/octet-stream\r\n"
                                                                     "Transfer-Encoding: chunked\r\nX-A: 1")))
    assert host.endswith(".exec.meshctl.invalid") and not host.startswith("10.")
    with OPENER.open(f"http://{host}:15090/stats/history?window=30", timeout=3) as resp:
        assert (resp.status, resp.reason, resp.read()) == (200, "OK", body)
        assert resp.headers["X-A"] == "1" and resp.headers["Transfer-Encoding"] is None  # curl de-chunked it
    assert container.execs == [["curl", "-q", "-sS", "-i", "--globoff", "--noproxy", "*", "--max-time", "3",
                                "-H", "User-agent: " + OPENER.addheaders[0][1],
                                "http://127.0.0.1:15090/stats/history?window=30"]]


def test_an_interim_100_continue_is_skipped() -> None:
    host, _ = routed(lambda cmd: (0, b"HTTP/1.1 100 Continue\r\n\r\n" + http(201, b"made", "Created")))
    with OPENER.open(f"http://{host}:15021/x", timeout=2) as resp:
        assert (resp.status, resp.read()) == (201, b"made")


def test_a_non_2xx_answer_is_an_http_error_with_its_body() -> None:
    host, _ = routed(lambda cmd: (0, http(503, b"draining", "Service Unavailable", "Content-Type: text/plain")))
    with pytest.raises(urllib.error.HTTPError) as caught:
        OPENER.open(f"http://{host}:15021/status", timeout=2)
    assert (caught.value.code, caught.value.reason, caught.value.read()) == (503, "Service Unavailable", b"draining")


@pytest.mark.parametrize(("answer", "said"), [
    ((7, b"curl: (7) Failed to connect to 127.0.0.1 port 15090: Connection refused\n"),
     r"exited 7: curl: \(7\) Failed"),
    ((28, b""), "exited 28: no output"),
    ((0, b"OCI runtime exec failed: exec: \"curl\": not found"), "not an HTTP response"),
])
def test_a_failed_curl_is_a_url_error(answer: tuple[int, bytes], said: str) -> None:
    host, _ = routed(lambda cmd: answer)
    with pytest.raises(urllib.error.URLError, match=said):
        OPENER.open(f"http://{host}:15090/spans", timeout=2)


def test_an_engine_that_fails_the_exec_is_a_url_error_and_readers_say_nothing() -> None:
    def gone(cmd: list[str]) -> tuple[int, bytes]:
        raise docker.errors.NotFound("No such container: f00")

    host, _ = routed(gone, cid="a" * 64)
    with pytest.raises(urllib.error.URLError, match="No such container"):
        OPENER.open(f"http://{host}:15090/spans", timeout=2)
    assert scrape(host) == [] and mesh.spans_of(host) == [] and fetch_status(host) is None


def test_a_routed_host_this_process_never_listed_is_a_url_error() -> None:
    with pytest.raises(urllib.error.URLError, match="not a container this process listed"):
        OPENER.open(f"http://c-{'9' * 40}{reach.SUFFIX}:15090/spans", timeout=2)


def test_a_request_body_travels_as_text_in_argv_and_a_binary_one_is_refused() -> None:
    host, container = routed(lambda cmd: (0, http(200, b"{}")))
    OPENER.open(urllib.request.Request(f"http://{host}:15000/x", data=b'{"a": 1}', method="PUT"), timeout=2).close()
    cmd = container.execs[0]
    assert cmd[cmd.index("-X") + 1] == "PUT" and cmd[cmd.index("--data-raw") + 1] == '{"a": 1}'
    assert not any(a.lower().startswith(("host:", "content-length:")) for a in cmd)
    with pytest.raises(urllib.error.URLError, match="binary request body"):
        OPENER.open(urllib.request.Request(f"http://{host}:15000/x", data=b"\x00\xff"), timeout=2)


def test_every_reader_reads_through_the_route_unchanged(reviews: FakeContainer) -> None:
    history = {"series": [["istio_requests_total", {"reporter": "destination"}]], "now": [9], "then": [2],
               "span_s": 30, "history_s": 600}
    reviews.on_exec = pages({"/status": http(200, json.dumps(ACK).encode()),
                             "/stats/prometheus": http(200, METRICS, headers="Content-Type: text/plain"),
                             "/spans": http(200, json.dumps([{"traceId": "t", "id": "s"}]).encode()),
                             "/stats/history": http(200, json.dumps(history).encode())})
    host = reach.route(reviews)
    assert [(s.name, s.value) for s in scrape(host)] == [("istio_requests_total", 7.0)]
    assert fetch_status(host) == ACK
    assert mesh.spans_of(host) == [{"traceId": "t", "id": "s"}]
    found = lookback.fetch(host, 30)
    assert found is not None and [s.value for s in found.now] == [9.0] and found.span_s == 30


# --- listing every node ------------------------------------------------------------------------------------------

def test_every_node_is_listed_one_that_does_not_answer_is_named(cluster: Context) -> None:
    found = dataplane.listing(cluster)
    assert [(p.name, p.node) for p in found.proxies] == [("shop.reviews", "node2"), ("shop.web", "")]
    assert found.unreachable == {"node3": "cannot reach the Docker engine of node3"}
    # each is read through the engine that listed it, never at its overlay IP
    assert all(p.address_on("meshctl") == p.via and reach.routed(p.via) for p in found.proxies)


def test_two_contexts_naming_one_engine_list_a_container_once_from_its_own_node(reviews: FakeContainer) -> None:
    engine = FakeEngine(containers=[reviews])
    found = list_everywhere(lambda node: engine, ["", "alias", "node2"], routed=True)
    assert [(p.name, p.node) for p in found.proxies] == [("shop.reviews", "node2")]
    assert found.unreachable == {}


def test_a_sidecar_without_a_node_label_runs_where_it_was_listed() -> None:
    old = sidecar("ratings", None, "10.0.1.4")
    found = list_everywhere(lambda node: FakeEngine(containers=[old]) if node == "node2" else FakeEngine(),
                            ["", "node2"])
    assert [(p.name, p.node, p.via) for p in found.proxies] == [("shop.ratings", "node2", "")]


def test_a_node_whose_listing_fails_is_unreachable_not_fatal(web: FakeContainer) -> None:
    def broken() -> list[FakeContainer]:
        raise docker.errors.APIError("500 Server Error: engine is shutting down")

    engines = {"": FakeEngine(containers=[web]), "node2": FakeEngine(containers=broken)}
    found = list_everywhere(engines.__getitem__, ["", "node2"])
    assert [p.name for p in found.proxies] == ["shop.web"]
    assert "shutting down" in found.unreachable["node2"]


def test_one_host_lists_its_engine_and_reads_by_ip_as_before(installed_home: Path, web: FakeContainer) -> None:
    engine = FakeEngine(containers=[web])
    ctx = Context(home=MeshHome(installed_home), docker_factory=lambda: engine, node_factory=node_engines({}))
    assert ctx.nodes() == [""] and not ctx.clustered()
    found = dataplane.listing(ctx)
    assert found.proxies == list_proxies(engine) and found.unreachable == {}
    assert found.proxies[0].address_on("meshctl") == "10.0.1.2" and found.proxies[0].via == ""


def test_context_engines_are_kept_per_node_and_a_down_node_is_asked_again_later(installed_home: Path) -> None:
    manager, node2 = FakeEngine(), FakeEngine()
    answers: dict[str, FakeEngine | str] = {"node2": node2, "node3": "down"}
    now = [1000.0]
    ctx = Context(home=clustered(installed_home, ["node2", "node3"]), docker_factory=lambda: manager,
                  node_factory=node_engines(answers), clock=lambda: now[0])
    assert ctx.nodes() == ["", "node2", "node3"]
    assert ctx.engine("") is manager and ctx.engine("node2") is node2
    answers["node2"] = FakeEngine()
    assert ctx.engine("node2") is node2  # kept
    with pytest.raises(EngineError, match="down"):
        ctx.engine("node3")
    answers["node3"] = back = FakeEngine()
    now[0] += NODE_RETRY_S - 1
    with pytest.raises(EngineError, match="down"):  # not asked again yet: a watch does not wait on it every read
        ctx.engine("node3")
    now[0] += 1
    assert ctx.engine("node3") is back  # it came back


# --- the views ---------------------------------------------------------------------------------------------------

def test_stat_reads_every_nodes_sidecars_through_their_engines(cluster: Context, web: FakeContainer,
                                                                reviews: FakeContainer) -> None:
    proxies = mesh.running(cluster, "shop")
    metrics = mesh.metrics(cluster, proxies)
    assert {name: [s.value for s in samples] for name, samples in metrics.items()} == {
        "shop.reviews": [7.0], "shop.web": [7.0]}
    assert reviews.execs and web.execs  # each through its own container, on its own node


def test_views_warn_once_of_a_node_left_out(cluster: Context) -> None:
    mesh.running(cluster)
    mesh.running(cluster, "shop")  # a watch reads again: the warning is not repeated
    assert cluster.err.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "warning: node node3 does not answer (cannot reach the Docker engine of node3): its sidecars are left out"]


def test_a_service_only_on_a_down_node_says_so(cluster: Context) -> None:
    with pytest.raises(Exception, match="no running sidecar serves 'ratings'; node node3 does not answer"):
        mesh.running(cluster, "shop", "ratings")


def test_logs_come_from_the_sidecars_own_node(cluster: Context, reviews: FakeContainer) -> None:
    proxy = next(p for p in mesh.running(cluster) if p.node == "node2")
    entries = list(mesh.access_log(cluster, proxy))
    assert [(e["proxy"], e["source_workload"]) for e in entries] == [("shop.reviews", "web")]


def test_proxy_config_reads_the_admin_endpoint_on_the_sidecars_node(cluster: Context,
                                                                     reviews: FakeContainer) -> None:
    reviews.on_exec = lambda cmd: (0, b'{"listeners": []}') if "15000/config_dump" in cmd[-1] else (1, b"")
    proxy = proxyconfig.find_proxy(cluster, "shop.reviews")
    assert proxyconfig.config_dump(cluster, proxy) == {"listeners": []}
    with pytest.raises(Exception, match=r"no proxy named 'ratings' \(node node3 does not answer"):
        proxyconfig.find_proxy(cluster, "ratings")


def test_analyze_counts_running_versions_on_every_node(cluster: Context) -> None:
    assert inventory.build(cluster).running == {"web": {"v1"}, "reviews": {"v1"}}


def test_tap_refuses_in_a_cluster_with_one_line(installed_home: Path) -> None:
    clustered(installed_home, ["node2"])
    done = meshctl("tap", "reviews", home=installed_home, engine=FakeEngine, nodes=node_engines({}))
    assert done.code == ExitCode.USAGE, done
    assert "tap reads sidecars over the local bridge" in done.err and "logs -f" in done.err


# --- proxy-status ------------------------------------------------------------------------------------------------

def proxy_status(home: Path, *args: str) -> Any:
    manager = FakeEngine(containers=[sidecar("web", "", "10.0.1.2")])
    node2 = FakeEngine(containers=[sidecar("reviews", "node2", "10.0.1.3")])
    nodes = node_engines({"node2": node2, "node3": "cannot reach the Docker engine of context 'node3'"})
    return meshctl("proxy-status", *args, home=home, engine=lambda: manager, nodes=nodes)


def test_proxy_status_shows_each_pods_node_and_node_down_for_an_unreachable_one(installed_home: Path) -> None:
    clustered(installed_home, ["node2", "node3"])
    for service, node in (("web", ""), ("reviews", "node2"), ("ratings", "node3")):
        meshed(installed_home, service, node)
    done = proxy_status(installed_home)
    assert done.code == ExitCode.OK, done
    header, *rows = done.out.splitlines()
    assert header.split()[:5] == ["NAME", "SERVICE", "VERSION", "NODE", "STATUS"]
    assert [r.split()[:5] for r in rows] == [
        ["shop.ratings", "ratings", "v1", "node3", "NODE"],
        ["shop.reviews", "reviews", "v1", "node2", "SYNCED"],
        ["shop.web", "web", "v1", "manager", "SYNCED"]]
    assert "NODE DOWN (node3: cannot reach the Docker engine of context 'node3')" in rows[0]


def test_proxy_status_json_has_each_rows_node(installed_home: Path) -> None:
    clustered(installed_home, ["node2", "node3"])
    for service, node in (("reviews", "node2"), ("ratings", "node3")):
        meshed(installed_home, service, node)
    done = proxy_status(installed_home, "-o", "json")
    assert done.code == ExitCode.OK, done
    rows = {r["name"]: r for r in json.loads(done.out)}
    assert (rows["shop.reviews"]["node"], rows["shop.reviews"]["status"]) == ("node2", "SYNCED")
    assert rows["shop.ratings"]["node"] == "node3" and rows["shop.ratings"]["status"].startswith("NODE DOWN (node3: ")
    assert rows["shop.ratings"]["cert_expires"] is None  # no certificate file in this home: nothing made up


def test_proxy_status_of_one_pod_on_a_down_node_is_its_row(installed_home: Path) -> None:
    clustered(installed_home, ["node2", "node3"])
    meshed(installed_home, "ratings", "node3")
    done = proxy_status(installed_home, "shop.ratings")
    assert done.code == ExitCode.OK, done
    assert done.out.splitlines()[1].split()[:5] == ["shop.ratings", "ratings", "v1", "node3", "NODE"]


def test_proxy_status_on_one_host_has_no_node_column(installed_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pilot_status, "fetch_status",
                        lambda address, timeout=1.5: ACK if address == "10.0.1.2" else None)
    meshed(installed_home, "web", "")
    engine = FakeEngine(containers=[sidecar("web", None, "10.0.1.2")])
    done = meshctl("proxy-status", home=installed_home, engine=lambda: engine, nodes=node_engines({}))
    assert done.code == ExitCode.OK, done
    assert done.out.splitlines()[0].split()[:4] == ["NAME", "SERVICE", "VERSION", "STATUS"]
    assert done.out.splitlines()[1].split()[:4] == ["shop.web", "web", "v1", "SYNCED"]  # read by its IP
    assert "NODE" not in done.out
