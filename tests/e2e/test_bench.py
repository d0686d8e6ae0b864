"""`meshctl bench --quick` on the real engine: every mode and load runs and reports every figure.

It asserts behaviour, not speed: the numbers are for docs/benchmarks.md, from a full run.
"""

from __future__ import annotations

import json
from pathlib import Path

from docker import DockerClient

from tests.conftest import meshctl


def test_quick_bench_runs_every_mode_and_reports_every_figure(engine: DockerClient, mesh_home: Path) -> None:
    done = meshctl("bench", "--quick", "-o", "json", home=mesh_home, timeout=900)
    assert done.code == 0, done.err[-2000:]
    report = json.loads(done.out)
    modes = {r["mode"] for r in report["results"]}
    assert modes == {"direct", "mesh-plaintext", "mesh-mtls", "mesh-mtls-l7"}
    for r in report["results"]:
        assert r["rps"] > 0 and r["requests"] > 0 and r["errors"] == 0 and r["socket_errors"] == 0, r
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], r
        if r["mode"] != "direct":
            assert r["throughput_ratio"] > 0 and "added_p50_ms" in r, r
    assert len(report["results"]) == 4 * len(report["plan"]["loads"])
    sidecars = {s["sidecar"].split("_")[1]: s for s in report["sidecars"]}
    assert set(sidecars) == {"client-proxy", "server-v1-proxy", "server-v2-proxy"}
    for s in sidecars.values():
        assert s["rss_idle_mb"] > 10 and s["rss_load_mb"] > 10, s
    # every load passes the client's sidecar, and one server pod's or the other's
    assert sidecars["client-proxy"]["cores_per_1000_rps"] > 0
    assert any((sidecars[f"server-{v}-proxy"]["cores_per_1000_rps"] or 0) > 0 for v in ("v1", "v2"))
    [fleet] = report["propagation"]
    assert fleet["proxies"] == 3 and 0 < fleet["propagation_s"] < 30 and fleet["startup_s"] > 0
    assert report["startup_s"] > 0
    # Nothing of the bench is left behind: containers, networks, config.
    assert not engine.containers.list(all=True, filters={"label": "com.docker.compose.project=meshbench"})
    assert not engine.networks.list(names=["meshbench-direct"])
    assert "bench-" not in meshctl("get", "vs", home=mesh_home).out
