"""The one fan-out that reads every sidecar, and the one counter delta that stat, the dashboard, SLOs and a
canary's gates share."""

from __future__ import annotations

import threading
import time

from meshctl.rollout.gates import counters, delta
from meshctl.runtime.proxies import Proxy, read_each
from meshctl.telemetry import golden
from meshctl.telemetry.scrape import parse


def proxy(name: str) -> Proxy:
    return Proxy(name, f"{name}-proxy", "shop", name, name, "v1", "running", "healthy", {"mesh": "10.0.0.1"})


def test_read_each_reads_at_once_and_keeps_the_order() -> None:
    proxies = [proxy(f"p{i}") for i in range(8)]
    running, most = [0], [0]
    lock = threading.Lock()

    def read(p: Proxy) -> str:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return p.name

    assert read_each(proxies, read) == [p.name for p in proxies]
    assert most[0] > 1  # in parallel, not one after the other


def scrape(ok: float, failed: float, fast: float) -> str:
    return f"""
istio_requests_total{{reporter="destination",response_code="200"}} {ok}
istio_requests_total{{reporter="destination",response_code="503"}} {failed}
istio_request_duration_milliseconds_bucket{{reporter="destination",le="10.0"}} {fast}
istio_request_duration_milliseconds_bucket{{reporter="destination",le="+Inf"}} {ok + failed}
"""


def test_since_counts_a_restarted_sidecar_from_zero() -> None:
    def key(labels: dict[str, str]) -> golden.Key | None:
        return ("in",) if golden.inbound(labels) else None

    before = golden.tally(parse(scrape(90, 10, 50)), key)
    later = golden.since(golden.tally(parse(scrape(150, 20, 60)), key), before)[("in",)]
    assert (later.requests, later.errors, later.buckets) == (70, 10, {10.0: 10, float("inf"): 70})
    restarted = golden.since(golden.tally(parse(scrape(4, 1, 2)), key), before)[("in",)]
    assert (restarted.requests, restarted.errors) == (5, 1)


def test_a_gate_and_stat_see_the_same_window() -> None:
    """The rollout's flat counters go through golden.since too: the same scrapes give the same numbers."""
    before = {"p1": parse(scrape(90, 10, 50)), "p2": parse(scrape(500, 0, 400))}
    now = {"p1": parse(scrape(150, 20, 60)), "p2": parse(scrape(20, 5, 10))}  # p2 restarted
    seen = golden.window(now, before, lambda labels: ("in",) if golden.inbound(labels) else None)[("in",)]
    gate = delta({k: counters(v) for k, v in now.items()}, {k: counters(v) for k, v in before.items()})
    assert (gate["requests"], gate["errors"]) == (seen.requests, seen.errors) == (95, 15)
    assert gate["le:10.0"] == seen.buckets[10.0] == 20
