"""Rollout gates: metric deltas between two scrapes, and the verdict."""

from __future__ import annotations

from meshctl.rollout.gates import counters, delta, judge, p99_ms
from meshctl.telemetry.scrape import parse

METRICS = """
istio_requests_total{reporter="destination",response_code="200"} 90.0
istio_requests_total{reporter="destination",response_code="503"} 10.0
istio_requests_total{reporter="source",response_code="503"} 1000.0
istio_request_duration_milliseconds_bucket{reporter="destination",le="10.0"} 50.0
istio_request_duration_milliseconds_bucket{reporter="destination",le="100.0"} 99.0
istio_request_duration_milliseconds_bucket{reporter="destination",le="+Inf"} 100.0
"""


def test_counters_take_the_canarys_own_inbound_view() -> None:
    c = counters(parse(METRICS))
    assert c["requests"] == 100 and c["errors"] == 10 and c["le:+Inf"] == 100
    assert p99_ms(c) == 100.0


def test_delta_and_restarted_sidecars() -> None:
    before = {"p1": {"requests": 50.0, "errors": 5.0}, "p2": {"requests": 500.0, "errors": 0.0}}
    now = {"p1": {"requests": 150.0, "errors": 5.0}, "p2": {"requests": 20.0, "errors": 10.0}}  # p2 restarted
    assert delta(now, before) == {"requests": 120.0, "errors": 10.0}


def test_verdicts() -> None:
    assert judge({"requests": 5}, 99, 500, 20).passed is None
    failing = judge({"requests": 100, "errors": 50}, 99, 500, 20)
    assert failing.passed is False and "success rate 50.0% < 99%" in failing.reason
    slow = judge({"requests": 100, "errors": 0, "le:1000.0": 100, "le:+Inf": 100}, 99, 500, 20)
    assert slow.passed is False and "p99" in slow.reason
    assert judge({"requests": 100, "errors": 0, "le:100.0": 100, "le:+Inf": 100}, 99, 500, 20).passed
