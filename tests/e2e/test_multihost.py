"""One mesh across three Docker hosts: three Docker-in-Docker nodes (Docker 26 from Debian trixie), each its own
engine, formed into a swarm by `meshctl cluster init` / `join`, with bookinfo spread over them.

The CLI runs here, on the machine; its own engine (the cluster's manager) is node 1, reached as DOCKER_HOST, and
the other nodes are Docker contexts. Placement (bookinfo's ratings has 3 replicas, one per node):
    node 1 (manager): productpage (publishes 9080 on the node), ratings
    node 2:           details, reviews-v1, ratings-2
    node 3:           reviews-v2, reviews-v3, ratings-3
so every call productpage makes, and most that reviews makes, crosses hosts. The tests share this cluster and
run in order; the last one stops and restarts node 3.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient

from meshctl.home import default_cache
from meshctl.resources import SAMPLES
from meshctl.runtime.compose import require_compose, run_compose
from tests.conftest import Done, meshctl
from tests.e2e import dind

pytestmark = [pytest.mark.e2e, pytest.mark.multihost]

NAMES = ("mesh-node1", "mesh-node2", "mesh-node3")
MANAGER, NODE2, NODE3 = NAMES
PROJECT = "bookinfo"
TD = "spiffe://cluster.local/ns/bookinfo/sa"
BOOKINFO = SAMPLES / "bookinfo" / "compose.yaml"
BOOKINFO_IMAGE = "meshctl/bookinfo:0.1.0"
PROMETHEUS_PORT = 9090  # the add-on's default, published on the manager's loopback
PLACEMENT = ("productpage=manager", f"details={NODE2}", f"reviews-v1={NODE2}", f"reviews-v2={NODE3}",
             f"reviews-v3={NODE3}", f"ratings=manager,{NODE2},{NODE3}")
CERT_TTL = "90s"  # renewed at half its life: the agent's renewals happen while the module runs
WHERE = {"productpage": "manager", "ratings": "manager", "details": NODE2, "reviews-v1": NODE2, "ratings-2": NODE2,
         "reviews-v2": NODE3, "reviews-v3": NODE3, "ratings-3": NODE3}


@dataclass
class Cluster:
    nodes: list[dind.Node]
    home: Path
    env: dict[str, str]
    meshed: Path
    timings: dict[str, float]
    first_serials: dict[str, str] = field(default_factory=dict)  # each proxy's certificate serial once up

    def meshctl(self, *args: str, timeout: float = 600, stdin: str | None = None) -> Done:
        return meshctl(*args, home=self.home, env=self.env, timeout=timeout, stdin=stdin)

    def ok(self, *args: str, timeout: float = 600, stdin: str | None = None) -> Done:
        done = self.meshctl(*args, timeout=timeout, stdin=stdin)
        assert done.code == 0, f"meshctl {' '.join(args)} exited {done.code}: {done.err}"
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json").out)

    def node(self, name: str) -> dind.Node:
        return next(n for n in self.nodes if n.name == name)

    def on(self, name: str, *cmd: str) -> tuple[int, str]:
        """A command in the node container itself (its shell, its curl, its published ports)."""
        code, out = self.node(name).container.exec_run(list(cmd))
        return code, (out or b"").decode(errors="replace")

    def page(self) -> dict[str, Any]:
        """productpage through node 1's published port: the mesh's edge, as a user reaches it."""
        code, out = self.on(MANAGER, "curl", "-s", "-m", "10", "http://127.0.0.1:9080/productpage")
        assert code == 0, f"productpage did not answer: {out}"
        return dict(json.loads(out))

    def synced(self, timeout: str = "60s") -> None:
        self.ok("proxy-status", "-p", PROJECT, "--wait", "--timeout", timeout)


def _bookinfo_image(engine: DockerClient) -> None:
    """The sample's image on the host (the other e2e tests build it with the demo; this module may run first)."""
    if not engine.images.list(name=BOOKINFO_IMAGE):
        run_compose(require_compose(), "meshctl-bookinfo-build", BOOKINFO, "build")


