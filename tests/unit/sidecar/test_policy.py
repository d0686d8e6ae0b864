"""Destination policy as pure values: retries, load balancing, outlier ejection."""

from __future__ import annotations

from collections import Counter

from sidecar.policy import Balancer, ClusterPolicy, Outliers, RetryPolicy, merged_policy, rendezvous


def test_subset_policy_overrides_the_service_section_by_section() -> None:
    rule = {"host": "r", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"},
                                           "connectionPool": {"tcp": {"maxConnections": 5}}},
            "subsets": [{"name": "v2", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}]}
    v2 = ClusterPolicy.from_spec(merged_policy(rule, "v2"))
    v1 = ClusterPolicy.from_spec(merged_policy(rule, "v1"))
    assert (v2.lb, v2.max_connections) == ("ROUND_ROBIN", 5)
    assert v1.lb == "RANDOM"
    assert ClusterPolicy.from_spec({}).lb == "LEAST_REQUEST"


def test_retry_conditions() -> None:
    default = RetryPolicy.from_spec(None)
    assert default.attempts == 2 and default.retriable(503, None) and not default.retriable(500, None)
    assert default.retriable(None, "connect-failure") and not default.retriable(None, "timeout")
    five = RetryPolicy.from_spec({"attempts": 3, "retryOn": "5xx"})
    assert five.retriable(500, None) and five.retriable(None, "timeout") and not five.retriable(404, None)
    codes = RetryPolicy.from_spec({"attempts": 1, "retryOn": "429,gateway-error"})
    assert codes.retriable(429, None) and codes.retriable(502, None) and not codes.retriable(500, None)


def test_round_robin_and_consistent_hash() -> None:
    rr = Balancer(ClusterPolicy(lb="ROUND_ROBIN"))
    assert Counter(rr.pick(["a", "b", "c"], None) for _ in range(300)) == Counter(a=100, b=100, c=100)
    ch = Balancer(ClusterPolicy(lb="CONSISTENT_HASH", hash_header="x-user"))
    assert len({ch.pick(["a", "b", "c"], "alice") for _ in range(50)}) == 1
    # rendezvous: removing one endpoint moves only the keys that were on it
    keys = [f"user{i}" for i in range(300)]
    before = {k: rendezvous(k, ["a", "b", "c"]) for k in keys}
    after = {k: rendezvous(k, ["a", "b"]) for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != "c")


def test_consecutive_errors_eject_within_the_max_percent() -> None:
    now = [0.0]
    od = Outliers(ClusterPolicy(consecutive_5xx=3, base_ejection=30, max_ejection_percent=50), clock=lambda: now[0])
    assert not od.record("a", 503, None, 3) and not od.record("a", 500, None, 3)
    assert od.record("a", 502, None, 3)  # third in a row
    assert od.healthy(["a", "b", "c"]) == ["b", "c"]
    for _ in range(3):
        od.record("b", 500, None, 3)
    assert not od.ejected("b")  # 50% of 3 is one host; it is taken by a
    now[0] = 31.0
    assert od.healthy(["a", "b", "c"]) == ["a", "b", "c"]  # back after baseEjectionTime
    od.record("c", 200, None, 3)
    assert od.healthy(["a"]) == ["a"]  # all ejected: use them anyway (panic)
