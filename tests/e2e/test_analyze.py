"""`meshctl analyze` against the live mesh."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from meshctl.home import MeshHome
from meshctl.pki import agent, ca, workload
from tests.conftest import meshctl
from tests.e2e.conftest import App


def codes(home: Path, project: str) -> tuple[int, list[dict]]:
    done = meshctl("analyze", "-p", project, "-o", "json", home=home)
    return done.code, json.loads(done.out)


def test_quiet_on_a_clean_mesh(demo: dict, mesh_home: Path) -> None:
    done = meshctl("analyze", "-p", "bookinfo", home=mesh_home)
    assert done.code == 0 and "No validation issues found" in done.out, done.out


def test_outsiders_and_strict_targets(testbed: App, mesh_home: Path) -> None:
    code, found = codes(mesh_home, "e2etestbed")
    assert code == 1
    assert {"code": "MSH0105", "resource": "service e2etestbed/outsider"}.items() <= found[0].items()
    assert any(m["code"] == "MSH0106" and m["resource"] == "service e2etestbed/web-strict" for m in found)


def test_a_route_to_a_subset_with_no_running_instance_and_a_host_that_matches_nothing(
        demo: dict, mesh_home: Path) -> None:
    config = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec: {host: reviews, subsets: [{name: v4, labels: {version: v4}}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v4}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ghost}
spec:
  hosts: [ghost]
  http: [{route: [{destination: {host: ghost}}]}]
"""
    assert meshctl("apply", "-f", "-", home=mesh_home, stdin=config).code == 0
    try:
        code, found = codes(mesh_home, "bookinfo")
        assert code == 0  # warnings only
        assert sorted(m["code"] for m in found) == ["MSH0102", "MSH0104"]
    finally:
        for kind, name in (("vs", "reviews"), ("vs", "ghost"), ("dr", "reviews")):
            meshctl("delete", kind, name, home=mesh_home)


def test_an_expired_workload_certificate(demo: dict, mesh_home: Path) -> None:
    cert_file = mesh_home / "proxies" / "bookinfo" / "ratings" / "cert.pem"
    # analyze reads the control plane's copy; point it at an expired one, then put the real one back
    good = cert_file.read_bytes()
    then = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    identity = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-ratings"
    expired = workload.issue(ca.load_root(mesh_home / "ca"), identity, then)
    home = MeshHome(mesh_home)
    agent.stop(home)  # or it would renew the expired certificate before analyze sees it
    deadline = time.monotonic() + 10
    while agent.running(home):
        assert time.monotonic() < deadline, "the certificate agent did not stop"
        time.sleep(0.1)
    try:
        cert_file.write_bytes(expired.cert_pem())
        code, found = codes(mesh_home, "bookinfo")
    finally:
        cert_file.write_bytes(good)
        agent.ensure_running(home)
    assert code == 1
    assert [(m["code"], m["level"], m["resource"]) for m in found] == [("MSH0107", "Error", "proxy bookinfo.ratings")]
