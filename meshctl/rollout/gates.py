"""The canary's health, read from its own sidecars' Prometheus endpoints (reporter="destination").

Counters only grow, so a step's numbers are the difference between two reads. A sidecar that restarted
(its counters went down) counts from zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from meshctl.telemetry.scrape import Sample

REQUESTS = "istio_requests_total"
BUCKETS = "istio_request_duration_milliseconds_bucket"


def counters(samples: Iterable[Sample]) -> dict[str, float]:
    """What a gate needs from one sidecar: requests, 5xx answers and the duration histogram's buckets."""
    out: dict[str, float] = {"requests": 0.0, "errors": 0.0}
    for s in samples:
        if s.labels.get("reporter") != "destination":
            continue
        if s.name == REQUESTS:
            out["requests"] += s.value
            if s.labels.get("response_code", "").startswith("5") or s.labels.get("response_code") == "0":
                out["errors"] += s.value
        elif s.name == BUCKETS:
            key = f"le:{s.labels.get('le')}"
            out[key] = out.get(key, 0.0) + s.value
    return out


def delta(now: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for pod, values in now.items():
        base = before.get(pod, {})
        restarted = values.get("requests", 0) < base.get("requests", 0)
        for k, v in values.items():
            total[k] = total.get(k, 0.0) + (v if restarted else v - base.get(k, 0.0))
    return total


def p99_ms(d: dict[str, float]) -> float | None:
    buckets = sorted((float(k[3:]), v) for k, v in d.items() if k.startswith("le:"))
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = 0.99 * buckets[-1][1]  # the +Inf bucket holds every observation
    for bound, count in buckets:
        if count >= target:
            return bound if not math.isinf(bound) else buckets[-2][0] if len(buckets) > 1 else None
    return None


@dataclass(frozen=True)
class Verdict:
    passed: bool | None  # None: not enough traffic to tell yet
    requests: int
    success_rate: float | None
    p99_ms: float | None
    reason: str


def judge(d: dict[str, float], min_success: float, max_p99: float, min_requests: int) -> Verdict:
    requests = int(d.get("requests", 0))
    if requests < min_requests:
        return Verdict(None, requests, None, None, f"{requests} requests reached the canary (want {min_requests})")
    rate = 100.0 * (requests - d.get("errors", 0)) / requests
    p99 = p99_ms(d)
    if rate < min_success:
        return Verdict(False, requests, rate, p99, f"success rate {rate:.1f}% < {min_success:g}%")
    if p99 is not None and p99 > max_p99:
        return Verdict(False, requests, rate, p99, f"p99 latency {p99:g} ms > {max_p99:g} ms")
    return Verdict(True, requests, rate, p99, f"success rate {rate:.1f}%, p99 <= {p99:g} ms" if p99 is not None
                   else f"success rate {rate:.1f}%")
