"""`meshctl bench --quick` on the real engine: every mode (the nginx mTLS pair too) and load (HTTP, TCP echo, gRPC
over h2c) runs and reports every figure; `--modes`/`--loads` run only what they name.

It asserts behaviour, not speed: the numbers are for docs/benchmarks.md, from a full run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from docker import DockerClient

from tests.conftest import meshctl

ALL_MODES = {"direct", "nginx-mtls", "mesh-plaintext", "mesh-mtls", "mesh-mtls-l7"}
MESH_MODES = ALL_MODES - {"direct", "nginx-mtls"}
GRPC = "grpc 1k c16 m16"


def _proxy(name: str) -> str:
    """meshbench_client-proxy_1 (compose v1), meshbench-client-proxy-1 (v2), meshbench-direct-nginx-client."""
    return re.sub(r"^meshbench-direct-|^meshbench[_-]|[_-]\d+$", "", name)


def _nothing_left(engine: DockerClient, mesh_home: Path) -> None:
    """Nothing of the bench is left behind: containers, networks, config."""
    assert not engine.containers.list(all=True, filters={"label": "com.docker.compose.project=meshbench"})
    assert not [c.name for c in engine.containers.list(all=True) if c.name.startswith("meshbench-direct")]
    assert not engine.networks.list(names=["meshbench-direct"])
    assert "bench-" not in meshctl("get", "vs", home=mesh_home).out


def _figures(r: dict[str, Any]) -> None:
    assert r["rps"] > 0 and r["requests"] > 0, r
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], r
    # the sidecars' HTTP/2 path is young: through the mesh, gRPC's failures are reported (as numbers), not ruled out
    if r["load"] != GRPC or r["mode"] not in MESH_MODES:
        assert r["errors"] == 0 and r["socket_errors"] == 0, r
    assert isinstance(r["errors"], float) and isinstance(r["socket_errors"], float), r


def test_quick_bench_runs_every_mode_and_reports_every_figure(engine: DockerClient, mesh_home: Path) -> None:
    done = meshctl("bench", "--quick", "-o", "json", home=mesh_home, timeout=900)
    assert done.code == 0, done.err[-2000:]
    report = json.loads(done.out)
    assert {r["mode"] for r in report["results"]} == ALL_MODES == set(report["plan"]["modes"])
    assert "tcp-echo 64k c1" in report["plan"]["loads"] and GRPC in report["plan"]["loads"]
    for r in report["results"]:
        _figures(r)
        if r["mode"] != "direct":
            assert r["throughput_ratio"] > 0 and "added_p50_ms" in r, r
        if r["mode"] in MESH_MODES:  # each mesh figure next to the C reference's
            assert r["throughput_ratio_nginx"] > 0 and "added_p50_over_nginx_ms" in r, r
            assert "added_p50_ratio_nginx" in r, r
    assert len(report["results"]) == len(ALL_MODES) * len(report["plan"]["loads"])
    proxies = {_proxy(s["sidecar"]): s for s in report["sidecars"]}
    assert set(proxies) == {"client-proxy", "server-v1-proxy", "server-v2-proxy", "grpc-proxy", "nginx-client",
                            "nginx-server"}
    for s in proxies.values():
        assert s["rss_idle_mb"] > 0.5 and s["rss_load_mb"] > 0.5, s
    # every load passes the client's sidecar (or nginx), and one server pod's or the other's
    assert proxies["client-proxy"]["cores_per_1000_rps"] > 0
    assert proxies["nginx-client"]["cores_per_1000_rps"] > 0 and proxies["nginx-server"]["cores_per_1000_rps"] > 0
    assert any((proxies[f"server-{v}-proxy"]["cores_per_1000_rps"] or 0) > 0 for v in ("v1", "v2"))
    assert proxies["grpc-proxy"]["cores_per_1000_rps"] > 0  # the gRPC load went through the gRPC pod's sidecar
    [fleet] = report["propagation"]
    assert fleet["proxies"] == 3 and 0 < fleet["propagation_s"] < 30 and fleet["startup_s"] > 0
    assert report["startup_s"] > 0 and report["startup_pods"] == 4
    _nothing_left(engine, mesh_home)


def test_quick_bench_runs_only_the_modes_and_loads_it_is_given(engine: DockerClient, mesh_home: Path) -> None:
    done = meshctl("bench", "--quick", "--modes", "nginx-mtls,direct", "--loads", "tcp-echo 64k c16,keep-alive 1k c1",
                   home=mesh_home, timeout=600)
    assert done.code == 0, done.err[-2000:]
    rows = [line.split() for line in done.out.splitlines() if line.startswith(("direct", "nginx-mtls"))]
    assert [(r[0], " ".join(r[1:4])) for r in rows] == [
        ("direct", "keep-alive 1k c1"), ("direct", "tcp-echo 64k c16"),
        ("nginx-mtls", "keep-alive 1k c1"), ("nginx-mtls", "tcp-echo 64k c16")]
    assert "VS NGINX" in done.out and "PROXIES" not in done.out  # no mesh mode: no fleet measured
    assert "start-up" not in done.out and "nginx-client" in done.out
    _nothing_left(engine, mesh_home)