def _leftovers(engine: DockerClient, sock_root: Path) -> None:
    """Nodes of an earlier run that was killed: a fresh cluster every time (their swarm state would differ)."""
    stale = [c for c in engine.containers.list(all=True) if c.name in NAMES]
    if stale:
        dind.remove_nodes(engine, [dind.Node(c.name, c, f"unix://{sock_root}/{c.name}/docker.sock", "")
                                   for c in stale])


@pytest.fixture(scope="module")
def cluster(engine: DockerClient, mesh_home: Path) -> Iterator[Cluster]:
    timings: dict[str, float] = {}
    started = time.monotonic()
    sock_root = Path(tempfile.mkdtemp(prefix="meshctl-nodes-"))
    _leftovers(engine, sock_root)
    image = dind.node_image(engine, default_cache(), print)
    nodes = dind.start_nodes(engine, image, names=NAMES, sock_root=sock_root)
    dind.create_contexts(nodes)
    home = Path(tempfile.mkdtemp(prefix="meshctl-multihost-"))
    env = {"DOCKER_HOST": nodes[0].socket}
    made = Cluster(nodes, home, env, home / "meshed.yaml", timings)
    try:
        _bookinfo_image(engine)
        # The manager gets meshctl's images from here; `cluster join` ships them on to the other nodes itself.
        dind.load_images(engine, nodes[:1], ["meshctl/base:bookworm", "meshctl/proxy:0.1.0"], print)
        dind.load_images(engine, nodes, [BOOKINFO_IMAGE], print)
        timings["nodes"] = time.monotonic() - started
        made.ok("install", "--cert-ttl", CERT_TTL)
        made.ok("cluster", "init")
        joined = made.ok("cluster", "join", NODE2, NODE3)
        timings["cluster"] = time.monotonic() - started
        print(joined.err)
        flags = [f for place in PLACEMENT for f in ("--place", place)]
        made.ok("inject", str(BOOKINFO), "-p", PROJECT, "-o", str(made.meshed), *flags)
        made.ok("up", str(made.meshed))
        made.synced("120s")
        deadline = time.monotonic() + 60
        while made.page()["status"] != {"details": 200, "reviews": 200} and time.monotonic() < deadline:
            time.sleep(0.5)
        timings["bookinfo"] = time.monotonic() - started
        print(f"multi-host start-up: {timings}")
        made.first_serials = {r["name"]: r["cert_serial"] for r in made.json("proxy-status", "-p", PROJECT)}
        yield made
    finally:
        made.meshctl("down", str(made.meshed), timeout=300)
        made.meshctl("uninstall", "--purge", "--yes", timeout=300)
        dind.remove_nodes(engine, nodes)
        dind.remove_contexts(nodes)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(sock_root, ignore_errors=True)


def _load(cluster: Cluster, requests: int, pause: float = 0.05) -> tuple[threading.Thread, list[str]]:
    """`requests` calls to productpage in the background, each recorded as "details/reviews/http status"."""
    results: list[str] = []
    script = (f"for i in $(seq {requests}); do "
              "out=$(curl -s -m 10 -w ' %{http_code}' http://127.0.0.1:9080/productpage); "
              "echo \"$(echo \"$out\" | grep -o '\"status\": {[^}]*}' | tr -dc '0-9,') ${out##* }\"; "
              f"sleep {pause}; done")

    def run() -> None:
        results.extend(cluster.on(MANAGER, "bash", "-c", script)[1].splitlines())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, results


def _failed(results: list[str]) -> list[str]:
    return [r for r in results if r != "200,200 200"]


