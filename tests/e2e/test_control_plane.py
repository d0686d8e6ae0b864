"""Pilot against the real engine: live delivery, acks, and what proxy-status makes visible."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from docker import DockerClient

from meshctl.runtime.compose import require_compose
from tests.conftest import meshctl
from tests.e2e.conftest import App, up_meshed

FLEET = 20


def statuses(home: Path, *args: str) -> list[dict]:
    done = meshctl("proxy-status", *args, "-o", "json", home=home)
    assert done.code == 0, done.err
    data = json.loads(done.out)
    return [data] if isinstance(data, dict) else data  # one named proxy comes with its diff


@pytest.fixture(scope="module")
def fleet(engine: DockerClient, mesh_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    workdir = tmp_path_factory.mktemp("fleet")
    services = {f"svc-{i:02d}": {"image": "meshctl/base:bookworm", "command": ["sleep", "infinity"], "init": True}
                for i in range(FLEET)}
    (workdir / "compose.yaml").write_text(yaml.safe_dump({"services": services}))
    try:
        yield up_meshed(engine, mesh_home, workdir / "compose.yaml", "e2efleet", workdir)
    finally:
        if (workdir / "meshed.yaml").is_file():
            App(engine, require_compose(), "e2efleet", workdir / "meshed.yaml").down()


def outbound_failures(app: App, sidecar: str) -> list[tuple]:
    """What a sidecar logged about the calls it sent that did not end in 200: enough to tell why."""
    return [{k: e.get(k) for k in ("time", "status", "flags", "upstream", "route", "error", "reason")}
            for e in app.logs(sidecar) if e.get("direction") == "outbound" and e.get("status") != 200]


def vs(name: str, weight: int) -> str:
    return yaml.safe_dump({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                           "metadata": {"name": name}, "spec": {"hosts": [name], "http": [{"route": [
                               {"destination": {"host": name}, "weight": 100}]}]}}) if weight else ""


def test_a_change_reaches_all_20_proxies_within_2s(fleet: App, mesh_home: Path) -> None:
    rows = [r for r in statuses(mesh_home) if r["name"].startswith("e2efleet.")]
    assert len(rows) == FLEET and all(r["status"] == "SYNCED" for r in rows)
    before = rows[0]["revision"]
    applied = meshctl("apply", "-f", "-", home=mesh_home, stdin=vs("svc-00", 100))
    assert applied.code == 0, applied.err
    started = time.monotonic()
    waited = meshctl("proxy-status", "--wait", "--timeout", "2", "-o", "json", home=mesh_home)
    assert waited.code == 0, waited.out + waited.err
    rows = [r for r in json.loads(waited.out) if r["name"].startswith("e2efleet.")]
    assert len(rows) == FLEET and all(r["status"] == "SYNCED" and r["revision"] > before for r in rows)
    print(f"apply returned -> {FLEET} proxies SYNCED, seen by proxy-status: {time.monotonic() - started:.2f}s")


def test_a_stopped_sidecar_shows_not_running_and_wait_fails(fleet: App, mesh_home: Path) -> None:
    # The app goes first, as compose stops them: a live app left in a stopped owner's namespace makes
    # Docker 20.10 leak a network endpoint that outlives both containers.
    fleet.container("svc-19").stop(timeout=2)
    fleet.container("svc-19-proxy").stop(timeout=2)
    row = statuses(mesh_home, "e2efleet.svc-19")[0]
    assert row["status"] == "NOT RUNNING"
    done = meshctl("proxy-status", "--wait", "--timeout", "1", home=mesh_home)
    assert done.code == 7 and "not SYNCED after 1s" in done.err
    assert "NOT RUNNING" in done.out


def test_a_snapshot_the_proxy_cannot_apply_is_rejected_and_the_old_one_keeps_serving(
        demo: dict, mesh_home: Path) -> None:
    target = mesh_home / "proxies" / "bookinfo" / "details" / "snapshot.json"
    good = target.read_text()
    broken = json.loads(good)
    broken.update(revision=broken["revision"] + 100, hash="broken0000000000")
    broken["inbound"]["mode"] = "SOMETIMES"
    target.write_text(json.dumps(broken))
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            row = statuses(mesh_home, "bookinfo.details")[0]
            if row["status"].startswith("REJECTED"):
                break
            time.sleep(0.2)
        assert row["status"].startswith("REJECTED (inbound.mode must be one of"), row
        shown = meshctl("proxy-status", "bookinfo.details", home=mesh_home)
        assert '-  "mode": "SOMETIMES"' in shown.out and '+  "mode": "PERMISSIVE"' in shown.out, shown.out
        from meshctl.lifecycle.demo import get

        assert all(get("http://127.0.0.1:9080/productpage") == 200 for _ in range(10))  # details still answers
    finally:
        target.write_text(good)
    synced = meshctl("proxy-status", "bookinfo.details", "--wait", "--timeout", "5", home=mesh_home)
    assert synced.code == 0 and "match: bookinfo.details runs revision" in synced.out


REVIEWS_SPLIT = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
"""


