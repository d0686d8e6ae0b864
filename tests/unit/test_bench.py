"""The bench's parsing and comparisons (the runs themselves are in tests/e2e/test_bench.py)."""

from __future__ import annotations

import pytest
import yaml

from meshctl.bench.run import Plan, compare
from meshctl.bench.workload import compose_text, parse_wrk
from meshctl.errors import MeshError

WRK = """Running 5s test @ http://server:8080/1k
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    1.10ms
     90%    1.50ms
     99%    2.00s
  12345 requests in 5.00s, 13.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2469.00
Transfer/sec:      2.60MB
"""


def test_wrk_output_in_any_unit() -> None:
    r = parse_wrk(WRK)
    assert r["rps"] == 2469.0 and r["requests"] == 12345
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"]) == (0.85, 1.5, 2000.0)
    assert r["errors"] == 4 and r["socket_errors"] == 3
    with pytest.raises(MeshError, match="wrk printed no result"):
        parse_wrk("unable to connect to server:8080 Connection refused")


def test_meshed_figures_are_compared_with_direct_for_the_same_load() -> None:
    results = [{"mode": "direct", "load": "a", "rps": 1000.0, "p50_ms": 0.1, "p90_ms": 0.2, "p99_ms": 0.5},
               {"mode": "mesh-mtls", "load": "a", "rps": 250.0, "p50_ms": 1.1, "p90_ms": 1.2, "p99_ms": 3.5}]
    compare(results)
    assert results[1]["throughput_ratio"] == 0.25 and results[1]["added_p50_ms"] == 1.0
    assert "throughput_ratio" not in results[0]


def test_plans_and_workload() -> None:
    full = Plan.full()
    assert len(full.loads) == 8 and full.fleets == (10, 50)
    assert {ld.name for ld in Plan.quick().loads} == {"keep-alive 1k c1", "keep-alive 1k c16", "new-conn 1k c16"}
    services = yaml.safe_load(compose_text())["services"]
    assert {s["labels"]["version"] for n, s in services.items() if n.startswith("server")} == {"v1", "v2"}
    assert yaml.safe_load(compose_text(fleet=50))["services"]["idle"]["deploy"] == {"replicas": 50}