def test_cluster_forms_and_every_node_has_the_sidecar_image(cluster: Cluster) -> None:
    status = cluster.json("cluster", "status")
    assert status["healthy"], status
    nodes = {n["node"]: n for n in status["nodes"]}
    assert set(nodes) == {"manager", NODE2, NODE3}
    assert all(n["state"] == "Ready" and int(n["engine"].split(".")[0]) >= 26 for n in nodes.values())
    assert nodes["manager"]["role"] == "manager"
    # every node reaches every other over the overlay: a sidecar on each called the others' health ports
    pairs = {(r["source"], r["target"]) for r in status["reachability"] if r["ok"]}
    assert {(a, b) for a in nodes for b in nodes if a != b} <= pairs, status["reachability"]
    ids = {n.name: n.client().images.get("meshctl/proxy:0.1.0").id for n in cluster.nodes}
    assert len(set(ids.values())) == 1, ids  # shipped by `cluster join` through the engine API


def test_bookinfo_is_spread_over_three_nodes_and_answers_through_the_mesh(cluster: Cluster) -> None:
    rows = cluster.json("proxy-status", "-p", PROJECT)
    where = {r["name"].split(".", 1)[1]: r["node"] or "manager" for r in rows}
    assert where == WHERE
    assert all(r["status"] == "SYNCED" for r in rows), rows
    versions = set()
    for _ in range(12):
        body = cluster.page()
        assert body["status"] == {"details": 200, "reviews": 200}, body
        versions.add(body["reviews"]["version"])
    assert versions == {"v1", "v2", "v3"}  # reviews' three versions on two other hosts


def test_every_cross_host_edge_is_mutual_tls_with_the_right_identities(cluster: Cluster) -> None:
    for _ in range(20):
        cluster.page()
    edges = cluster.json("edges", "-p", PROJECT)
    internal = [e for e in edges if e["source"] != "unknown"]
    seen = {(e["source"], e["destination"]) for e in internal}
    crossing = {("productpage", "details"), ("productpage", "reviews-v1"), ("productpage", "reviews-v2"),
                ("productpage", "reviews-v3")}
    assert crossing <= seen, seen
    assert {d for s, d in seen if s in ("reviews-v2", "reviews-v3")} & {"ratings", "ratings-2"}  # node 3 -> 1, 2
    for edge in internal:
        assert edge["secured"], edge
        account = "reviews" if edge["destination"].startswith("reviews") else edge["destination"].split("-")[0]
        caller = "reviews" if edge["source"].startswith("reviews") else edge["source"]
        assert edge["source_identity"] == f"{TD}/bookinfo-{caller}", edge
        assert edge["destination_identity"] == f"{TD}/bookinfo-{account}", edge


def test_every_view_reads_the_sidecars_of_every_host(cluster: Cluster) -> None:
    for _ in range(20):
        cluster.page()
    stat = cluster.json("stat", "-p", PROJECT)
    served = {(r["service"], r["version"]) for r in stat if r["requests"]}
    assert {("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3"), ("details", "v1"), ("ratings", "v1")} <= served
    # the access logs of pods on node 2 and node 3, read through their engines
    logged = {e["proxy"] for e in cluster.json("logs", "reviews", "-p", PROJECT, "-n", "50")}
    assert {"bookinfo.reviews-v1", "bookinfo.reviews-v2", "bookinfo.reviews-v3"} <= logged, logged
    # one trace crosses all three hosts: productpage (1) -> reviews-v2 (3) -> ratings (1, 2 or 3)
    traces = cluster.json("trace", "-p", PROJECT, "-n", "50")
    assert any({"productpage", "reviews", "ratings"} <= set(t["services"]) for t in traces), traces[:3]
    routes = cluster.json("top", "-p", PROJECT, "-d", "3s")
    assert routes is not None
    config = cluster.json("proxy-config", "bookinfo.reviews-v3", "endpoints")  # a sidecar on node 3
    assert config


