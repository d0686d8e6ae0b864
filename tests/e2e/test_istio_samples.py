"""Istio's own bookinfo YAML (tests/data/istio, copied unchanged) on the demo's bookinfo, checked against what
the Istio docs say each task does: request routing, fault injection, traffic shifting, and the HTTP
authorization task. Each step applies a file as the docs do (`kubectl apply -f FILE`); a few requests per
step; every resource is deleted at the end, so the other tests sharing `demo` see none of it.

meshctl's bookinfo is small Python services: productpage answers JSON with the reviews it got (their version,
and per review a rating with stars and colour, or the error the docs show); its calls time out after 5 s.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker import DockerClient

from meshctl.lifecycle.demo import PORT
from tests.conftest import meshctl
from tests.e2e.conftest import App
from tests.e2e.test_dataplane import bookinfo
from tests.e2e.test_traffic import calls

DATA = Path(__file__).resolve().parent.parent / "data" / "istio"
NETWORKING = DATA / "bookinfo-networking"
SECURITY = DATA / "security"
KINDS = ("virtualservice", "destinationrule", "authorizationpolicy", "peerauthentication")


def apply(home: Path, path: Path, *args: str) -> None:
    done = meshctl("apply", "-f", str(path), *args, home=home)
    assert done.code == 0, done.err
    synced = meshctl("proxy-status", "-p", "bookinfo", "--wait", "--timeout", "10", home=home)
    assert synced.code == 0, synced.out + synced.err


def fetch(user: str | None = None) -> tuple[int, str, float]:
    """(status, body, seconds) of the product page as the docs' browser gets it: through the published port
    (compose's edge, where Istio has its ingress gateway), as `end-user` (what bookinfo's login sets)."""
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}/productpage", headers={"end-user": user} if user else {})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, resp.read().decode(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), time.monotonic() - started


def page(user: str | None = None) -> tuple[dict[str, Any], float]:
    status, body, took = fetch(user)
    assert status == 200, (status, body)
    return json.loads(body), took


def ratings_of(body: dict[str, Any]) -> list[dict[str, Any] | None]:
    return [r.get("rating") for r in body["reviews"].get("reviews", [])]


@pytest.fixture
def samples(demo: dict, engine: DockerClient, mesh_home: Path) -> Iterator[App]:
    app = bookinfo(engine, mesh_home)
    yield app
    for kind in KINDS:  # whatever a step left, in every namespace the files may have used
        for r in json.loads(meshctl("get", kind, "-o", "json", home=mesh_home).out or "[]"):
            ns = r["metadata"].get("namespace") or ""
            meshctl("delete", kind, r["metadata"]["name"], "-p", ns, home=mesh_home)
    meshctl("proxy-status", "-p", "bookinfo", "--wait", "--timeout", "10", home=mesh_home)


def test_request_routing_fault_injection_and_traffic_shifting(samples: App, mesh_home: Path) -> None:
    # Request routing: the default destination rules, then every service to v1: reviews without stars
    apply(mesh_home, NETWORKING / "destination-rule-all.yaml")
    apply(mesh_home, NETWORKING / "virtual-service-all-v1.yaml")
    for _ in range(5):
        body, _ = page()
        assert body["reviews"]["version"] == "v1" and ratings_of(body) == [None, None], body
    # jason sees v2 (black stars); everyone else still v1
    apply(mesh_home, NETWORKING / "virtual-service-reviews-test-v2.yaml")
    for _ in range(3):
        body, _ = page("jason")
        assert body["reviews"]["version"] == "v2" and all(r and r["color"] == "black" for r in ratings_of(body)), body
        assert page("bob")[0]["reviews"]["version"] == "v1"
    # Fault injection, delay: 7 s on jason's ratings calls; his page waits out productpage's timeout and shows
    # the reviews error (the docs' point: the timeouts in the app do not fit the delay); others are not slowed
    apply(mesh_home, NETWORKING / "virtual-service-ratings-test-delay.yaml")
    body, took = page("jason")
    assert body["status"]["reviews"] != 200 and 4.5 <= took < 7, (took, body)
    body, took = page("bob")
    assert body["status"]["reviews"] == 200 and took < 2, (took, body)
    # Fault injection, abort: HTTP 500 on jason's ratings calls: "Ratings service is currently unavailable"
    apply(mesh_home, NETWORKING / "virtual-service-ratings-test-abort.yaml")
    body, _ = page("jason")
    assert body["reviews"]["version"] == "v2", body
    assert ratings_of(body) == [{"error": "Ratings service is currently unavailable"}] * 2, body
    assert page("bob")[0]["reviews"]["version"] == "v1"
    # Traffic shifting: all to v1, then 50/50 v1/v3 (a bounded sample, a tolerant bound), then v3 only
    apply(mesh_home, NETWORKING / "virtual-service-all-v1.yaml")
    apply(mesh_home, NETWORKING / "virtual-service-reviews-50-v3.yaml")
    seen = Counter(r[1] for r in calls(samples, 200))
    assert set(seen) == {"v1", "v3"} and 60 <= seen["v3"] <= 140, seen  # 50% +-20 points (> 5 sigma)
    apply(mesh_home, NETWORKING / "virtual-service-reviews-v3.yaml")
    assert Counter(r[1] for r in calls(samples, 30)) == Counter({"v3": 30})
    body, _ = page()
    assert all(r and r["color"] == "red" for r in ratings_of(body)), body


def documents(path: Path, into: Path) -> list[Path]:
    """Each document of a file on its own, as a task applies them one by one."""
    out = []
    for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
        out.append(into / f"{path.stem}-{i}.yaml")
        out[-1].write_text(yaml.safe_dump(doc))
    return out


def test_http_authorization_task(samples: App, mesh_home: Path, tmp_path: Path) -> None:
    """Istio's "Authorization for HTTP traffic" task, its policies unchanged (`namespace: default`, principals
    cluster.local/ns/default/sa/bookinfo-*), applied with -n bookinfo, with mutual TLS strict as it requires."""
    apply(mesh_home, SECURITY / "peer-authentication-strict.yaml")
    allow_nothing, productpage_viewer, details_viewer, reviews_viewer, ratings_viewer = \
        documents(SECURITY / "authz-http.yaml", tmp_path)
    assert fetch()[0] == 200
    apply(mesh_home, allow_nothing, "-p", "bookinfo")
    status, body, _ = fetch()
    assert status == 403 and "RBAC: access denied" in body, (status, body)
    # the page again, but it may not fetch the details and reviews
    apply(mesh_home, productpage_viewer, "-p", "bookinfo")
    body_ = page()[0]
    assert body_["status"] == {"details": 403, "reviews": 403}, body_
    # details and reviews viewers: the book's details and reviews, but "Ratings service currently unavailable"
    apply(mesh_home, details_viewer, "-p", "bookinfo")
    apply(mesh_home, reviews_viewer, "-p", "bookinfo")
    unavailable = {"error": "Ratings service is currently unavailable"}
    versions = every_version(lambda body: ratings_of(body) in ([None, None], [unavailable] * 2))
    assert versions == {"v1", "v2", "v3"}, versions
    # ratings viewer (reviews' account may call ratings): black and red stars again
    apply(mesh_home, ratings_viewer, "-p", "bookinfo")
    colours = {"v1": None, "v2": "black", "v3": "red"}
    versions = every_version(lambda body: [r and r.get("color") for r in ratings_of(body)]
                             == [colours[body["reviews"]["version"]]] * 2)
    assert versions == {"v1", "v2", "v3"}, versions
    # the principals name bookinfo's accounts (`mesh.service-account: bookinfo-*`): analyze finds nothing amiss
    done = meshctl("analyze", "-p", "bookinfo", "-o", "json", home=mesh_home)
    assert not [m for m in json.loads(done.out) if m["code"] == "MSH0113"], done.out


def every_version(check: Callable[[dict[str, Any]], bool], pages: int = 9) -> set[str]:
    """The reviews versions seen in a few pages (round robin over v1, v2, v3), each page passing `check`."""
    seen = set()
    for _ in range(pages):
        body = page()[0]
        assert body["status"] == {"details": 200, "reviews": 200} and check(body), body
        seen.add(body["reviews"]["version"])
    return seen
