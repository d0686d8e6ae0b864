"""Istio YAML fields of issue 17 part 4 on bookinfo (the `demo` session): DestinationRule tls DISABLE (a STRICT
server refuses the plain text, a PERMISSIVE one takes it), VirtualService match.port, and the docs' `namespace:
default` policies with principals and serviceAccounts applied with -n bookinfo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker import DockerClient

from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import bookinfo, inbound
from tests.e2e.test_security_policies import call, synced

KINDS = ("authorizationpolicy", "peerauthentication", "destinationrule", "virtualservice")


def apply(home: Path, text: str, *flags: str) -> None:
    done = meshctl("apply", "-f", "-", *flags, home=home, stdin=text)
    assert done.code == 0, done.err
    synced(home, "bookinfo")


@pytest.fixture
def shop(demo: dict[str, Any], engine: DockerClient, mesh_home: Path) -> Iterator[App]:
    yield bookinfo(engine, mesh_home)
    for kind in KINDS:
        for r in json.loads(meshctl("get", kind, "-o", "json", home=mesh_home).out or "[]"):
            meshctl("delete", kind, r["metadata"]["name"], "-p", r["metadata"].get("namespace", ""), home=mesh_home)
    synced(mesh_home, "bookinfo")


DR_DISABLE = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details, namespace: bookinfo}
spec:
  host: details
  trafficPolicy: {tls: {mode: DISABLE}}
"""
PA = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: details, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: details}}
  mtls: {mode: %s}
"""


def test_tls_disable_sends_plain_text_which_strict_refuses(shop: App, mesh_home: Path) -> None:
    apply(mesh_home, DR_DISABLE)
    status, _ = call(shop, "productpage", "http://details:9080/details/0")
    assert status == "200"  # details is PERMISSIVE: it takes the plain text
    last = [e for e in inbound(shop, "details-proxy") if e.get("path") == "/details/0"][-1]
    assert not last["mtls"], last
    apply(mesh_home, PA % "STRICT")
    status, body = call(shop, "productpage", "http://details:9080/details/0")
    assert status == "403" and "requires mutual TLS" in body, body
    apply(mesh_home, DR_DISABLE.replace("DISABLE", "ISTIO_MUTUAL"))
    assert call(shop, "productpage", "http://details:9080/details/0")[0] == "200"
    last = [e for e in inbound(shop, "details-proxy") if e.get("path") == "/details/0"][-1]
    assert last["mtls"], last


VS_PORT = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{port: %d}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


def test_match_port_routes_on_the_port_called(shop: App, mesh_home: Path) -> None:
    apply(mesh_home, VS_PORT % 9081)
    for _ in range(3):  # not the port called: v1 (no ratings)
        status, body = call(shop, "productpage", "http://reviews:9080/reviews/0")
        assert status == "200" and "rating" not in body, body
    apply(mesh_home, VS_PORT % 9080)
    for _ in range(3):
        status, body = call(shop, "productpage", "http://reviews:9080/reviews/0")
        assert status == "200" and '"color": "black"' in body.replace('":"', '": "'), body


DOCS_POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: details-viewer, namespace: default}
spec:
  selector: {matchLabels: {app: details}}
  action: ALLOW
  rules:
  - from:
    - source: {%s}
"""


@pytest.mark.parametrize("source", ['principals: ["cluster.local/ns/default/sa/bookinfo-productpage"]',
                                    'serviceAccounts: ["default/bookinfo-productpage"]'])
def test_docs_policies_in_namespace_default_apply_to_the_project(shop: App, mesh_home: Path, source: str) -> None:
    apply(mesh_home, DOCS_POLICY % source, "-p", "bookinfo")
    assert call(shop, "productpage", "http://details:9080/details/0")[0] == "200"
    status, body = call(shop, "reviews-v1", "http://details:9080/details/0")
    assert status == "403" and "details-viewer" in body, body
    found = json.loads(meshctl("analyze", "-p", "bookinfo", "-o", "json", home=mesh_home).out)
    assert not [m for m in found if m["code"] == "MSH0113"], found