def test_prometheus_on_the_manager_scrapes_every_host(cluster: Cluster) -> None:
    cluster.ok("install", "--addons", "prometheus")

    def query(promql: str) -> list[dict[str, Any]]:
        code, out = cluster.on(MANAGER, "curl", "-s", "-G", "--data-urlencode", f"query={promql}",
                               f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query")
        return list(json.loads(out)["data"]["result"]) if code == 0 and out.startswith("{") else []

    deadline = time.monotonic() + 90
    up: list[dict[str, Any]] = []
    while len(up) < len(WHERE) and time.monotonic() < deadline:
        cluster.page()
        up = [r for r in query('up{job="sidecars"}') if r["value"][1] == "1"]
        time.sleep(2)
    assert len(up) == len(WHERE), up  # every sidecar, on every host, found by its alias on the overlay
    workloads = {r["metric"]["destination_workload"] for r in query(
        'sum by (destination_workload) (istio_requests_total{reporter="destination"})')}
    assert {"details", "reviews-v1", "reviews-v2", "reviews-v3"} <= workloads, workloads


def test_the_agents_renewals_reach_every_host(cluster: Cluster) -> None:
    """Certificates live CERT_TTL; the agent renews them at half their life and delivers them to each node."""
    deadline = time.monotonic() + 120
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = cluster.json("proxy-status", "-p", PROJECT)
        if all(r["cert_serial"] != cluster.first_serials[r["name"]] and r["status"] == "SYNCED" for r in rows):
            break
        time.sleep(2)
    assert all(r["cert_serial"] != cluster.first_serials[r["name"]] for r in rows), rows
    assert cluster.page()["status"] == {"details": 200, "reviews": 200}


def test_a_90_10_route_holds_across_hosts(cluster: Cluster) -> None:
    cluster.ok("route", "set", "reviews", "-p", PROJECT, "--to", "v1=90", "--to", "v2=10")
    try:
        cluster.synced()
        versions = Counter(cluster.page()["reviews"]["version"] for _ in range(200))
        # v1 on node 2, v2 on node 3; binomial(200, 0.1): 4..36 holds with p > 0.9999
        assert versions["v3"] == 0 and 4 <= versions["v2"] <= 36 and versions["v1"] + versions["v2"] == 200, versions
    finally:
        cluster.ok("route", "delete", "reviews", "-p", PROJECT)
        cluster.synced()


def test_strict_refuses_an_outsider_on_another_node(cluster: Cluster) -> None:
    cluster.ok("mtls", "set", "--mode", "strict", "-p", PROJECT)
    outsider = cluster.node(NODE3).client()
    try:
        cluster.synced()
        # a plain container on node 3, on bookinfo's own overlay, calls details on node 2 by name
        out = outsider.containers.run("meshctl/bookinfo:0.1.0", ["curl", "-s", "-m", "5", "-w", " %{http_code}",
                                                                 "http://details:9080/details/0"],
                                      network=f"{PROJECT}_default", remove=True).decode()
        assert "Shakespeare" not in out and not out.endswith(" 200"), out
        assert cluster.page()["status"] == {"details": 200, "reviews": 200}  # the mesh's own calls go on
    finally:
        cluster.ok("mtls", "set", "--mode", "permissive", "-p", PROJECT)
        cluster.synced()


def test_certs_rotate_all_under_load_loses_no_request(cluster: Cluster) -> None:
    before = {r["name"]: r["cert_serial"] for r in cluster.json("proxy-status", "-p", PROJECT)}
    thread, results = _load(cluster, 300)
    time.sleep(2)
    cluster.ok("certs", "rotate", "--all", "--timeout", "60s")
    thread.join(120)
    after = {r["name"]: r["cert_serial"] for r in cluster.json("proxy-status", "-p", PROJECT)}
    assert set(after) == set(before) and all(after[n] != before[n] for n in before), (before, after)
    assert len(results) == 300 and not _failed(results), _failed(results)[:5]


def test_a_root_rotation_reaches_every_host(cluster: Cluster) -> None:
    roots_before = {r["name"]: tuple(r["trusted_roots"]) for r in cluster.json("proxy-status", "-p", PROJECT)}
    thread, results = _load(cluster, 150)
    cluster.ok("certs", "rotate", "--root", "--overlap", "2s", "--timeout", "60s")
    thread.join(120)
    rows = cluster.json("proxy-status", "-p", PROJECT)
    assert all(len(r["trusted_roots"]) == 1 and tuple(r["trusted_roots"]) != roots_before[r["name"]]
               for r in rows), rows
    assert len(results) == 150 and not _failed(results), _failed(results)[:5]


FAILOVER = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 1s}}
    outlierDetection: {consecutiveGatewayErrors: 1, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "connect-failure,gateway-error,reset"}
