"""Traffic rules enforced by the sidecars, on bookinfo with real traffic."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from docker import DockerClient

from tests.conftest import meshctl
from tests.e2e.test_dataplane import bookinfo

SPLIT = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: v3, labels: {version: v3}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
"""

# Runs inside productpage: ONE keep-alive connection to reviews, many requests, the version of each answer.
KEEPALIVE = """
import http.client, json, sys
conn = http.client.HTTPConnection("reviews", 9080, timeout=10)
versions = []
for _ in range(int(sys.argv[1])):
    conn.request("GET", "/reviews/0", headers={"end-user": sys.argv[2]} if sys.argv[2] else {})
    versions.append(json.loads(conn.getresponse().read())["version"])
print(json.dumps({"versions": versions, "reused": conn.sock is not None}))
"""


def keepalive(engine: DockerClient, mesh_home: Path, n: int, user: str = "") -> Counter[str]:
    app = bookinfo(engine, mesh_home)
    code, out = app.exec("productpage", "python3", "-c", KEEPALIVE, str(n), user)
    assert code == 0, out
    result = json.loads(out)
    assert result["reused"]
    return Counter(result["versions"])


def test_weighted_split_on_one_keepalive_connection_and_header_match(
        demo: dict, engine: DockerClient, mesh_home: Path) -> None:
    assert meshctl("apply", "-f", "-", home=mesh_home, stdin=SPLIT).code == 0
    assert meshctl("proxy-status", "bookinfo.productpage", "--wait", "--timeout", "5", home=mesh_home).code == 0
    try:
        split = keepalive(engine, mesh_home, 1000)
        assert set(split) <= {"v1", "v2"} and sum(split.values()) == 1000
        share = split["v2"] / 10
        print(f"v2 share over 1000 requests on one connection: {share:.1f}%")
        assert 6 <= share <= 14, split  # 10% expected; +-4 points is > 4 standard deviations at n=1000
        assert keepalive(engine, mesh_home, 50, user="jason") == Counter({"v3": 50})
    finally:
        meshctl("delete", "vs", "reviews", home=mesh_home)
        meshctl("delete", "dr", "reviews", home=mesh_home)