def test_proxy_config_shows_what_the_running_sidecar_uses(demo: dict, mesh_home: Path) -> None:
    assert meshctl("apply", "-f", "-", home=mesh_home, stdin=REVIEWS_SPLIT).code == 0
    assert meshctl("proxy-status", "bookinfo.productpage", "--wait", "--timeout", "5", home=mesh_home).code == 0
    routes = meshctl("proxy-config", "bookinfo.productpage", "routes", "-o", "json", home=mesh_home)
    assert routes.code == 0, routes.err
    assert [r["name"] for r in json.loads(routes.out)] == ["reviews"]
    assert json.loads(routes.out)[0]["http"][0]["route"][1]["weight"] == 10
    endpoints = json.loads(meshctl("proxy-config", "productpage", "endpoints", "-o", "json", home=mesh_home).out)
    assert sorted(e["workload"] for e in endpoints.values() if e["service"] == "reviews") == [
        "reviews-v1", "reviews-v2", "reviews-v3"]
    secrets = json.loads(meshctl("proxy-config", "productpage", "secrets", "-o", "json", home=mesh_home).out)
    assert secrets["identity"] == "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage"
    assert len(secrets["trust_bundle"]) == 1 and "key" not in json.dumps(secrets).lower()
    table = meshctl("proxy-config", "bookinfo.productpage", home=mesh_home)
    assert table.code == 0 and "LISTENERS" in table.out and "virtualInbound" in table.out and "90%" in table.out
    assert meshctl("delete", "vs", "reviews", home=mesh_home).code == 0
    assert meshctl("delete", "dr", "reviews", home=mesh_home).code == 0
    missing = meshctl("proxy-config", "nosuch", home=mesh_home)
    assert missing.code == 2 and "no proxy named 'nosuch'" in missing.err


def test_replicas_are_pods_of_their_own_and_all_discovered(
        engine: DockerClient, mesh_home: Path, testbed_image: str, tmp_path: Path) -> None:
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump({"services": {
        "web": {"image": testbed_image, "deploy": {"replicas": 3}},
        "client": {"image": testbed_image, "command": ["sleep", "infinity"], "init": True}}}))
    app = up_meshed(engine, mesh_home, tmp_path / "compose.yaml", "e2ereplicas", tmp_path)
    try:
        # every replica's app listens (healthy sidecars say nothing of their apps): a request with no
        # VirtualService keeps the replica DNS gave and gets no retries, so one still starting would answer 503
        for instance in ("web", "web-2", "web-3"):
            app.wait_for(lambda i=instance: app.exec(  # type: ignore[misc]
                i, "curl", "-sf", "-o", "/dev/null", "http://127.0.0.1:8080/echo")[0] == 0, f"{instance}'s app answers")
        app.wait_for(lambda: app.exec("client", "curl", "-sf", "-o", "/dev/null", "http://web:8080/echo")[0] == 0,
                      "web answers")
        for _ in range(60):  # a new connection, and a fresh DNS answer, each time
            code, out = app.exec("client", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://web:8080/echo")
            assert code == 0 and out.strip() == "200", (out, outbound_failures(app, "client-proxy"))
        for instance in ("web", "web-2", "web-3"):
            served = [e for e in app.logs(f"{instance}-proxy") if e.get("direction") == "inbound"]
            assert served, f"{instance} got no traffic"
            assert all(e["mtls"] and e["source"] == "spiffe://cluster.local/ns/e2ereplicas/sa/client" for e in served)
        endpoints = json.loads(meshctl("proxy-config", "e2ereplicas.client", "endpoints", "-o", "json",
                                       home=mesh_home).out)
        assert sorted(e["workload"] for e in endpoints.values() if e["service"] == "web") == ["web", "web", "web"]
        rows = [r for r in statuses(mesh_home) if r["name"].startswith("e2ereplicas.web")]
        assert sorted(r["name"] for r in rows) == ["e2ereplicas.web", "e2ereplicas.web-2", "e2ereplicas.web-3"]
        assert all(r["status"] == "SYNCED" for r in rows)
        # `--scale` cannot give each replica a sidecar (compose joins them all to the first): analyze says so
        app.compose("up", "-d", "--scale", "client=2")
        found = json.loads(meshctl("analyze", "-p", "e2ereplicas", "-o", "json", home=mesh_home).out)
        assert [(m["code"], m["resource"]) for m in found] == [("MSH0110", "service e2ereplicas/client")]
    finally:
        app.down()