"""


def test_a_node_that_stops_leaves_the_app_answering_and_its_pods_come_back(cluster: Cluster,
                                                                            engine: DockerClient) -> None:
    node3 = cluster.node(NODE3)
    # what a user sets for failover, as in Istio: a short connect timeout, outlier detection and retries
    cluster.ok("apply", "-f", "-", "-p", PROJECT, stdin=FAILOVER)
    cluster.synced()
    thread, results = _load(cluster, 200, pause=0.1)
    time.sleep(2)
    stopped_at = time.monotonic()
    node3.container.kill()  # cut off, as a host that loses power: no goodbye to the swarm
    thread.join(180)
    failed = _failed(results)
    print(f"node 3 killed under load: {len(failed)} of {len(results)} pages had a failed call: {failed[:3]}")
    assert len(results) == 200 and not failed, failed
    # the replicas elsewhere answer: reviews v1 on node 2, ratings on nodes 1 and 2
    pages = [cluster.page() for _ in range(10)]
    assert all(p["status"] == {"details": 200, "reviews": 200} and p["reviews"]["version"] == "v1" for p in pages)
    status = cluster.meshctl("cluster", "status", "-o", "json")
    assert status.code == 1 and status.out, status.err
    down = {n["node"]: n for n in json.loads(status.out)["nodes"]}[NODE3]
    assert down["problem"], down
    rows = cluster.json("proxy-status", "-p", PROJECT)
    gone = {r["name"].split(".", 1)[1] for r in rows if r["status"].startswith("NODE DOWN")}
    assert gone == {"reviews-v2", "reviews-v3", "ratings-3"}, rows
    # it comes back: the engine restarts its containers, the agent starts the pods Docker leaves stopped
    node3.container.start()
    dind.wait_engine(node3)
    back_at = time.monotonic()
    cluster.synced("120s")
    deadline = time.monotonic() + 60
    versions: set[str] = set()
    while versions != {"v1", "v2", "v3"} and time.monotonic() < deadline:
        versions.add(cluster.page()["reviews"]["version"])
    on_node3 = {c.name: c.status for c in node3.client().containers.list(all=True)}
    assert versions == {"v1", "v2", "v3"}, on_node3
    print(f"node 3: down {back_at - stopped_at:.1f}s; its pods answered again {time.monotonic() - back_at:.1f}s "
          "after its engine did")
    assert cluster.json("cluster", "status")["healthy"]


def test_nothing_is_left_on_the_nodes_after_down(cluster: Cluster) -> None:
    cluster.ok("down", str(cluster.meshed))

    def left_on(node: dind.Node) -> list[str]:
        client = node.client()
        found = [c.name for c in client.containers.list(all=True) if c.name != "meshctl-prometheus"]  # the add-on stays
        found += [v.name for v in client.volumes.list() if v.name.startswith("meshctl-proxy-")]
        return found + [n.name for n in client.networks.list() if n.name.startswith(f"{PROJECT}_")]

    # a worker forgets an overlay a moment after the manager removed it (the swarm tells it): wait for that
    deadline = time.monotonic() + 30
    left = {node.name: left_on(node) for node in cluster.nodes}
    while any(left.values()) and time.monotonic() < deadline:
        time.sleep(1)
        left = {node.name: left_on(node) for node in cluster.nodes}
    assert not any(left.values()), left
    # uninstall reaches every node: the images shipped there and anything else meshctl labelled
    cluster.ok("uninstall", "--yes")
    managed = {"label": "io.meshctl.managed=true"}
    for node in cluster.nodes:
        client = node.client()
        theirs = [c.name for c in client.containers.list(all=True, filters=managed)]
        theirs += [", ".join(i.tags) for i in client.images.list(filters=managed)]
        theirs += [v.name for v in client.volumes.list(filters=managed)]
        assert not theirs, f"{node.name}: {theirs}"
